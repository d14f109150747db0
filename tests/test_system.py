"""The walking system end to end: real bus, web and worker processes, a real SQLite file, the fake Ollama."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import json

import httpx
import msgpack
import zmq

from services import protocol
from tests.fake_ollama import FakeModel, FakeOllama
from tests.system import HTMX, ROOT, System, Tab, reply_tokens, running
from web.components import TOKEN_FRAME


def post(app: System, path: str, **form) -> httpx.Response:
    return httpx.post(app.url + path, data=form, headers=HTMX, timeout=5)


def journal_types(app: System) -> list[str]:
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT type FROM journal ORDER BY seq")]


def test_an_action_reaches_ollama_and_its_reply_streams_token_by_token_to_every_tab(system, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 50
    fake_ollama.knobs.reply = lambda request: ["Milk", " again", "?", " Bold", " choice", "."]
    tabs = [Tab(system.ws_url), Tab(system.ws_url)]
    try:
        assert post(system, "/todos", title="buy milk").status_code == 200
        request = fake_ollama.wait_for_requests(1)[0]
        assert request["stream"] is True and request["model"] == "fake-model:latest"
        assert "buy milk" in request["messages"][-1]["content"]
        start = system.bus.wait_for("llm.start")
        reply_id = start.data["reply_id"]
        system.bus.wait_for("journal.reply.saved", reply_id=reply_id)
        for tab in tabs:
            # The finished reply replaces the streaming one in place.
            tab.frames.wait_for(lambda f: f'id="reply-{reply_id}"' in f and 'hx-swap-oob="true"' in f, 10, "done")
            # Frames carry only new text, in order: never the reply so far. The first comes in the reply's bubble
            # (unless the model was slow to start); the others are compact token frames: the marker, then the bare
            # text. Tokens 20 ms apart travel one per frame, unless a busy worker read several at once.
            texts = reply_tokens(tab.frames.items, reply_id)
            assert "".join(texts) == "Milk again? Bold choice." and len(texts) >= 3
            token_frames = [f for f in tab.frames.items if f.startswith(TOKEN_FRAME)]
            assert token_frames == [TOKEN_FRAME + text for text in texts[-len(token_frames):]]
    finally:
        for tab in tabs:
            tab.close()
    done = system.bus.wait_for("llm.done", reply_id=reply_id)
    assert done.data["text"] == "Milk again? Bold choice." and done.data["done_reason"] == "stop"
    assert done.data["stats"]["eval_count"] == 6


def test_the_context_of_a_second_chat_message_contains_the_first_exchange(system, fake_ollama):
    post(system, "/todos", title="water the ficus")
    system.bus.wait_for("journal.reply.saved")
    post(system, "/chat", text="What was the todo I just added?")
    first = system.bus.wait_for("journal.chat.sent")
    system.bus.wait_for("journal.reply.saved", covers_seq=first.seq)
    post(system, "/chat", text="And what did you answer me?")
    requests = fake_ollama.wait_for_requests(3)
    messages = requests[2]["messages"]
    assert messages[0]["role"] == "system" and "attitude" in messages[0]["content"]
    contents = [m["content"] for m in messages]
    assert any("water the ficus" in c for c in contents)
    assert "What was the todo I just added?" in contents
    assert any(m["role"] == "assistant" and "What was the todo I just added?" in m["content"] for m in messages)
    assert contents[-1] == "And what did you answer me?"
    assert requests[2]["options"]["num_ctx"] == 4096


def test_reloading_the_page_shows_the_todos_and_the_chat_history(system, fake_ollama):
    post(system, "/todos", title="call mum")
    post(system, "/chat", text="remind me why")
    chat = system.bus.wait_for("journal.chat.sent")
    system.bus.wait_for("journal.reply.saved", covers_seq=chat.seq)
    page = httpx.get(system.url + "/", timeout=5).text
    assert "call mum" in page and "remind me why" in page
    assert "Noted, human." in page  # the finished reply, rendered from Markdown on the server
    assert 'role="log"' in page and "fake-model:latest" in page


def test_invalid_input_gets_a_clear_4xx_and_nothing_is_stored_or_published(system):
    too_long = "x" * 501
    for path, form in [("/todos", {"title": ""}), ("/todos", {"title": "   "}), ("/todos", {"title": too_long}),
                       ("/chat", {"text": ""}), ("/chat", {"text": "y" * 4001})]:
        response = post(system, path, **form)
        assert response.status_code == 422, (path, form)
        assert "cannot be empty" in response.text or "too long" in response.text
    ok = post(system, "/todos", title="x" * 500)  # the limit itself is fine
    assert ok.status_code == 200
    system.bus.wait_for("journal.todo.added")
    assert journal_types(system)[0] == "journal.todo.added"
    assert [m.type for m in system.bus.messages.items if m.type.startswith("journal.chat")] == []
    with sqlite3.connect(system.data_dir / "app.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM todos").fetchone()[0] == 1


def test_todos_work_with_no_worker_and_no_ollama(tmp_path):
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:  # nothing listens on port 9
        tab = Tab(app.ws_url)
        assert post(app, "/todos", title="first").status_code == 200
        tab.wait_for_text("first")
        todo_id = re.search(r'id="todo-(\d+)"', httpx.get(app.url + "/").text).group(1)
        assert post(app, f"/todos/{todo_id}/toggle").status_code == 200
        edit = httpx.put(f"{app.url}/todos/{todo_id}", data={"title": "renamed"}, headers=HTMX, timeout=5)
        assert edit.status_code == 200 and "renamed" in edit.text
        assert httpx.delete(f"{app.url}/todos/{todo_id}", headers=HTMX, timeout=5).status_code == 200
        tab.close()
        assert journal_types(app) == ["journal.todo.added", "journal.todo.toggled", "journal.todo.edited",
                                      "journal.todo.deleted"]
        assert "renamed" not in httpx.get(app.url + "/").text


def test_a_killed_worker_comes_back_and_answers_everything_once(tmp_path, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [f" word{i}" for i in range(100)]  # five seconds: killed mid-stream
    with running(tmp_path, fake_ollama.url, respawn=True) as app:  # the worker runs as the Procfile runs it
        bus = app.bus
        bus.wait_for("llm.status", timeout_s=15, state="ready")
        tab = Tab(app.ws_url)
        post(app, "/todos", title="first")
        cut_short = bus.wait_for("llm.start", timeout_s=10)
        bus.wait_for("llm.token", timeout_s=10)
        old_pid = app.worker_pid()
        os.kill(old_pid, signal.SIGKILL)
        # Actions while the worker is down are journaled and published to nobody.
        post(app, "/todos", title="second")
        post(app, "/chat", text="are you there?")
        # (How soon is figure 7 of bin/bench: a wall-clock figure, not this test's to assert on a busy machine.)
        bus.messages.wait_for(lambda m: m.type == "llm.status" and m.data["pid"] != old_pid, 15,
                              "a heartbeat from the restarted worker")
        fake_ollama.knobs.tokens_per_s = 0
        fake_ollama.knobs.reply = lambda request: ["Answered."]
        chat = bus.wait_for("journal.chat.sent")
        bus.wait_for("journal.reply.saved", timeout_s=20, covers_seq=chat.seq)
        saved = bus.of_type("journal.reply.saved")
        # The restarted worker answered the chat message once, with the interrupted action and the one taken while
        # it was down folded into the same reply: both are in its context, none got a reply of its own.
        assert len(fake_ollama.requests) == 2
        last_turn = fake_ollama.requests[1]["messages"][-1]["content"]
        assert "first" in last_turn and "second" in last_turn and last_turn.endswith("are you there?")
        assert [m.data["covers_seq"] for m in saved] == [chat.seq]
        assert app.processes["bus"].alive() and app.processes["web"].alive()
        # The half reply is not left dangling: every tab sees it marked interrupted.
        tab.frames.wait_for(lambda f: cut_short.data["reply_id"] in f and "interrupted" in f, 5, "interrupted")
        tab.close()


def test_ollama_down_shows_one_clear_message_then_recovers(tmp_path):
    fake = FakeOllama()  # not started yet: its port refuses connections
    try:
        with running(tmp_path, fake.url) as app:
            bus = app.bus
            bus.wait_for("llm.status", timeout_s=15)
            tab = Tab(app.ws_url)
            post(app, "/todos", title="one")
            error = bus.wait_for("llm.error", timeout_s=10)
            assert "not reachable" in error.data["message"] and "ollama serve" in error.data["message"]
            tab.wait_for_text("ollama serve")
            post(app, "/todos", title="two")
            bus.wait_for("llm.status", state="offline")
            fake.start()
            post(app, "/todos", title="three")
            third = bus.wait_for("journal.todo.added", title="three")
            # Answered once Ollama is back: the worker's retry may get there before "three" arrives, so the
            # actions land in one or two comments, but every one of them is answered and none is lost.
            bus.messages.wait_for(lambda m: m.type == "journal.reply.saved" and m.data["covers_seq"] >= third.seq,
                                  20, "a reply covering the action taken after Ollama came back")
            first_context = str(fake.requests[0]["messages"])
            assert "“one”" in first_context and "“two”" in first_context
            shown_errors = [m for m in bus.of_type("llm.error") if not m.data.get("repeated")]
            assert len(shown_errors) == 1
            tab.close()
    finally:
        fake.stop()


def test_a_missing_model_is_reported_with_the_fix(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url, OLLAMA_MODEL="llama3.2") as app:
        bus = app.bus
        post(app, "/chat", text="hello?")
        error = bus.wait_for("llm.error", timeout_s=10)
        assert "ollama pull llama3.2" in error.data["message"] and "OLLAMA_MODEL" in error.data["message"]
        status = bus.wait_for("llm.status", state="offline")
        assert "ollama pull llama3.2" in status.data["reason"]


def test_malformed_bus_frames_are_dropped_and_nothing_crashes(system, fake_ollama):
    context = zmq.Context()
    rogue = context.socket(zmq.PUB)
    rogue.connect(system.settings.bus_pub_addr)
    garbage = [
        [b"journal.todo.added", b"\xc1not msgpack"],
        [b"journal.todo.added", protocol.encode(protocol.Message("journal.todo.added", {}, "x", seq=1))[1][:-3]],
        [b"llm.token", msgpack.packb({"v": 99, "type": "llm.token", "src": "x", "ts": 1, "data": {}})],
        [b"llm.bogus", msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "llm.bogus", "src": "x", "ts": 1, "data": {}})],
        [b"llm.token", msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "llm.token", "src": "x", "ts": 1,
                                                    "data": {"no_reply_id": True}})],
        [b"single frame"],
        [b"control.stop", b"", b"extra"],
        # Well-formed, but its reply id would land in every tab's HTML: dropped, not relayed.
        [b"llm.token", msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "llm.token", "src": "x", "ts": 1,
                                      "data": {"reply_id": 'x"><img src=x onerror=alert(1)>', "text": "t"}})],
        [b"llm.done", msgpack.packb({"v": protocol.PROTOCOL_VERSION, "type": "llm.done", "src": "x", "ts": 1, "data": {"reply_id": 5}})],
    ]
    try:
        # A PUB socket's first messages are lost while it connects (slow joiner): resend until the watcher has seen
        # the last frame of a round, which the web's relay must drop as malformed (a done without its text).
        for _ in range(50):
            for frames in garbage:
                rogue.send_multipart(frames)
            try:
                system.bus.wait_for("llm.done", timeout_s=0.2, reply_id=5)
                break
            except TimeoutError:
                continue
        post(system, "/todos", title="still alive?")
        system.bus.wait_for("journal.reply.saved", timeout_s=10)
        assert all(p.alive() for p in system.processes.values())
        assert "dropped malformed" in system.processes["web"].log()
        # Well-formed llm.* frames from a process that holds no claim are not heard at all (see web/claims.py).
        assert "does not hold claim" in system.processes["web"].log()
        assert "dropped malformed" in system.processes["worker"].log()
    finally:
        rogue.close(linger=0)
        context.term()


def test_the_tap_shows_every_message_type(system, fake_ollama):
    tap = subprocess.Popen([sys.executable, "-m", "bin.tap", "--jsonl"], cwd=ROOT, env=system.env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: set[str] = set()
    try:
        # Attach at any time: the tap's first line is a heartbeat, proving it is connected before we act.
        seen.add(json.loads(tap.stdout.readline())["type"])
        fake_ollama.knobs.tokens_per_s = 200
        fake_ollama.knobs.reply = lambda request: ["x"] * 400
        post(system, "/todos", title="tap me")
        system.bus.wait_for("llm.token")
        httpx.post(system.url + "/stop", headers=HTMX, timeout=5)
        stopped = system.bus.wait_for("journal.reply.saved", done_reason="stopped")
        fake_ollama.knobs.reply = lambda request: ["fine."]
        assert post(system, "/chat/retry", reply_id=stopped.data["reply_id"]).status_code == 200
        todo_id = re.search(r'id="todo-(\d+)"', httpx.get(system.url + "/").text).group(1)
        post(system, f"/todos/{todo_id}/toggle")
        httpx.put(f"{system.url}/todos/{todo_id}", data={"title": "tapped"}, headers=HTMX)
        httpx.delete(f"{system.url}/todos/{todo_id}", headers=HTMX)
        post(system, "/todos", title="clear me")
        post(system, f"/todos/{system.bus.wait_for('journal.todo.added', title='clear me').data['id']}/toggle")
        post(system, "/todos/clear-completed")  # journal.todo.cleared
        post(system, "/model", model="fake-model:latest")  # journal.model.chosen, control.model
        tab = Tab(system.ws_url)
        try:
            post(system, "/pull", model="no-such-model")  # control.pull, llm.pull
            system.bus.wait_for("llm.pull", state="failed")
            # The web heard it too (its tabs are told), so the next pull is not "already pulling".
            tab.wait_for_text("Ollama has no model named no-such-model")
        finally:
            tab.close()
        fake_ollama.registry.append(FakeModel("another-one:latest"))
        fake_ollama.pull_knobs.hold_at_bytes = 0  # held at its start: certain to be running when cancelled
        post(system, "/pull", model="another-one")
        fake_ollama.wait_for(lambda: fake_ollama.pull_knobs.hold_at_bytes is None, what="the pull to be held")
        post(system, "/pull/cancel")  # control.cancel
        fake_ollama.release_pull()
        fake_ollama.knobs.thinking = ["hmm"]  # llm.thinking
        fake_ollama.knobs.tool_calls = lambda request: [] if request["messages"][-1]["role"] == "tool" else [
            {"name": "add_todo", "arguments": {"title": "tool me"}},  # journal.tool.applied (#1: the list is empty)
            {"name": "delete_todo", "arguments": {"id": 1}}]  # journal.tool.proposed
        post(system, "/chat", text="add one and drop it")
        proposed = system.bus.wait_for("journal.tool.proposed")
        assert post(system, f"/tools/{proposed.seq}/deny").status_code == 204  # journal.tool.settled
        fake_ollama.knobs.tool_calls = lambda request: []
        fake_ollama.knobs.status = 500
        post(system, "/chat", text="hello tap")
        system.bus.wait_for("llm.error")
        fake_ollama.knobs.status, fake_ollama.knobs.tokens_per_s = 200, 20
        fake_ollama.knobs.reply = lambda request: ["slow"] * 100
        post(system, "/chat", text="then die")
        system.bus.wait_for("llm.token", timeout_s=15)
        os.kill(system.processes["worker"].pid, signal.SIGKILL)  # its claim ends: journal.claim.ended
        wanted = set(protocol.KNOWN_TYPES)
        for line in tap.stdout:
            seen.add(json.loads(line)["type"])
            if seen >= wanted:
                break
        assert seen == wanted
    finally:
        tap.send_signal(signal.SIGTERM)
        assert tap.wait(5) == 0


def test_the_model_is_told_the_whole_list_even_when_its_actions_left_the_window(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url, worker=False, HISTORY_WINDOW="5") as app:
        with httpx.Client(base_url=app.url, headers=HTMX, timeout=5) as client:
            for number in range(1, 13):
                client.post("/todos", data={"title": f"chore {number}"})
            client.post("/todos/1/toggle")
        app.start_worker()  # a cold start: it reads back 5 journal entries and the list as it is now
        app.bus.wait_for("journal.reply.saved", timeout_s=15)
        post(app, "/chat", text="what is still open?")
        chat = app.bus.wait_for("journal.chat.sent", text="what is still open?")
        app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=chat.seq)
    messages = fake_ollama.requests[-1]["messages"]
    assert "added todo #2:" not in str(messages)  # its action is outside the window the worker read
    todo_list = messages[1]["content"].splitlines()  # the list before the history the worker read
    assert "#2 chore 2" in todo_list and "#1 chore 1 (done)" in todo_list
    assert "added todo #12:" in str(messages[2:]) and "#12 chore 12" not in todo_list  # added below: not twice
    assert messages[-1]["content"] == "what is still open?"


def test_the_model_is_loaded_before_the_first_comment_and_every_request_keeps_it_loaded(tmp_path, fake_ollama):
    fake_ollama.knobs.load_s = 0.5
    with running(tmp_path, fake_ollama.url, OLLAMA_KEEP_ALIVE="45m") as app:
        loading = app.bus.wait_for("llm.status", timeout_s=15, state="loading")
        assert "fake-model:latest" in loading.data["reason"]
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        assert [(body["messages"], body["keep_alive"]) for body in fake_ollama.loads] == [([], "45m")]
        assert not fake_ollama.requests  # nothing was generated to load it
        post(app, "/todos", title="warm already")
        saved = app.bus.wait_for("journal.reply.saved", timeout_s=15)
    assert fake_ollama.requests[0]["keep_alive"] == "45m"
    assert fake_ollama.requests[0]["options"]["num_ctx"] == fake_ollama.loads[0]["options"]["num_ctx"]
    assert saved.data["stats"]["eval_count"] == len(saved.data["text"].split())  # Ollama's numbers are kept
    assert fake_ollama.evaluations[0].load_s == 0 and saved.data["stats"]["load_duration"] == 0  # loaded before


def test_prompts_fit_the_models_own_context_once_its_tokenizer_is_measured(tmp_path):
    from tests.fake_ollama import FakeModel
    from tests.fake_runner import prompt_token_count
    # A model without tools: their schemas (~650 tokens here) would leave the history too little of 2048 to test.
    with FakeOllama(models=[FakeModel("small:latest", context_length=2048, capabilities=("completion",))]) as fake:
        fake.knobs.chars_per_token = 2.5  # denser than the worker's first guess
        with running(tmp_path, fake.url, ACTIONS_PER_S="1000", ACTION_BURST="1000") as app:  # OLLAMA_NUM_CTX 4096
            app.bus.wait_for("llm.status", timeout_s=15, state="ready")
            for turn in range(30):
                text = f"turn {turn}: " + " ".join(["tell me more about that"] * 8)
                post(app, "/chat", text=text)
                sent = app.bus.wait_for("journal.chat.sent", text=text)
                app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=sent.seq)
        sizes = [prompt_token_count(request["messages"], 2.5) for request in fake.requests]
        evaluated = [cost.evaluated_tokens / cost.prompt_tokens for cost in fake.evaluations]
    assert {request["options"]["num_ctx"] for request in fake.requests} == {2048}  # never more than the model has
    assert max(sizes) > 1000  # the history did fill the window
    assert max(sizes[5:]) <= 2048 - 512  # num_ctx − num_predict, once the first replies have been measured
    # Ollama's prompt cache did its work: most replies evaluated only their own turn and the one before, and on
    # average well under half the prompt (each turn here is ~100 tokens of a prompt of up to ~1,500).
    assert sorted(evaluated)[len(evaluated) // 2] < 0.25 and sum(evaluated[5:]) / len(evaluated[5:]) < 0.4
