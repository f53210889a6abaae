"""Subcommands of the `webhook-router` console script, one module per group."""
