"""The ops HTTP API (aiohttp)."""
