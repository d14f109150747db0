"""Input from outside, a person's request or Ollama's stream, is refused with a clear 4xx or repaired, never a 500 or
a crashed process, and nothing invalid is committed: a lone surrogate in the journal would break every page load."""
from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from services.busclient import MAX_MESSAGE_BYTES
from services.text import MAX_REPLY_CHARS, is_valid_unicode, valid_unicode
from tests.system import HTMX, System, Tab, running

HUGE_ID = "99999999999999999999999"  # beyond SQLite's signed 64-bit integers
LONE_SURROGATE = '"hi \\ud800 there"'  # JSON's escape, as a client sends it: Python decodes it to a lone surrogate


@pytest.fixture
def web(tmp_path):
    """Bus and web, no worker: nothing but the test writes to the journal."""
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:  # nothing listens on port 9
        yield app


def send_json(app: System, method: str, path: str, body: str) -> httpx.Response:
    """A raw JSON body: httpx's own encoder cannot even encode a lone surrogate."""
    headers = {**HTMX, "Content-Type": "application/json"}
    return httpx.request(method, app.url + path, content=body.encode(), headers=headers, timeout=5)


def add_todo(app: System, title: str) -> int:
    response = httpx.post(app.url + "/todos", data={"title": title}, headers=HTMX, timeout=5)
    assert response.status_code == 200
    return app.bus.wait_for("journal.todo.added", title=title).data["id"]


def stored(app: System) -> tuple[list[str], list[str]]:
    """The todos' titles and the journal's types, read from the web's SQLite file."""
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        titles = [row[0] for row in db.execute("SELECT title FROM todos ORDER BY id")]
        types = [row[0] for row in db.execute("SELECT type FROM journal ORDER BY seq")]
    return titles, types


def test_valid_unicode_replaces_only_lone_surrogates():
    assert is_valid_unicode("plain, accented é and an emoji 😀")
    assert not is_valid_unicode("hi \ud800 there") and not is_valid_unicode("\udfff")
    assert valid_unicode("hi \ud800 there \udc00") == "hi \ufffd there \ufffd"
    assert valid_unicode("emoji 😀") == "emoji 😀"
    assert json.loads('"\\ud83d\\ude00"') == "😀"  # an escaped pair is one code point: not a surrogate


def test_the_longest_reply_fits_a_bus_frame_with_room_to_spare():
    assert len(("😀" * MAX_REPLY_CHARS).encode()) <= MAX_MESSAGE_BYTES // 2


def test_a_lone_surrogate_in_a_message_or_title_is_refused_and_nothing_is_stored(web):
    todo_id = add_todo(web, "keep me")
    for method, path, field in [("POST", "/chat", "text"), ("POST", "/todos", "title"),
                                ("PUT", f"/todos/{todo_id}", "title")]:
        response = send_json(web, method, path, f'{{"{field}": {LONE_SURROGATE}}}')
        assert response.status_code == 422, (method, path, response.text)
        assert "not valid Unicode" in response.text
        assert "hi \ufffd there" in response.text  # the form comes back with what it can show of the value
    assert stored(web) == (["keep me"], ["journal.todo.added"])
    page = httpx.get(web.url + "/", timeout=5)
    assert page.status_code == 200 and "keep me" in page.text


@pytest.mark.parametrize("value", ["12", "true", "[]", '["a", "b"]', '{"a": 1}', "null"])
def test_a_message_or_title_of_the_wrong_type_gets_422_and_nothing_is_stored(web, value):
    todo_id = add_todo(web, "keep me")
    for method, path, field in [("POST", "/chat", "text"), ("POST", "/todos", "title"),
                                ("PUT", f"/todos/{todo_id}", "title")]:
        response = send_json(web, method, path, f'{{"{field}": {value}}}')
        assert response.status_code == 422, (method, path, value, response.text)
        assert "must be text" in response.text
    assert stored(web) == (["keep me"], ["journal.todo.added"])


def test_a_tab_sends_its_chat_over_its_websocket_and_a_frame_no_page_sends_closes_it(web):
    for frame in (b"binary", "not JSON", "[1, 2]", "[" * 50_000, '"a string"'):
        tab = Tab(web.ws_url)
        try:
            tab.wait_for_text('id="llm-state"')  # connected: its resync came
            tab.send(frame)
            assert tab.close_code() == 1003  # unsupported data: no page of ours sends it
        finally:
            tab.close()
    tab = Tab(web.ws_url)
    try:
        tab.wait_for_text('id="llm-state"')
        refusals = ((json.dumps({"text": 12}), "A message must be text."),
                    (json.dumps({"text": "   "}), "A message cannot be empty."),
                    (json.dumps({"text": "x" * 4_001}), "A message is too long: 4001 characters"),
                    (json.dumps({}), "A message cannot be empty."),
                    ('{"text": null}', "A message must be text."),
                    ('{"text": "hi \\ud800 there"}', "not valid Unicode"))  # JSON's escape for a lone surrogate
        for frame, why in refusals:
            start = len(tab.frames.items)  # (each refusal's own frame, not the one before)
            tab.send(frame)
            form = tab.frames.wait_for(lambda frame: why in frame, 10, why, start)
            assert form.startswith('<form') and 'id="chat-form"' in form and 'hx-swap-oob="true"' in form
        assert "hi \ufffd there" in form  # the lone surrogate shown repaired, refused all the same
        tab.send_chat("heard, on the same connection")
        tab.wait_for_text("heard, on the same connection")  # every tab's copy of the message, this one's too
    finally:
        tab.close()
    assert stored(web) == ([], ["journal.chat.sent"])
    assert web.logs().count("dropped frame from a tab that no page of ours sends (1 so far)") == 1


def test_ids_that_cannot_exist_get_404(web):
    add_todo(web, "keep me")
    for method, path in [("POST", f"/todos/{HUGE_ID}/toggle"), ("GET", f"/todos/{HUGE_ID}"),
                         ("PUT", f"/todos/{HUGE_ID}"), ("DELETE", f"/todos/{HUGE_ID}"),
                         ("GET", f"/todos/{HUGE_ID}/edit"), ("GET", f"/todos/-{HUGE_ID}"), ("POST", "/todos/-1/toggle"),
                         ("GET", "/todos/not-a-number")]:
        response = httpx.request(method, web.url + path, data={"title": "x"}, headers=HTMX, timeout=5)
        assert response.status_code == 404, (method, path, response.text)
    assert stored(web) == (["keep me"], ["journal.todo.added"])


@pytest.mark.parametrize("before", [HUGE_ID, "-5", "0", "abc", "", "1.5", "1e3", "١٢", "9" * 5000])
def test_an_earlier_chat_page_before_a_seq_that_cannot_exist_gets_400(web, before):
    response = httpx.get(web.url + "/chat/history", params={"before": before}, timeout=5)
    assert response.status_code == 400 and "whole number" in response.text


def test_an_earlier_chat_page_before_a_real_seq_is_served(web):
    httpx.post(web.url + "/chat", data={"text": "first"}, headers=HTMX, timeout=5)
    sent = web.bus.wait_for("journal.chat.sent")
    response = httpx.get(web.url + "/chat/history", params={"before": str(sent.seq + 1)}, timeout=5)
    assert response.status_code == 200 and "first" in response.text


def test_a_locked_database_gets_a_quick_503_stores_nothing_and_the_next_try_works(web):
    # Another process (a backup, a sqlite3 shell) holding the write lock: WAL lets readers on, writers wait.
    lock = sqlite3.connect(web.data_dir / "app.sqlite3", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        refused = httpx.post(web.url + "/todos", data={"title": "blocked"}, headers=HTMX, timeout=10)
        elapsed_s = time.monotonic() - started
        assert refused.status_code == 503 and "The database is busy; try again" in refused.text
        assert refused.headers["hx-retarget"] == "#notice"  # shown in the page, not lost
        assert elapsed_s < 2, f"the web waited {elapsed_s:.1f} s for the lock, freezing every tab meanwhile"
        assert httpx.get(web.url + "/", timeout=5).status_code == 200  # reading still works
    finally:
        lock.close()  # rolls the lock's transaction back
    assert stored(web) == ([], [])
    assert httpx.post(web.url + "/todos", data={"title": "later"}, headers=HTMX, timeout=5).status_code == 200
    assert stored(web) == (["later"], ["journal.todo.added"])


def test_a_lone_surrogate_from_ollama_is_saved_as_a_reply_and_the_worker_keeps_running(system, fake_ollama):
    fake_ollama.knobs.reply = lambda request: ["odd", " \ud800", " text"]  # sent as JSON's "\ud800" escape
    httpx.post(system.url + "/chat", data={"text": "say something odd"}, headers=HTMX, timeout=5)
    saved = system.bus.wait_for("journal.reply.saved", timeout_s=15)
    assert saved.data["text"] == "odd \ufffd text"
    page = httpx.get(system.url + "/", timeout=5)
    assert page.status_code == 200 and "odd \ufffd text" in page.text
    fake_ollama.knobs.reply = lambda request: ["still", " here"]
    httpx.post(system.url + "/chat", data={"text": "are you still there?"}, headers=HTMX, timeout=5)
    system.bus.wait_for("journal.reply.saved", timeout_s=15, text="still here")
    assert system.processes["worker"].alive()
