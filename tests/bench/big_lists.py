"""Figure 14, big lists (issue 15): what a page, a reconnect and a change cost when the todo list is long. The
database is filled straight through the store (70% done), then the web is started fresh on that file, so nothing
is cached from the filling; the tabs and clients are the benchmark's own (tests/bench/harness.py).

    python -m tests.bench.big_lists [--sizes 100,1000,10000,50000] [--loads 10]

Per size: `GET /` time and HTML bytes; at the size named by --at (10,000): todo POST and toggle p99, the bytes of
the resync a connecting tab is sent, and the relay overhead of a reply streaming to one tab while rounds of 10 tabs
connect at once."""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from fasthtml.common import to_xml
from store import Store, Todo
from web import components
from tests.bench.harness import (
    HTTP_TIMEOUT_S, FakeOllamaProcess, Session, bench_system, cpu_per, page_loads, paused_gc, progress, summary,
)
from tests.system import System
from tests.bench.tabs import (
    WAIT_S, CountingConnection, Listener, close_listeners, delivery, frame_bytes, is_final,
)

SIZES = (100, 1_000, 10_000, 50_000)
DONE_SHARE = 0.7
PAGE_TIMEOUT_S = max(HTTP_TIMEOUT_S, 120)  # a list rendered whole (the "before") was 4 MB a page
RECONNECTING_TABS = 10
ROUND_EVERY_S = 0.25  # a wave of reconnecting tabs four times a second, for as long as the reply streams
STREAM_TOKENS, STREAM_TOKENS_PER_S = 300, 100  # the reply relayed while tabs reconnect: 3 s
CHANGE_SAMPLES = 50


def fill(data_dir: Path, todos: int, done_share: float = DONE_SHARE) -> None:
    """`todos` todos, `done_share` of them done, spread through the list (7 of every 10 when 0.7). No journal
    entries: the worker has nothing to answer, and gets the list itself when it catches up."""
    store = Store(data_dir)
    try:
        with store.transaction():
            store.db.executemany(
                "INSERT INTO todos (title, done, created_at) VALUES (?, ?, ?)",
                [(f"chore {n}", int(n % 10 < done_share * 10), time.time()) for n in range(todos)])
    finally:
        store.close()


def bytes_per_todo() -> dict:
    """The markup of one todo as the page renders it, open and done, with a typical title."""
    sizes = {state: len(to_xml(components.TodoItem(Todo(4_321, "chore 4321", state == "done"))).encode())
             for state in ("open", "done")}
    return sizes


async def open_tab(url: str, timeout_s: float = WAIT_S) -> Listener:
    # No size limit: before paging, a resync carried the whole list in one frame of megabytes.
    ws = await connect(url, proxy=None, open_timeout=timeout_s, compression=None, max_size=None,
                       create_connection=CountingConnection)
    return Listener(ws)


async def resync_bytes(url: str, timeout_s: float) -> int:
    """What a connecting tab is sent before anything happens: its resync, one frame (see web/app.py on_connect)."""
    tab = await open_tab(url, timeout_s)
    try:
        frame = await tab.wait_for(lambda frame: True, timeout_s)
        if frame is None:
            raise TimeoutError("a connecting tab got no resync")
        return frame_bytes(frame.text)
    finally:
        await close_listeners([tab])


async def timed_changes(session: Session, samples: int) -> dict:
    """todo POST and toggle latency with the big list in place."""
    added, toggled, ids = [], [], []
    for n in range(samples):
        started = time.perf_counter()
        (await session.http.post("/todos", data={"title": f"big list {n}"})).raise_for_status()
        added.append(time.perf_counter() - started)
    await asyncio.to_thread(session.app.bus.wait_for, "journal.todo.added", WAIT_S, title=f"big list {samples - 1}")
    ids = [m.data["id"] for m in session.app.bus.of_type("journal.todo.added")][-samples:]
    for todo_id in ids:
        started = time.perf_counter()
        (await session.http.post(f"/todos/{todo_id}/toggle")).raise_for_status()
        toggled.append(time.perf_counter() - started)
    # The worker comments on these changes: let it finish, so the next figure's reply is not queued behind them.
    last = await asyncio.to_thread(session.app.bus.wait_for, "journal.todo.toggled", WAIT_S, id=ids[-1])
    await session.reply_covering(last.seq, WAIT_S * 4)
    return {"post_ms": summary(added, 1000), "toggle_ms": summary(toggled, 1000)}


async def reconnect_rounds(url: str, tabs: int, stop, timeout_s: float, every_s: float = ROUND_EVERY_S) -> list[float]:
    """Rounds of `tabs` tabs connecting at once, each waiting for its resync then closing, one round starting
    every `every_s` (or as soon as the last ends, if it took longer), until `stop` is set."""
    round_s = []
    while not stop.is_set():
        started = time.perf_counter()
        opened = await asyncio.gather(*(open_tab(url, timeout_s) for _ in range(tabs)))
        await asyncio.gather(*(tab.wait_for(lambda frame: True, timeout_s) for tab in opened))
        await close_listeners(opened)
        round_s.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, every_s - round_s[-1]))  # the pace of the load, not a synchronisation
    return round_s


def reconnecting_tabs(url: str, tabs: int, go, stop, conn, timeout_s: float) -> None:
    """The child process that plays the reconnecting tabs: their handshakes and resyncs are not parsed in the
    process that stamps the streaming tab's tokens, which would count its own delay as the relay's."""
    conn.send("ready")  # imported: its start-up no longer competes with the stream being timed
    if go.wait(timeout_s):
        conn.send(asyncio.run(reconnect_rounds(url, tabs, stop, timeout_s)))


async def relay_while_reconnecting(session: Session, tabs: int, timeout_s: float) -> dict:
    """A reply streams to one tab while rounds of `tabs` tabs connect at once (another process), until the reply
    is finished: the streaming tab's relay overhead per token. With tabs=0, the same reply alone: the baseline on
    this machine as loaded as it is now."""
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    rounds_conn, child_conn = context.Pipe()
    child = context.Process(target=reconnecting_tabs, args=(session.app.ws_url, tabs, go, stop, child_conn, timeout_s),
                            name="reconnecting-tabs", daemon=True)
    if tabs:
        child.start()
        if not await asyncio.to_thread(rounds_conn.poll, timeout_s) or rounds_conn.recv() != "ready":
            raise RuntimeError("the reconnecting tabs' process did not start")
    listener = await open_tab(session.app.ws_url, timeout_s)
    try:
        session.fake.set(STREAM_TOKENS, STREAM_TOKENS_PER_S)
        session.fake.take_sent()
        await session.post_todo("stream while tabs reconnect")
        first = await listener.wait_for(lambda frame: frame.tokens, timeout_s)
        if first is None:
            raise TimeoutError("the reply did not start")
        reply_id = first.tokens[0][0]
        cpu_before = session.cpu_s()
        go.set()
        await listener.wait_for(is_final(reply_id), timeout_s)  # None if it never finished (a stalled web)
        stop.set()
        if tabs and not await asyncio.to_thread(rounds_conn.poll, timeout_s):
            raise TimeoutError("the reconnecting tabs did not report")
        round_s = rounds_conn.recv() if tabs else []
        cpu = cpu_per(cpu_before, session.cpu_s(), max(1, len(round_s) * tabs), scale=1000)
        sent = session.fake.take_sent()
    finally:
        go.set()
        stop.set()
        await close_listeners([listener])
        if tabs:
            await asyncio.to_thread(child.join, WAIT_S)
            if child.is_alive():
                child.terminate()
    got = delivery(listener, reply_id, sent)
    return {"tabs_per_round": tabs, "rounds": len(round_s), "round_ms": summary(round_s, 1000),
            "web_cpu_ms_per_connect": cpu["web"],  # relaying the reply meanwhile included
            "overhead_ms": summary(got.overheads_s, 1000), "finished": got.finished, "lost": got.lost,
            "tokens": got.received}


async def live(app: System, fake: FakeOllamaProcess, samples: int, timeout_s: float) -> dict:
    session = Session(app, fake, compression=None)
    try:
        figures = {"resync_bytes": await resync_bytes(app.ws_url, timeout_s)}
        with paused_gc():
            figures.update(await timed_changes(session, samples))
        with paused_gc():
            figures["relay_alone"] = await relay_while_reconnecting(session, 0, timeout_s)
        with paused_gc():
            figures["relay_while_reconnecting"] = await relay_while_reconnecting(session, RECONNECTING_TABS,
                                                                                 timeout_s)
    finally:
        await session.close()
    return figures


def one_size(tmp_path: Path, fake: FakeOllamaProcess, todos: int, loads: int, changes: int | None) -> dict:
    """Page loads on a fresh web over `todos` todos; with `changes`, the live figures too."""
    fill(tmp_path / "data", todos)  # System's DATA_DIR
    with bench_system(tmp_path, fake.url) as app:
        figure = {"todos": todos, **page_loads(app.url, loads, warm=True, timeout_s=PAGE_TIMEOUT_S)}
        if changes:
            figure.update(asyncio.run(live(app, fake, changes, timeout_s=600)))
    return figure


def big_lists(tmp_path: Path, fake: FakeOllamaProcess, sizes=SIZES, loads: int = 10, at: int = 10_000,
              changes: int = CHANGE_SAMPLES) -> dict:
    """Figure 14 at every size; the live figures at `at` todos (else at the largest size)."""
    at = at if at in sizes else max(sizes)
    results = {"done_share": DONE_SHARE, "live_at": at, "bytes_per_todo": bytes_per_todo(), "sizes": {}}
    for todos in sizes:
        progress(f"14: big lists, {todos:,} todos")
        results["sizes"][str(todos)] = one_size(tmp_path / f"todos-{todos}", fake, todos, loads,
                                                changes if todos == at else None)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.big_lists", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--at", type=int, default=10_000, help="the size at which the live figures are taken")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    fake = FakeOllamaProcess()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
            results = big_lists(Path(tmp), fake, sizes, args.loads, args.at)
    finally:
        fake.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
