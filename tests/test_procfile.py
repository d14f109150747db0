"""The Procfile under `honcho start`, as a person runs it: everything comes up, a killed worker comes back while the
bus and web keep serving, and Ctrl-C ends every process within 5 seconds without a traceback."""
from __future__ import annotations

import os
import sqlite3
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.system import ROOT, BusWatcher, System, descendants, kill_tree


def test_honcho_runs_everything_and_survives_a_killed_worker(tmp_path, fake_ollama):
    app = System(tmp_path, fake_ollama.url)
    env = {**app.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    no_dotenv = tmp_path / "empty.env"  # a developer's own .env must not override the test's addresses
    no_dotenv.write_text("")
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-e", str(no_dotenv)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    bus = BusWatcher(app.settings.bus_sub_addr)
    output = ""
    try:
        first = bus.wait_for("llm.status", timeout_s=20, state="ready")
        killed_at = time.time()
        os.kill(first.data["pid"], signal.SIGKILL)
        back = bus.messages.wait_for(lambda m: m.type == "llm.status" and m.data["pid"] != first.data["pid"], 5,
                                     "a heartbeat from the restarted worker")
        assert back.ts - killed_at < 2
        assert httpx.post(app.url + "/todos", data={"title": "still here"}, timeout=5).status_code == 200
        bus.wait_for("journal.reply.saved", timeout_s=10)
        honcho.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stopped_at = time.monotonic()
        output, _ = honcho.communicate(timeout=10)
        assert time.monotonic() - stopped_at < 5
    finally:
        bus.close()
        if honcho.poll() is None:  # the test failed before its own Ctrl-C: stop everything honcho started
            honcho.send_signal(signal.SIGINT)
            try:
                output += honcho.communicate(timeout=10)[0]
            except subprocess.TimeoutExpired:
                kill_tree(honcho.pid)
                output += honcho.communicate()[0]
        print(output)
    assert "Traceback" not in output
    assert "SIGKILL" not in output  # honcho's note when a process outlived its 5 s
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_honcho_with_three_workers_answers_each_action_once_and_sighup_ends_everything(tmp_path, fake_ollama):
    app = System(tmp_path, fake_ollama.url)
    env = {**app.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    no_dotenv = tmp_path / "empty.env"
    no_dotenv.write_text("")
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-e", str(no_dotenv), "-c", "worker=3"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    bus = BusWatcher(app.settings.bus_sub_addr)
    output = ""
    try:
        bus.messages.wait_until(lambda items: len({m.data["worker_id"] for m in items if m.type == "llm.status"
                                                   and m.data["state"] == "ready"}) == 3, 30, "3 workers ready")
        with httpx.Client(base_url=app.url, timeout=5) as client:
            for title in ("one", "two", "three"):
                client.post("/todos", data={"title": title})
            client.post("/chat", data={"text": "how many of you are there?"})
        chat = bus.wait_for("journal.chat.sent", text="how many of you are there?")
        bus.wait_for("journal.reply.saved", timeout_s=20, covers_seq=chat.seq)
        everything = [honcho.pid, *descendants(honcho.pid)]
        os.killpg(honcho.pid, signal.SIGHUP)  # what closing the terminal does
        output, _ = honcho.communicate(timeout=10)
        deadline = time.monotonic() + 5
        while [pid for pid in everything if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
            time.sleep(0.05)  # processes ending: /proc is polled, there is no event to await
        left = [pid for pid in everything if Path(f"/proc/{pid}").exists()]
        assert not left, f"still running 5 s after SIGHUP: {left}"
    finally:
        bus.close()
        if honcho.poll() is None:
            kill_tree(honcho.pid)
            output += honcho.communicate()[0]
        print(output)
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        covers = [row[0] for row in db.execute(
            "SELECT json_extract(data, '$.covers_seq') FROM journal WHERE type = 'journal.reply.saved'")]
    assert len(covers) == len(set(covers)) == len(fake_ollama.requests)
    assert "Traceback" not in output
