"""A long todo list costs what is on screen: the page, a page of a section and a connecting tab's resync hold one
page of rows; completed todos wait behind "Show N completed"; "Clear completed" is one journal entry, which the
worker follows."""
from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from html.parser import HTMLParser

import httpx
import pytest

from fasthtml.common import to_xml
from llm_worker.conversation import Applied, Conversation
from llm_worker.persona import describe
from services import protocol
from services.protocol import Message
from store import Todo
from tests.bench.big_lists import fill
from tests.system import Tab, running
from web.components import TodoItem, todo_rows
from web.todos import PAGE_SIZE, RESYNC_MAX_ROWS

HTMX = {"HX-Request": "true"}
ROW = re.compile(r'<li id="todo-(\d+)" class="todo( done)?"')


class Events(HTMLParser):
    """What a browser makes of markup: tags with their decoded attributes, and text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.events.append(("start", tag, sorted(attrs)))

    def handle_endtag(self, tag):
        self.events.append(("end", tag))

    def handle_data(self, data):
        self.events.append(("text", data))


def rows(markup: str) -> list[tuple[int, bool]]:
    return [(int(todo_id), bool(done)) for todo_id, done in ROW.findall(markup)]


TITLES = ["plain", 'quotes " and \' both', "<img src=x onerror=alert(1)> & &amp;", "ünï ✓"]


@pytest.mark.parametrize("title", TITLES)
@pytest.mark.parametrize("done", [False, True])
def test_rows_rendered_from_the_template_read_as_the_component_does(title, done):
    todo = Todo(1234, title, done)
    assert Events(todo_rows([todo])).events == Events(to_xml(TodoItem(todo), indent=False)).events


@pytest.fixture
def long_list(tmp_path):
    """A web (no worker: none is needed) on a list of 2,000 todos, 1,400 of them done (ids 1 to 2,000; 7 of every
    10 done, spread through the list)."""
    fill(tmp_path / "data", 2_000)
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        yield app


def test_the_page_of_a_long_list_holds_only_the_first_page_of_open_todos(long_list):
    page = httpx.get(long_list.url + "/", timeout=10).text
    shown = rows(page)
    assert len(shown) == PAGE_SIZE and not any(done for _, done in shown)
    assert [todo_id for todo_id, _ in shown] == sorted(todo_id for todo_id, _ in shown)
    assert "600 items left" in page and 'class="done-count">1,400</span> completed' in page
    assert 'hx-get="/todos/more?done=0&amp;after=' in page  # and the control that loads the rest


def test_the_filters_show_their_own_first_page_and_the_rest_comes_in_pages(long_list):
    with httpx.Client(base_url=long_list.url, timeout=10) as client:
        completed = rows(client.get("/", params={"filter": "completed"}).text)
        assert len(completed) == PAGE_SIZE and all(done for _, done in completed)
        active = client.get("/", params={"filter": "active"}).text
        assert len(rows(active)) == PAGE_SIZE and 'id="done-list"' not in active
        seen, after = [], 0
        while True:  # every open todo exactly once, page by page
            page = client.get("/todos/more", params={"done": "0", "after": str(after)}, headers=HTMX).text
            seen += rows(page)
            found = re.search(r"after=(\d+)", page)
            if found is None:
                break
            after = int(found.group(1))
        assert len(seen) == len({todo_id for todo_id, _ in seen}) == 600 and not any(done for _, done in seen)
        assert client.get("/todos/more", params={"done": "2", "after": "0"}).status_code == 400
        assert client.get("/todos/more", params={"done": "1", "after": "-1"}).status_code == 400


def test_a_connecting_tab_is_sent_the_first_page_of_its_filter_only(long_list):
    for filter, done in (("all", False), ("completed", True)):
        tab = Tab(f"{long_list.ws_url}?filter={filter}")
        try:
            resync = tab.frames.wait_for(lambda frame: 'id="todo-list"' in frame, 10, "the resync")
        finally:
            tab.close()
        assert len(rows(resync)) == PAGE_SIZE and {d for _, d in rows(resync)} == {done}


def resync_of(app, query: str) -> str:
    tab = Tab(f"{app.ws_url}?{query}")
    try:
        return tab.frames.wait_for(lambda frame: 'id="todo-list"' in frame, 10, "the resync")
    finally:
        tab.close()


def test_a_reconnecting_tab_gets_back_the_pages_it_had_loaded_and_no_more(long_list):
    # Open todos have ids 8, 9, 10, 18, 19, 20, ...: the 300th is 1,000, the 1,000th completed one 1,429.
    resync = resync_of(long_list, "filter=all&open_to=1000")
    assert [todo_id for todo_id, _ in rows(resync)][-1] == 1000 and len(rows(resync)) == 300
    assert 'data-after="1000"' in resync and ">1,400</span> completed" in resync  # then "Show more"; completed
    # still collapsed
    resync = resync_of(long_list, "filter=all&open_to=1000&done_to=1429")
    assert sum(done for _, done in rows(resync)) == 1_000
    # Everything loaded (no "Show more" left): at most RESYNC_MAX_ROWS per section, then "Show more" again.
    resync = resync_of(long_list, "filter=completed&done_to=2000")
    assert len(rows(resync)) == RESYNC_MAX_ROWS and f'data-after="{rows(resync)[-1][0]}"' in resync
    # Only the first page for a tab that had loaded no more, or whose URL makes no sense.
    for query in ("filter=all&open_to=20", "filter=all&open_to=-5&done_to=x", "open_to=" + "9" * 5000):
        assert len(rows(resync_of(long_list, query))) == PAGE_SIZE, query


def test_clear_completed_deletes_every_done_todo_in_one_journal_entry(long_list):
    tab = Tab(long_list.ws_url)
    try:
        response = httpx.post(long_list.url + "/todos/clear-completed", headers=HTMX, timeout=10)
        assert response.status_code == 200
        cleared = long_list.bus.wait_for("journal.todo.cleared")
        frame = tab.wait_for_text('class="cleared"')
    finally:
        tab.close()
    assert cleared.data == {"count": 1_400}
    assert 'data-done="0"' in frame and "600 items left" in frame
    with closing(sqlite3.connect(long_list.data_dir / "app.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*), SUM(done) FROM todos").fetchone() == (600, 0)
        assert db.execute("SELECT COUNT(*) FROM journal WHERE type = 'journal.todo.cleared'").fetchone() == (1,)
    # Nothing left to clear: no entry, nothing sent.
    assert httpx.post(long_list.url + "/todos/clear-completed", headers=HTMX, timeout=10).status_code == 204


def test_the_worker_drops_the_completed_todos_on_one_cleared_entry_and_says_so_in_one_line():
    conversation = Conversation()
    conversation.load_window([], 0)
    for entry in [Message(protocol.TODO_ADDED, {"id": 1, "title": "done soon"}, "web", seq=1),
                  Message(protocol.TODO_ADDED, {"id": 2, "title": "still open"}, "web", seq=2),
                  Message(protocol.TODO_TOGGLED, {"id": 1, "title": "done soon", "done": True}, "web", seq=3)]:
        conversation.apply(entry)
    cleared = Message(protocol.TODO_CLEARED, {"count": 1}, "web", seq=4)
    assert conversation.apply(cleared) is Applied.APPLIED
    assert conversation.todos == {2: ("still open", False)}
    assert describe(cleared) == ("user", "[cleared 1 completed todos]")
