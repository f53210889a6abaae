"""Everything the router keeps in Redis: its keys, the client, batching, the Lua scripts
(each beside the one typed function that builds its arguments and parses its reply), the
consumer-group streams, the hot-path ledger, operator history, and API keys."""
