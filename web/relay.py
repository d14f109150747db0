"""Turns the workers' bus messages into page updates for every open tab: keeps the reply that is streaming (so a
reload mid-reply shows it), saves finished replies to the journal, and shows how many workers are alive and which
one answers. Only the holder of the current claim is heard (see web/claims.py); everything else is dropped."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from fasthtml.common import Div

from services import protocol
from services.busclient import DropLog, Subscriber
from services.protocol import Message
from services.text import MAX_REPLY_CHARS, MAX_THINKING_CHARS
from web.claims import Claim, Claims
from web.clients import Clients
from web.components import (
    AssistantReply, ErrorNote, Reply, StatusChange, WorkerStatus, oob, thinking_frame, token_frame,
)
from web.journal import Journal

REPLY_ID = protocol.WORD
MAX_ERROR_CHARS = 1_000
STATUS_HOLD_S = 0.3  # at most this long a started reply's status waits for its first token

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
        self.claims = Claims(journal, heartbeat_s, on_end=self._claim_ended)
        journal.on_action = self._offer
        self.status = WorkerStatus()
        self.workers: dict[str, WorkerStatus] = {}  # the last heartbeat of each worker, by worker_id
        self.streaming: dict[str, Reply] = {}
        self.last_answering = ""  # worker_id of the last holder to start a reply
        self.lost = ""  # why the last claim lapsed: the status says so even if it showed an Ollama problem
        self._held_since: float | None = None  # a reply started: its bubble and status wait for its first token
        self.unheard = DropLog("message from a worker without the claim")
        self._handlers = {
            protocol.LLM_START: self._start,
            protocol.LLM_TOKEN: self._token,
            protocol.LLM_DONE: self._done,
            protocol.LLM_ERROR: self._error,
            protocol.LLM_STATUS: self._heartbeat,
            protocol.LLM_THINKING: self._thinking,
        }

    async def run(self, subscriber: Subscriber) -> None:
        # Messages are handled as they arrive (a token's frame leaves in the same iteration of the loop); the
        # workers' heartbeats are checked on a timer, off the path of every token.
        async with asyncio.TaskGroup() as both:  # either failing ends the other, and the relay is restarted
            both.create_task(subscriber.dispatch(self.handle))
            both.create_task(self._check_workers_every(self.heartbeat_s / 4))

    async def _check_workers_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check_workers()

    def handle(self, message: Message) -> None:
        handler = self._handlers.get(message.type)
        if handler is None:
            return
        try:
            handler(message.data)
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            log.warning("dropped malformed %s message: %s", message.type, error)
        except sqlite3.Error as error:  # the database is busy or full: the worker sends its `done` again
            log.warning("could not save from %s (%s); it will be retried", message.type, error)

    def _heard(self, data: dict) -> bool:
        """Is this from the holder of the current claim, under its token? (The fencing check.)"""
        if self.claims.holds(data.get("worker_id"), data.get("token")):
            return True
        self.unheard.record(ValueError(f"{data.get('worker_id')!r} does not hold claim {data.get('token')!r}"))
        return False

    def _start(self, data: dict) -> None:
        if self._heard(data):
            reply_id = reply_id_of(data)
            # The holder started again under the same claim (it asked again after a failure): the earlier start
            # will never finish.
            self._interrupt(data["token"], keep=reply_id)
            self._streaming_reply(reply_id, data["token"])  # its bubble goes out with its first token
            self.last_answering = data["worker_id"]
            worker = self.workers.get(data["worker_id"])
            if worker is not None:  # what its own status will say next: then that one changes nothing to send
                worker.state, worker.reason = "thinking", ""
            # The bubble and the status are sent with the first token, not before it: each frame ahead of that
            # token is time the person waits for it (the tab handles frames one at a time). A model slow to start
            # still shows its bubble ("typing…") and "thinking" within STATUS_HOLD_S.
            self._held_since = time.monotonic()

    def _streaming_reply(self, reply_id: str, token: int) -> Reply:
        """The reply being streamed; created on its first token if its start was lost (the bus or this process
        restarted mid-reply). Only the holder of the current claim streams, and a new claim ends the last one's
        reply, so there is one at a time: token frames need not say which reply they belong to."""
        reply = self.streaming.get(reply_id)
        if reply is None:
            # A new claim ends the last one's reply (see _claim_ended); should one still stream, it ends here, or
            # its bubble would take this reply's tokens.
            for other in [r for r in self.streaming.values() if r.token != token]:
                self._interrupt(other.token)
            reply = self.streaming[reply_id] = Reply(reply_id=reply_id, text="", token=token)
        return reply

    def _show(self, reply: Reply) -> None:
        """Every tab gets the reply's bubble, with what it has said so far."""
        reply.shown = True
        self.clients.broadcast(oob(AssistantReply(reply), target="chat-log"))

    def _token(self, data: dict) -> None:
        self._stream(data, "token", lambda reply, text: reply.parts.append(text), lambda reply, text: token_frame(text))

    def _stream(self, data: dict, what: str, keep, frame) -> None:
        """A token or a thought from the holder: kept with its reply (`keep`) and sent to every tab (`frame`), or,
        if the reply's bubble is not out yet, in the bubble (one frame, not two); a held status goes out with it."""
        if not self._heard(data):
            return
        text = data["text"]
        if not isinstance(text, str):
            raise TypeError(f"{what} text is not a string")
        reply = self._streaming_reply(reply_id_of(data), data["token"])
        keep(reply, text)
        if reply.shown:
            self.clients.broadcast_html(frame(reply, text))
        else:
            self._show(reply)
        if self._held_since is not None:
            self._end_hold()

    def show_reply(self, reply_id: str, token: int) -> None:
        """Every tab shows this reply's bubble now (an assistant's change is shown above it)."""
        reply = self._streaming_reply(reply_id, token)
        if not reply.shown:
            self._show(reply)

    def _thinking(self, data: dict) -> None:
        """A thinking chunk: into the reply's collapsed disclosure, never into its text (nor a token frame)."""
        self._stream(data, "thinking", lambda reply, text: reply.thinking_parts.append(text), thinking_frame)

    def _done(self, data: dict) -> None:
        reply_id = reply_id_of(data)
        if self.journal.store.has_reply(reply_id):
            return  # a resent `done` whose entry is saved: the worker sees the entry and stops sending it
        if not self._heard(data):
            return
        claim = self.claims.current
        if data["covers_seq"] != claim.covers_seq:
            raise ValueError(f"done covers seq {data['covers_seq']!r}, its claim {claim.covers_seq}")
        text = data["text"]
        if not isinstance(text, str) or len(text) > MAX_REPLY_CHARS:
            raise ValueError("reply text is not a string within MAX_REPLY_CHARS")
        thinking, thinking_s = data.get("thinking", ""), data.get("thinking_s")
        if not isinstance(thinking, str) or len(thinking) > MAX_THINKING_CHARS:
            raise ValueError("thinking is not a string within MAX_THINKING_CHARS")
        if not isinstance(thinking_s, (int, float)) or isinstance(thinking_s, bool) or not 0 <= thinking_s < 1e6:
            thinking_s = None
        reply = Reply(reply_id, text, str(data.get("done_reason") or "stop"), thinking=thinking,
                      thinking_s=thinking_s, model=str(data.get("model", "")),
                      stats=protocol.reply_stats(data.get("stats")))
        with self.journal.entry(protocol.REPLY_SAVED) as saved:
            saved.update(reply_id=reply.reply_id, text=reply.text, done_reason=reply.done_reason,
                         covers_seq=claim.covers_seq, token=claim.token, worker_id=claim.worker_id,
                         model=reply.model, stats=reply.stats)
            if thinking:  # shown collapsed after a reload; never part of a prompt (llm_worker/persona.py)
                saved.update(thinking=thinking, thinking_s=thinking_s)
        self.claims.completed(claim.token, claim.covers_seq)
        self.lost = ""
        # Replace the streaming bubble in place; a reply no tab saw streaming is appended instead.
        streamed = self.streaming.pop(reply_id, None)
        self.clients.broadcast(oob(AssistantReply(reply)) if streamed is not None and streamed.shown
                               else oob(AssistantReply(reply), target="chat-log"))
        self._refresh_status()

    def _error(self, data: dict) -> None:
        if not self._heard(data):
            return
        self._interrupt(data["token"])
        if not data.get("repeated"):  # a retry failing the same way: the status already says so
            message = str(data["message"])[:MAX_ERROR_CHARS]  # Ollama's error text is relayed: bound it
            self.clients.broadcast(oob(ErrorNote(message), target="chat-log"))
            self._note(kind="error", text=message)
        # Last: this writes to the journal, which may be the very thing failing (a reply that cannot be saved).
        self.claims.release(data["worker_id"], data["token"], "failed")

    def _offer(self, action: Message) -> None:
        """Right after an action's entry: the claim on its batch to a ready worker, which then need not ask."""
        ready = [worker_id for worker_id, status in self.workers.items() if status.state == "ready"]
        try:
            self.claims.offer(action.seq, ready)
        except sqlite3.Error as error:  # the action is saved all the same; the workers ask for the claim
            log.warning("could not offer the claim on seq %d (%s)", action.seq, error)

    # workers and their heartbeats

    def _heartbeat(self, data: dict) -> None:
        worker_id = data["worker_id"]
        if not isinstance(worker_id, str) or not REPLY_ID.fullmatch(worker_id):
            raise ValueError(f"bad worker id {worker_id!r}")
        self.claims.heartbeat(worker_id)
        self.workers[worker_id] = WorkerStatus(
            state=str(data["state"]), reason=str(data.get("reason", "")), model=str(data.get("model", "")),
            ollama_url=str(data.get("ollama_url", "")), worker_id=worker_id)
        if self._held_since is None:  # (the answering worker's "thinking" waits for its first token)
            self._refresh_status()

    def check_workers(self) -> None:
        """Lapse the claim of a holder that stopped beating, and forget workers that did."""
        self.claims.check_lease()
        held = self._held_since
        if held is None:
            self._refresh_status()
        elif time.monotonic() - held > STATUS_HOLD_S:
            self._end_hold()

    def _end_hold(self) -> None:
        """A started reply's first token came, or STATUS_HOLD_S passed without it: out with its bubble and status."""
        for reply in self.streaming.values():
            if not reply.shown:
                self._show(reply)
        self._refresh_status()

    def _refresh_status(self) -> None:
        self._held_since = None
        live = self.claims.live_workers()
        for worker_id in [w for w in self.workers if w not in live]:
            del self.workers[worker_id]
        self._set_status(summarise(list(self.workers.values()), self.claims.current, self.lost, self.last_answering))

    def _set_status(self, status: WorkerStatus) -> None:
        if status != self.status:
            self.clients.broadcast(*StatusChange(self.status, status))
            self.status = status

    def _claim_ended(self, claim: Claim, reason: str) -> None:
        """A reply that will never finish is shown as interrupted, not left dangling; it is not saved, so another
        worker answers those actions again."""
        self._interrupt(claim.token)
        if reason in ("lapsed", "disconnected"):  # the real cause, shown until the next reply is saved
            self.lost = f"the answering worker {claim.worker_id} " + (
                "stopped sending heartbeats" if reason == "lapsed" else "stopped or died")
            log.warning("%s; another worker takes over", self.lost)
            self._refresh_status()

    def _interrupt(self, token: int, keep: str = "") -> None:
        for reply in [r for r in self.streaming.values() if r.token == token and r.reply_id != keep]:
            self.streaming.pop(reply.reply_id, None)
            reply.text, reply.done_reason = "".join(reply.parts), "interrupted"
            if reply.text:  # (then it was shown: its first token showed it)
                self.clients.broadcast(oob(AssistantReply(reply)))
                self._note(kind="interrupted", text=reply.text, reply_id=reply.reply_id)
            elif reply.shown:  # nothing was said: remove the empty bubble rather than keep a husk
                self.clients.broadcast(Div(id=f"reply-{reply.reply_id}", hx_swap_oob="delete"))


    def _note(self, **note) -> None:
        """What a tab just showed that is not a reply, kept in the journal so a reload shows it too."""
        try:
            with self.journal.entry(protocol.NOTE_SHOWN) as data:
                data.update(note)
        except sqlite3.Error as error:  # shown live all the same; only a reload will not show it
            log.warning("could not keep a %s note (%s)", note["kind"], error)


def summarise(workers: list[WorkerStatus], claim: Claim | None, lost: str, last_answering: str) -> WorkerStatus:
    """One status for the page: how many workers are alive and ready, and the one answering now, else the one that
    answered last (its Ollama trouble is the news: the others have not tried since), else the best one. When none
    is alive, that is the reason shown, whatever the last one said about Ollama."""
    if not workers:
        reason = ("the assistant is not running: " + (lost or "no worker sends heartbeats")
                  + " (`honcho start` runs one, and restarts it when it dies)")
        return WorkerStatus(state="offline", reason=reason)
    by_id = {w.worker_id: w for w in workers}
    answering = by_id.get(claim.worker_id) if claim is not None else None
    shown = answering or by_id.get(last_answering) or max(workers, key=lambda w: w.state in ("ready", "thinking"))
    return WorkerStatus(state=shown.state, reason=shown.reason, model=shown.model, ollama_url=shown.ollama_url,
                        worker_id=shown.worker_id if answering else "", workers=len(workers),
                        ready=sum(w.state in ("ready", "thinking") for w in workers), notice=lost)
