"""webhook-router: the service around the entitlement domain (HTTP, ingest, dispatch, delivery)."""
