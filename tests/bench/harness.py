"""The benchmark's harness: its configuration, statistics, the fake Ollama in a process of its own, and the system
under test with the session that drives it."""
from __future__ import annotations

import asyncio
import gc
import io
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import zmq

from services import protocol
from services.busclient import HWM_MESSAGES
from services.protocol import ProtocolError
from tests.fake_ollama import FakeOllama
from tests.system import BusWatcher, Recorder, System, descendants, matches, running
from tests.bench.tabs import WAIT_S, Listener, is_final


NO_RATE_LIMIT = {"ACTIONS_PER_S": "100000", "ACTION_BURST": "100000"}  # the web's action limit, once it has one
HTTP_TIMEOUT_S = 10
HISTORY_TODOS = 20
POST_BUDGET_S = 0.1  # a todo POST's latency, generously: figure 5's reply must stream until the last one returns


@dataclass(frozen=True)
class Config:
    relay_tokens: int = 600
    relay_tokens_per_s: float = 100
    action_samples: int = 30
    first_token_delay_s: float = 0.05
    throughput_tokens: int = 5_000
    throughput_tokens_per_s: float = 10_000
    fan_out_clients: int = 100
    fan_out_tokens: int = 300
    fan_out_tokens_per_s: float = 100
    post_clients: int = 20
    post_samples: int = 100
    post_interval_s: float = 0.03
    post_tokens_per_s: float = 100
    history_sizes: tuple[int, ...] = (1_000, 10_000)
    page_loads: int = 20
    floor_messages: int = 3_000
    floor_gap_s: float = 0.0005
    failover_kills: int = 20
    failover_tokens: int = 200  # the reply interrupted by each kill: slow, so it is still streaming when killed
    failover_tokens_per_s: float = 50
    duplicate_actions: int = 500
    browser_rounds: int = 20
    big_list_sizes: tuple[int, ...] = (100, 1_000, 10_000, 50_000)  # figure 14: todos, 70% done
    big_list_loads: int = 10
    big_list_changes: int = 50


QUICK = Config(relay_tokens=40, relay_tokens_per_s=400, action_samples=3, throughput_tokens=300, fan_out_clients=5,
               fan_out_tokens=20, fan_out_tokens_per_s=200, post_clients=3, post_samples=10,
               history_sizes=(200, 1_000), page_loads=3, floor_messages=300, failover_kills=3,
               duplicate_actions=40, browser_rounds=3, big_list_sizes=(100, 1_000), big_list_loads=3,
               big_list_changes=10)


# statistics


def percentile(ordered: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the samples at or below it."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float], scale: float = 1.0) -> dict:
    ordered = sorted(v * scale for v in values)
    if not ordered:
        return {"n": 0, "min": None, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    return {"n": len(ordered), "min": ordered[0], "p50": percentile(ordered, 50), "p95": percentile(ordered, 95),
            "p99": percentile(ordered, 99), "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def page_loads(url: str, loads: int, warm: bool, timeout_s: float = HTTP_TIMEOUT_S) -> dict:
    """`GET /` `loads` times: its time and the page's size. `warm`: one request first, which pays for imports and
    caches and is not counted."""
    times, size = [], 0
    with httpx.Client(base_url=url, timeout=timeout_s, trust_env=False) as client:
        if warm:
            client.get("/").raise_for_status()
        for _ in range(loads):
            started = time.perf_counter()
            response = client.get("/")
            times.append(time.perf_counter() - started)
            response.raise_for_status()
            size = len(response.content)
    return {"page_load_ms": summary(times, 1000), "page_bytes": size}


def rate(times: list[float]) -> float | None:
    """Events per second over the span from the first to the last."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None


# the fake Ollama, in a process of its own


# A reply as a model writes it, for figures about what a reader receives: word-sized tokens (English averages about
# four characters a token), 40 of them.
PROSE = ("Noted. Another todo joins the pile, and I admire your optimism. You have twelve open items, three of "
         "them older than my patience. Shall I pretend this one will be different, or do you want a plan? Fine. Your move.")
PROSE_TOKENS = [word if index == 0 else " " + word for index, word in enumerate(PROSE.split(" "))]


class NumberedReply:
    """The fake's `reply` knob: `tokens` unique numbered tokens per reply, "r<reply>t<index> " (or PROSE)."""

    def __init__(self) -> None:
        self.tokens = 3
        self.prose = False
        self.replies = 0

    def __call__(self, request: dict) -> list[str]:
        self.replies += 1
        if self.prose:
            return PROSE_TOKENS
        return [f"r{self.replies}t{index:05d} " for index in range(self.tokens)]


def serve_fake(conn) -> None:
    """The child process: a FakeOllama driven by (command, argument) pairs from the benchmark over a pipe."""
    reply = NumberedReply()
    with FakeOllama() as fake:
        fake.knobs.reply = reply
        conn.send(fake.url)
        while True:
            try:
                command, argument = conn.recv()
            except EOFError:  # the benchmark is gone
                return
            if command == "knobs":
                reply.tokens = argument.pop("tokens")
                reply.prose = argument.pop("prose")
                fake.knobs = replace(fake.knobs, **argument)  # a new object: a reply streaming keeps its own speed
                conn.send(reply.replies)  # the next reply to start is the first with these knobs
            elif command == "take_sent":
                sent, fake.tokens_sent = fake.tokens_sent, []
                conn.send(sent)
            elif command == "request_times":
                conn.send(fake.request_times)
            else:
                conn.send(None)
                return


class FakeOllamaProcess:
    """tests.fake_ollama.FakeOllama in a child process: `set()` its knobs, `take_sent()` what it wrote since."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve_fake, args=(child,), name="fake-ollama", daemon=True)
        self._process.start()
        child.close()
        self.url = self._receive(WAIT_S)
        self.pid = self._process.pid

    def _receive(self, timeout_s: float):
        try:
            if self._conn.poll(timeout_s):
                return self._conn.recv()
        except EOFError:
            raise RuntimeError("the fake Ollama process died (see its traceback above)") from None
        raise TimeoutError(f"the fake Ollama process did not answer within {timeout_s} s")

    def _ask(self, command: str, argument=None, timeout_s: float = WAIT_S):
        self._conn.send((command, argument))
        return self._receive(timeout_s)

    def set(self, tokens: int, tokens_per_s: float = 0.0, first_token_delay_s: float = 0.0, prose: bool = False) -> int:
        """Knobs for the replies that start from now on (`prose`: PROSE rather than `tokens` numbered tokens);
        returns how many replies were started before."""
        return self._ask("knobs", {"tokens": tokens, "prose": prose, "tokens_per_s": tokens_per_s,
                                   "first_token_delay_s": first_token_delay_s})

    def take_sent(self) -> dict[str, float]:
        """Every token written since the last call: text → time.time() it was written, in the order written."""
        return {text: written_at for written_at, text in self._ask("take_sent")}

    def request_times(self) -> list[float]:
        """time.time() each chat request arrived (reply number n is index n − 1)."""
        return self._ask("request_times")

    def stop(self) -> None:
        try:
            self._ask("stop", timeout_s=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


# the system under test


def subscribed(address: str, topics: tuple[str, ...]) -> tuple[zmq.Context, zmq.Socket]:
    """A SUB socket on the bus, on these topics only, queueing as many messages as the app's own (HWM_MESSAGES)."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic.encode("ascii"))
    socket.connect(address)
    return context, socket


class QuietWatcher(BusWatcher):
    """tests.system.BusWatcher hearing only heartbeats and the journal, not every token: decoding 10,000 tokens/s
    in this process would compete with the clients being timed (and Recorder.wait_for rescans on each one)."""

    TOPICS = (protocol.LLM_STATUS, protocol.JOURNAL)

    def __init__(self, address: str, topics: tuple[str, ...] = TOPICS) -> None:  # BusWatcher's, with a filter
        self.messages = Recorder()
        self._context, self._socket = subscribed(address, topics)
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()


class StampedTap(QuietWatcher):
    """The bus on these topics, each message recorded as (time.time() received here, message). Only for slow
    streams: at thousands of tokens a second it would compete with the clients being timed."""

    def _run(self) -> None:  # BusWatcher._run, stamping each message as it arrives
        while self._running:
            if self._socket.poll(50):
                frames = self._socket.recv_multipart()
                received_at = time.time()
                try:
                    self.messages.add((received_at, protocol.decode(frames)))
                except ProtocolError:
                    pass

    def wait_for_stamped(self, predicate: Callable[[protocol.Message], bool], timeout_s: float, what: str,
                         start: int = 0) -> tuple[float, protocol.Message]:
        """The first (received_at, message) from index `start` on whose message matches `predicate`."""
        return self.messages.wait_for(lambda item: predicate(item[1]), timeout_s, what, start)


class LazyTap:
    """The bus on these topics, read only when asked (`wait_for`, `read_queued`): no thread of this process wakes for
    them while a figure is timed. Two watcher threads did, for each message, on the 2 cores the app and chromium
    share. Messages keep their sender's `ts`; meanwhile they wait in the socket's queue."""

    def __init__(self, address: str, topics: tuple[str, ...]) -> None:
        self.messages: list[protocol.Message] = []
        self._context, self._socket = subscribed(address, topics)

    def read_queued(self, wait_ms: int = 0) -> None:
        """What has arrived, waiting up to `wait_ms` for the first of it."""
        if not self._socket.poll(wait_ms):
            return
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.messages.append(protocol.decode(frames))
            except ProtocolError:
                pass

    def wait_for(self, kind: str, timeout_s: float = 10, start: int = 0, **data) -> protocol.Message:
        """The first message from index `start` on of this type with these data fields (as BusWatcher.wait_for)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for message in self.messages[start:]:
                if matches(message, kind, data):
                    return message
            start = len(self.messages)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {kind} {data or ''}")
            self.read_queued(remaining_ms)

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


class TokenTap(StampedTap):
    """Every llm.token on the bus, stamped as it arrives: splits the relay overhead at the bus."""

    def __init__(self, address: str) -> None:
        super().__init__(address, (protocol.LLM_TOKEN,))

    def segments(self, sent: dict[str, float], tab: dict[str, float]) -> dict:
        """Per token: fake writes → worker publishes (its envelope's ts) → this SUB receives → the tab receives."""
        seen = {message.data["text"]: (received_at, message.ts) for received_at, message in list(self.messages.items)}
        both = [token for token in tab if token in seen and token in sent]
        return {"fake_to_worker_publish_ms": summary([seen[t][1] - sent[t] for t in both], 1000),
                "worker_publish_to_bus_sub_ms": summary([seen[t][0] - seen[t][1] for t in both], 1000),
                "bus_sub_to_tab_ms": summary([tab[t] - seen[t][0] for t in both], 1000)}


def await_ready_workers(bus: BusWatcher, workers: int, timeout_s: float = WAIT_S * 2) -> None:
    """Until `workers` different workers have sent a heartbeat saying they are ready."""
    def ready(items: list) -> bool:
        return len({m.data.get("worker_id") for m in items
                    if m.type == protocol.LLM_STATUS and m.data.get("state") == "ready"}) >= workers

    bus.messages.wait_until(ready, timeout_s, f"{workers} workers ready")


def worker_pids(app: System) -> list[int]:
    """The running worker processes themselves: below bin/respawn when it runs them."""
    return [pid for name, process in app.processes.items() if name.startswith("worker")
            for pid in descendants(process.pid) or [process.pid]]


@contextmanager
def bench_system(tmp_path: Path, ollama_url: str, respawn: bool = False, workers: int = 1) -> Iterator[System]:
    """tests.system.running() with `workers` workers ready and a QuietWatcher as `app.bus`. The process logs it
    prints at the end are kept off stdout (the table goes there) and shown on stderr only if something failed; so
    while the block runs, progress goes to stderr."""
    printed = io.StringIO()
    tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        with redirect_stdout(printed), running(tmp_path, ollama_url, respawn=respawn, workers=workers,
                                               **NO_RATE_LIMIT) as app:
            app.bus.close()
            app.bus = QuietWatcher(app.settings.bus_sub_addr)
            await_ready_workers(app.bus, workers)
            yield app
    except BaseException:
        sys.stderr.write(printed.getvalue())
        raise


@contextmanager
def paused_gc() -> Iterator[None]:
    """This process's garbage collector off while a figure is timed, and a full collection before it, as timeit
    does. This process is the clients: a full collection here (50-140 ms once the benchmark holds tens of thousands
    of frames) stalls every tab's reading at once and was being counted as the app's latency."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/PID/stat (fields 14 and 15, after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per(before: dict[str, float], after: dict[str, float], count: int, scale: float = 1e6) -> dict:
    """CPU used by each process between two readings, per item (default: microseconds), over `count` items."""
    return {name: (after[name] - before[name]) * scale / max(1, count) for name in before}


STARTED = time.monotonic()


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, a CI limit) unwinds like Ctrl-C: every `with` stops the processes it started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def progress(text: str) -> None:
    print(f"bench [{time.monotonic() - STARTED:5.1f} s]: {text}", file=sys.stderr, flush=True)


# the live system: figures 1 to 7


@dataclass
class Streamed:
    reply_id: str
    post_sent_at: float  # time.time() just before the todo POST that caused the reply was sent
    posted_at: float  # ... and when it returned
    sent: dict[str, float]


class Session:
    """The running system, the fake, and an HTTP client: what every live figure uses."""

    def __init__(self, app: System, fake: FakeOllamaProcess, compression: str | None) -> None:
        self.app = app
        self.fake = fake
        self.compression = compression  # "deflate" as browsers offer it, or None
        self.http = httpx.AsyncClient(base_url=app.url, timeout=HTTP_TIMEOUT_S, trust_env=False,
                                      headers={"HX-Request": "true"})

    async def listeners(self, count: int) -> list[Listener]:
        return list(await asyncio.gather(*(Listener.open(self.app.ws_url, self.compression) for _ in range(count))))

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds used so far by each process taking part (the benchmark's own includes its clients; "worker"
        is every worker's together)."""
        pids = {"web": [self.app.processes["web"].pid], "worker": worker_pids(self.app),
                "bus": [self.app.processes["bus"].pid], "fake": [self.fake.pid], "bench": [os.getpid()]}
        return {name: sum(cpu_s(pid) for pid in group) for name, group in pids.items()}

    def todo_count(self) -> int:
        bus = self.app.bus
        return len(bus.of_type(protocol.TODO_ADDED)) - len(bus.of_type(protocol.TODO_DELETED))

    async def post_todo(self, title: str) -> float:
        """Adds a todo; returns the time.time() at which the POST returned."""
        response = await self.http.post("/todos", data={"title": title})
        response.raise_for_status()
        return time.time()

    async def todo_seq(self, title: str) -> int:
        message = await asyncio.to_thread(self.app.bus.wait_for, protocol.TODO_ADDED, WAIT_S, title=title)
        return message.seq

    async def reply_covering(self, seq: int, timeout_s: float) -> str:
        """The id of the saved reply that covers journal entry `seq`: once it is saved, the worker is idle."""
        message = await asyncio.to_thread(
            self.app.bus.messages.wait_for,
            lambda m: m.type == protocol.REPLY_SAVED and m.data["covers_seq"] >= seq, timeout_s,
            f"a reply covering seq {seq}")
        return message.data["reply_id"]

    async def stream_reply(self, listeners: list[Listener], title: str, tokens: int, tokens_per_s: float = 0.0,
                           first_token_delay_s: float = 0.0) -> Streamed:
        """Adds a todo and waits until its comment (`tokens` tokens) is finished in every listener."""
        self.fake.set(tokens, tokens_per_s, first_token_delay_s)
        post_sent_at = time.time()
        posted_at = await self.post_todo(title)
        timeout_s = WAIT_S + first_token_delay_s + 3 * tokens / (tokens_per_s or 5_000)
        reply_id = await self.reply_covering(await self.todo_seq(title), timeout_s)
        await asyncio.gather(*(listener.wait_for(is_final(reply_id), WAIT_S) for listener in listeners))
        return Streamed(reply_id, post_sent_at, posted_at, self.fake.take_sent())

    async def close(self) -> None:
        await self.http.aclose()
