"""Figures 10 to 12, several workers (issue 9): failover when the answering worker is killed, no batch answered twice
under a stream of mixed actions, and figures 1 to 5 with three workers against one."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing

from services import protocol
from services.protocol import Message
from tests.system import System, descendants
from tests.bench.harness import Config, FakeOllamaProcess, Session, StampedTap, paused_gc, progress, summary
from tests.bench.tabs import WAIT_S

TAP_TOPICS = (protocol.LLM_START, protocol.LLM_TOKEN, protocol.LLM_STATUS, protocol.JOURNAL)
TAKEOVER_TOKENS = 3  # the reply that takes over a killed one: short, so the next kill comes soon
MIXED_REPLY_TOKENS, MIXED_TOKENS_PER_S = 5, 200  # figure 11's comments: long enough for actions to pile up meanwhile
BURSTS = (1, 1, 1, 1, 2, 6)  # requests sent at once: mostly one, now and then a few clicks in quick succession
GAPS_S = (0, 0.002, 0.01, 0.03)  # between bursts
ACTION_WEIGHTS = {"add": 4, "toggle": 2, "edit": 2, "delete": 1, "chat": 1}
ACTION_TYPES = (*protocol.TODO_ACTIONS, protocol.CHAT_SENT)
SEED = 9  # the same mix of actions every run


# the journal, read from the web's database


def journal_rows(app: System) -> list[tuple[int, str, dict]]:
    """Every journal entry as (seq, type, data), straight from the web's SQLite file (WAL: it may write meanwhile)."""
    with closing(sqlite3.connect(app.data_dir / "app.sqlite3", timeout=WAIT_S)) as db:
        rows = db.execute("SELECT seq, type, data FROM journal ORDER BY seq").fetchall()
    return [(seq, kind, json.loads(data)) for seq, kind, data in rows]


def duplicate_replies(rows: list[tuple[int, str, dict]]) -> list[dict]:
    """Saved replies that answer something an earlier one answered. A reply saved with covers_seq C answers every
    action after the previous reply's covers_seq up to C, so each must cover more than all before it: one with the
    same covers_seq as an earlier reply, or a smaller one (overlapping batches), is a duplicate."""
    found, covered, through = [], set(), 0
    for seq, kind, data in rows:
        if kind != protocol.REPLY_SAVED:
            continue
        covers = data["covers_seq"]
        if covers <= through:
            found.append({"seq": seq, "reply_id": data.get("reply_id"), "covers_seq": covers,
                          "worker_id": data.get("worker_id"), "same_covers_seq": covers in covered})
        covered.add(covers)
        through = max(through, covers)
    return found


# waiting on the tap


async def heard(tap: StampedTap, predicate: Callable[[Message], bool], what: str, start: int,
                timeout_s: float = WAIT_S) -> tuple[float, Message]:
    """The first message from index `start` on matching `predicate`, with the time.time() it reached the tap."""
    return await asyncio.to_thread(tap.wait_for_stamped, predicate, timeout_s, what, start)


def of(kind: str, **data) -> Callable[[Message], bool]:
    return lambda message: message.type == kind and all(message.data.get(k) == v for k, v in data.items())


def heartbeats(tap: StampedTap, start: int = 0) -> list[Message]:
    return [message for _, message in tap.messages.items[start:] if message.type == protocol.LLM_STATUS]


def all_ready(workers: int, gone: set[str], start: int) -> Callable[[list], bool]:
    """`workers` workers, none of them killed, whose latest heartbeat from index `start` on says ready."""
    def check(items: list) -> bool:
        latest = {message.data.get("worker_id"): message.data.get("state") for _, message in items[start:]
                  if message.type == protocol.LLM_STATUS and message.data.get("worker_id") not in gone}
        return sum(state == "ready" for state in latest.values()) >= workers

    return check


# figure 10: failover


def real_pid(app: System, tap: StampedTap, worker_id: str) -> int:
    """The pid in this worker's heartbeats, checked to run under the process tests.system started for it: that one
    is bin/respawn, which must live on to start the worker again."""
    pid = next(m.data["pid"] for m in reversed(heartbeats(tap)) if m.data.get("worker_id") == worker_id)
    wrapper = app.worker_of(worker_id)
    if pid not in descendants(wrapper.pid):
        raise RuntimeError(f"worker {worker_id} (pid {pid}) does not run under bin/respawn ({wrapper.name})")
    return pid


async def kill_answering_worker(session: Session, tap: StampedTap, index: int, workers: int, gone: set[str],
                                config: Config) -> dict:
    """One kill of figure 10: a todo, its (slow) comment streaming, kill -9 of the worker saying it, then another
    worker's reply to the same batch, its first token, its saved entry, and the killed worker back and ready."""
    app, fake = session.app, session.fake
    start = len(tap.messages.items)
    fake.set(config.failover_tokens, config.failover_tokens_per_s)
    title = f"failover {index}"
    await session.post_todo(title)
    seq = await session.todo_seq(title)
    _, begun = await heard(tap, lambda m: m.type == protocol.LLM_START and m.data["covers_seq"] >= seq,
                           f"a reply to seq {seq}", start)
    killed = begun.data
    await heard(tap, of(protocol.LLM_TOKEN, reply_id=killed["reply_id"]), "its first token", start)
    fake.set(TAKEOVER_TOKENS)  # for the reply that takes over: the one streaming keeps its own knobs
    running = {m.data["worker_id"] for m in heartbeats(tap)} - gone - {killed["worker_id"]}
    pids = {m.data["pid"] for m in heartbeats(tap)}
    pid = real_pid(app, tap, killed["worker_id"])
    mark = len(tap.messages.items)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    gone.add(killed["worker_id"])

    def takes_over(m: Message) -> bool:
        return (m.type == protocol.LLM_START and m.data["covers_seq"] == killed["covers_seq"]
                and m.data["reply_id"] != killed["reply_id"] and m.data["worker_id"] != killed["worker_id"])

    ended_at, ended = await heard(tap, of(protocol.CLAIM_ENDED, token=killed["token"]), "the claim's end", mark)
    started_at, takeover = await heard(tap, takes_over, f"another worker's reply through seq {seq}", mark)
    reply_id = takeover.data["reply_id"]
    token_at, _ = await heard(tap, of(protocol.LLM_TOKEN, reply_id=reply_id), "its first token", mark)
    # The batch answered, once: normally by that reply; under heavy load its worker may in turn miss heartbeats and
    # another worker answers (the duplicates figure and the tests check that it is never answered twice).
    await heard(tap, lambda m: m.type == protocol.REPLY_SAVED and m.data["covers_seq"] >= killed["covers_seq"],
                f"a reply through seq {killed['covers_seq']} saved", mark)
    back_at, _ = await heard(tap, lambda m: m.type == protocol.LLM_STATUS and m.data.get("pid") not in pids
                             and m.data.get("state") == "ready", "the killed worker back and ready", mark, WAIT_S * 2)
    await asyncio.to_thread(tap.messages.wait_until, all_ready(workers, gone, mark), WAIT_S, f"{workers} ready")
    return {"killed_reply_id": killed["reply_id"], "failover_s": token_at - killed_at,
            "claim_ended_s": ended_at - killed_at, "takeover_start_s": started_at - killed_at,
            "back_s": back_at - killed_at, "reason": ended.data.get("reason"),
            "by": "running" if takeover.data["worker_id"] in running else "respawned"}


async def failover(app: System, fake: FakeOllamaProcess, config: Config, workers: int) -> dict:
    """Figure 10: `workers` workers under bin/respawn; again and again, kill -9 the one streaming a comment and time
    from the kill to the first token of another worker's reply to the same batch, as heard on the bus. Each kill
    starts from `workers` ready workers. No interrupted reply may be saved."""
    session = Session(app, fake, None)
    tap = StampedTap(app.settings.bus_sub_addr, TAP_TOPICS)
    kills: list[dict] = []
    gone: set[str] = set()  # the killed workers' ids (a respawned worker has a new one)
    try:
        await heard(tap, of(protocol.LLM_STATUS), "a heartbeat: the tap is subscribed", 0)
        for index in range(config.failover_kills):
            kills.append(await kill_answering_worker(session, tap, index, workers, gone, config))
    finally:
        tap.close()
        await session.close()
        fake.take_sent()  # the interrupted replies' tokens: no later figure's
    saved = {data["reply_id"] for _, kind, data in journal_rows(app) if kind == protocol.REPLY_SAVED}
    return {"workers": workers, "kills": len(kills), "reply_tokens": config.failover_tokens,
            "tokens_per_s": config.failover_tokens_per_s,
            "failover_ms": summary([kill["failover_s"] for kill in kills], 1000),
            "claim_ended_ms": summary([kill["claim_ended_s"] for kill in kills], 1000),
            "takeover_start_ms": summary([kill["takeover_start_s"] for kill in kills], 1000),
            "back_s": summary([kill["back_s"] for kill in kills]),
            "by_running_worker": sum(kill["by"] == "running" for kill in kills),
            "by_respawned_worker": sum(kill["by"] == "respawned" for kill in kills),
            "ended_disconnected": sum(kill["reason"] == "disconnected" for kill in kills),
            "interrupted_replies_saved": sum(kill["killed_reply_id"] in saved for kill in kills)}


# figure 11: duplicates


def plan_burst(rng: random.Random, live: list[int], size: int) -> list[tuple[str, int | None]]:
    """`size` actions drawn by ACTION_WEIGHTS, each todo the target of at most one of them (a toggle racing a delete
    of the same todo would test the 404, not the workers); a toggle, edit or delete with no todo left is an add."""
    free, plan = list(live), []
    kinds, weights = zip(*ACTION_WEIGHTS.items())
    for _ in range(size):
        kind = rng.choices(kinds, weights)[0]
        if kind in ("toggle", "edit", "delete") and free:
            plan.append((kind, free.pop(rng.randrange(len(free)))))
        else:
            plan.append(("add" if kind != "chat" else "chat", None))
    return plan


async def act(session: Session, kind: str, target: int | None, number: int) -> None:
    http = session.http
    if kind == "add":
        response = await http.post("/todos", data={"title": f"mixed {number}"})
    elif kind == "toggle":
        response = await http.post(f"/todos/{target}/toggle")
    elif kind == "edit":
        response = await http.put(f"/todos/{target}", data={"title": f"mixed {number}, edited"})
    elif kind == "delete":
        response = await http.delete(f"/todos/{target}")
    else:
        response = await http.post("/chat", data={"text": f"Question {number}: is this list ever done?"})
    response.raise_for_status()


async def mixed_actions(session: Session, count: int, rng: random.Random) -> dict[str, int]:
    """`count` todo adds, toggles, edits, deletes and chat messages over HTTP, a burst of concurrent requests now and
    then; returns how many of each kind."""
    bus, live, tally, done = session.app.bus, [], Counter(), 0
    start = len(bus.messages.items)
    while done < count:
        plan = plan_burst(rng, live, min(count - done, rng.choice(BURSTS)))
        await asyncio.gather(*(act(session, kind, target, done + i) for i, (kind, target) in enumerate(plan)))
        for i, (kind, target) in enumerate(plan):
            if kind == "add":
                title = f"mixed {done + i}"
                added = await asyncio.to_thread(bus.wait_for, protocol.TODO_ADDED, WAIT_S, start, title=title)
                live.append(added.data["id"])
            elif kind == "delete":
                live.remove(target)
        tally.update(kind for kind, _ in plan)
        done += len(plan)
        await asyncio.sleep(rng.choice(GAPS_S))
    return dict(tally)


async def duplicates(app: System, fake: FakeOllamaProcess, config: Config) -> dict:
    """Figure 11: many mixed actions with several workers, then the journal: no batch may be answered twice, and
    Ollama is asked once per saved reply. Also counted over the whole journal of this system (failovers included)."""
    session = Session(app, fake, None)
    first_seq = max((seq for seq, _, _ in journal_rows(app)), default=0)
    before = fake.set(MIXED_REPLY_TOKENS, MIXED_TOKENS_PER_S)
    try:
        tally = await mixed_actions(session, config.duplicate_actions, random.Random(SEED))
        last = max(seq for seq, kind, _ in journal_rows(app) if kind in ACTION_TYPES)
        await session.reply_covering(last, WAIT_S + config.duplicate_actions * 0.1)
    finally:
        await session.close()
    requests = fake.set(TAKEOVER_TOKENS) - before
    fake.take_sent()
    rows = journal_rows(app)
    phase = [row for row in rows if row[0] > first_seq]
    replies = sum(kind == protocol.REPLY_SAVED for _, kind, _ in phase)
    found = duplicate_replies(rows)
    return {"workers": len({data.get("worker_id") for _, kind, data in phase if kind == protocol.REPLY_SAVED}),
            "actions": sum(kind in ACTION_TYPES for _, kind, _ in phase), "by_kind": tally, "replies": replies,
            "ollama_requests": requests, "extra_requests": requests - replies,
            "duplicates": sum(d["seq"] > first_seq for d in found), "duplicates_whole_journal": len(found),
            "duplicate_examples": found[:5]}


async def several_workers(app: System, fake: FakeOllamaProcess, config: Config, workers: int) -> dict:
    progress(f"10: failover, {config.failover_kills} kills of the answering worker of {workers}")
    with paused_gc():
        figures = {"failover": await failover(app, fake, config, workers)}
    progress(f"11: duplicates, {config.duplicate_actions} mixed actions with {workers} workers")
    figures["duplicates"] = await duplicates(app, fake, config)
    return figures


# figure 12: three workers against one

SCALING = (  # (name, figure, path to its value, higher is better)
    ("relay_overhead_p99_ms", "relay", ("overhead_ms", "p99"), False),
    ("action_to_first_token_p99_ms", "action_to_first_token", ("overhead_ms", "p99"), False),
    ("throughput_tokens_per_s", "throughput", ("relayed_tokens_per_s",), True),
    ("fan_out_p99_ms", "fan_out", ("overhead_ms", "p99"), False),
    ("todo_post_p99_ms", "post_while_streaming", ("latency_ms", "p99"), False),
)


def value_at(figures: dict, name: str, path: tuple[str, ...]):
    value = figures[name]
    for key in path:
        value = value[key]
    return value


def worker_scaling(one: dict, several: dict) -> dict:
    """Figure 12: figures 1 to 5 measured with several workers against one worker, and the ratio several/one (above 1
    is worse for a latency, below 1 for a throughput). Page load (figure 8) is not repeated: the workers do not
    take part in it."""
    scaling = {}
    for name, figure, path, higher_is_better in SCALING:
        before, after = value_at(one, figure, path), value_at(several, figure, path)
        scaling[name] = {"one_worker": before, "several_workers": after,
                         "ratio": after / before if before and after is not None else None,
                         "higher_is_better": higher_is_better}
    return scaling
