"""Figures 1–9 of the benchmark, each measured on the running system by a function of its own."""
from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from pathlib import Path

import zmq

from services import config, protocol
from web.components import TOKEN_FRAME
from store import Store

from tests.system import Process, System
from tests.bench.harness import (
    HISTORY_TODOS, POST_BUDGET_S, Config, FakeOllamaProcess, Session, Streamed, TokenTap,
    bench_system, cpu_per, page_loads, paused_gc, progress, rate, rss_mb, summary,
)
from tests.bench.tabs import (
    WAIT_S, Frame, Listener, by_reply, close_listeners, counts, delivery, frame_bytes, index_of, is_bubble, is_final,
    reply_number,
)


async def relay_overhead(session: Session, config: Config) -> dict:
    """Figures 1 and 6: one tab, one reply at a steady rate; per-token overhead, then the bytes it took."""
    [listener] = await session.listeners(1)
    tap = TokenTap(session.app.settings.bus_sub_addr)
    try:
        before = session.cpu_s()
        streamed = await session.stream_reply([listener], "relay", config.relay_tokens, config.relay_tokens_per_s)
        # At a model's pace every token travels alone: no batching, each one pays every wakeup (compare figure 3).
        cpu = cpu_per(before, session.cpu_s(), config.relay_tokens)
    finally:
        tap.close()
        await close_listeners([listener])
    got = delivery(listener, streamed.reply_id, streamed.sent)
    tab = {token: frame.at for frame in listener.frames for _, token in frame.tokens}
    relay = {"tokens_per_s": config.relay_tokens_per_s, "overhead_ms": summary(got.overheads_s, 1000),
             "cpu_us_per_token": cpu,
             **tap.segments(streamed.sent, tab), **counts([got])}
    return {"relay": relay, "bytes": wire_figures(listener, streamed)}


def wire_figures(listener: Listener, streamed: Streamed) -> dict:
    """Figure 6: frame bytes (payload + WebSocket header, uncompressed) for the reply and per token, against its
    text; and the bytes actually read off the socket, as compressed by the negotiated extension."""
    frames = listener.frames
    first = index_of(frames, is_bubble(streamed.reply_id), "the reply's new bubble")
    last = index_of(frames, is_final(streamed.reply_id), "the finished reply")
    token_frames = [frame for frame in frames[first:last] if frame.text.startswith(TOKEN_FRAME)]
    overheads = []
    for frame in token_frames:
        tokens = [token for _, token in frame.tokens]
        overheads += [(frame_bytes(frame.text) - len("".join(tokens).encode())) / len(tokens)] * len(tokens)
    text_bytes = len("".join(streamed.sent).encode())
    wire_before = frames[first - 1].wire_bytes if first else 0
    token_text_mean = text_bytes / max(1, len(streamed.sent))
    return {
        "compression": listener.compression(),
        "reply_text_bytes": text_bytes,
        "reply_frame_bytes": sum(frame_bytes(frame.text) for frame in frames[first:last + 1]),
        "reply_wire_bytes": frames[last].wire_bytes - wire_before,
        "token_text_bytes_mean": token_text_mean,
        "token_overhead_bytes": summary(overheads),
        "token_frame_example": token_frames[0].text if token_frames else None,
        "token_wire_overhead_bytes_mean": ((token_frames[-1].wire_bytes - token_frames[0].wire_bytes)
                                           / (len(token_frames) - 1) - token_text_mean
                                           if len(token_frames) > 1 else None),
    }


async def action_to_first_token(session: Session, config: Config) -> dict:
    """Figure 2: from a todo POST returning to the first token of its comment in a tab, minus the fake's configured
    time to first token; split at the moment the fake wrote that token (worker side, then relay side). The worker
    hears of the todo before the POST returns, so its side can be negative; hence also: from the POST being sent."""
    delay_s = config.first_token_delay_s
    [listener] = await session.listeners(1)
    overheads, from_send, worker_side, relay_side, deliveries = [], [], [], [], []
    try:
        for sample in range(config.action_samples):
            streamed = await session.stream_reply([listener], f"action {sample}", 3, 0, delay_s)
            got = delivery(listener, streamed.reply_id, streamed.sent)
            deliveries.append(got)
            if got.times:
                first_written = next(iter(streamed.sent.values()))
                overheads.append(got.times[0] - streamed.posted_at - delay_s)
                from_send.append(got.times[0] - streamed.post_sent_at - delay_s)
                worker_side.append(first_written - streamed.posted_at - delay_s)
                relay_side.append(got.times[0] - first_written)
    finally:
        await close_listeners([listener])
    return {"first_token_delay_s": delay_s, "overhead_ms": summary(overheads, 1000),
            "overhead_from_post_sent_ms": summary(from_send, 1000),
            "worker_side_ms": summary(worker_side, 1000), "relay_side_ms": summary(relay_side, 1000),
            **counts(deliveries)}


async def throughput(session: Session, tokens: int, tokens_per_s: float) -> dict:
    """Figure 3: one tab, one long reply as fast as the fake is told to write it (0: as fast as it can)."""
    [listener] = await session.listeners(1)
    try:
        before = session.cpu_s()
        streamed = await session.stream_reply([listener], f"throughput {tokens_per_s:g}", tokens, tokens_per_s)
        cpu = cpu_per(before, session.cpu_s(), tokens)
    finally:
        await close_listeners([listener])
    got = delivery(listener, streamed.reply_id, streamed.sent)
    written = list(streamed.sent.values())
    return {"configured_tokens_per_s": tokens_per_s or "unthrottled", "tokens": tokens,
            "fake_tokens_per_s": rate(written), "relayed_tokens_per_s": rate(got.times),
            "end_to_end_s": got.times[-1] - written[0] if got.times else None,
            "overhead_ms": summary(got.overheads_s, 1000), "cpu_us_per_token": cpu, **counts([got])}


async def fan_out(session: Session, config: Config) -> dict:
    """Figure 4: many tabs, one reply: every tab gets every token, in order; overhead over all of them."""
    listeners = await session.listeners(config.fan_out_clients)
    try:
        before = session.cpu_s()
        streamed = await session.stream_reply(listeners, "fan-out", config.fan_out_tokens, config.fan_out_tokens_per_s)
        cpu = cpu_per(before, session.cpu_s(), config.fan_out_tokens * len(listeners))
    finally:
        await close_listeners(listeners)
    deliveries = [delivery(listener, streamed.reply_id, streamed.sent) for listener in listeners]
    complete = sum(1 for d in deliveries if d.finished and d.lost == d.reordered == d.duplicated == 0)
    return {"clients": len(listeners), "complete_clients": complete, "tokens_per_s": config.fan_out_tokens_per_s,
            "overhead_ms": summary([s for d in deliveries for s in d.overheads_s], 1000),
            "cpu_us_per_frame": cpu, **counts(deliveries)}


async def timed_posts(session: Session, titles: list[str], interval_s: float) -> tuple[list[float], list[float]]:
    """A todo POST for each title, `interval_s` apart: (latency of each, time.time() each returned)."""
    latencies, returned = [], []
    for title in titles:
        started = time.perf_counter()
        returned.append(await session.post_todo(title))
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(interval_s)
    return latencies, returned


async def delete_todos(session: Session, titles: list[str]) -> None:
    """Deletes the todos with these titles and waits for the worker's comment on that."""
    for title in titles:
        added = await asyncio.to_thread(session.app.bus.wait_for, protocol.TODO_ADDED, WAIT_S, title=title)
        (await session.http.delete(f"/todos/{added.data['id']}")).raise_for_status()
    deleted = await asyncio.to_thread(session.app.bus.wait_for, protocol.TODO_DELETED, WAIT_S, id=added.data["id"])
    await session.reply_covering(deleted.seq, WAIT_S)


async def idle_posts(session: Session, config: Config) -> list[float]:
    """Figure 5's baseline: the same POSTs with the same tabs open and no long reply streaming (each comment is one
    token); the todos are deleted again, so both runs see a todo list of the same size."""
    session.fake.set(1)
    titles = [f"idle {index}" for index in range(config.post_samples)]
    latencies, _ = await timed_posts(session, titles, config.post_interval_s)
    await session.reply_covering(await session.todo_seq(titles[-1]), WAIT_S)
    await delete_todos(session, titles)
    return latencies


async def post_while_streaming(session: Session, config: Config) -> dict:
    """Figure 5: todo POST latency while a reply streams to many tabs, against the same POSTs with nothing
    streaming; the stream must not suffer either."""
    listeners = await session.listeners(config.post_clients)
    stream_s = config.post_samples * (config.post_interval_s + POST_BUDGET_S) + 1  # outlasts the POSTs
    titles = [f"while streaming {index}" for index in range(config.post_samples)]
    try:
        idle = await idle_posts(session, config)
        todos = session.todo_count()
        earlier = session.fake.set(math.ceil(config.post_tokens_per_s * stream_s), config.post_tokens_per_s)
        session.fake.take_sent()  # the baseline's comments: not part of this stream

        def streaming_tokens(frame: Frame) -> list[tuple[str, str]]:
            # The first reply started after the knobs were set; a baseline comment may still be finishing.
            return [(reply_id, token) for reply_id, token in frame.tokens if reply_number(token) > earlier]

        await session.post_todo("streaming")
        first = await listeners[0].wait_for(streaming_tokens, WAIT_S)
        if first is None:
            raise TimeoutError("the reply to stream during the POSTs did not start")
        reply_id, first_token = streaming_tokens(first)[0]
        session.fake.set(3)  # the comment folding the POSTs below comes next: short (the one streaming keeps its knobs)
        latencies, returned = await timed_posts(session, titles, config.post_interval_s)
        await asyncio.gather(*(listener.wait_for(is_final(reply_id), stream_s + WAIT_S) for listener in listeners))
        await session.reply_covering(await session.todo_seq(titles[-1]), WAIT_S)
        # The streaming reply is the one its first token came from: another comment may have started meanwhile.
        sent = next(reply for reply in by_reply(session.fake.take_sent()) if first_token in reply)
    finally:
        await close_listeners(listeners)
    deliveries = [delivery(listener, reply_id, sent) for listener in listeners]
    stream_end = min((d.times[-1] for d in deliveries if d.times), default=0)
    return {"clients": len(listeners), "tokens_per_s": config.post_tokens_per_s, "todos_in_list": todos,
            "latency_ms": summary(latencies, 1000), "idle_latency_ms": summary(idle, 1000),
            "posts_during_stream": sum(1 for t in returned if t < stream_end),
            "overhead_ms": summary([s for d in deliveries for s in d.overheads_s], 1000), **counts(deliveries)}


async def worker_recovery(session: Session) -> dict:
    """Figure 7: kill -9 of the worker (running under bin/respawn), a todo posted while it is down; from the kill to
    the new worker's first heartbeat and to the first token of its catch-up comment in a tab."""
    app = session.app
    [listener] = await session.listeners(1)
    session.fake.set(3)
    old_pid, start = app.worker_pid(), len(app.bus.messages.items)
    try:
        killed_at = time.time()
        os.kill(old_pid, signal.SIGKILL)
        posted_at = await session.post_todo("while the worker is down")
        back = await asyncio.to_thread(
            app.bus.messages.wait_for, lambda m: m.type == protocol.LLM_STATUS and m.data.get("pid") != old_pid,
            WAIT_S, "a heartbeat from the restarted worker", start)
        reply_id = await session.reply_covering(await session.todo_seq("while the worker is down"), WAIT_S)
        await listener.wait_for(is_final(reply_id), WAIT_S)
        sent = session.fake.take_sent()
    finally:
        await close_listeners([listener])
    got = delivery(listener, reply_id, sent)
    return {"posted_while_down": posted_at < back.ts, "heartbeat_s": back.ts - killed_at,
            "first_token_s": got.times[0] - killed_at if got.times else None, **counts([got])}


async def live_figures(app: System, fake: FakeOllamaProcess, config: Config, compression: str | None,
                       recovery: bool = True) -> dict:
    """Figures 1 to 7 on one running system; without figure 7 (`recovery=False`) when it runs several workers: that
    figure kills *the* worker, the last one started, and waits for it alone."""
    session = Session(app, fake, compression)
    figures = {}

    async def timed(what: str, figure):
        progress(what)
        with paused_gc():
            return await figure

    try:
        figures.update(await timed("1, 6: relay overhead per token, bytes on the wire",
                                   relay_overhead(session, config)))
        figures["action_to_first_token"] = await timed("2: action to first token",
                                                       action_to_first_token(session, config))
        figures["throughput"] = await timed("3: throughput", throughput(
            session, config.throughput_tokens, config.throughput_tokens_per_s))
        figures["throughput_unthrottled"] = await timed("3: throughput, unthrottled", throughput(
            session, config.throughput_tokens, 0))
        figures["fan_out"] = await timed(f"4: fan-out to {config.fan_out_clients} tabs", fan_out(session, config))
        figures["post_while_streaming"] = await timed(f"5: todo POSTs while streaming to {config.post_clients} tabs",
                                                      post_while_streaming(session, config))
        if recovery:
            figures["recovery"] = await timed("7: worker recovery after kill -9", worker_recovery(session))
    finally:
        await session.close()
    return figures


# long history: figure 8


def preload_journal(data_dir: Path, entries: int) -> None:
    """`entries` journal entries written straight into the store before the web starts: a few todos, then chat
    messages each followed by the reply that answers it (so the worker has nothing left to answer)."""
    store = Store(data_dir)
    todos = HISTORY_TODOS + (entries - HISTORY_TODOS) % 2
    try:
        with store.transaction():
            for index in range(todos):
                todo = store.insert_todo(f"chore {index}")
                store.append(protocol.TODO_ADDED, {"id": todo.id, "title": todo.title}, "web")
            for index in range((entries - todos) // 2):
                chat = store.append(protocol.CHAT_SENT, {"text": f"Question {index}: is this list ever done?"}, "web")
                text = f"**Reply {index}.** Not today, human. " + "You could *start* with the first chore. " * 6
                store.append(protocol.REPLY_SAVED, {"reply_id": f"h{index:011d}", "text": text,
                                                    "covers_seq": chat.seq, "done_reason": "stop",
                                                    "model": "fake-model:latest"}, "web")
    finally:
        store.close()


def long_history(tmp_path: Path, ollama_url: str, entries: int, loads: int) -> dict:
    preload_journal(tmp_path / "data", entries)  # System's DATA_DIR
    with bench_system(tmp_path, ollama_url) as app:
        pages = page_loads(app.url, loads, warm=False)
        rss = {"bus": rss_mb(app.processes["bus"].pid), "web": rss_mb(app.processes["web"].pid),
               "worker": rss_mb(app.worker_pid())}
    return {"entries": entries, **pages, "rss_mb": rss}


# the floor: figure 9


def await_subscription(publisher: zmq.Socket, subscriber: zmq.Socket, frames: list[bytes]) -> None:
    """Publish until the subscription has reached the publisher through the proxy, then drain."""
    deadline = time.monotonic() + WAIT_S
    while not subscriber.poll(10):
        if time.monotonic() > deadline:
            raise TimeoutError("the floor's subscriber heard nothing through the proxy")
        publisher.send_multipart(frames)
    while subscriber.poll(100):
        subscriber.recv_multipart()


def hop_s(publisher: zmq.Socket, subscriber: zmq.Socket, frames: list[bytes]) -> float:
    started = time.perf_counter()
    publisher.send_multipart(frames)
    if not subscriber.poll(1000):
        raise TimeoutError("a floor message was not delivered within 1 s")
    subscriber.recv_multipart()
    return time.perf_counter() - started


def zmq_floor(tmp_path: Path, messages: int, gap_s: float) -> dict:
    """Figure 9: one PUB → proxy (the project's bus process) → SUB hop, with a token-sized message."""
    env = {**os.environ, "DATA_DIR": str(tmp_path / "floor"), "LOG_LEVEL": "WARNING"}  # the default ipc bus
    settings = config.load(env)
    bus = Process("floor-bus", [sys.executable, "-m", "services.bus"], env, tmp_path)
    context = zmq.Context()
    publisher, subscriber = context.socket(zmq.PUB), context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"")
    publisher.connect(settings.bus_pub_addr)
    subscriber.connect(settings.bus_sub_addr)
    frames = protocol.encode(protocol.Message(protocol.LLM_TOKEN, {"reply_id": "r0123456789ab", "index": 42,
                                                                   "text": "r1t00042 "}, src="llm_worker/01234567"))
    try:
        await_subscription(publisher, subscriber, frames)
        latencies = []
        for _ in range(messages):
            latencies.append(hop_s(publisher, subscriber, frames))
            time.sleep(gap_s)
    finally:
        publisher.close(linger=0)
        subscriber.close(linger=0)
        context.term()
        bus.stop()
    return {"message_bytes": sum(len(frame) for frame in frames), "latency_ms": summary(latencies, 1000)}


def ratio(value: dict, floor: dict) -> dict:
    return {key: value[key] / floor[key] if value[key] and floor[key] else None for key in ("p50", "p99")}
