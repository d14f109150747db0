"""The worker's one persistent connection to the web's journal socket (DEALER → ROUTER): catch-up pages, claims
and heartbeats, each request matched to its reply by request_id (see the bus protocol). It stays open for the life
of the process on purpose: when the process dies the web sees the connection close and frees its claim at once."""
from __future__ import annotations

import asyncio
import itertools
import logging

import zmq
import zmq.asyncio

from services import curve, protocol
from services.busclient import LINGER_MS
from services.config import Settings
from services.protocol import Catchup, ProtocolError
from services.text import valid_unicode

REQUEST_TIMEOUT_S = 2.0  # a request not answered by then is sent again (the web may be restarting)

log = logging.getLogger(__name__)


class JournalLink:
    def __init__(self, settings: Settings, context: zmq.asyncio.Context, worker_id: str) -> None:
        self.worker_id = worker_id
        self.dealer = context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, LINGER_MS)
        curve.make_client(self.dealer, settings.bus_keys_dir)
        self.dealer.connect(settings.journal_addr)
        self._request_ids = itertools.count(1)
        self._one_at_a_time = asyncio.Lock()  # the follower and the answerer share the socket

    def close(self) -> None:
        self.dealer.close(linger=0)

    async def catchup(self, after: int | None) -> Catchup:
        """Journal entries after `after` (None: the recent window, with the todo list), its head seq and its id."""
        while True:
            try:
                return protocol.catchup_page(await self._ask(protocol.OP_CATCHUP, after=after))
            except ProtocolError as error:
                log.warning("bad catch-up reply dropped: %s", error)
                await asyncio.sleep(REQUEST_TIMEOUT_S)  # a misbehaving peer: do not spin

    async def claim(self, covers_seq: int, answered_through: int) -> tuple[int | None, str]:
        """The fencing token of a claim on the batch through `covers_seq`, or None and the reason."""
        reply = await self._ask(protocol.OP_CLAIM, worker_id=self.worker_id, covers_seq=covers_seq,
                                answered_through=answered_through)
        token = reply.get("token")
        return (token, "") if type(token) is int else (None, str(reply.get("reason", "")))

    async def tool(self, token: int, reply_id: str, call_id: str, name: str, arguments: dict) -> tuple[bool, str]:
        """Ask the web to make a tool call's change (it validates it like a person's input): (ok, its result)."""
        reply = await self._ask(protocol.OP_TOOL, worker_id=self.worker_id, token=token, reply_id=reply_id,
                                call_id=call_id, name=name, arguments=arguments)
        result = reply.get("result")
        return reply.get("ok") is True, valid_unicode(result) if isinstance(result, str) else "No result."

    def heartbeat(self) -> None:
        """The lease on our claim: sent straight to the web, so it holds while the bus restarts. Never waits: with
        the web away long enough to fill the queue, a heartbeat is worth nothing anyway."""
        self._tell(protocol.OP_HEARTBEAT)

    def release(self, token: int) -> None:
        """Give back a claim the web offered that we will not use now (see the protocol's "Offers")."""
        self._tell(protocol.OP_RELEASE, token=token)

    def _tell(self, op: str, **fields) -> None:
        """A request with no reply, sent without waiting."""
        sent = self.dealer.send(protocol.encode_request(op, next(self._request_ids), worker_id=self.worker_id,
                                                        **fields), zmq.NOBLOCK)
        # zmq.asyncio returns a future: done at once (Again when the queue is full), or queued behind a pending send.
        if sent.done() and sent.exception() is not None and not isinstance(sent.exception(), zmq.Again):
            raise sent.exception()

    async def _ask(self, op: str, **fields) -> dict:
        async with self._one_at_a_time:
            while True:
                request_id = next(self._request_ids)
                await self.dealer.send(protocol.encode_request(op, request_id, **fields))
                reply = await self._reply_to(request_id)
                if reply is not None:
                    return reply
                log.warning("the web's journal did not answer within %g s; asking again", REQUEST_TIMEOUT_S)

    async def _reply_to(self, request_id: int) -> dict | None:
        """The reply with this id, skipping late replies to requests that already timed out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        while await self.dealer.poll(max(0, int((deadline - loop.time()) * 1000))):
            try:
                reply = protocol.decode_reply(await self.dealer.recv())
            except ProtocolError as error:
                log.warning("bad reply from the journal dropped: %s", error)
                continue
            if reply["request_id"] == request_id:
                return reply
        return None
