"""Running the event loop: uvloop when installed (about twice the throughput of the default
loop for this I/O-heavy service), the standard loop otherwise."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    # Objects made at start-up live for the process; a young generation sized for batches
    # of thousands of short-lived messages keeps the collector from running every few ms.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
