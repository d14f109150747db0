"""Several workers, one answer: claims granted through the journal, fenced by token, leased by heartbeat and by the
holder's connection. Real processes; the fake Ollama's request log and the journal are the witnesses."""
from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import sys
from collections import Counter

import httpx
import pytest
import zmq

from services import protocol
from tests.system import ROOT, Process, System, Tab, running
from tests.test_curve import make_keys
from tests.fake_ollama import free_port
from tests.test_faults import saved_replies
from tests.test_system import post


def ready_workers(app: System, count: int) -> set[str]:
    app.bus.messages.wait_until(
        lambda items: len({m.data["worker_id"] for m in items if m.type == "llm.status"
                           and m.data["state"] == "ready"}) >= count, 20, f"{count} workers ready")
    return {m.data["worker_id"] for m in app.bus.of_type("llm.status")}


def assert_each_batch_answered_once(app: System, fake_ollama) -> list[dict]:
    replies = saved_replies(app)
    covers = [r["covers_seq"] for r in replies]
    assert len(covers) == len(set(covers)), f"a batch was answered twice: {Counter(covers).most_common(3)}"
    assert len({r["reply_id"] for r in replies}) == len(replies)
    assert len(fake_ollama.requests) == len(replies), "an Ollama request per saved reply, no more"
    for reply in replies:  # every token of a reply came from the worker whose claim saved it
        senders = {m.data["worker_id"] for m in app.bus.of_type("llm.token") if m.data["reply_id"] == reply["reply_id"]}
        assert senders <= {reply["worker_id"]}, (reply["reply_id"], senders)
    return replies


@pytest.mark.parametrize("workers", [3, 4])
def test_several_workers_answer_every_action_and_burst_exactly_once(tmp_path, fake_ollama, workers):
    fake_ollama.knobs.tokens_per_s = 400
    with running(tmp_path, fake_ollama.url, workers=workers, ACTIONS_PER_S="1000", ACTION_BURST="1000") as app:
        ready_workers(app, workers)
        with httpx.Client(base_url=app.url, headers={"HX-Request": "true"}, timeout=5) as client:
            for round_number in range(8):
                for i in range(3):  # a burst of adds, then a toggle, an edit, a delete and a chat message
                    client.post("/todos", data={"title": f"r{round_number} t{i}"})
                todo_id = round_number * 3 + 1
                client.post(f"/todos/{todo_id}/toggle")
                client.put(f"/todos/{todo_id + 1}", data={"title": f"r{round_number} edited"})
                client.delete(f"/todos/{todo_id + 2}")
                client.post("/chat", data={"text": f"question {round_number}"})
        last = app.bus.wait_for("journal.chat.sent", text="question 7")
        app.bus.wait_for("journal.reply.saved", timeout_s=60, covers_seq=last.seq)
        replies = assert_each_batch_answered_once(app, fake_ollama)
        chats = [m.seq for m in app.bus.of_type("journal.chat.sent")]
        assert set(chats) <= {r["covers_seq"] for r in replies}, "every chat message gets its own reply"


def test_an_action_is_offered_to_the_worker_that_answered_last_right_behind_its_entry(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url, workers=2) as app:
        ready_workers(app, 2)
        first = post_and_wait(app, "first")
        second = post_and_wait(app, "second")
    rows = journal_rows(app)
    for chat in (first, second):
        kind, granted = rows[chat.seq + 1]
        assert kind == protocol.CLAIM_GRANTED and granted["covers_seq"] == chat.seq
    # The second went to the worker that answered the first: its Ollama has the conversation cached.
    assert rows[second.seq + 1][1]["worker_id"] == rows[first.seq + 1][1]["worker_id"]
    assert_each_batch_answered_once(app, fake_ollama)


def test_a_ready_worker_is_granted_the_claim_without_asking_and_can_give_it_back(tmp_path):
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        worker = ForgedWorker(app, "w1")
        try:
            worker.dealer.send(protocol.encode_request(protocol.OP_HEARTBEAT, 1, worker_id="w1"))
            publish_until_seen(app, worker, "llm.status", state="ready", reason="", model="m", ollama_url="u")
            post(app, "/chat", text="anyone?")
            chat = app.bus.wait_for("journal.chat.sent", text="anyone?")
            granted = app.bus.wait_for("journal.claim.granted", worker_id="w1", covers_seq=chat.seq)
            assert granted.seq == chat.seq + 1  # it never asked: offered with the action
            worker.dealer.send(protocol.encode_request(protocol.OP_RELEASE, 2, worker_id="w1", token=granted.seq))
            ended = app.bus.wait_for("journal.claim.ended", token=granted.seq)
            assert ended.data["reason"] == "declined"
        finally:
            worker.close()


def post_and_wait(app: System, text: str):
    post(app, "/chat", text=text)
    chat = app.bus.wait_for("journal.chat.sent", text=text)
    app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=chat.seq)
    return chat


def journal_rows(app: System) -> dict[int, tuple[str, dict]]:
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        return {seq: (kind, json.loads(data)) for seq, kind, data in db.execute("SELECT seq, type, data FROM journal")}


def reply_under_way(app: System, text: str):
    """Send a chat message and return the llm.start of its reply once its first token is out."""
    post(app, "/chat", text=text)
    start = app.bus.wait_for("llm.start")
    app.bus.wait_for("llm.token", reply_id=start.data["reply_id"])
    return start


def test_kill_9_of_the_answering_worker_hands_the_reply_to_another_at_once(tmp_path, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [" word"] * 40
    with running(tmp_path, fake_ollama.url, workers=2) as app:
        ready_workers(app, 2)
        tab = Tab(app.ws_url)
        try:
            start = reply_under_way(app, "tell me a long story")
            app.worker_of(start.data["worker_id"]).popen.send_signal(signal.SIGKILL)
            ended = app.bus.wait_for("journal.claim.ended", token=start.data["token"])
            assert ended.data["reason"] == "disconnected"  # the closed connection told, not the lease
            again = app.bus.messages.wait_for(
                lambda m: m.type == "llm.start" and m.data["worker_id"] != start.data["worker_id"], 10,
                "the other worker's start")
            assert again.data["covers_seq"] == start.data["covers_seq"]
            tab.frames.wait_for(lambda f: start.data["reply_id"] in f and "interrupted" in f, 10, "interrupted")
            app.bus.wait_for("journal.reply.saved", timeout_s=15, reply_id=again.data["reply_id"])
        finally:
            tab.close()
        replies = saved_replies(app)
        assert [r["reply_id"] for r in replies] == [again.data["reply_id"]]
        # A reload shows the cut-off reply as the live tab did: marked interrupted, not saved as a reply.
        page = httpx.get(app.url, timeout=5).text
        assert f'id="reply-{start.data["reply_id"]}"' in page and "interrupted" in page


def test_a_frozen_worker_loses_its_claim_and_nothing_it_says_after_waking_is_kept(tmp_path, fake_ollama):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [" word"] * 30
    with running(tmp_path, fake_ollama.url, workers=2) as app:
        ready_workers(app, 2)
        tab = Tab(app.ws_url)
        frozen = None
        try:
            start = reply_under_way(app, "think slowly")
            frozen = app.worker_of(start.data["worker_id"])
            frozen.popen.send_signal(signal.SIGSTOP)
            ended = app.bus.wait_for("journal.claim.ended", timeout_s=10, token=start.data["token"])
            assert ended.data["reason"] == "lapsed"  # a frozen process keeps its connection: only the lease tells
            other = app.bus.messages.wait_for(
                lambda m: m.type == "journal.reply.saved" and m.data["worker_id"] != start.data["worker_id"], 15,
                "the other worker's reply")
            mark = len(app.bus.messages.items)
            frozen.popen.send_signal(signal.SIGCONT)
            frozen, woken = None, frozen
            # Awake again: it keeps streaming what Ollama sends it, under a claim that no longer exists.
            app.bus.wait_for("llm.status", timeout_s=10, start=mark, worker_id=start.data["worker_id"])
            post(app, "/todos", title="after the thaw")
            after = app.bus.wait_for("journal.todo.added", title="after the thaw")
            app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=after.seq)
            assert woken.alive()
        finally:
            if frozen is not None:
                frozen.popen.send_signal(signal.SIGCONT)
            tab.close()
        replies = saved_replies(app)
        assert [r for r in replies if r["covers_seq"] == start.data["covers_seq"]] == [
            r for r in replies if r["reply_id"] == other.data["reply_id"]]
        assert not [r for r in replies if r["reply_id"] == start.data["reply_id"]]
        # Every tab shows one bubble per reply id: the frozen reply's bubble was marked interrupted, never doubled.
        opened = [f for f in tab.frames.items if "beforeend:#chat-log" in f and start.data["reply_id"] in f]
        assert len(opened) == 1


class ForgedWorker:
    """A test's stand-in for a worker (or an attacker on the bus): a DEALER to the journal, a PUB to the bus."""

    def __init__(self, app: System, worker_id: str) -> None:
        self.worker_id = worker_id
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.connect(app.settings.journal_addr)
        self.pub = self.context.socket(zmq.PUB)
        self.pub.connect(app.settings.bus_pub_addr)
        self.request_ids = itertools.count(1)

    def ask(self, op: str, **fields) -> dict:
        request_id = next(self.request_ids)
        self.dealer.send(protocol.encode_request(op, request_id, worker_id=self.worker_id, **fields))
        assert self.dealer.poll(5000), "the journal did not answer"
        return protocol.decode_reply(self.dealer.recv())

    def publish(self, kind: str, **data) -> None:
        self.pub.send_multipart(protocol.encode(protocol.Message(kind, {"worker_id": self.worker_id, **data},
                                                                 f"llm_worker/{self.worker_id}")))

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.pub.close(linger=0)
        self.context.term()


def publish_until_seen(app: System, worker: ForgedWorker, kind: str, **data) -> None:
    """A new PUB loses its first messages while it connects (slow joiner): send until the bus watcher sees one."""
    for _ in range(50):
        worker.publish(kind, **data)
        try:
            app.bus.wait_for(kind, timeout_s=0.2, worker_id=worker.worker_id)
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"{kind} never reached the bus")


def test_only_the_holder_is_heard_and_a_late_token_or_resent_done_changes_nothing(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url, worker=False) as app:
        post(app, "/todos", title="answer me")
        todo = app.bus.wait_for("journal.todo.added", title="answer me")
        intruder, holder = ForgedWorker(app, "intruder"), ForgedWorker(app, "holder")
        tab = Tab(app.ws_url)
        try:
            # Without a claim nothing is heard: a done answering everything forever is never saved.
            publish_until_seen(app, intruder, "llm.done", reply_id="rforged", token=1, text="pwned",
                               covers_seq=2**62, done_reason="stop")
            assert intruder.ask(protocol.OP_CLAIM, covers_seq=2**62, answered_through=0)["token"] is None  # beyond the journal
            grant = holder.ask(protocol.OP_CLAIM, covers_seq=todo.seq, answered_through=0)
            assert type(grant["token"]) is int
            assert intruder.ask(protocol.OP_CLAIM, covers_seq=todo.seq, answered_through=0) | {"request_id": 0} == {
                "v": protocol.PROTOCOL_VERSION, "op": "claim", "request_id": 0, "token": None,
                "reason": "held by holder"}
            token = grant["token"]
            holder.dealer.send(protocol.encode_request(protocol.OP_HEARTBEAT, 99, worker_id="holder"))
            publish_until_seen(app, holder, "llm.start", reply_id="rheld", token=token, covers_seq=todo.seq)
            holder.publish("llm.token", reply_id="rheld", token=token, index=0, text="Fine.")
            done = dict(reply_id="rheld", token=token, text="Fine.", covers_seq=todo.seq, done_reason="stop")
            for _ in range(3):  # as a worker does until it sees its entry
                holder.publish("llm.done", **done)
            app.bus.wait_for("journal.reply.saved", reply_id="rheld")
            # Late frames for the finished reply, as a restarted bus may deliver them: dropped.
            holder.publish("llm.token", reply_id="rheld", token=token, index=1, text="LATE")
            holder.publish("llm.done", **done)
            post(app, "/todos", title="a later action")  # everything sent before it has been handled by now
            app.bus.wait_for("journal.todo.added", title="a later action")
            tab.wait_for_text("a later action")
        finally:
            tab.close()
            intruder.close()
            holder.close()
        replies = saved_replies(app)
        assert [(r["reply_id"], r["token"], r["covers_seq"]) for r in replies] == [("rheld", token, todo.seq)]
        assert not [f for f in tab.frames.items if "LATE" in f or "pwned" in f]
        assert sum('id="reply-rheld"' in f and "beforeend:#chat-log" in f for f in tab.frames.items) == 1
        assert "does not hold claim" in app.processes["web"].log()


def test_a_worker_on_another_machine_needs_only_the_addresses_and_keys(tmp_path, fake_ollama):
    keys = make_keys(tmp_path)
    addresses = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("BUS_PUB_ADDR", "BUS_SUB_ADDR", "JOURNAL_ADDR")}
    with running(tmp_path, fake_ollama.url, worker=False, BUS_KEYS_DIR=str(keys), **addresses) as app:
        post(app, "/todos", title="taken while no worker ran")
        elsewhere = tmp_path / "elsewhere"  # its own folder: no DATA_DIR, no store, nothing of the web's
        elsewhere.mkdir()
        env = {key: value for key, value in app.env.items() if key != "DATA_DIR"}
        env["PYTHONPATH"] = str(ROOT)
        remote = Process("remote-worker", [sys.executable, "-m", "llm_worker"], env, tmp_path, cwd=elsewhere)
        app.processes["remote-worker"] = remote
        todo = app.bus.wait_for("journal.todo.added", title="taken while no worker ran")
        app.bus.wait_for("journal.reply.saved", timeout_s=20, covers_seq=todo.seq)
        post(app, "/chat", text="and now?")
        chat = app.bus.wait_for("journal.chat.sent", text="and now?")
        app.bus.wait_for("journal.reply.saved", timeout_s=20, covers_seq=chat.seq)
        assert not (elsewhere / "data").exists()
