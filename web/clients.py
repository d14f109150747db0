"""Every open browser tab's WebSocket. A frame goes out at once, in the loop iteration that produced it; only when a
tab cannot take it yet (its socket's buffer is full) does a task of its own send that tab's backlog, bounded, so one
slow tab delays only itself, and a tab that falls too far behind is disconnected and resyncs when htmx reconnects."""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Coroutine, Generator

from fasthtml.common import to_xml
from starlette.websockets import WebSocket

# A tab this far behind is closed rather than buffered without bound: in characters, not frames, because a frame
# may carry many tokens (the worker sends tokens it read together as one). About ten of the longest replies.
QUEUE_LIMIT_CHARS = 1_000_000
TRY_AGAIN_LATER = 1013  # WebSocket close code on which htmx's ws extension reconnects

log = logging.getLogger(__name__)


@dataclass
class Tab:
    backlog: collections.deque[str] = field(default_factory=collections.deque)
    backlog_chars: int = 0
    sender: asyncio.Task | None = None  # sending the backlog, while the socket cannot take more at once


class Clients:
    def __init__(self) -> None:
        self._tabs: dict[WebSocket, Tab] = {}
        self._closing: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._tabs)

    def connect(self, ws: WebSocket) -> None:
        self._tabs[ws] = Tab()

    def disconnect(self, ws: WebSocket) -> None:
        tab = self._tabs.pop(ws, None)
        if tab is not None and tab.sender is not None and tab.sender is not asyncio.current_task():
            tab.sender.cancel()

    def send(self, ws: WebSocket, *components) -> None:
        self._enqueue(ws, to_xml(components, indent=False))

    def send_html(self, ws: WebSocket, html: str) -> None:
        self._enqueue(ws, html)

    def broadcast(self, *components) -> None:
        # Rendered once for every tab, without the indentation that is only for people reading the source: on the
        # wire it was a tenth of every frame.
        self.broadcast_html(to_xml(components, indent=False))

    def broadcast_html(self, html: str) -> None:
        for ws in list(self._tabs):
            self._enqueue(ws, html)

    def _enqueue(self, ws: WebSocket, html: str) -> None:
        tab = self._tabs.get(ws)
        if tab is None:
            return
        if tab.sender is None:
            # Sent here and now rather than by a task woken in a later iteration of the loop: while ten tabs
            # connect at once, each such iteration holds ~10 ms of their handshakes, and a token waited for two.
            try:
                rest = start_now(ws.send_text(html))
            except Exception as error:  # the socket closed under us: forget it
                self._drop(ws, error)
                return
            if rest is not None:
                tab.sender = asyncio.create_task(self._send_backlog(ws, tab, rest))
                # Cancelled before it ran (the tab left in the same turn): the half-run send is closed, not left
                # waiting on the socket until the garbage collector finds it.
                tab.sender.add_done_callback(lambda task: rest.close() if task.cancelled() else None)
            return
        if tab.backlog_chars + len(html) > QUEUE_LIMIT_CHARS:
            log.warning("a tab fell %d characters behind; disconnecting it so it resyncs", QUEUE_LIMIT_CHARS)
            self.disconnect(ws)
            closing = asyncio.create_task(_close(ws))
            self._closing.add(closing)  # keep a reference until it is done, as asyncio requires
            closing.add_done_callback(self._closing.discard)
            return
        tab.backlog.append(html)
        tab.backlog_chars += len(html)

    async def _send_backlog(self, ws: WebSocket, tab: Tab, rest) -> None:
        try:
            await rest
            while tab.backlog:
                html = tab.backlog.popleft()
                tab.backlog_chars -= len(html)
                await ws.send_text(html)
            tab.sender = None  # nothing awaited since the backlog was seen empty: the next frame goes out at once
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._drop(ws, error)

    def _drop(self, ws: WebSocket, error: Exception) -> None:
        log.info("websocket send failed (%s); dropping the tab", error)
        self.disconnect(ws)


def start_now(coroutine: Coroutine) -> _Rest | None:
    """Runs `coroutine` here until it first has to wait: None if it finished without waiting (a send to a socket
    that takes it), else an awaitable of the rest. Python 3.12's eager tasks do this; the app supports 3.11."""
    try:
        waiting_for = coroutine.send(None)
    except StopIteration:
        return None
    return _Rest(coroutine, waiting_for)


class _Rest:
    """A coroutine that has yielded once, awaited from there on: `yield from` resumed after its first yield."""

    def __init__(self, coroutine: Coroutine, waiting_for: Any) -> None:
        self.coroutine, self.waiting_for = coroutine, waiting_for

    def close(self) -> None:
        self.coroutine.close()

    def __await__(self) -> Generator:
        waiting_for = self.waiting_for
        while True:
            try:
                sent = yield waiting_for
            except BaseException as error:  # the task was cancelled: into the coroutine, where it was waiting
                try:
                    waiting_for = self.coroutine.throw(error)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_for = self.coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _close(ws: WebSocket) -> None:
    try:
        await ws.close(TRY_AGAIN_LATER)
    except Exception as error:  # already closed from the other side, or the transport is gone
        log.info("closing a lagging tab failed (%s); it is dropped anyway", error)
