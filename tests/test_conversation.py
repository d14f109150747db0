"""The worker's view of the journal: what gets answered, in what batches, and the prompt within its budget."""
from __future__ import annotations

import re

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
    assert roles == ["system", "system", "user", "assistant", "user"]  # the todo list right after the persona


def test_the_prompt_keeps_the_newest_history_that_fits_the_budget():
    conversation = Conversation()
    conversation.load_window([], 0)
    for seq in range(1, 1001):
        conversation.apply(added(seq, f"todo number {seq} " + "x" * 100))
    messages = conversation.prompt(through_seq=1000, budget_tokens=2000)
    text = "".join(m["content"] for m in messages)
    assert len(text) // 3 <= 2000
    assert "todo number 1000 " in text and "todo number 1 " not in text


def toggled(seq: int, todo_id: int, title: str, done: bool) -> Message:
    return Message(protocol.TODO_TOGGLED, {"id": todo_id, "title": title, "done": done}, "web", seq=seq)


def prefix_length(a: list[dict], b: list[dict]) -> int:
    """How many leading messages two prompts share byte for byte: what Ollama's prompt cache can reuse."""
    shared = 0
    for first, second in zip(a, b):
        if first != second:
            break
        shared += 1
    return shared


def test_consecutive_prompts_share_their_beginning_and_the_window_moves_in_big_steps():
    conversation = Conversation()
    conversation.load_window([], 0)
    previous, resets, cached = None, 0, []
    for seq in range(1, 401):  # one action and one reply at a time, as in a long session
        conversation.apply(added(2 * seq - 1, f"chore {seq} " + "x" * 60))
        messages = conversation.prompt(through_seq=2 * seq - 1, budget_tokens=2048)
        conversation.apply(saved(2 * seq, 2 * seq - 1, f"noted {seq}", reply_id=f"r{seq}"))
        assert sum(len(m["content"]) for m in messages) // 3 <= 2048  # never over the budget
        if previous is not None:
            shared = prefix_length(previous, messages)
            resets += shared <= 1  # only the system prompt in common: the whole history is evaluated again
            cached.append(shared / len(previous))
        previous = messages
    # Each move frees three quarters of the history's budget (about 1,300 of 2,048 tokens), room for ~35 more
    # exchanges of ~36 tokens: ~11 moves in 400 replies, where dropping the oldest message each time would change
    # the beginning on almost every reply ...
    assert 5 <= resets <= 30
    # ... and otherwise everything but the tail (the turn answered) was reused.
    assert sorted(cached)[len(cached) // 2] > 0.9


def test_the_todo_list_is_in_every_prompt_even_when_its_actions_left_the_window():
    conversation = Conversation()
    conversation.load_window([], 0)
    for seq in range(1, 301):
        conversation.apply(added(seq, f"chore {seq}"))
    conversation.apply(toggled(301, 5, "chore 5", True))
    conversation.apply(chat(302, "what is still open?"))
    messages = conversation.prompt(through_seq=302, budget_tokens=600)
    history = " ".join(m["content"] for m in messages[2:])
    assert "added todo #5:" not in history  # the action that created it is long gone from the window
    assert messages[1]["role"] == "system" and messages[-1]["content"].endswith("what is still open?")
    # Every todo is accounted for: listed, added in the window after the list, or counted as not shown.
    todo_list = messages[1]["content"]
    listed = {int(n) for n in re.findall(r"^#(\d+) ", todo_list, re.M)}
    added_since = {int(n) for n in re.findall(r"added todo #(\d+):", history)}
    hidden = re.search(r"\(and (\d+) more open, 0 done, not shown\)", todo_list)
    assert listed and added_since and hidden and not listed & added_since
    assert len(listed) + len(added_since) + int(hidden.group(1)) == 300
    assert max(listed) + 1 == min(added_since)  # the newest open todos before the window are the ones listed


def test_the_list_before_the_window_moves_only_with_the_window():
    conversation = Conversation()
    conversation.load_window([], 0)
    lists = []
    for seq in range(1, 201):
        conversation.apply(added(2 * seq - 1, f"chore {seq}"))
        lists.append(conversation.prompt(through_seq=2 * seq - 1, budget_tokens=800)[1]["content"])
        conversation.apply(saved(2 * seq, 2 * seq - 1, f"noted {seq}", reply_id=f"r{seq}"))
    changes = [index for index in range(1, len(lists)) if lists[index] != lists[index - 1]]
    assert 3 <= len(changes) <= 40  # taken again when the window moves, not on each of 200 replies
    assert lists[0].endswith("(empty)") and "chore 172\n" in lists[-1]  # what left the window is in the list


def test_a_cold_start_takes_the_list_from_the_snapshot_not_from_the_window():
    conversation = Conversation()
    conversation.load_window([toggled(10, 1, "old chore", True), chat(11, "what is open?")], 11,
                             todos=[(1, "old chore", True), (2, "older chore", False)])
    todo_list = conversation.prompt(through_seq=11, budget_tokens=2048)[1]["content"]
    assert todo_list.splitlines()[1:] == ["#2 older chore", "#1 old chore (done)"]  # open ones first


def test_a_cold_start_leaves_the_todos_the_window_adds_to_the_window():
    conversation = Conversation()
    conversation.load_window([added(10, "new chore"), chat(11, "what is open?")], 11,
                             todos=[(1, "old chore", False), (10, "new chore", False)])
    todo_list = conversation.prompt(through_seq=11, budget_tokens=2048)[1]["content"]
    assert todo_list.splitlines()[1:] == ["#1 old chore"]  # #10 is added below it, not listed twice


def session_over_budget(calibrated: bool, budget: int = 1500, chars_per_token: float = 2.5) -> list[bool]:
    """300 chat turns with a model whose tokenizer makes 2.5 characters a token (denser than the first guess of 3):
    for each prompt, whether its real token count is over the budget."""
    from tests.fake_runner import prompt_token_count
    conversation = Conversation()
    conversation.load_window([], 0)
    over = []
    for seq in range(1, 301):
        conversation.apply(chat(2 * seq - 1, f"question {seq}: " + "word " * 20))
        messages = conversation.prompt(through_seq=2 * seq - 1, budget_tokens=budget)
        tokens = prompt_token_count(messages, chars_per_token)
        over.append(tokens > budget)
        if calibrated:
            conversation.calibrate(messages, tokens)  # what the final chunk's prompt_eval_count says
        conversation.apply(saved(2 * seq, 2 * seq - 1, "answer " * 10, reply_id=f"r{seq}"))
    return over


def test_the_budget_is_learned_from_the_token_counts_ollama_reports():
    assert any(session_over_budget(calibrated=False)), "the guess alone must overflow, or this proves nothing"
    assert not any(session_over_budget(calibrated=True)[5:])


def test_what_was_measured_for_one_model_is_forgotten_for_the_next():
    conversation = Conversation()
    guess = conversation.chars_per_token
    conversation.calibrate([{"role": "user", "content": "x" * 1000}], 1000 + 4)  # one character a token
    assert conversation.chars_per_token < guess
    conversation.forget_calibration()  # the worker switched models (llm_worker/worker.py _ensure_model)
    assert conversation.chars_per_token == guess


def test_a_long_question_is_never_dropped_from_its_own_prompt():
    conversation = Conversation()
    conversation.load_window([], 0)
    for seq in range(1, 41, 2):  # a window nearly full of chat
        conversation.apply(chat(seq, f"question {seq} " + "x" * 80))
        conversation.apply(saved(seq + 1, seq, "answer " * 10, reply_id=f"r{seq}"))
    long = "please read all of this " * 90  # ~2,200 characters: more than the quarter the window keeps
    conversation.apply(chat(41, long))
    messages = conversation.prompt(through_seq=41, budget_tokens=1500)
    assert messages[-1] == {"role": "user", "content": long}
