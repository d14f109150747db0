"""Real processes for tests: the bus, web and worker started as `python -m ...` on free ports with a temporary
DATA_DIR, plus watchers that record what the bus and a browser's WebSocket see and let a test await it."""
from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import zmq
from websockets.sync.client import connect as ws_connect

from services import config, curve, protocol
from services.protocol import Message, ProtocolError
from tests.fake_ollama import free_port
from web.components import TOKEN_FRAME

ROOT = Path(__file__).resolve().parent.parent
HTMX = {"HX-Request": "true"}  # the header htmx sends: the web answers such requests with fragments
STOP_TIMEOUT_S = 5  # honcho's budget too: every process must end within it after SIGTERM


class Recorder:
    """A list that a test can wait on: `wait_for(predicate)` returns the first item matching, or times out."""

    def __init__(self) -> None:
        self.items: list = []
        self._changed = threading.Condition()

    def add(self, item) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable, timeout_s: float = 10, what: str = "an item", start: int = 0):
        found = []

        def match() -> bool:
            found[:] = [item for item in self.items[start:] if predicate(item)][:1]
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(match, timeout=timeout_s):
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        return found[0]

    def wait_until(self, condition: Callable[[list], bool], timeout_s: float = 10, what: str = "a condition"):
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.items), timeout=timeout_s):
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        return self.items


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, found through /proc: honcho puts each of its children in a group of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Process:
    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=open(self.log_path, "ab"),
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM, then SIGKILL (of the whole group) if it has not ended within STOP_TIMEOUT_S; returns the
        exit code it ended with by itself, or None if it had to be killed."""
        if not self.alive():
            return self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT_S)
            return None


class System:
    """One app instance: bus, web and worker processes sharing an environment."""

    def __init__(self, tmp_path: Path, ollama_url: str, **overrides: str) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OLLAMA_HOST": ollama_url,
            "OLLAMA_MODEL": "",
            "WEB_HOST": "127.0.0.1",
            "WEB_PORT": str(self.web_port),
            "DATA_DIR": str(self.data_dir),  # the bus and journal sockets default to ipc:// in it
            "HEARTBEAT_S": "0.5",
            "OLLAMA_CONNECT_TIMEOUT_S": "2",
            "OLLAMA_FIRST_TOKEN_TIMEOUT_S": "20",
            "OLLAMA_CHUNK_TIMEOUT_S": "10",
            **overrides,
        }
        self.processes: dict[str, Process] = {}

    @property
    def settings(self) -> config.Settings:
        """The settings every process of this instance reads (addresses included)."""
        return config.load(self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.web_port}/ws"

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, list(args), self.env, self.tmp_path)
        self.processes[name] = process
        return process

    def start_bus(self) -> Process:
        return self.start("bus", sys.executable, "-m", "services.bus")

    def start_web(self) -> Process:
        process = self.start("web", sys.executable, "-m", "web")
        self.wait_for_web(process)
        return process

    def start_worker(self, respawn: bool = False, name: str = "worker") -> Process:
        command = [sys.executable, "-m", "llm_worker"]
        return self.start(name, *(["sh", str(ROOT / "bin" / "respawn")] if respawn else []), *command)

    def worker_of(self, worker_id: str) -> Process:
        """The worker process whose heartbeats carry this worker_id."""
        pid = self.bus.wait_for("llm.status", worker_id=worker_id).data["pid"]
        return next(p for p in self.processes.values() if p.pid == pid or pid in descendants(p.pid))

    def start_all(self) -> "System":
        self.start_bus()
        self.start_web()
        self.start_worker()
        return self

    def wait_for_web(self, process: Process, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"web exited:\n{process.log()}")
            try:
                # A static file, not the page: the page's cost grows with the todo list, readiness does not.
                if httpx.get(self.url + "/static/app.css", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling a port that is not open yet: there is no event to await
        raise TimeoutError(f"web did not answer within {timeout_s} s:\n{process.log()}")

    def worker_pid(self) -> int:
        return int((self.data_dir / "llm_worker.pid").read_text())

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name in reversed(list(self.processes)):
            codes[name] = self.processes[name].stop()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{p.log()}" for name, p in self.processes.items())


class BusWatcher:
    """A subscriber to everything on the bus, in a thread; `messages` records each decoded message."""

    def __init__(self, address: str, keys_dir: Path | None = None) -> None:
        self.messages = Recorder()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        curve.make_client(self._socket, keys_dir)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._socket.connect(address)
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            if self._socket.poll(50):
                try:
                    self.messages.add(protocol.decode(self._socket.recv_multipart()))
                except ProtocolError:
                    pass

    def wait_for(self, kind: str, timeout_s: float = 10, start: int = 0, **data) -> Message:
        return self.messages.wait_for(lambda message: matches(message, kind, data), timeout_s, f"{kind} {data or ''}",
                                      start)

    def of_type(self, kind: str) -> list[Message]:
        return [m for m in self.messages.items if m.type == kind]

    def chats_sent(self, last: str) -> list[str]:
        """The text of every chat message journaled, once the one with text `last` is (the bus may lag a page)."""
        self.wait_for("journal.chat.sent", text=last)
        return [m.data["text"] for m in self.of_type("journal.chat.sent")]

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._socket.close(linger=0)
        self._context.term()


def matches(message: Message, kind: str, data: dict) -> bool:
    """A bus message of this type whose data has these fields (what a watcher's `wait_for` looks for)."""
    return message.type == kind and all(message.data.get(k) == v for k, v in data.items())


STREAMING_BODY = re.compile(r'<div id="rb-([A-Za-z0-9_-]+)" class="body streaming">([^<]*)</div>')  # AssistantReply


class TokenReader:
    """Reads a tab's frames for reply text as the page's script does (web/static/chat-socket.js): a reply's bubble
    arrives with its first token(s), a resync shows the reply streaming now, and each token frame appends to the last
    of those. `read(frame)` gives the (reply_id, text) pairs that frame adds."""

    def __init__(self) -> None:
        self.streaming: str | None = None

    def read(self, frame: str) -> list[tuple[str, str]]:
        if frame.startswith(TOKEN_FRAME):
            return [(self.streaming, frame[len(TOKEN_FRAME):])] if self.streaming else []
        added = []
        for reply_id, text in STREAMING_BODY.findall(frame):
            self.streaming = reply_id
            if text and "beforeend:#chat-log" in frame:  # a bubble: new text (a resync shows text already seen)
                added.append((reply_id, html.unescape(text)))
        return added


def reply_tokens(frames: list[str], reply_id: str) -> list[str]:
    """The texts a tab received for one streaming reply, one per token (its bubble carries the first)."""
    reader = TokenReader()
    return [text for frame in frames for rid, text in reader.read(frame) if rid == reply_id]


class Tab:
    """A browser tab's WebSocket, in a thread; `frames` records every HTML frame the web sends it."""

    def __init__(self, ws_url: str, origin: str | None = None) -> None:
        self.frames = Recorder()
        self._ws = ws_connect(ws_url, origin=origin, open_timeout=5).__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._ws:
                self.frames.add(frame)
        except Exception:
            pass

    def wait_for_text(self, text: str, timeout_s: float = 10) -> str:
        return self.frames.wait_for(lambda frame: text in frame, timeout_s, f"a frame containing {text!r}")

    def send(self, frame: str | bytes) -> None:
        self._ws.send(frame)

    def close_code(self, timeout_s: float = 10) -> int | None:
        """How the web closed this tab's socket, once it has."""
        self._thread.join(timeout=timeout_s)
        assert not self._thread.is_alive(), f"the socket is still open after {timeout_s} s"
        return self._ws.close_code

    def send_chat(self, text: object) -> None:
        """What the page's chat form sends (web/static/chat-socket.js): its fields, as one JSON object."""
        self.send(json.dumps({"text": text}))

    def close(self) -> None:
        self._ws.close()
        self._thread.join(timeout=2)


@contextmanager
def running(tmp_path: Path, ollama_url: str, respawn: bool = False, worker: bool = True, workers: int = 1,
            **overrides: str) -> Iterator[System]:
    """Bus, web and `workers` workers (none if worker=False), with `app.bus` watching the bus from before the
    workers start. Everything is stopped however the block ends; a process that ignores SIGTERM fails the test."""
    app = System(tmp_path, ollama_url, **overrides)
    app.bus = None
    try:
        app.start_bus()
        keys = app.env.get("BUS_KEYS_DIR")
        app.bus = BusWatcher(app.settings.bus_sub_addr, Path(keys) if keys else None)
        app.start_web()
        for number in range(workers if worker else 0):
            app.start_worker(respawn, name="worker" if number == 0 else f"worker{number + 1}")
        yield app
    finally:
        try:
            if app.bus is not None:
                app.bus.close()
        finally:  # (a watcher that fails to close must not leave the processes running)
            codes = app.stop()
            print(app.logs())
    assert all(code is not None for code in codes.values()), f"a process ignored SIGTERM: {codes}"
