"""Long-lived asyncio tasks that never die silently: an unexpected exception is logged with its traceback and the
task starts again after a short pause (one bad message must not end the relay, the journal server or a heartbeat)."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

RESTART_DELAY_S = 0.5  # long enough not to spin on a fault that repeats, short enough to go unnoticed

log = logging.getLogger(__name__)


def supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task:
    """Start `run()` as a task and restart it whenever it raises; it ends only when cancelled or when it returns."""

    async def keep_running() -> None:
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it in %g s", name, RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)

    return asyncio.create_task(keep_running(), name=name)
