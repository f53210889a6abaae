"""`python -m router` is the `webhook-router` command."""

import sys

from router.cli import main

sys.exit(main())
