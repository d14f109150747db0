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
    [b"llm.token", msgpack.packb({"v": 2, "type": "llm.token", "src": "x", "ts": 1, "data": {}})],
    [b"llm.nope", msgpack.packb({"v": 1, "type": "llm.nope", "src": "x", "ts": 1, "data": {}})],
    [b"llm.done", msgpack.packb({"v": 1, "type": "llm.token", "src": "x", "ts": 1, "data": {}})],
    [b"llm.token", msgpack.packb({"v": 1, "type": "llm.token", "src": "x", "ts": 1, "data": "text"})],
    [b"journal.chat.sent", msgpack.packb({"v": 1, "type": "journal.chat.sent", "src": "x", "ts": 1, "data": {}})],
    [b"llm.token", msgpack.packb({"v": 1, "type": "llm.token", "src": "x", "ts": 1, "data": {}, "seq": 3})],
    [b"\xff" * 10, b"\x00" * 1000],
])
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_catchup_request_and_reply_round_trip():
    assert protocol.decode_catchup_request(protocol.encode_catchup_request(None)) is None
    assert protocol.decode_catchup_request(protocol.encode_catchup_request(42)) == 42
    entries = [Message(protocol.CHAT_SENT, {"text": "hi"}, "web", seq=3, ts=1.0)]
    assert protocol.decode_catchup_reply(protocol.encode_catchup_reply(entries, 9)) == (entries, 9)
    with pytest.raises(ProtocolError):
        protocol.decode_catchup_request(msgpack.packb({"v": 1, "after": "3"}))
