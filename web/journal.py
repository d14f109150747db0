"""The web's journal: each entry is written to SQLite (getting its seq) and only then published, and a ROUTER socket
answers catch-up requests from the worker (the snapshot half of the zguide Clone pattern)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import zmq
import zmq.asyncio

from services import curve, protocol
from services.busclient import LINGER_MS, DropLog, Publisher
from services.config import StartupError
from services.protocol import Message, ProtocolError
from store import Store

CATCHUP_PAGE = 5_000  # entries per catch-up reply; the worker asks again until it reaches last_seq

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, store: Store, publisher: Publisher, history_window: int) -> None:
        self.store = store
        self.publisher = publisher
        self.history_window = history_window
        self.last_published: Message | None = None

    @contextmanager
    def entry(self, kind: str) -> Iterator[dict]:
        """`with journal.entry(TODO_ADDED) as data:` — change the store and fill `data` inside the block; the change
        and its journal entry commit together, and the entry is published after the commit."""
        data: dict = {}
        with self.store.transaction():
            yield data
            message = self.store.append(kind, data, self.publisher.src)
        self.publisher.send(message)
        self.last_published = message

    def catchup_reply(self, after: int | None) -> bytes:
        if after is None:
            entries = self.store.recent_entries(self.history_window)
        else:
            entries = self.store.entries_after(after, CATCHUP_PAGE)
        return protocol.encode_catchup_reply(entries, self.store.last_seq())

    @staticmethod
    def bind(address: str, context: zmq.asyncio.Context, keys_dir: Path | None) -> zmq.asyncio.Socket:
        """The ROUTER that workers ask; bound before the app starts serving, so a failure stops the start."""
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, LINGER_MS)
        curve.make_server(router, keys_dir)
        try:
            router.bind(address)
        except zmq.ZMQError as error:
            router.close(linger=0)
            raise StartupError(f"cannot bind the journal socket {address}: {error} (set JOURNAL_ADDR)") from None
        return router

    async def serve_catchup(self, router: zmq.asyncio.Socket) -> None:
        drops = DropLog()
        try:
            while True:
                frames = await router.recv_multipart()
                if len(frames) != 2:
                    drops.record(ProtocolError(f"catch-up request with {len(frames)} frames"))
                    continue
                identity, request = frames
                try:
                    after = protocol.decode_catchup_request(request)
                except ProtocolError as error:
                    drops.record(error)
                    continue
                await router.send_multipart([identity, self.catchup_reply(after)])
        finally:
            router.close(linger=LINGER_MS)
