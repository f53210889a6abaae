"""Who may receive what: the scope catalog, subscribers and their grants, stored in Redis.

This package knows nothing of HTTP; `router` builds the service around it.
"""
