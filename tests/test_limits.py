"""Limits that keep one page from growing the journal or the web's memory without bound."""
from __future__ import annotations

import sqlite3
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.system import HTMX, Tab, running
from web.ratelimit import TokenBucket


def test_the_bucket_allows_a_burst_then_the_sustained_rate():
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token refilled
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_a_flood_of_changes_is_refused_beyond_the_rate_limit(tmp_path):
    # One more change allowed every 20 s: on a machine busy enough to stall a request for 200 ms, a rate of 5 a
    # second let the last one through (a flaky failure, not a broken limit).
    with running(tmp_path, "http://127.0.0.1:9", worker=False, ACTIONS_PER_S="0.05", ACTION_BURST="10") as app:
        started = time.monotonic()
        with httpx.Client(base_url=app.url, timeout=5, headers={"HX-Request": "true"}) as client:
            codes = [client.post("/todos", data={"title": f"spam {i}"}).status_code for i in range(100)]
            refused = client.post("/todos", data={"title": "one more"})
        elapsed = time.monotonic() - started
        assert set(codes) == {200, 429}
        assert refused.status_code == 429 and "slow down" in refused.text
        assert refused.headers["hx-retarget"] == "#notice"
        with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
            stored = db.execute("SELECT COUNT(*) FROM todos").fetchone()[0]
            journaled = db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
        assert stored == journaled == codes.count(200) <= 10 + 0.05 * elapsed + 1  # burst + rate × time


def test_chat_messages_over_a_websocket_spend_the_same_budget(tmp_path):
    with running(tmp_path, "http://127.0.0.1:9", worker=False, ACTIONS_PER_S="0.05", ACTION_BURST="3") as app:
        tab = Tab(app.ws_url)
        try:
            tab.wait_for_text('id="llm-state"')
            assert httpx.post(app.url + "/todos", data={"title": "one"}, headers=HTMX, timeout=5).status_code == 200
            for number in range(3):
                tab.send_chat(f"message {number}")
            refused = tab.wait_for_text("slow down")
            assert 'id="chat-form"' in refused and "message 2" in refused  # the text comes back, with why
        finally:
            tab.close()
        with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
            chats = [row[0] for row in db.execute("SELECT data FROM journal WHERE type = 'journal.chat.sent'")]
        assert len(chats) == 2 and "message 2" not in "".join(chats)


def test_an_oversized_websocket_frame_closes_that_connection(system):
    with connect(system.ws_url, open_timeout=5, max_size=None) as ws:
        ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(100):
                ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1009  # message too big
    assert httpx.get(system.url + "/", timeout=5).status_code == 200
