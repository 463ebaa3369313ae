"""Pure logic: no I/O, no asyncio. Decisions are values."""
