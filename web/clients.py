"""Every open browser tab's WebSocket. Each has a bounded outgoing queue drained by its own task, so one slow tab
delays only itself; a tab that falls too far behind is disconnected and resyncs when htmx reconnects."""
from __future__ import annotations

import asyncio
import logging

from fasthtml.common import to_xml
from starlette.websockets import WebSocket

# A tab this far behind is closed rather than buffered without bound: in characters, not frames, because a frame
# may carry many tokens (the worker sends tokens it read together as one). About ten of the longest replies.
QUEUE_LIMIT_CHARS = 1_000_000
TRY_AGAIN_LATER = 1013  # WebSocket close code on which htmx's ws extension reconnects

log = logging.getLogger(__name__)


class Clients:
    def __init__(self) -> None:
        self._queues: dict[WebSocket, asyncio.Queue[str]] = {}
        self._queued_chars: dict[WebSocket, int] = {}
        self._writers: dict[WebSocket, asyncio.Task] = {}
        self._closing: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._queues)

    def connect(self, ws: WebSocket) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues[ws] = queue
        self._queued_chars[ws] = 0
        self._writers[ws] = asyncio.create_task(self._write(ws, queue))

    def disconnect(self, ws: WebSocket) -> None:
        self._queues.pop(ws, None)
        self._queued_chars.pop(ws, None)
        writer = self._writers.pop(ws, None)
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()

    def send(self, ws: WebSocket, *components) -> None:
        self._enqueue(ws, to_xml(components, indent=False))

    def send_html(self, ws: WebSocket, html: str) -> None:
        self._enqueue(ws, html)

    def broadcast(self, *components) -> None:
        # Rendered once for every tab, without the indentation that is only for people reading the source: on the
        # wire it was a tenth of every frame.
        self.broadcast_html(to_xml(components, indent=False))

    def broadcast_html(self, html: str) -> None:
        for ws in list(self._queues):
            self._enqueue(ws, html)

    def _enqueue(self, ws: WebSocket, html: str) -> None:
        queue = self._queues.get(ws)
        if queue is None:
            return
        queued = self._queued_chars[ws] + len(html)
        if queued <= QUEUE_LIMIT_CHARS:
            self._queued_chars[ws] = queued
            queue.put_nowait(html)
        else:
            log.warning("a tab fell %d characters behind; disconnecting it so it resyncs", QUEUE_LIMIT_CHARS)
            self.disconnect(ws)
            closing = asyncio.create_task(_close(ws))
            self._closing.add(closing)  # keep a reference until it is done, as asyncio requires
            closing.add_done_callback(self._closing.discard)

    async def _write(self, ws: WebSocket, queue: asyncio.Queue[str]) -> None:
        try:
            while True:
                html = await queue.get()
                self._queued_chars[ws] -= len(html)
                await ws.send_text(html)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the socket closed under us: forget it
            log.info("websocket send failed (%s); dropping the tab", error)
            self.disconnect(ws)


async def _close(ws: WebSocket) -> None:
    try:
        await ws.close(TRY_AGAIN_LATER)
    except Exception as error:  # already closed from the other side, or the transport is gone
        log.info("closing a lagging tab failed (%s); it is dropped anyway", error)
