"""Turns the worker's bus messages into page updates for every open tab, keeps replies that are still streaming
(so a reload mid-reply shows them), saves finished replies to the journal, and tracks the worker's heartbeat."""
from __future__ import annotations

import logging
import re
import time

from fasthtml.common import Div

from services import protocol
from services.busclient import Subscriber
from services.protocol import Message
from web.clients import Clients
from web.components import AssistantReply, ErrorNote, Reply, Status, WorkerStatus, oob, token_frame
from web.journal import Journal

MISSED_HEARTBEATS = 3.5  # heartbeats missed before the worker is shown offline
REPLY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


log = logging.getLogger(__name__)


def reply_id_of(data: dict) -> str:
    """The reply id, which goes into element ids and selectors in every tab: anything but a plain word is dropped."""
    reply_id = data["reply_id"]
    if not isinstance(reply_id, str) or not REPLY_ID.fullmatch(reply_id):
        raise ValueError(f"bad reply id {reply_id!r}")
    return reply_id


class Relay:
    def __init__(self, journal: Journal, clients: Clients, heartbeat_s: float) -> None:
        self.journal = journal
        self.clients = clients
        self.heartbeat_s = heartbeat_s
        self.status = WorkerStatus()
        self.streaming: dict[str, Reply] = {}
        self._worker_id: str | None = None
        self._last_heartbeat = 0.0
        self._handlers = {
            protocol.LLM_START: self._start,
            protocol.LLM_TOKEN: self._token,
            protocol.LLM_DONE: self._done,
            protocol.LLM_ERROR: self._error,
            protocol.LLM_STATUS: self._heartbeat,
        }

    async def run(self, subscriber: Subscriber) -> None:
        while True:
            message = await subscriber.receive(timeout_s=self.heartbeat_s)
            if message is not None:
                self.handle(message)
            self._check_heartbeat()

    def handle(self, message: Message) -> None:
        handler = self._handlers.get(message.type)
        if handler is None:
            return
        try:
            handler(message.data)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("dropped malformed %s message: %s", message.type, error)

    def _start(self, data: dict) -> None:
        self._streaming_reply(reply_id_of(data))

    def _streaming_reply(self, reply_id: str) -> Reply:
        """The reply being streamed, shown in every tab; created on its first token if its start was lost (the bus
        or this process restarted mid-reply)."""
        reply = self.streaming.get(reply_id)
        if reply is None:
            reply = self.streaming[reply_id] = Reply(reply_id=reply_id, text="")
            self.clients.broadcast(oob(AssistantReply(reply), target="chat-log"))
        return reply

    def _token(self, data: dict) -> None:
        reply = self._streaming_reply(reply_id_of(data))
        text = str(data["text"])
        reply.parts.append(text)
        self.clients.broadcast_html(token_frame(reply.reply_id, text))

    def _done(self, data: dict) -> None:
        reply_id = reply_id_of(data)
        if self.journal.store.has_reply(reply_id):
            return  # the worker re-sends `done` until it sees the saved entry: saving it again would duplicate it
        was_streaming = self.streaming.pop(reply_id, None) is not None
        reply = Reply(reply_id, str(data["text"]), str(data.get("done_reason") or "stop"))
        with self.journal.entry(protocol.REPLY_SAVED) as saved:
            saved.update(reply_id=reply.reply_id, text=reply.text, done_reason=reply.done_reason,
                         covers_seq=int(data["covers_seq"]), model=str(data.get("model", "")))
        # Replace the streaming bubble in place; a reply no tab saw streaming is appended instead.
        self.clients.broadcast(oob(AssistantReply(reply)) if was_streaming
                               else oob(AssistantReply(reply), target="chat-log"))

    def _error(self, data: dict) -> None:
        reply = self.streaming.pop(str(data.get("reply_id")), None)
        if reply is not None:
            self._interrupt(reply)
        if not data.get("repeated"):  # a retry failing the same way: the status already says so
            self.clients.broadcast(oob(ErrorNote(str(data["message"])), target="chat-log"))

    def _heartbeat(self, data: dict) -> None:
        self._last_heartbeat = time.monotonic()
        worker_id = str(data["worker_id"])
        if worker_id != self._worker_id:
            self._worker_id = worker_id
            self._interrupt_all()  # a new worker process: whatever the old one was streaming will never finish
        self._set_status(WorkerStatus(state=str(data["state"]), reason=str(data.get("reason", "")),
                                      model=str(data.get("model", "")), ollama_url=str(data.get("ollama_url", ""))))

    def _check_heartbeat(self) -> None:
        silent_s = time.monotonic() - self._last_heartbeat
        if self.status.state != "offline" and silent_s > MISSED_HEARTBEATS * self.heartbeat_s:
            self._interrupt_all()
            self._set_status(WorkerStatus(state="offline", reason="the assistant process is not running",
                                          model=self.status.model))

    def _set_status(self, status: WorkerStatus) -> None:
        if status != self.status:
            self.status = status
            self.clients.broadcast(oob(Status(status)))

    def _interrupt_all(self) -> None:
        for reply in list(self.streaming.values()):
            self._interrupt(reply)
        self.streaming.clear()

    def _interrupt(self, reply: Reply) -> None:
        """A reply that will never finish is shown as interrupted, not left dangling; it is not saved, so the worker
        answers those actions again when it comes back."""
        self.streaming.pop(reply.reply_id, None)
        reply.text, reply.done_reason = "".join(reply.parts), "interrupted"
        if reply.text:
            self.clients.broadcast(oob(AssistantReply(reply)))
        else:  # nothing was said: remove the empty bubble rather than keep a husk
            self.clients.broadcast(Div(id=f"reply-{reply.reply_id}", hx_swap_oob="delete"))
