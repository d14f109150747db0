"""The LLM worker: follows the journal over the bus (catching up from the web after a start or a gap), folds
unanswered actions into one comment, answers each chat message, streams Ollama's tokens onto the bus, and sends a
heartbeat. It keeps no durable state: everything it knows is rebuilt from the web's journal."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from contextlib import aclosing
from typing import Callable

import zmq.asyncio

from services import protocol
from services.busclient import Publisher, Subscriber
from services.config import Settings
from services.protocol import MAX_TOOL_CALLS, Message
from services.tasks import supervised
from services.text import MAX_REPLY_CHARS
from llm_worker.conversation import Applied, Conversation
from llm_worker.link import JournalLink
from llm_worker.models import MODELS_REFRESH_S, ModelChoice, Pulls
from llm_worker.ollama import ModelMissing, OllamaClient, OllamaError
from llm_worker.thought import Thought
from llm_worker.tokens import TokenBatch
from llm_worker.tools import TOOLS, ToolSession

IDLE_RESYNC_S = 5.0  # with no journal traffic for this long, ask the web anyway: recovers anything PUB dropped
RETRY_MIN_S, RETRY_MAX_S = 1.0, 10.0  # backoff while Ollama is failing; a new action retries at once
RESEND_AFTER_S = 3.0  # a finished reply whose journal entry has not come back by then is sent again
MAX_RESENDS = 5  # ... this many times at most
OLD_CHECK_EVERY_S = 1.0  # live entries older than what we know make us ask the journal at most this often

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
        self._model_checked = False  # chosen (or found installed) since the last failure or model switch
        self.choice = ModelChoice(settings.ollama_model)
        self.missing = ""  # the model we want and Ollama does not have (the page offers to pull it)
        self._loaded_model = ""  # the model loaded in Ollama since the last failure (see _probe)
        self.num_ctx = settings.num_ctx  # ... and the context window it was loaded with
        self.capabilities: frozenset[str] = frozenset()  # ... and what it can do: tools? thinking?
        self._retry_s = RETRY_MIN_S
        self.journal_id = ""  # the journal we follow: another one means its data was reset
        self._resync = asyncio.Event()  # a gap was seen while applying: catch up again
        self.token: int | None = None  # the claim we answer under now
        self._offer: tuple[int, int] | None = None  # (token, covers_seq) of a claim the web granted unasked
        self._last_token = 0  # the newest claim we answered under: a grant at or below it is no offer
        self._claim_lost = False
        self._resends: dict[str, int] = {}  # reply_id → times its done was sent again
        self._old_checked_at = 0.0

    async def run(self) -> None:
        context = zmq.asyncio.Context()
        keys = self.settings.bus_keys_dir
        self.publisher = Publisher(self.settings.bus_pub_addr, src=f"llm_worker/{self.worker_id}", keys_dir=keys)
        subscriber = Subscriber(self.settings.bus_sub_addr, [protocol.JOURNAL, protocol.CONTROL], context, keys)
        self.link = JournalLink(self.settings, context, self.worker_id)
        self.ollama = OllamaClient(self.settings)
        self.pulls = Pulls(self.ollama, self.settings, self._publish, on_pulled=lambda model: self._switch_check())
        tasks = [supervised("heartbeat", self._heartbeat),
                 supervised("journal follower", lambda: self._follow_journal(subscriber)),
                 supervised("answerer", self._answer)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Stopped on purpose (SIGTERM): under the Procfile's restart loop it will be back in a moment.
            self._set_state("restarting", "the assistant process is restarting")
            await self.pulls.close()
            await self.ollama.close()  # closes any open stream, so Ollama stops generating
            subscriber.close()
            self.link.close()  # the web sees it close and frees a claim we held at once
            self.publisher.close()
            context.term()

    # following the journal

    async def _follow_journal(self, subscriber: Subscriber) -> None:
        # Subscribed first, then the snapshot: live entries at or below its seq are dropped by Conversation.apply.
        await self._catch_up(after=None)
        while True:
            message = await subscriber.receive(timeout_s=IDLE_RESYNC_S)
            if message is None:
                await self._catch_up(after=self.conversation.last_seq)
            elif message.type == protocol.STOP:
                self._stop()
            elif message.type in protocol.MODEL_CONTROLS:
                self._model_control(message)
            else:
                self._apply(message, live=True)
                if self._resync.is_set():
                    await self._catch_up(after=self.conversation.last_seq)
            self._wake.set()

    def _apply(self, entry: Message, live: bool = False) -> None:
        applied = self.conversation.apply(entry)
        if applied is Applied.GAP:
            log.info("gap after seq %d (got %d): catching up", self.conversation.last_seq, entry.seq)
            self._resync.set()
        elif applied is Applied.OLD and live and time.monotonic() - self._old_checked_at > OLD_CHECK_EVERY_S:
            # A seq we have passed: the overlap after a catch-up, or a journal that started over (its data was
            # reset). Asking once tells which; the overlap is common, so not for every such entry.
            self._old_checked_at = time.monotonic()
            self._resync.set()
        elif applied is Applied.APPLIED and entry.type == protocol.MODEL_CHOSEN:
            self._choose(entry.data.get("model"))  # as control.model does: this one cannot be lost
        elif applied is Applied.APPLIED and entry.type == protocol.CLAIM_ENDED:
            self._claim_ended(entry.data.get("token"))
        elif (applied is Applied.APPLIED and live and entry.type == protocol.CLAIM_GRANTED
              and entry.data.get("worker_id") == self.worker_id and entry.seq > self._last_token):
            # (Not one we asked for and answered already: its grant can arrive over the bus after our reply.)
            self._offer = (entry.seq, entry.data.get("covers_seq"))

    async def _catch_up(self, after: int | None) -> None:
        """Ask the web's journal for entries after `after` (None: the recent window) until we reach its head. A
        different journal (the web's data was reset), or a head below what we know, means starting over from it."""
        while True:
            self._resync.clear()
            page = await self.link.catchup(after)
            if after is None or page.journal_id != self.journal_id or page.last_seq < self.conversation.last_seq:
                if after is not None:
                    log.warning("the journal was replaced (id %s, head %d): rebuilding from it", page.journal_id,
                                page.last_seq)
                    page = await self.link.catchup(None)
                self.journal_id = page.journal_id
                self.conversation.load_window(page.entries, page.last_seq, page.todos)
                self._choose(page.model)
            else:
                for entry in page.entries:
                    self._apply(entry)
            after = self.conversation.last_seq
            if not self._resync.is_set() and (not page.entries or after >= page.last_seq):
                break
        if not self.synced.is_set():
            log.info("caught up at seq %d; answered through %d", after, self.conversation.answered_through)
            self.synced.set()

    # answering

    async def _answer(self) -> None:
        await self.synced.wait()
        await self._probe()  # shows the model (or what is wrong) in the page before anyone asks anything
        while True:
            batch = self.conversation.next_batch()
            offer, self._offer = self._offer, None
            # While offline, try once anyway if the person has not been told why in the chat yet.
            if batch and (self.state != "offline" or self.reason != self._last_error):
                if offer is not None and offer[1] == batch[-1].seq:
                    token, reason = offer[0], ""  # granted with the action: no need to ask
                else:  # (an offer for another batch is replaced by this request)
                    token, reason = await self.link.claim(batch[-1].seq, self.conversation.answered_through)
                if token is not None:
                    await self._answer_under(token, batch)
                    continue
                log.debug("not answering through seq %d: %s", batch[-1].seq, reason)
            elif offer is not None:
                self.link.release(offer[0])
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancel (shutdown would hang).
                async with asyncio.timeout(self._retry_s if self.state == "offline" else None):
                    await self._wake.wait()  # a journal entry: new actions, a saved reply, a claim that ended
                self._wake.clear()
            except asyncio.TimeoutError:
                pass
            if self.state == "offline":
                await self._probe()
                self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)  # reset only by a reply that succeeds
            elif not self._model_checked:  # another model chosen, or one pulled: switch now, not at the next reply
                await self._probe()

    async def _answer_under(self, token: int, batch: list[Message]) -> None:
        self.token, self._claim_lost = token, False
        self._last_token = max(self._last_token, token)
        self._generation = asyncio.create_task(self._generate(batch, token))
        try:
            await self._generation
        finally:
            if not self._generation.done():
                self._generation.cancel()  # shutting down
            self._generation, self.token = None, None
            if self._offer is not None and self._offer[0] == token:
                self._offer = None  # its grant arrived after we had asked for it ourselves: it is this claim

    async def _probe(self) -> None:
        """Is Ollama up and the model known? Then load the model, once per model and after every outage, so the
        first comment does not wait for it (the status says "loading" meanwhile). A failed reply is then retried
        by the caller."""
        try:
            await self._ensure_model()
        except OllamaError as error:
            self._set_state("offline", str(error))
            return
        self._set_state("ready")

    async def _ensure_model(self) -> None:
        """Choose the model and, if it is not the one loaded, read its context window and load it (OllamaError
        if Ollama cannot)."""
        try:
            model = await self.ollama.choose_model(self.choice.wanted, keep=self._loaded_model)
        except ModelMissing as error:
            self.missing = error.model
            raise
        self.missing = ""
        if model != self._loaded_model:
            self._loaded_model = ""  # until it loads: should it fail, whichever model comes next is read afresh
            if model != self.model:
                self.conversation.forget_calibration()
            self.num_ctx = await self.ollama.context_window(model)
            self.capabilities = await self.ollama.capabilities(model)
            self._set_state("loading", f"loading model {model}")
            await self.ollama.load(model, self.num_ctx)
            self._loaded_model = model
        self.model, self._model_checked = model, True

    async def _generate(self, batch: list[Message], token: int) -> None:
        reply_id = "r" + uuid.uuid4().hex[:12]
        covers_seq = batch[-1].seq
        parts: list[str] = []
        thought = Thought()
        done_reason = "stop"
        self._stop_requested = False

        def started() -> None:
            # Said once the request is written, not before: each message published wakes the bus and the web,
            # which then took a core from this process while it was still writing the request (2 cores here).
            self._publish(protocol.LLM_START, reply_id=reply_id, token=token, covers_seq=covers_seq,
                          answers=[e.seq for e in batch])
            self._set_state("thinking")

        try:
            if not self._model_checked:  # the try after a failure: the model, or its context window, may differ
                await self._ensure_model()
            budget = self.num_ctx - self.settings.num_predict
            if "tools" in self.capabilities:  # their schemas go into the prompt too
                budget -= self.conversation.estimate_tokens(json.dumps(TOOLS))
            asked = batch[-1].type in protocol.ASKS
            done_reason, stats = await self._stream(reply_id, token, covers_seq, budget, parts, thought, asked,
                                                    started)
        except OllamaError as error:
            self._fail(reply_id, token, str(error))
            return
        except Exception as error:  # a bug or an answer nobody foresaw: end the reply and free the claim, loudly
            log.exception("reply %s failed unexpectedly", reply_id)
            self._fail(reply_id, token, f"The assistant failed unexpectedly ({type(error).__name__}); see its log.")
            return
        except asyncio.CancelledError:
            if self._claim_lost:
                log.warning("claim %d lapsed mid-reply (frozen or cut off?): abandoning reply %s", token, reply_id)
                self._set_state("ready")
                return
            if not self._stop_requested:
                raise  # shutting down: the reply stays unanswered and another worker answers it
            done_reason, stats = "stopped", {}
        done = {"reply_id": reply_id, "token": token, "text": "".join(parts), "done_reason": done_reason,
                "covers_seq": covers_seq, "model": self.model, "stats": stats, **thought.done_fields()}
        self._publish(protocol.LLM_DONE, **done)
        self.conversation.add_own_reply(done)
        self._last_error, self._retry_s = "", RETRY_MIN_S
        self._set_state("ready")

    async def _stream(self, reply_id: str, token: int, covers_seq: int, budget: int, parts: list[str],
                      thought: Thought, asked: bool, started: Callable[[], None]) -> tuple[str, dict]:
        """Stream the reply's text (into `parts`) and thinking onto the bus. When the model calls tools, the web
        makes the changes (llm_worker/tools.py) and the model continues from their results, in the same reply.
        Tools are offered only to answer a person's message (`asked`): a comment on what they did needs none, and
        offering them there would let a todo's title ask for changes nobody asked for. Each round's prompt fits
        `budget` with the calls and results so far."""
        tools = None
        if "tools" in self.capabilities and asked:
            tools = ToolSession(reply_id, lambda call, call_id: self.link.tool(
                token, reply_id, call_id, call.name, call.arguments))
        think = self.settings.think if "thinking" in self.capabilities else None

        def sender(kind: str):  # tokens (and thoughts) read together leave as one message: see tokens.py
            return lambda text, index: self._publish(kind, reply_id=reply_id, token=token, index=index, text=text)

        tokens, thoughts = TokenBatch(sender(protocol.LLM_TOKEN)), TokenBatch(sender(protocol.LLM_THINKING))
        length, rounds = sum(map(len, parts)), []  # each round's final numbers
        tool_turns: list[dict] = []  # the assistant's calls and their results, round by round
        try:
            while True:
                calls, round_start = [], len(parts)
                if not rounds:
                    messages = prompt = self.conversation.prompt(covers_seq, budget)
                else:  # the same prompt, so Ollama's cache holds, unless the calls and results would not fit
                    messages = self.conversation.with_turns(prompt, tool_turns, budget)
                offered = tools and tools.offered()
                stream = self.ollama.chat(self.model, messages, self.num_ctx, offered, think,
                                          on_sent=None if rounds else started)
                async with aclosing(stream) as chunks:  # closing the stream stops Ollama generating
                    async for chunk in chunks:
                        thinking = thought.add(chunk.thinking) if chunk.thinking else ""
                        if thinking:
                            thoughts.add(thinking)
                        if chunk.content:
                            thought.end()
                            content = chunk.content[:MAX_REPLY_CHARS - length]
                            tokens.add(content)
                            parts.append(content)
                            length += len(content)
                        calls += chunk.tool_calls[:MAX_TOOL_CALLS + 1 - len(calls)]  # beyond: refused unseen
                        if chunk.done:
                            done_reason = chunk.done_reason or "stop"
                            rounds.append(chunk.stats)
                            # The prompt's exact size (its tools' schemas included) sharpens the next budget;
                            # only the first round's: later ones carry calls as JSON, not as the template has them.
                            if "prompt_eval_count" in chunk.stats and len(rounds) == 1:
                                schemas = [{"content": json.dumps(TOOLS)}] if tools is not None else []
                                self.conversation.calibrate(schemas + messages, int(chunk.stats["prompt_eval_count"]))
                        elif length >= MAX_REPLY_CHARS:  # a reply must fit one bus frame
                            return "length", {}
                thought.end()
                if not calls or not offered:  # (calls made without tools on offer are not run: no more rounds)
                    return done_reason, reply_stats_of(rounds)
                tokens.flush()  # what it said before the calls is shown before the changes they make
                tool_turns += await tools.run(calls, "".join(parts[round_start:]))
        finally:
            tokens.flush()  # what Ollama said goes out before whatever ends the reply
            thoughts.flush()

    def _fail(self, reply_id: str, token: int, message: str) -> None:
        log.warning("reply %s failed: %s", reply_id, message)
        # One message per distinct failure: retries of the same outage stay quiet; the status shows it instead.
        # The web frees the claim on it: this worker retries with backoff, or another one takes the batch.
        self._publish(protocol.LLM_ERROR, reply_id=reply_id, token=token, message=message,
                      repeated=message == self._last_error)
        self._last_error = message
        self._model_checked, self._loaded_model = False, ""
        self._set_state("offline", message)

    def _stop(self) -> None:
        if self._generation is not None and not self._generation.done():
            self._stop_requested = True
            self._generation.cancel()

    def _claim_ended(self, token: object) -> None:
        """The web ended a claim (its holder missed heartbeats or its connection closed). If it was ours, we were
        frozen or cut off: whatever we were saying under it will be dropped, so stop saying it."""
        if token == self.token and self._generation is not None and not self._generation.done():
            self._claim_lost = True
            self._generation.cancel()
        if self._offer is not None and self._offer[0] == token:
            self._offer = None
        self.conversation.forget_own_reply(token)

    # models (see llm_worker/models.py)

    def _model_control(self, message: Message) -> None:
        data = message.data
        if message.type == protocol.USE_MODEL:
            self._choose(data.get("model"))
            self._switch_check()  # also sent after a pull: the models may have changed
        elif message.type == protocol.PULL and data.get("worker_id") == self.worker_id:
            self.pulls.start(data.get("pull_id"), data.get("model"))
        elif message.type == protocol.CANCEL_PULL:
            self.pulls.cancel(data.get("pull_id"))

    def _choose(self, model: object) -> None:
        if self.choice.choose(model):
            log.info("model chosen: %s", self.choice.wanted or "the best installed")
            self._switch_check()

    def _switch_check(self) -> None:
        """Choose the model again (and list the installed ones) before the next reply, or at once when idle."""
        self._model_checked = False
        self._wake.set()

    # status

    async def _heartbeat(self) -> None:
        listed_at = time.monotonic()
        while True:
            if time.monotonic() - listed_at > MODELS_REFRESH_S:
                listed_at = time.monotonic()
                self._switch_check()  # lists the models again (the page's select), and loads nothing new
            self.link.heartbeat()
            self._publish_status()
            self.pulls.beat()
            self._resend_unsaved()
            await asyncio.sleep(self.settings.heartbeat_s)

    def _resend_unsaved(self) -> None:
        """A `done` is lost if the bus or the web was down when it was sent; until its journal entry comes back,
        send it again (the web saves a reply_id only once), but not forever: a database that stays unwritable
        must not make this worker shout into the bus for good."""
        unsaved = self.conversation.unsaved_replies(older_than_s=RESEND_AFTER_S)
        for reply_id in set(self._resends) - {reply.data["reply_id"] for reply in unsaved}:
            del self._resends[reply_id]  # saved (or forgotten) meanwhile
        for reply in unsaved:
            reply_id = reply.data["reply_id"]
            tries = self._resends[reply_id] = self._resends.get(reply_id, 0) + 1
            if tries <= MAX_RESENDS:
                log.info("reply %s not saved yet; sending its done again (%d/%d)", reply_id, tries, MAX_RESENDS)
                self._publish(protocol.LLM_DONE, **reply.data)
                continue
            del self._resends[reply_id]
            self.conversation.forget_own_reply(reply.data["token"])
            self._fail(reply_id, reply.data["token"], f"The reply could not be saved after {MAX_RESENDS} tries "
                       "(is the web's database full or locked?); it will be asked again.")

    def _set_state(self, state: str, reason: str = "") -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self._publish_status()  # changes are shown at once, not at the next beat

    def _publish_status(self) -> None:
        self._publish(protocol.LLM_STATUS, state=self.state, reason=self.reason,
                      model=self.model, ollama_url=self.settings.ollama_url, last_seq=self.conversation.last_seq,
                      pid=os.getpid(), models=self.ollama.chat_models, pinned=bool(self.choice.pinned),
                      missing=self.missing)

    def _publish(self, kind: str, **data) -> None:
        self.publisher.publish(kind, {"worker_id": self.worker_id, **data})  # the web hears only the claim holder


def reply_stats_of(rounds: list[dict]) -> dict:
    """One reply's numbers when it took several rounds (the model called tools, then went on): the wait for its
    first token is the first round's, the tokens it generated and the time it took are all the rounds', and the
    prompt is the last round's, the whole conversation."""
    if not rounds:
        return {}
    stats = dict(rounds[-1])
    for key in ("load_duration", "prompt_eval_duration"):
        if key in rounds[0]:
            stats[key] = rounds[0][key]
    for key in ("eval_count", "eval_duration", "total_duration"):
        if all(key in one for one in rounds):
            stats[key] = sum(one[key] for one in rounds)
    return stats
