"""The router's domain, pure: records and their codecs, the retry and outcome policies,
signing and metrics instruments. Nothing here does I/O or imports aiohttp or redis."""
