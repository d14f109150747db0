"""The bus protocol: topics, the message envelope and its wire encoding. Every process imports this module;
nobody builds or parses frames by hand.

Publish/subscribe frames (through the bus proxy):

    [topic: ASCII bytes, payload: msgpack map]

The payload is the envelope:

    {"v": PROTOCOL_VERSION, "type": <same as topic>, "src": <process name>, "ts": <unix seconds>,
     "seq": <journal sequence number, journal entries only>, "data": {...}}

Topics come in families that a subscriber selects by prefix; within a family every topic has the same number of
dot-separated parts, so no topic is a prefix of another by accident:

    journal.<thing>.<verb>  written to the web's journal first, then published, seq-numbered (web → all)
    control.<verb>          requests that are not history (web → worker)
    llm.<event>             the worker's output and heartbeat (worker → all)

Requests to the web's journal (worker DEALER → web ROUTER, one frame each way, matched by `request_id`; the
DEALER stays connected for the worker's life, so the web sees a killed worker's connection close):

    catch-up  {"v", "op": "catchup", "request_id", "after": <seq or None for the recent window>}
           →  {"v", "op": "catchup", "request_id", "journal_id", "entries": [<envelope>, ...], "last_seq": <int>,
               "todos": [[id, title, done], ...] (the list at last_seq; only with after=None),
               "model": <the chosen chat model, "" for the best installed; only with after=None>}
    claim     {"v", "op": "claim", "request_id", "worker_id", "covers_seq": <int>, "answered_through": <int>}
           →  {"v", "op": "claim", "request_id", "token": <int or None>, "reason": <why not, if None>}
    heartbeat {"v", "op": "heartbeat", "request_id", "worker_id"}        (no reply; every HEARTBEAT_S)
    release   {"v", "op": "release", "request_id", "worker_id", "token"}  (no reply; an offered claim declined)
    tool      {"v", "op": "tool", "request_id", "worker_id", "token", "reply_id", "call_id", "name", "arguments"}
           →  {"v", "op": "tool", "request_id", "ok": <bool>, "result": <text for the model>}
              Only from the holder of the current claim; validated like a person's input and journaled (see
              journal.tool.* below); a call_id seen before under the same claim is answered again, not re-applied.

Several workers, one answer (the journal is the one sequencer; web/claims.py keeps the rules):

- A worker answers a batch only under a claim. It asks with the batch's last seq (`covers_seq`); the web grants
  at most one claim at a time, only for a batch not answered yet (answered < covers_seq <= head), and writes the
  grant to the journal as `journal.claim.granted` {worker_id, covers_seq}. The entry's seq is the claim's fencing
  token: it only grows, also across restarts of the web.
- Offers: when the web journals an action and no claim is current, it grants the claim on the batch that action
  ends (up to the first unanswered chat message) at once, to a ready worker whose heartbeat is fresh (the last
  holder if it is one: its Ollama has the conversation cached), right after the action's own entry. That worker
  answers without asking, saving a round trip before every first token. An offer it cannot use is given back:
  `release` when it will not answer now, or a claim request for the batch it sees instead, which replaces it.
- Every llm.start / token / done / error carries `worker_id` and `token`. The web relays and saves them only while
  that token is the current claim and the sender its holder; anything else (a frozen worker that lost its claim, a
  late frame delivered by a restarted bus, a forged message) is dropped and logged. The saved
  `journal.reply.saved` carries the token and ends the claim.
- The claim's lease is its holder's heartbeat, sent on this direct link every HEARTBEAT_S (as well as llm.status
  on the bus, which the link does not depend on: a restarting bus is no reason to fail over). After
  MISSED_HEARTBEATS without one the claim lapses; it also lapses within milliseconds when the holder's DEALER
  connection closes (a killed process). The web then writes `journal.claim.ended` {token, worker_id, reason};
  every worker sees it, the holder (if it is alive after all) abandons the reply, and the others ask for the claim
  again: the first to ask gets it.
- A claim request also says what the worker counts as answered (its own unsaved reply included). Behind the
  journal's: refused (it would answer actions again). The holder asking for a later batch while its reply through
  the claimed one is counted but not saved: refused, its `done` is still on its way (the bus is slower than this
  link). The holder asking for a later batch without counting the claimed one as answered: its reply failed or was
  lost; the old claim ends and a new one is granted.
- A failed reply (llm.error from the holder) ends the claim with an entry too; the holder retries with backoff,
  and any other worker may claim the batch at once.
- Each request is answered by request_id, so a reply that arrives after its request timed out is ignored.
- `journal_id` names the database the journal lives in: a worker that sees a different one (the web's data was
  reset) forgets what it knew and rebuilds from the new journal.

Models (issue 12; the web's side is web/models.py, the worker's llm_worker/models.py):

- Choosing: the web writes `journal.model.chosen` {model, previous} (an action: the assistant hears of it and
  comments, and the chat history shows it), then publishes `control.model` {model} ("" = the best installed), which
  switches every worker at once. A worker applies the journal entry as well, so a dropped control message changes
  nothing; the catch-up reply's `model` field (after=None only) carries the choice from before the recent window,
  so it survives restarts. OLLAMA_MODEL in a worker's environment wins over the choice.
- Each worker's llm.status also carries `models` (its Ollama's installed chat models, never embedding models),
  `pinned` (OLLAMA_MODEL is set) and `missing` (the model it wants and cannot find, else "").
- Pulling (one at a time): the web picks one live worker (heard within 3.5 heartbeats; the lowest worker_id: any will
  do, and the rule is simple to follow in a log) and publishes `control.pull` {pull_id, model, worker_id}; only that
  worker pulls (Ollama's streaming /api/pull) and publishes `llm.pull` {pull_id, model, state, status, completed,
  total, bytes_per_s, error} at least every heartbeat while pulling (state "pulling"), then once with state "done",
  "failed" (error: a message a person can act on) or "cancelled". A pull not heard of for a few heartbeats (the worker
  died, or the control message was dropped) is sent again, to the same or another live worker: Ollama resumes a pull
  where it stopped. `control.cancel` {pull_id} stops it (the worker closes the stream, which stops Ollama). A worker
  ignores a control.pull for a pull it is already running; a web that restarted adopts a pull it hears of, so the tabs
  show it again. After a pull succeeds the web publishes `control.model` again, so every worker lists its models again
  and a missing model is used at once.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 2

JOURNAL = "journal."
TODO_ADDED = "journal.todo.added"
TODO_TOGGLED = "journal.todo.toggled"
TODO_EDITED = "journal.todo.edited"
TODO_DELETED = "journal.todo.deleted"
TODO_CLEARED = "journal.todo.cleared"  # every completed todo deleted at once ("Clear completed"): {count}
CHAT_SENT = "journal.chat.sent"
REPLY_SAVED = "journal.reply.saved"
CLAIM_GRANTED = "journal.claim.granted"
CLAIM_ENDED = "journal.claim.ended"
CHAT_RETRY = "journal.chat.retry"  # "answer that again": {reply_id} of the reply to try again
NOTE_SHOWN = "journal.note.shown"  # a note the chat showed, so a reload shows it too: {kind, text, reply_id?}
# -- models (issue 12): see "Models" above --
MODEL_CHOSEN = "journal.model.chosen"  # a person chose the chat model: {model, previous}

CONTROL = "control."
STOP = "control.stop"
# -- models (issue 12) --
USE_MODEL = "control.model"  # {model}: "" means the best installed
PULL = "control.pull"  # {pull_id, model, worker_id}
CANCEL_PULL = "control.cancel"  # {pull_id}

LLM = "llm."
LLM_START = "llm.start"
LLM_TOKEN = "llm.token"  # {reply_id, token, index, text}: the tokens Ollama sent together, from the index-th on
LLM_DONE = "llm.done"
LLM_ERROR = "llm.error"
LLM_STATUS = "llm.status"
LLM_PULL = "llm.pull"  # (issue 12) a pull's progress and outcome
PULL_STATES = ("pulling", "done", "failed", "cancelled")

# --- The assistant's tool calls and thinking (issue 11) ---------------------------------------------------------
# A tool call the web accepted is journaled with src "assistant" as one of:
#   journal.tool.applied   {call_id, reply_id, covers_seq, action: "add"|"done", id, title, done, before_done?,
#                           todo: [id, title, done]}          (the list changed at once; the person may Undo it)
#   journal.tool.proposed  {call_id, reply_id, covers_seq, action: "rename"|"delete", id, title, new_title?}
#                          (nothing changed: it waits for the person's Allow or Deny)
# and later settled by the person (src "web"), exactly once, by
#   journal.tool.settled   {settles: <seq of the applied/proposed entry>, outcome: "undone"|"allowed"|"denied"|
#                           "failed", action, id, title, new_title?, reason?, todo?: [id, title, done],
#                           deleted?: id}
# `todo` / `deleted` say how the entry changed the list, so a follower need not know the actions' rules.
# None of them is answered with a comment; they are conversation all the same (later prompts show them).
TOOL_APPLIED = "journal.tool.applied"
TOOL_PROPOSED = "journal.tool.proposed"
TOOL_SETTLED = "journal.tool.settled"
TOOL_TYPES = (TOOL_APPLIED, TOOL_PROPOSED, TOOL_SETTLED)
# A model's thinking {worker_id, token, reply_id, index, text}, batched as llm.token is; never part of the reply.
LLM_THINKING = "llm.thinking"
MAX_TOOL_CALLS = 10  # per reply: the worker stops offering tools beyond it, and the web refuses more

TODO_ACTIONS = (TODO_ADDED, TODO_TOGGLED, TODO_EDITED, TODO_DELETED, TODO_CLEARED)
ASKS = (CHAT_SENT, CHAT_RETRY)  # actions that end a batch: each gets a reply of its own
CLAIM_TYPES = (CLAIM_GRANTED, CLAIM_ENDED)
UNSPOKEN = (*CLAIM_TYPES, NOTE_SHOWN)  # journal entries that are not part of the conversation
JOURNAL_TYPES = (*TODO_ACTIONS, *ASKS, REPLY_SAVED, *UNSPOKEN, MODEL_CHOSEN, *TOOL_TYPES)
MODEL_CONTROLS = (USE_MODEL, PULL, CANCEL_PULL)
KNOWN_TYPES = frozenset((*JOURNAL_TYPES, STOP, *MODEL_CONTROLS, LLM_START, LLM_TOKEN, LLM_DONE, LLM_ERROR, LLM_STATUS,
                         LLM_PULL, LLM_THINKING))


class ProtocolError(ValueError):
    """A frame that does not decode into a message this version understands."""


@dataclass(frozen=True)
class Message:
    type: str
    data: dict[str, Any]
    src: str
    seq: int | None = None
    ts: float = field(default_factory=time.time)

    def envelope(self) -> dict[str, Any]:
        envelope = {"v": PROTOCOL_VERSION, "type": self.type, "src": self.src, "ts": self.ts, "data": self.data}
        if self.seq is not None:
            envelope["seq"] = self.seq
        return envelope


def from_envelope(envelope: Any) -> Message:
    """Validate a decoded envelope; anything unexpected raises ProtocolError, never KeyError or AssertionError."""
    if not isinstance(envelope, dict):
        raise ProtocolError("envelope is not a map")
    if envelope.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {envelope.get('v')!r}")
    kind, data, src = envelope.get("type"), envelope.get("data"), envelope.get("src")
    seq, ts = envelope.get("seq"), envelope.get("ts")
    if kind not in KNOWN_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    if not isinstance(data, dict) or not isinstance(src, str) or not isinstance(ts, (int, float)):
        raise ProtocolError(f"malformed {kind} envelope")
    if kind.startswith(JOURNAL) != (type(seq) is int):
        raise ProtocolError(f"{kind}: journal entries and only they carry an integer seq")
    return Message(type=kind, data=data, src=src, seq=seq, ts=float(ts))


def encode(message: Message) -> list[bytes]:
    return [message.type.encode("ascii"), msgpack.packb(message.envelope())]


def decode(frames: list[bytes]) -> Message:
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    topic, payload = frames
    try:
        envelope = msgpack.unpackb(payload)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"payload is not msgpack: {error}") from None
    message = from_envelope(envelope)
    if topic != message.type.encode("ascii"):
        raise ProtocolError(f"topic {topic[:40]!r} does not match type {message.type!r}")
    return message


# Ollama's numbers from a reply's final chunk (nanoseconds and token counts), as llm.done and journal.reply.saved
# carry them under "stats".
REPLY_STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
               "eval_duration")


def reply_stats(source: object) -> dict[str, int | float]:
    """The REPLY_STATS fields of `source` that are numbers msgpack can carry; anything else is left out."""
    if not isinstance(source, dict):
        return {}
    return {key: source[key] for key in REPLY_STATS if _is_number(source.get(key))}


def _is_number(value: object) -> bool:
    # A bool is an int in Python, but not a count; an int beyond 64 bits does not fit msgpack.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or -2**63 <= value < 2**64


# Ids that end up in element ids, selectors and log lines (reply ids, worker ids): plain short words only.
WORD = re.compile(r"[A-Za-z0-9_-]{1,64}")
# (issue 12) What Ollama accepts as a model name (registry/namespace/model:tag, hf.co/... too): what a worker lists,
# a person chooses or pulls goes to the bus and into every tab's select, so it is checked against this everywhere.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
MAX_MODELS = 200  # installed models a worker looks at and lists: more than anyone keeps

OP_CATCHUP, OP_CLAIM, OP_HEARTBEAT, OP_RELEASE = "catchup", "claim", "heartbeat", "release"
OP_TOOL = "tool"  # issue 11: a tool call for the web to validate and apply (see the docstring)
REQUEST_FIELDS = {  # each op's fields and their types, besides v, op and request_id
    OP_CATCHUP: {"after": (int, type(None))},
    OP_CLAIM: {"worker_id": (str,), "covers_seq": (int,), "answered_through": (int,)},
    OP_HEARTBEAT: {"worker_id": (str,)},
    OP_RELEASE: {"worker_id": (str,), "token": (int,)},
    OP_TOOL: {"worker_id": (str,), "token": (int,), "reply_id": (str,), "call_id": (str,), "name": (str,),
              "arguments": (dict,)},
}


def _unpack(frame: bytes, what: str) -> dict:
    try:
        obj = msgpack.unpackb(frame)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"{what} is not msgpack: {error}") from None
    if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION or type(obj.get("request_id")) is not int:
        raise ProtocolError(f"{what} has no supported version or request_id")
    return obj


def encode_request(op: str, request_id: int, **fields) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": op, "request_id": request_id, **fields})


def decode_request(frame: bytes) -> dict:
    """A request to the journal, with exactly its op's fields of the right types (bool is not an int here)."""
    request = _unpack(frame, "journal request")
    fields = REQUEST_FIELDS.get(request.get("op"))
    if fields is None:
        raise ProtocolError(f"unknown journal request {request.get('op')!r}")
    for name, types in fields.items():
        if type(request.get(name)) not in types:
            raise ProtocolError(f"journal request {request['op']}: {name!r} must be {types[0].__name__}")
    if "worker_id" in fields and not WORD.fullmatch(request["worker_id"]):
        raise ProtocolError(f"journal request {request['op']}: worker_id is not a plain word")
    return request


def encode_reply(op: str, request_id: int, **fields) -> bytes:
    return encode_request(op, request_id, **fields)


def decode_reply(frame: bytes) -> dict:
    return _unpack(frame, "journal reply")


@dataclass(frozen=True)
class Catchup:
    entries: list[Message]
    last_seq: int  # the journal's head when the page was read
    journal_id: str
    todos: list[tuple[int, str, bool]] | None  # the list at last_seq (only for the recent window)
    model: str = ""  # the chosen chat model ("" = the best installed; only for the recent window)


def catchup_page(reply: dict) -> Catchup:
    """A catch-up reply, validated."""
    if type(reply.get("last_seq")) is not int or not isinstance(reply.get("journal_id"), str):
        raise ProtocolError("catch-up reply is malformed")
    entries, todos = reply.get("entries"), reply.get("todos")
    if not isinstance(entries, list):
        raise ProtocolError("catch-up reply has no entry list")
    if todos is not None:
        if not isinstance(todos, list) or not all(
                isinstance(t, list) and len(t) == 3 and type(t[0]) is int and isinstance(t[1], str)
                and isinstance(t[2], bool) for t in todos):
            raise ProtocolError("catch-up reply has a malformed todo list")
        todos = [tuple(t) for t in todos]
    model = reply.get("model", "")
    if not isinstance(model, str):
        raise ProtocolError("catch-up reply has a malformed model")
    return Catchup([from_envelope(e) for e in entries], reply["last_seq"], reply["journal_id"], todos, model)
