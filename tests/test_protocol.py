"""The bus protocol: encode/decode mirror each other, and anything malformed is a ProtocolError, never a crash."""
from __future__ import annotations

import itertools

import msgpack
import pytest

from services import protocol
from services.protocol import Message, ProtocolError


def test_encode_and_decode_mirror_each_other():
    message = Message(protocol.TODO_ADDED, {"id": 1, "title": "ünïcode ✓"}, "web", seq=7, ts=123.5)
    assert protocol.decode(protocol.encode(message)) == message
    live = Message(protocol.LLM_TOKEN, {"reply_id": "r1", "index": 0, "text": " hi"}, "llm_worker")
    assert protocol.decode(protocol.encode(live)) == live


def test_no_topic_is_a_prefix_of_another():
    for a, b in itertools.permutations(protocol.KNOWN_TYPES, 2):
        assert not b.startswith(a), (a, b)


@pytest.mark.parametrize("frames", [
    [b"journal.todo.added"],
    [b"journal.todo.added", b"\xc1"],
    [b"llm.token", msgpack.packb([1, 2, 3])],
    [b"llm.token", msgpack.packb({"v": 1, "type": "llm.token", "src": "x", "ts": 1, "data": {}})],
    [b"llm.nope", msgpack.packb({"v": 2, "type": "llm.nope", "src": "x", "ts": 1, "data": {}})],
    [b"llm.done", msgpack.packb({"v": 2, "type": "llm.token", "src": "x", "ts": 1, "data": {}})],
    [b"llm.token", msgpack.packb({"v": 2, "type": "llm.token", "src": "x", "ts": 1, "data": "text"})],
    [b"journal.chat.sent", msgpack.packb({"v": 2, "type": "journal.chat.sent", "src": "x", "ts": 1, "data": {}})],
    [b"llm.token", msgpack.packb({"v": 2, "type": "llm.token", "src": "x", "ts": 1, "data": {}, "seq": 3})],
    [b"\xff" * 10, b"\x00" * 1000],
])
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_journal_requests_and_replies_round_trip():
    request = protocol.decode_request(protocol.encode_request(protocol.OP_CLAIM, 7, worker_id="w1", covers_seq=42,
                                                              answered_through=40))
    assert request == {"v": protocol.PROTOCOL_VERSION, "op": "claim", "request_id": 7, "worker_id": "w1",
                       "covers_seq": 42, "answered_through": 40}
    assert protocol.decode_request(protocol.encode_request(protocol.OP_CATCHUP, 1, after=None))["after"] is None
    entries = [Message(protocol.CHAT_SENT, {"text": "hi"}, "web", seq=3, ts=1.0)]
    reply = protocol.decode_reply(protocol.encode_reply(
        protocol.OP_CATCHUP, 1, entries=[e.envelope() for e in entries], last_seq=9, journal_id="j"))
    assert protocol.catchup_page(reply) == protocol.Catchup(entries, 9, "j", None)
    with_list = protocol.decode_reply(protocol.encode_reply(protocol.OP_CATCHUP, 2, entries=[], last_seq=9,
                                                            journal_id="j", todos=[[1, "milk", False]]))
    assert protocol.catchup_page(with_list).todos == [(1, "milk", False)]
    with pytest.raises(ProtocolError):
        protocol.catchup_page({**with_list, "todos": [[1, "milk", "no"]]})


@pytest.mark.parametrize("fields", [
    {"op": "catchup", "after": "3"},
    {"op": "claim", "worker_id": "w", "covers_seq": True, "answered_through": 0},  # a bool is not a seq
    {"op": "claim", "worker_id": 5, "covers_seq": 3, "answered_through": 0},
    {"op": "claim", "worker_id": "w", "covers_seq": 3},
    {"op": "heartbeat", "worker_id": "x\"><img src=x>"},  # ids end up in markup: plain words only
    {"op": "heartbeat"},
    {"op": "delete everything"},
])
def test_malformed_journal_requests_raise_protocol_error(fields):
    with pytest.raises(ProtocolError):
        protocol.decode_request(msgpack.packb({"v": protocol.PROTOCOL_VERSION, "request_id": 1, **fields}))
    with pytest.raises(ProtocolError):
        protocol.decode_request(msgpack.packb({"v": 1, "request_id": 1, "op": "catchup", "after": None}))
