"""The web's end of the workers' requests: one ROUTER socket answering catch-up and claim requests and taking
heartbeats (see the bus protocol), and watching its connections so a killed holder loses its claim at once."""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from services import curve, protocol
from services.busclient import LINGER_MS, MAX_MESSAGE_BYTES, DropLog
from services.config import StartupError
from services.protocol import ProtocolError
from web.assistant_actions import AssistantActions
from web.claims import Claims
from web.journal import Journal

log = logging.getLogger(__name__)


def bind(address: str, context: zmq.asyncio.Context, keys_dir: Path | None) -> zmq.asyncio.Socket:
    """The ROUTER workers talk to; bound before the app starts serving, so a failure stops the start."""
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, LINGER_MS)
    router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    curve.make_server(router, keys_dir)
    try:
        router.bind(address)
    except zmq.ZMQError as error:
        router.close(linger=0)
        raise StartupError(f"cannot bind the journal socket {address}: {error} (set JOURNAL_ADDR)") from None
    return router


class WorkerRequests:
    def __init__(self, router: zmq.asyncio.Socket, journal: Journal, claims: Claims, tools: AssistantActions) -> None:
        self.router = router
        self.journal = journal
        self.claims = claims
        self.tools = tools
        self.drops = DropLog()

    async def serve(self) -> None:
        while True:
            frames = await self.router.recv_multipart(copy=False)
            if len(frames) != 2:
                self.drops.record(ProtocolError(f"journal request with {len(frames)} frames"))
                continue
            identity, frame = frames
            try:
                request = protocol.decode_request(frame.bytes)
            except ProtocolError as error:
                self.drops.record(error)
                continue
            # The connection a request came on (its file descriptor): when it closes, its sender is gone.
            reply = self.answer(request, connection=frame.get(zmq.SRCFD))
            if reply is not None:
                await self.router.send_multipart([identity.bytes, reply])

    def answer(self, request: dict, connection: int) -> bytes | None:
        op, request_id = request["op"], request["request_id"]
        if op == protocol.OP_CATCHUP:
            return protocol.encode_reply(op, request_id, **self.journal.catchup(request["after"]))
        if op == protocol.OP_CLAIM:
            try:
                token, reason = self.claims.request(request["worker_id"], request["covers_seq"],
                                                    request["answered_through"], connection)
            except sqlite3.Error as error:  # busy or full: no claim now; the worker asks again on the next entry
                token, reason = None, f"the journal cannot record a claim now ({error})"
            return protocol.encode_reply(op, request_id, token=token, reason=reason)
        if op == protocol.OP_TOOL:  # validated and applied like a person's input (web/assistant_actions.py)
            try:
                ok, result = self.tools.request(request)
            except sqlite3.Error as error:  # busy or full: nothing was stored; the model is told so
                ok, result = False, f"The list could not be changed now ({error}); nothing was stored."
            return protocol.encode_reply(op, request_id, ok=ok, result=result)
        if op == protocol.OP_RELEASE:  # an offered claim it will not use now: no reply
            try:
                self.claims.release(request["worker_id"], request["token"], "declined")
            except sqlite3.Error as error:  # the claim stays; its holder's next request for another batch ends it
                log.warning("could not end a declined claim (%s)", error)
            return None
        self.claims.heartbeat(request["worker_id"], connection)  # OP_HEARTBEAT: no reply
        return None

    async def watch_connections(self) -> None:
        """Socket-monitor events of the ROUTER: a DISCONNECTED event names the closed connection's descriptor."""
        monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                self.claims.disconnected(event["value"])
        finally:
            self.router.disable_monitor()
            monitor.close(linger=0)
