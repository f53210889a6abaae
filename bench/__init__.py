"""webhook-router's benchmark suite: `python -m bench --help`."""
