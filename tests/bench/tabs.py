"""Browser tabs for the benchmark: WebSocket clients that time and count every frame, and what a frame carries
(token spans, the finished reply), matched against what the fake Ollama wrote."""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from tests.system import TokenReader

WAIT_S = 15  # for anything that is not a stream of known length



class CountingConnection(ClientConnection):
    """A WebSocket client connection that counts the bytes read off the TCP socket (compressed, if negotiated)."""

    wire_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.wire_bytes += len(data)
        super().data_received(data)


@dataclass
class Frame:
    at: float  # time.time() when the client received it
    text: str
    wire_bytes: int  # bytes read off the socket so far
    tokens: list[tuple[str, str]]  # (reply_id, numbered token) for every token it adds to a reply


class Listener:
    """A browser tab's WebSocket (asyncio) that stamps every frame with time.time() as it arrives."""

    def __init__(self, ws: CountingConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.closed = False
        self._arrived = asyncio.Event()
        self._replies = TokenReader()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, compression: str | None) -> Listener:
        ws = await connect(url, proxy=None, open_timeout=WAIT_S, compression=compression,
                           create_connection=CountingConnection)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                at = time.time()
                self.frames.append(Frame(at, text, self.ws.wire_bytes, numbered_tokens(self._replies.read(text))))
                self._arrived.set()
        except WebSocketException:
            pass
        finally:
            self.closed = True
            self._arrived.set()

    async def wait_for(self, predicate: Callable[[Frame], object], timeout_s: float, start: int = 0) -> Frame | None:
        """The first frame from index `start` on matching `predicate`; None if the socket closes or `timeout_s`
        passes without one."""
        seen = start
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    found = next((frame for frame in self.frames[seen:] if predicate(frame)), None)
                    if found is not None:
                        return found
                    seen = len(self.frames)
                    if self.closed:
                        return None
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return None

    def compression(self) -> str:
        return ",".join(extension.name for extension in self.ws.protocol.extensions) or "none"

    async def close(self) -> None:
        await self.ws.close()
        async with asyncio.timeout(WAIT_S):
            await self._reader


async def close_listeners(listeners: list[Listener]) -> None:
    await asyncio.gather(*(listener.close() for listener in listeners), return_exceptions=True)


# what a frame carries

NUMBERED_TOKEN = re.compile(r"r(\d+)t\d+ ")


def reply_number(token: str) -> int:
    return int(NUMBERED_TOKEN.match(token).group(1))


def numbered_tokens(texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(reply_id, token) for every numbered token in what a frame added to replies."""
    return [(reply_id, match.group(0)) for reply_id, text in texts for match in NUMBERED_TOKEN.finditer(text)]


def is_final(reply_id: str) -> Callable[[Frame], bool]:
    """The finished reply: an element with id reply-<id> swapped in place (hx-swap-oob="true")."""
    opening = re.compile(rf'\s*<div\b[^>]*\bid="reply-{re.escape(reply_id)}"[^>]*>')

    def match(frame: Frame) -> bool:
        found = opening.match(frame.text)
        return bool(found) and 'hx-swap-oob="true"' in found.group(0)

    return match


def is_bubble(reply_id: str) -> Callable[[Frame], bool]:
    return lambda frame: "beforeend:#chat-log" in frame.text and f'id="reply-{reply_id}"' in frame.text


def index_of(frames: list[Frame], predicate: Callable[[Frame], bool], what: str) -> int:
    for index, frame in enumerate(frames):
        if predicate(frame):
            return index
    raise RuntimeError(f"the tab never received {what}")


def websocket_header_bytes(payload_bytes: int) -> int:
    """RFC 6455 header of an unmasked (server to client) frame."""
    return 2 if payload_bytes < 126 else 4 if payload_bytes < 65_536 else 10


def frame_bytes(text: str) -> int:
    payload = len(text.encode())
    return payload + websocket_header_bytes(payload)


def by_reply(sent: dict[str, float]) -> list[dict[str, float]]:
    """The fake's tokens split into replies, oldest first."""
    replies: dict[int, dict[str, float]] = {}
    for token, written_at in sent.items():
        replies.setdefault(reply_number(token), {})[token] = written_at
    return [replies[number] for number in sorted(replies)]


@dataclass
class Delivery:
    """One reply as one client received it, against what the fake wrote."""
    expected: int
    received: int
    lost: int
    reordered: int
    duplicated: int
    overheads_s: list[float]
    times: list[float]
    finished: bool


def delivery(listener: Listener, reply_id: str, sent: dict[str, float]) -> Delivery:
    got = [(frame.at, token) for frame in listener.frames for rid, token in frame.tokens if rid == reply_id]
    position = {token: index for index, token in enumerate(sent)}
    positions = [position[token] for _, token in got if token in position]
    unique = {token for _, token in got}
    return Delivery(
        expected=len(sent), received=len(got), lost=len(set(sent) - unique),
        reordered=sum(1 for before, after in pairwise(positions) if after < before),
        duplicated=len(got) - len(unique), overheads_s=[at - sent[token] for at, token in got if token in sent],
        times=[at for at, _ in got], finished=any(is_final(reply_id)(frame) for frame in listener.frames),
    )


def counts(deliveries: list[Delivery]) -> dict:
    return {"tokens_expected": sum(d.expected for d in deliveries),
            "tokens_received": sum(d.received for d in deliveries),
            "lost": sum(d.lost for d in deliveries), "reordered": sum(d.reordered for d in deliveries),
            "duplicated": sum(d.duplicated for d in deliveries), "unfinished": sum(not d.finished for d in deliveries)}
