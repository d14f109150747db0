"""Tool calls in pieces (issue 11): what the bus accepts, how a model's calls are read, how the web checks their
arguments, the per-reply cap, the thinking clock, and how the worker's conversation follows the assistant's
changes (not answered with a comment; shown to the model in later prompts)."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from llm_worker.conversation import Conversation
from llm_worker.thought import MAX_THINKING_CHARS, Thought
from llm_worker.tools import ToolCall, ToolSession, parse_tool_calls
from services import config, protocol
from services.config import ConfigError
from services.protocol import Message, ProtocolError
from web.assistant_actions import ToolError, arguments_of

TOOL_REQUEST = {"worker_id": "w1", "token": 4, "reply_id": "r1", "call_id": "r1-1", "name": "add_todo",
                "arguments": {"title": "milk"}}


def test_a_tool_request_decodes_only_with_every_field_of_its_type():
    frame = protocol.encode_request(protocol.OP_TOOL, 1, **TOOL_REQUEST)
    assert protocol.decode_request(frame)["arguments"] == {"title": "milk"}
    for field, bad in [("arguments", "title=milk"), ("token", True), ("name", None), ("worker_id", "w 1")]:
        with pytest.raises(ProtocolError):
            protocol.decode_request(protocol.encode_request(protocol.OP_TOOL, 1, **{**TOOL_REQUEST, field: bad}))


def test_a_models_tool_calls_are_read_defensively():
    calls = parse_tool_calls([
        {"id": "call_1", "function": {"index": 0, "name": "add_todo", "arguments": {"title": "a\udc00b"}}},
        {"function": {"name": "set_todo_done", "arguments": '{"id": 3, "done": true}'}},  # JSON text, as some send
        {"function": {"arguments": {"id": 2**70}}},  # no name; an int msgpack cannot carry
        "nonsense",
    ])
    assert calls == [ToolCall("add_todo", {"title": "a\ufffdb"}, "call_1"),
                     ToolCall("set_todo_done", {"id": 3, "done": True}),
                     ToolCall("", {"id": str(2**70)}), ToolCall("", {})]
    msgpack.packb([call.arguments for call in calls])  # all of it can cross the bus
    assert parse_tool_calls("not a list") == [] and len(parse_tool_calls([{}] * 50)) == 11


def test_the_web_checks_arguments_as_it_checks_a_persons_input():
    assert arguments_of("set_todo_done", {"id": "#3", "done": False}) == {"id": 3, "done": False}
    assert arguments_of("rename_todo", {"id": 1, "title": "  tidy  "}) == {"id": 1, "title": "tidy"}
    for name, arguments, message in [
        ("add_todo", {"title": 5}, "A todo title must be text."),
        ("add_todo", {"title": "\ud800"}, "not valid Unicode"),
        ("set_todo_done", {"id": True, "done": True}, "Expected a todo id"),
        ("set_todo_done", {"id": -1, "done": True}, "Expected a todo id"),
        ("delete_todo", {"id": 1, 7: "x"}, "unexpected: 7"),
    ]:
        with pytest.raises(ToolError, match=message):
            arguments_of(name, arguments)


def test_a_reply_runs_at_most_ten_calls_and_then_offers_no_tools():
    asked = []

    async def ask(call: ToolCall, call_id: str) -> tuple[bool, str]:
        asked.append(call_id)
        return True, "done " * 500  # a long result is cut for the model

    session = ToolSession("r9", ask)
    assert session.offered()
    messages = asyncio.run(session.run([ToolCall("add_todo", {"title": str(n)}, f"c{n}") for n in range(12)], ""))
    assert asked == [f"r9-{n}" for n in range(1, 11)] and session.offered() is None
    assert messages[0]["role"] == "assistant" and len(messages[0]["tool_calls"]) == 12
    results = messages[1:]
    assert [m["tool_call_id"] for m in results] == [f"c{n}" for n in range(12)]
    assert all(len(m["content"]) <= 1_000 for m in results[:10])
    assert all(m["content"].startswith("Error: At most 10 tool calls") for m in results[10:])


def test_thinking_is_timed_until_the_answer_begins_and_bounded():
    now = [100.0]
    thought = Thought(clock=lambda: now[0])
    assert thought.add("let me see") == "let me see"
    now[0] += 2.5
    thought.end()
    now[0] += 10  # answering (or a tool call): not thinking
    assert thought.add("again") == "\n\nagain"  # after a tool call: a paragraph of its own
    now[0] += 1
    assert thought.done_fields() == {"thinking": "let me see\n\nagain", "thinking_s": 3.5}
    assert thought.add("x" * MAX_THINKING_CHARS) == "" and Thought().done_fields() == {}


def entry(seq: int, kind: str, src: str = "web", **data) -> Message:
    return Message(kind, data, src, seq=seq)


def test_the_assistants_changes_are_not_answered_and_sit_with_the_reply_they_came_with():
    conversation = Conversation()
    conversation.load_window([], 0)
    for item in [
        entry(1, protocol.CHAT_SENT, text="remind me: milk"),
        entry(2, protocol.CLAIM_GRANTED, worker_id="w", covers_seq=1),
        entry(3, protocol.TOOL_APPLIED, "assistant", action="add", id=1, title="milk", done=False,
              todo=[1, "milk", False], covers_seq=1, call_id="r-1", reply_id="r"),
        entry(4, protocol.TODO_ADDED, id=2, title="bread"),  # the person, while the reply was written
        entry(5, protocol.REPLY_SAVED, reply_id="r", text="Added.", covers_seq=1, token=2),
        entry(6, protocol.TOOL_PROPOSED, "assistant", action="delete", id=2, title="bread", covers_seq=4,
              call_id="q-1", reply_id="q"),
        entry(7, protocol.REPLY_SAVED, reply_id="q", text="Shall I?", covers_seq=4, token=2),
        entry(8, protocol.TOOL_SETTLED, settles=6, outcome="allowed", action="delete", id=2, title="bread",
              deleted=2),
    ]:
        conversation.apply(item)
    assert conversation.next_batch() == []  # neither its own changes nor the person's decision get a comment
    assert conversation.todos == {1: ("milk", False)}
    conversation.apply(entry(9, protocol.CHAT_SENT, text="and?"))
    messages = conversation.prompt(through_seq=9, budget_tokens=4_000)
    assert [(m["role"], m["content"]) for m in messages[2:]] == [
        ("user", "remind me: milk"),
        ("assistant", "[I made a change: adding todo #1 “milk”]\nAdded."),
        ("user", "[added todo #2: “bread”]"),
        ("assistant", "[I asked the person to allow deleting todo #2 “bread”]\nShall I?"),
        ("user", "[allowed deleting todo #2 “bread”]\nand?"),
    ]


def test_ollama_think_reads_on_off_and_the_levels():
    assert config.load({}).think is True
    assert config.load({"OLLAMA_THINK": "off"}).think is False
    assert config.load({"OLLAMA_THINK": " High "}).think == "high"
    with pytest.raises(ConfigError, match="OLLAMA_THINK='maybe': use on, off, low, medium or high"):
        config.load({"OLLAMA_THINK": "maybe"})


def test_a_reply_of_several_rounds_reports_the_first_wait_and_every_token():
    from llm_worker.worker import reply_stats_of
    first = {"load_duration": 5, "prompt_eval_count": 300, "prompt_eval_duration": 200, "eval_count": 12,
             "eval_duration": 400, "total_duration": 700}
    after_the_calls = {"load_duration": 1, "prompt_eval_count": 360, "prompt_eval_duration": 50, "eval_count": 30,
                       "eval_duration": 900, "total_duration": 1000}
    assert reply_stats_of([first, after_the_calls]) == {
        "load_duration": 5, "prompt_eval_duration": 200,  # what the person waited for: the first round
        "prompt_eval_count": 360,  # the whole conversation, as the last round saw it
        "eval_count": 42, "eval_duration": 1300, "total_duration": 1700}  # every round
    assert reply_stats_of([first]) == first and reply_stats_of([]) == {}
