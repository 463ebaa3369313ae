"""Running the event loop: uvloop when installed (about twice the throughput of the default
loop for this I/O-heavy service), the standard loop otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

try:
    import uvloop
except ImportError:  # optional: not built for every platform
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    # Objects made at start-up live for the process; a young generation sized for batches
    # of thousands of short-lived messages keeps the collector from running every few ms.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def stop_on_signals(stop: asyncio.Event, message: str | None = None) -> None:
    """SIGTERM and SIGINT set ``stop`` (and log ``message``); the work drains by itself."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if message:
            structlog.get_logger(__name__).info(message, signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
