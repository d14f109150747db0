"""Faults a person or the machine can cause, each injected into real processes: stop, bursts, kill -9 of any
process, Ollama misbehaving, a browser that stops reading, garbage on the bus. Nothing is lost or duplicated."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import time

import httpx
import msgpack
import pytest
import zmq

from services import protocol
from tests.system import System, Tab, reply_tokens, running
from tests.test_system import post


def saved_replies(app: System) -> list[dict]:
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        rows = db.execute("SELECT data FROM journal WHERE type = ? ORDER BY seq", (protocol.REPLY_SAVED,))
        return [json.loads(row[0]) for row in rows]


def test_stop_from_any_tab_ends_the_reply_and_keeps_it_marked_stopped(system, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 40
    fake_ollama.knobs.reply = lambda request: [f" w{i}" for i in range(400)]
    watching, stopping = Tab(system.ws_url), Tab(system.ws_url)
    try:
        post(system, "/todos", title="long winded")
        system.bus.wait_for("llm.token")
        assert httpx.post(system.url + "/stop", timeout=5).status_code == 200  # any tab's Stop button
        done = system.bus.wait_for("llm.done", done_reason="stopped")
        fake_ollama.wait_for(lambda: fake_ollama.disconnects == 1, 5, "the stream to Ollama to be closed")
        assert 0 < len(done.data["text"]) < len("".join(f" w{i}" for i in range(400)))
        system.bus.wait_for("journal.reply.saved", done_reason="stopped")
        for tab in (watching, stopping):
            tab.frames.wait_for(lambda f: "stopped" in f and done.data["reply_id"] in f, 5, "the stopped reply")
    finally:
        watching.close()
        stopping.close()
    page = httpx.get(system.url + "/", timeout=5).text
    assert done.data["text"].strip() in page and ">stopped<" in page


def test_a_burst_of_ten_actions_makes_at_most_two_generations(system, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [" hm"] * 40  # two seconds: the burst arrives while it streams
    titles = [f"chore {i}" for i in range(10)]
    with httpx.Client(base_url=system.url, timeout=5) as client:
        for title in titles:
            assert client.post("/todos", data={"title": title}).status_code == 200
    last = system.bus.wait_for("journal.todo.added", title=titles[-1])
    system.bus.messages.wait_for(lambda m: m.type == "journal.reply.saved" and m.data["covers_seq"] >= last.seq,
                                 15, "a comment covering the whole burst")
    assert len(fake_ollama.requests) <= 2
    final_context = str(fake_ollama.requests[-1]["messages"])
    assert all(f"“{title}”" in final_context for title in titles)


def test_the_status_shows_a_silent_worker_offline_and_ready_again(system):
    tab = Tab(system.ws_url)
    worker = system.worker_pid()
    try:
        os.kill(worker, signal.SIGSTOP)  # alive but silent: no heartbeats
        tab.frames.wait_for(lambda f: 'id="llm-status"' in f and "offline" in f and "not running" in f, 5,
                            "the status to go offline")
        os.kill(worker, signal.SIGCONT)
        start = len(tab.frames.items)
        tab.frames.wait_for(lambda f: 'id="llm-status"' in f and "ready" in f, 5, "ready again", start)
    finally:
        os.kill(worker, signal.SIGCONT)
        tab.close()


def test_a_killed_bus_comes_back_and_nothing_published_meanwhile_is_lost(tmp_path, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [" tick"] * 30
    with running(tmp_path, fake_ollama.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        post(app, "/todos", title="before")
        streaming = app.bus.wait_for("llm.start")
        app.bus.wait_for("llm.token")
        os.kill(app.processes["bus"].pid, signal.SIGKILL)
        post(app, "/todos", title="while the bus was down")  # journaled; its publication reaches no one
        # The streaming reply also finishes while the bus is down: its `done` reaches no one either.
        fake_ollama.wait_for(lambda: len(fake_ollama.tokens_sent) == 30, 10, "the reply to finish")
        app.start_bus()
        # Recovered through catch-up, answered once, and the reply that was streaming is saved exactly once.
        with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
            down_seq = db.execute("SELECT MAX(seq) FROM journal WHERE type = ?", (protocol.TODO_ADDED,)).fetchone()[0]
        app.bus.messages.wait_for(lambda m: m.type == "journal.reply.saved" and m.data["covers_seq"] >= down_seq,
                                  30, "a reply covering the action taken while the bus was down")
        # Read from the database, not the bus: the `done` queued while the bus was down can be saved before this
        # test's own subscriber is back on the new bus. A worker answers the next batch only once its previous
        # reply is saved, so by now it is.
        reply_ids = [reply["reply_id"] for reply in saved_replies(app)]
        assert streaming.data["reply_id"] in reply_ids
        assert len(reply_ids) == len(set(reply_ids))
        assert app.processes["web"].alive() and app.processes["worker"].alive()


@pytest.mark.parametrize("knobs, shown", [
    ({"status": 500, "error_message": "llama runner process has terminated"}, "Ollama answered 500"),
    ({"error_after_tokens": 3}, "error mid-reply"),
    ({"hang_after_tokens": 3}, "sent nothing for 1 s"),
])
def test_an_ollama_fault_is_shown_with_its_fix_and_service_resumes(tmp_path, fake_ollama, knobs, shown):
    with running(tmp_path, fake_ollama.url, OLLAMA_CHUNK_TIMEOUT_S="1") as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        tab = Tab(app.ws_url)
        for key, value in knobs.items():
            setattr(fake_ollama.knobs, key, value)
        post(app, "/chat", text="first try")
        tab.wait_for_text(shown)
        fake_ollama.knobs.status, fake_ollama.knobs.error_after_tokens, fake_ollama.knobs.hang_after_tokens = (
            200, None, None)
        post(app, "/chat", text="second try")
        second = app.bus.wait_for("journal.chat.sent", text="second try")
        app.bus.wait_for("journal.reply.saved", timeout_s=20, covers_seq=second.seq)
        tab.close()
        assert shown in httpx.get(app.url, timeout=5).text  # kept in the history: a reload shows it too


def test_a_model_that_loads_slowly_is_not_taken_for_a_hang(tmp_path, fake_ollama):
    fake_ollama.knobs.first_token_delay_s = 2.5  # longer than the between-chunk deadline
    with running(tmp_path, fake_ollama.url, OLLAMA_CHUNK_TIMEOUT_S="1") as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        post(app, "/chat", text="wake up")
        app.bus.wait_for("journal.reply.saved", timeout_s=15)
        assert app.bus.of_type("llm.error") == []


def test_a_tab_that_stops_reading_does_not_slow_the_others(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url, ACTIONS_PER_S="1000", ACTION_BURST="1000") as system:
        system.bus.wait_for("llm.status", timeout_s=15, state="ready")
        flood_a_stuck_tab(system, fake_ollama)


def flood_a_stuck_tab(system, fake_ollama):
    # A client that completes the WebSocket handshake and then never reads a byte.
    stuck = socket.create_connection(("127.0.0.1", system.web_port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{system.web_port}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    healthy = Tab(system.ws_url)
    # 80 replies of 100 tokens of 1,000 bytes (a reply is capped at MAX_REPLY_CHARS): 8 MB, more than the kernel
    # buffers (4 MB) plus the tab's queue (1,000,000 characters).
    fake_ollama.knobs.reply = lambda request: ["x" * 1000] * 100
    try:
        with httpx.Client(base_url=system.url, timeout=5) as client:
            for i in range(80):
                client.post("/chat", data={"text": f"flood {i}"})
        last = system.bus.wait_for("journal.chat.sent", text="flood 79")
        done = system.bus.wait_for("llm.done", timeout_s=60, covers_seq=last.seq)
        reply_id = done.data["reply_id"]
        healthy.frames.wait_for(lambda f: f'id="reply-{reply_id}"' in f and 'hx-swap-oob="true"' in f, 30,
                                "the last reply, finished, at the healthy tab")
        assert "".join(reply_tokens(healthy.frames.items, reply_id)) == done.data["text"]  # every token, before it
        assert "fell 1000000 characters behind; disconnecting" in system.processes["web"].log()
    finally:
        stuck.close()
        healthy.close()


def test_a_thousand_garbage_frames_leave_every_process_running(system, fake_ollama):
    rng = random.Random(1234)
    context = zmq.Context()
    rogue = context.socket(zmq.PUB)
    rogue.connect(system.settings.bus_pub_addr)
    topics = [t.encode() for t in protocol.KNOWN_TYPES] + [b"journal.", b"llm.", b"", b"\xff\xfe"]
    bad_envelopes = [
        {"v": 2, "type": "llm.token", "src": "x", "ts": 1, "data": {}},
        {"v": 1, "type": "llm.unknown", "src": "x", "ts": 1, "data": {}},
        {"v": 1, "type": "llm.token", "src": "x", "ts": 1, "data": {"reply_id": None}},
        {"v": 1, "type": "journal.todo.added", "src": "x", "ts": 1, "data": {}, "seq": 10**9},
        {"v": 1, "type": "llm.status", "src": 1, "ts": "now", "data": []},
    ]
    try:
        system.bus.wait_for("llm.status")
        for i in range(1000):
            kind = i % 4
            if kind == 0:
                frames = [rng.choice(topics), rng.randbytes(rng.randrange(1, 200))]
            elif kind == 1:
                frames = [rng.choice(topics), msgpack.packb(rng.choice(bad_envelopes))]
            elif kind == 2:
                frames = [rng.choice(topics)] * rng.randrange(1, 5)
            else:
                frames = [rng.choice(topics), rng.randbytes(2 * 1024 * 1024 if i % 100 == 3 else 64)]
            rogue.send_multipart(frames)
        post(system, "/todos", title="after the storm")
        after = system.bus.wait_for("journal.todo.added", title="after the storm")
        system.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=after.seq)
        assert all(process.alive() for process in system.processes.values())
    finally:
        rogue.close(linger=0)
        context.term()


def test_a_database_locked_while_a_reply_finishes_delays_the_save_and_nothing_else(system, fake_ollama):
    fake_ollama.knobs.hold_after_tokens = 2
    fake_ollama.knobs.reply = lambda request: ["held", " back", " then saved"]
    tab = Tab(system.ws_url)
    blocker = sqlite3.connect(system.data_dir / "app.sqlite3", isolation_level=None)
    try:
        post(system, "/todos", title="save me later")
        start = system.bus.wait_for("llm.start")
        # (Tokens read together travel together: "held" and " back" may be one message.)
        system.bus.messages.wait_for(lambda m: m.type == "llm.token" and m.data["text"].endswith(" back"), 10,
                                     "the tokens before the hold")
        blocker.execute("BEGIN EXCLUSIVE")  # another program holds the database while the reply finishes
        fake_ollama.release()
        system.bus.wait_for("llm.done", reply_id=start.data["reply_id"])
        wait_for_log(system, "could not save from llm.done")  # the relay failed to save, said so, and lives on
        assert httpx.get(system.url + "/", timeout=5).status_code == 200  # the web is not frozen meanwhile
        blocker.execute("ROLLBACK")
        # The worker sends its done again; now it is saved, once, and the tab shows the finished reply.
        system.bus.wait_for("journal.reply.saved", timeout_s=15, reply_id=start.data["reply_id"])
        tab.frames.wait_for(lambda f: f'id="reply-{start.data["reply_id"]}"' in f and "streaming" not in f, 10,
                            "the finished reply")
        post(system, "/chat", text="still listening?")
        chat = system.bus.wait_for("journal.chat.sent", text="still listening?")
        system.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=chat.seq)
    finally:
        blocker.close()
        tab.close()
    assert [r["reply_id"] for r in saved_replies(system)].count(start.data["reply_id"]) == 1


def wait_for_log(app: System, text: str, timeout_s: float = 10) -> str:
    """The web's log once it contains `text` (the log is a file another process writes: polled, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = app.processes["web"].log()
        if text in log:
            return log
        time.sleep(0.05)
    raise TimeoutError(f"the web never logged {text!r}")


def test_a_reset_database_is_followed_by_the_worker_from_its_first_entry(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        for title in ("one", "two", "three"):
            post(app, "/todos", title=title)
        three = app.bus.wait_for("journal.todo.added", title="three")
        app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=three.seq)
        app.processes["web"].stop()
        mark = len(app.bus.messages.items)
        for suffix in ("", "-wal", "-shm"):  # a person deletes the database to start over
            (app.data_dir / f"app.sqlite3{suffix}").unlink(missing_ok=True)
        app.start_web()
        post(app, "/todos", title="a fresh start")
        fresh = app.bus.wait_for("journal.todo.added", title="a fresh start")
        assert fresh.seq == 1
        saved = app.bus.wait_for("journal.reply.saved", timeout_s=15, start=mark, covers_seq=1)
        assert "fresh start" in fake_ollama.requests[-1]["messages"][-1]["content"]
        assert "three" not in json.dumps(fake_ollama.requests[-1]["messages"])  # the old journal is forgotten
        assert saved.seq > 1


def test_a_reply_that_cannot_be_saved_is_given_up_on_with_one_message(system, fake_ollama):
    fake_ollama.knobs.hold_after_tokens = 1
    fake_ollama.knobs.reply = lambda request: ["never", " saved"]
    tab = Tab(system.ws_url)
    blocker = sqlite3.connect(system.data_dir / "app.sqlite3", isolation_level=None)
    try:
        post(system, "/chat", text="remember this")
        start = system.bus.wait_for("llm.start")
        system.bus.wait_for("llm.token", reply_id=start.data["reply_id"])
        blocker.execute("BEGIN EXCLUSIVE")  # held for longer than the worker keeps sending its done
        fake_ollama.release()
        error = system.bus.wait_for("llm.error", timeout_s=20, reply_id=start.data["reply_id"])
        assert "could not be saved" in error.data["message"]
        tab.wait_for_text("could not be saved")
        resent = [m for m in system.bus.of_type("llm.done") if m.data["reply_id"] == start.data["reply_id"]]
        assert len(resent) == 1 + 5  # the first send and MAX_RESENDS more, then silence
        blocker.execute("ROLLBACK")
        fake_ollama.knobs.hold_after_tokens = None
        chat = system.bus.wait_for("journal.chat.sent", text="remember this")
        system.bus.wait_for("journal.reply.saved", timeout_s=30, covers_seq=chat.seq)  # asked again, answered
    finally:
        blocker.close()
        tab.close()
    assert sum("could not be saved" in f and "msg error" in f for f in tab.frames.items) == 1  # one chat message
