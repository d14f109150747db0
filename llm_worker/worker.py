"""The LLM worker: follows the journal over the bus (catching up from the web after a start or a gap), folds
unanswered actions into one comment, answers each chat message, streams Ollama's tokens onto the bus, and sends a
heartbeat. It keeps no durable state: everything it knows is rebuilt from the web's journal."""
from __future__ import annotations

import asyncio
import logging
import os
import uuid

import zmq
import zmq.asyncio

from services import curve, protocol
from services.busclient import Publisher, Subscriber
from services.config import Settings
from services.protocol import Message, ProtocolError
from llm_worker.conversation import Applied, Conversation
from llm_worker.ollama import OllamaClient, OllamaError

CATCHUP_TIMEOUT_S = 2.0
IDLE_RESYNC_S = 5.0  # with no journal traffic for this long, ask the web anyway: recovers anything PUB dropped
RETRY_MIN_S, RETRY_MAX_S = 1.0, 10.0  # backoff while Ollama is failing; a new action retries at once
RESEND_AFTER_S = 3.0  # a finished reply whose journal entry has not come back by then is sent again

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker_id = uuid.uuid4().hex[:8]
        self.conversation = Conversation()
        self.state, self.reason, self.model = "starting", "catching up with the journal", settings.ollama_model
        self.synced = asyncio.Event()  # set once the journal snapshot has been applied
        self._wake = asyncio.Event()
        self._generation: asyncio.Task | None = None
        self._stop_requested = False
        self._last_error = ""
        self._model_checked = False  # chosen (or found installed) since the last failure
        self._retry_s = RETRY_MIN_S

    async def run(self) -> None:
        context = zmq.asyncio.Context()
        keys = self.settings.bus_keys_dir
        self.publisher = Publisher(self.settings.bus_pub_addr, src=f"llm_worker/{self.worker_id}", keys_dir=keys)
        subscriber = Subscriber(self.settings.bus_sub_addr, [protocol.JOURNAL, protocol.CONTROL], context, keys)
        self.ollama = OllamaClient(self.settings)
        tasks = [asyncio.create_task(coroutine) for coroutine in
                 (self._heartbeat(), self._follow_journal(subscriber, context), self._answer())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Stopped on purpose (SIGTERM): under the Procfile's restart loop it will be back in a moment.
            self._set_state("restarting", "the assistant process is restarting")
            await self.ollama.close()  # closes any open stream, so Ollama stops generating
            subscriber.close()
            self.publisher.close()
            context.term()

    # following the journal

    async def _follow_journal(self, subscriber: Subscriber, context: zmq.asyncio.Context) -> None:
        # Subscribed first, then the snapshot: live entries at or below its seq are dropped by Conversation.apply.
        await self._catch_up(context, after=None)
        while True:
            message = await subscriber.receive(timeout_s=IDLE_RESYNC_S)
            if message is None:
                await self._catch_up(context, after=self.conversation.last_seq)
            elif message.type == protocol.STOP:
                self._stop()
            elif self.conversation.apply(message) is Applied.GAP:
                log.info("gap after seq %d (got %d): catching up", self.conversation.last_seq, message.seq)
                await self._catch_up(context, after=self.conversation.last_seq)
            self._wake.set()

    async def _catch_up(self, context: zmq.asyncio.Context, after: int | None) -> None:
        """Ask the web's journal for entries after `after` (None: the recent window) until we reach its head."""
        while True:
            entries, head = await self._request_journal(context, after)
            if after is None:
                self.conversation.load_window(entries, head)
            else:
                for entry in entries:
                    self.conversation.apply(entry)
            after = self.conversation.last_seq
            if not entries or after >= head:
                break
        if not self.synced.is_set():
            log.info("caught up at seq %d; answered through %d", after, self.conversation.answered_through)
            self.synced.set()

    async def _request_journal(self, context: zmq.asyncio.Context, after: int | None) -> tuple[list[Message], int]:
        # A fresh DEALER per attempt (the zguide's Lazy Pirate): a request stuck in a dead connection is dropped.
        while True:
            dealer = context.socket(zmq.DEALER)
            curve.make_client(dealer, self.settings.bus_keys_dir)
            dealer.connect(self.settings.journal_addr)
            try:
                await dealer.send(protocol.encode_catchup_request(after))
                if await dealer.poll(int(CATCHUP_TIMEOUT_S * 1000)):
                    return protocol.decode_catchup_reply(await dealer.recv())
                log.warning("the web's journal did not answer within %g s; retrying", CATCHUP_TIMEOUT_S)
            except ProtocolError as error:
                log.warning("bad catch-up reply dropped: %s", error)
                await asyncio.sleep(CATCHUP_TIMEOUT_S)  # a misbehaving peer: do not spin
            finally:
                dealer.close(linger=0)

    # answering

    async def _answer(self) -> None:
        await self.synced.wait()
        await self._probe()  # shows the model (or what is wrong) in the page before anyone asks anything
        while True:
            batch = self.conversation.next_batch()
            # While offline, try once anyway if the person has not been told why in the chat yet.
            if batch and (self.state != "offline" or self.reason != self._last_error):
                self._generation = asyncio.create_task(self._generate(batch))
                try:
                    await self._generation
                finally:
                    self._generation = None
                continue
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancel (shutdown would hang).
                async with asyncio.timeout(self._retry_s if self.state == "offline" else None):
                    await self._wake.wait()
                self._wake.clear()
            except asyncio.TimeoutError:
                pass
            if self.state == "offline":
                await self._probe()
                self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)  # reset only by a reply that succeeds

    async def _probe(self) -> None:
        """Is Ollama up (and the model known)? Updates the status; a failed reply is then retried by the caller."""
        try:
            self.model = await self.ollama.choose_model()
        except OllamaError as error:
            self._set_state("offline", str(error))
            return
        self._model_checked = True
        self._set_state("ready")

    async def _generate(self, batch: list[Message]) -> None:
        reply_id = "r" + uuid.uuid4().hex[:12]
        covers_seq = batch[-1].seq
        parts: list[str] = []
        done_reason = "stop"
        self._stop_requested = False
        self._set_state("thinking")
        self._publish(protocol.LLM_START, reply_id=reply_id, covers_seq=covers_seq, answers=[e.seq for e in batch])
        try:
            if not self._model_checked:
                self.model = await self.ollama.choose_model()
                self._model_checked = True
            messages = self.conversation.prompt(covers_seq, self.settings.num_ctx - self.settings.num_predict)
            async for chunk in self.ollama.chat(self.model, messages):
                if chunk.content:  # thinking chunks are not the reply: they are not shown
                    self._publish(protocol.LLM_TOKEN, reply_id=reply_id, index=len(parts), text=chunk.content)
                    parts.append(chunk.content)
                if chunk.done:
                    done_reason, stats = chunk.done_reason or "stop", chunk.stats
        except OllamaError as error:
            self._fail(reply_id, str(error))
            return
        except asyncio.CancelledError:
            if not self._stop_requested:
                raise  # shutting down: the reply stays unanswered and is regenerated by the next worker
            done_reason, stats = "stopped", {}
        done = {"reply_id": reply_id, "text": "".join(parts), "done_reason": done_reason, "covers_seq": covers_seq,
                "model": self.model, "stats": stats}
        self._publish(protocol.LLM_DONE, **done)
        self.conversation.add_own_reply(done)
        self._last_error, self._retry_s = "", RETRY_MIN_S
        self._set_state("ready")

    def _fail(self, reply_id: str, message: str) -> None:
        log.warning("reply %s failed: %s", reply_id, message)
        # One message per distinct failure: retries of the same outage stay quiet; the status shows it instead.
        self._publish(protocol.LLM_ERROR, reply_id=reply_id, message=message,
                      repeated=message == self._last_error)
        self._last_error = message
        self._model_checked = False
        self._set_state("offline", message)

    def _stop(self) -> None:
        if self._generation is not None and not self._generation.done():
            self._stop_requested = True
            self._generation.cancel()

    # status

    async def _heartbeat(self) -> None:
        while True:
            self._publish_status()
            self._resend_unsaved()
            await asyncio.sleep(self.settings.heartbeat_s)

    def _resend_unsaved(self) -> None:
        """A `done` is lost if the bus or the web was down when it was sent; until its journal entry comes back,
        send it again (the web saves a reply_id only once)."""
        for reply in self.conversation.unsaved_replies(older_than_s=RESEND_AFTER_S):
            log.info("reply %s not saved yet; sending its done again", reply.data["reply_id"])
            self._publish(protocol.LLM_DONE, **reply.data)

    def _set_state(self, state: str, reason: str = "") -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self._publish_status()  # changes are shown at once, not at the next beat

    def _publish_status(self) -> None:
        self._publish(protocol.LLM_STATUS, worker_id=self.worker_id, state=self.state, reason=self.reason,
                      model=self.model, ollama_url=self.settings.ollama_url, last_seq=self.conversation.last_seq,
                      pid=os.getpid())

    def _publish(self, kind: str, **data) -> None:
        self.publisher.publish(kind, data)
