"""The worker's view of the journal: what gets answered, in what batches, and the prompt within its budget."""
from __future__ import annotations

from services import protocol
from services.protocol import Message
from llm_worker.conversation import Applied, Conversation


def added(seq: int, title: str) -> Message:
    return Message(protocol.TODO_ADDED, {"id": seq, "title": title}, "web", seq=seq)


def chat(seq: int, text: str) -> Message:
    return Message(protocol.CHAT_SENT, {"text": text}, "web", seq=seq)


def saved(seq: int, covers: int, text: str, reply_id: str = "r") -> Message:
    return Message(protocol.REPLY_SAVED, {"reply_id": reply_id, "text": text, "covers_seq": covers}, "web", seq=seq)


def test_a_burst_of_actions_is_one_batch_and_a_chat_message_ends_a_batch():
    conversation = Conversation()
    conversation.load_window([], 0)
    for entry in [added(1, "a"), added(2, "b"), chat(3, "hi"), added(4, "c")]:
        assert conversation.apply(entry) is Applied.APPLIED
    assert [e.seq for e in conversation.next_batch()] == [1, 2, 3]
    conversation.add_own_reply({"reply_id": "r1", "text": "hello", "covers_seq": 3, "done_reason": "stop"})
    assert [e.seq for e in conversation.next_batch()] == [4]


def test_replayed_and_skipped_seqs_are_detected():
    conversation = Conversation()
    conversation.load_window([added(1, "a")], 1)
    assert conversation.apply(added(1, "a")) is Applied.OLD
    assert conversation.apply(added(3, "c")) is Applied.GAP
    assert conversation.last_seq == 1


def test_a_cold_start_answers_only_what_no_saved_reply_covers():
    conversation = Conversation()
    conversation.load_window([added(5, "a"), saved(6, 5, "ok"), added(7, "b"), chat(8, "?")], 8)
    assert [e.seq for e in conversation.next_batch()] == [7, 8]


def test_a_saved_reply_replaces_the_provisional_one_and_sits_after_what_it_answers():
    conversation = Conversation()
    conversation.load_window([], 0)
    conversation.apply(chat(1, "question"))
    conversation.apply(added(2, "later"))
    conversation.add_own_reply({"reply_id": "r1", "text": "answer", "covers_seq": 1, "done_reason": "stop"})
    assert [r.data["reply_id"] for r in conversation.unsaved_replies(older_than_s=0)] == ["r1"]
    conversation.apply(saved(3, 1, "answer", reply_id="r1"))
    assert conversation.unsaved_replies(older_than_s=0) == []
    roles = [m["role"] for m in conversation.prompt(through_seq=3, budget_tokens=4096)]
    assert roles == ["system", "user", "assistant", "user"]


def test_the_prompt_keeps_the_newest_history_that_fits_the_budget():
    conversation = Conversation()
    conversation.load_window([], 0)
    for seq in range(1, 1001):
        conversation.apply(added(seq, f"todo number {seq} " + "x" * 100))
    messages = conversation.prompt(through_seq=1000, budget_tokens=2000)
    text = "".join(m["content"] for m in messages)
    assert len(text) // 3 <= 2000
    assert "todo number 1000 " in text and "todo number 1 " not in text
