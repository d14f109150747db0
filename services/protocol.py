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

Journal catch-up (worker DEALER → web ROUTER, one frame each way):

    request  msgpack {"v": PROTOCOL_VERSION, "after": <seq or None for the recent window>}
    reply    msgpack {"v": PROTOCOL_VERSION, "entries": [<envelope>, ...], "last_seq": <int>}
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1

JOURNAL = "journal."
TODO_ADDED = "journal.todo.added"
TODO_TOGGLED = "journal.todo.toggled"
TODO_EDITED = "journal.todo.edited"
TODO_DELETED = "journal.todo.deleted"
CHAT_SENT = "journal.chat.sent"
REPLY_SAVED = "journal.reply.saved"

CONTROL = "control."
STOP = "control.stop"

LLM = "llm."
LLM_START = "llm.start"
LLM_TOKEN = "llm.token"
LLM_DONE = "llm.done"
LLM_ERROR = "llm.error"
LLM_STATUS = "llm.status"

TODO_ACTIONS = (TODO_ADDED, TODO_TOGGLED, TODO_EDITED, TODO_DELETED)
JOURNAL_TYPES = (*TODO_ACTIONS, CHAT_SENT, REPLY_SAVED)
KNOWN_TYPES = frozenset((*JOURNAL_TYPES, STOP, LLM_START, LLM_TOKEN, LLM_DONE, LLM_ERROR, LLM_STATUS))


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


def encode_catchup_request(after: int | None) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "after": after})


def decode_catchup_request(frame: bytes) -> int | None:
    try:
        request = msgpack.unpackb(frame)
    except Exception as error:
        raise ProtocolError(f"catch-up request is not msgpack: {error}") from None
    if not isinstance(request, dict) or request.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("catch-up request has no supported version")
    after = request.get("after")
    if after is not None and type(after) is not int:
        raise ProtocolError("catch-up request 'after' must be an integer or nil")
    return after


def encode_catchup_reply(entries: list[Message], last_seq: int) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "entries": [e.envelope() for e in entries], "last_seq": last_seq})


def decode_catchup_reply(frame: bytes) -> tuple[list[Message], int]:
    try:
        reply = msgpack.unpackb(frame)
    except Exception as error:
        raise ProtocolError(f"catch-up reply is not msgpack: {error}") from None
    if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION or type(reply.get("last_seq")) is not int:
        raise ProtocolError("catch-up reply is malformed")
    entries = [from_envelope(e) for e in reply.get("entries") or []]
    return entries, reply["last_seq"]
