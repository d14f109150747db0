"""Every process's connections to the bus: a publisher, a subscriber that drops malformed frames, and the
high-water marks they use. Both only ever *connect*; the bus process is the one place that binds."""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from services import curve, protocol
from services.protocol import Message, ProtocolError

# PUB drops messages past its high-water mark instead of blocking. 100,000 messages is about ten seconds of tokens at
# 10,000 tokens/s; anything that must not be lost (the journal) is recovered through catch-up, never PUB/SUB alone.
HWM_MESSAGES = 100_000
# No bus message comes near this (a finished reply is a few KB); a peer sending a bigger frame is disconnected by
# ZeroMQ instead of making every subscriber buffer it.
MAX_MESSAGE_BYTES = 1024 * 1024
LINGER_MS = 200  # on close, give queued frames this long to leave, then drop them: shutdown must not hang
DROP_LOG_EVERY = 100
YIELD_EVERY = 50  # messages read back to back before letting the event loop run other tasks

log = logging.getLogger(__name__)


class DropLog:
    """Logs the first dropped message and then every hundredth, so a flood of garbage cannot flood the log."""

    def __init__(self, what: str = "malformed bus message") -> None:
        self.what = what
        self.count = 0

    def record(self, error: Exception) -> None:
        self.count += 1
        if self.count == 1 or self.count % DROP_LOG_EVERY == 0:
            log.warning("dropped %s (%d so far): %s", self.what, self.count, error)


class Publisher:
    """A PUB socket connected to the bus. `send` never blocks and never yields to the event loop (PUB drops at the
    high-water mark rather than wait), so appending to the journal and publishing stays one atomic step."""

    def __init__(self, address: str, src: str, keys_dir: Path | None = None) -> None:
        self.src = src
        self.socket = zmq.Context.instance().socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        curve.make_client(self.socket, keys_dir)
        self.socket.connect(address)

    def send(self, message: Message) -> None:
        self.socket.send_multipart(protocol.encode(message))

    def publish(self, kind: str, data: dict) -> Message:
        message = Message(type=kind, data=data, src=self.src)
        self.send(message)
        return message

    def close(self) -> None:
        self.socket.close(linger=LINGER_MS)


class Subscriber:
    """A SUB socket connected to the bus, filtered by topic prefixes; yields only messages that decode."""

    def __init__(self, address: str, topics: list[str], context: zmq.asyncio.Context,
                 keys_dir: Path | None = None) -> None:
        self.socket = context.socket(zmq.SUB)
        curve.make_client(self.socket, keys_dir)
        self.socket.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
        self.socket.connect(address)
        self.drops = DropLog()
        self._unyielded = 0

    async def receive(self, timeout_s: float | None = None) -> Message | None:
        """The next valid message, or None when `timeout_s` passes without one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                # Queued messages are read without awaiting: poll-then-receive cost ~135 µs of CPU per message
                # against ~20 µs, which capped how many tokens per second the web could relay.
                frames = self.socket.recv_multipart(zmq.NOBLOCK).result()
                self._unyielded += 1
                if self._unyielded >= YIELD_EVERY:  # a backlog must not starve the loop's other tasks (tab writers)
                    self._unyielded = 0
                    await asyncio.sleep(0)
            except zmq.Again:
                self._unyielded = 0
                remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
                if not await self.socket.poll(remaining_ms):
                    return None
                continue
            message = self._decoded(frames)
            if message is not None:
                return message

    async def dispatch(self, handle: Callable[[Message], None]) -> None:
        """Calls `handle` with every valid message, from the event loop's reader callback, until cancelled or until
        `handle` raises (which this then raises). A message is handled in the loop iteration its socket became
        readable: awaiting `receive` took two or three more, each behind whatever else was ready (ten tabs
        connecting at once made a token wait 20-30 ms). `handle` must be quick and must not block."""
        loop = asyncio.get_running_loop()
        failed = loop.create_future()
        socket = zmq.Socket.shadow(self.socket.underlying)  # plain calls: none of zmq.asyncio's own bookkeeping
        stopped = False  # a drain already scheduled must not run once this has ended

        def drain() -> None:
            if stopped:
                return
            try:
                for _ in range(YIELD_EVERY):
                    # Reading EVENTS also re-arms the socket's file descriptor, which signals changes, not messages.
                    if not socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        return
                    message = self._decoded(socket.recv_multipart(zmq.NOBLOCK))
                    if message is not None:
                        handle(message)
                loop.call_soon(drain)  # more are queued: after the loop's other callbacks, not starving them
            except Exception as error:
                if failed.done():  # (raised again before the first was seen: it must not vanish)
                    log.exception("bus message handler failed again")
                else:
                    failed.set_exception(error)

        fd = socket.getsockopt(zmq.FD)
        loop.add_reader(fd, drain)
        loop.call_soon(drain)  # what arrived before the reader was added has already been signalled
        try:
            await failed
        finally:
            stopped = True
            loop.remove_reader(fd)

    def _decoded(self, frames: list[bytes]) -> Message | None:
        """The message in these frames, or None (counted and logged now and then) if they are not one."""
        try:
            return protocol.decode(frames)
        except ProtocolError as error:
            self.drops.record(error)
            return None

    def close(self) -> None:
        self.socket.close(linger=0)
