"""The paged todo list in Debian's chromium: completed todos behind "Show N completed", filters kept in the URL,
"Clear completed" and the counts, and changes from another tab placed in each tab's own view."""
from __future__ import annotations

import os
import signal

import httpx
import pytest
from playwright.sync_api import expect

from tests.bench.big_lists import fill
from tests.system import running
from tests.test_browser import browser  # noqa: F401 (the fixture)
from web.todos import PAGE_SIZE


# Marks the page once the first WebSocket frame (the resync) has been swapped in: a test acting before it would
# see its work replaced by the resync's first page.
SYNCED = "document.addEventListener('htmx:wsAfterMessage', () => { document.documentElement.dataset.synced = 'yes'; })"


def synced(page, reload: bool = False):
    if reload:
        page.reload()
    expect(page.locator("html")).to_have_attribute("data-synced", "yes")
    return page


@pytest.fixture
def open_page(browser):  # noqa: F811
    """Opens a tab (a context of its own) at a URL, once its resync has arrived; every tab fails the test on a
    Content-Security-Policy violation."""
    contexts, problems = [], []

    def open_at(url: str):
        context = browser.new_context()
        context.add_init_script(SYNCED)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(url)
        return synced(page)

    yield open_at
    for context in contexts:
        context.close()
    assert problems == []


@pytest.fixture
def web(tmp_path):
    """A web with 250 todos, 175 of them done (7 of every 10), and no worker: the list needs none."""
    fill(tmp_path / "data", 250)
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        yield app


def todos(page):
    return page.get_by_role("list", name="Todos")


def completed(page):
    return page.get_by_role("list", name="Completed", exact=True).locator("li.todo")


def test_show_completed_loads_completed_todos_in_pages(web, open_page):
    page = open_page(web.url)
    expect(todos(page).locator(":scope > li.todo")).to_have_count(75)
    expect(completed(page)).to_have_count(0)  # behind the button until asked for
    page.get_by_role("button", name="Show 175 completed").click()
    expect(completed(page)).to_have_count(175)  # fewer than a page: all of them, and no "more"
    expect(page.get_by_role("checkbox", name="Done: chore 0", exact=True)).to_be_checked()
    expect(page.get_by_role("button", name="Show more completed")).to_have_count(0)


def test_a_filter_is_in_the_url_and_survives_a_reload(web, open_page):
    page = open_page(web.url)
    page.get_by_role("link", name="Completed").click()
    expect(page).to_have_url(f"{web.url}/?filter=completed")
    synced(page, reload=True)
    expect(page.get_by_role("link", name="Completed")).to_have_attribute("aria-current", "page")
    expect(completed(page)).to_have_count(175)
    expect(todos(page).locator(":scope > li.todo")).to_have_count(0)
    # Marking one undone from here takes it out of this view.
    page.get_by_role("checkbox", name="Done: chore 1", exact=True).click()  # not uncheck(): the row leaves this view
    expect(completed(page)).to_have_count(174)
    expect(page.get_by_role("checkbox", name="Done: chore 1", exact=True)).to_have_count(0)
    expect(page.locator("#todo-footer")).to_contain_text("76 items left")


def test_a_change_in_one_tab_moves_the_todo_and_the_counts_in_another(web, open_page):
    watching, acting = open_page(web.url), open_page(f"{web.url}/?filter=active")
    watching.get_by_role("button", name="Show 175 completed").click()
    expect(completed(watching)).to_have_count(175)
    acting.get_by_role("checkbox", name="Done: chore 7", exact=True).click()  # chore 7 is open (7 of every 10 are done)
    expect(acting.get_by_role("checkbox", name="Done: chore 7", exact=True)).to_have_count(0)  # gone from Active
    expect(completed(watching)).to_have_count(176)
    expect(watching.get_by_role("checkbox", name="Done: chore 7", exact=True)).to_be_checked()
    expect(watching.locator("#todo-footer")).to_contain_text("74 items left")
    # In order: chore 7 (id 8) lands between ids 7 and 11 of the completed list.
    ids = completed(watching).evaluate_all("rows => rows.map(row => Number(row.id.slice(5)))")
    assert ids == sorted(ids) and 8 in ids
    acting.get_by_label("New todo").fill("brand new")
    acting.get_by_role("button", name="Add").click()
    expect(todos(watching)).to_contain_text("brand new")
    expect(watching.locator("#todo-footer")).to_contain_text("75 items left")
    watching.get_by_role("button", name="Delete brand new").click()
    expect(todos(acting)).not_to_contain_text("brand new")
    expect(acting.locator("#todo-footer")).to_contain_text("74 items left")


def test_clear_completed_removes_done_todos_in_every_tab(web, open_page):
    first, second = open_page(web.url), open_page(f"{web.url}/?filter=completed")
    expect(completed(second)).to_have_count(175)
    first.get_by_role("button", name="Clear completed").click()
    expect(completed(second)).to_have_count(0)
    expect(first.get_by_role("button", name="Clear completed")).to_be_hidden()
    expect(second.get_by_role("button", name="Clear completed")).to_be_hidden()
    expect(first.get_by_role("button", name="Show 175 completed")).to_have_count(0)
    expect(todos(first).locator(":scope > li.todo")).to_have_count(75)
    web.bus.wait_for("journal.todo.cleared")
    assert len(web.bus.of_type("journal.todo.cleared")) == 1  # one entry for all 175
    synced(first, reload=True)
    expect(first.locator("#todo-footer")).to_contain_text("75 items left")
    expect(first.locator(".show-done")).to_be_hidden()


def test_more_open_todos_than_a_page_load_as_the_list_scrolls(tmp_path, open_page):
    fill(tmp_path / "data", 1_000, done_share=0)  # every one open: 5 pages
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        page = open_page(app.url)
        rows = todos(page).locator(":scope > li.todo")
        expect(rows).to_have_count(PAGE_SIZE)
        page.get_by_role("button", name="Show more").scroll_into_view_if_needed()  # scrolled to: the next page loads
        expect(rows).to_have_count(2 * PAGE_SIZE)
        with httpx.Client(base_url=app.url, timeout=5) as client:
            client.post("/todos", data={"title": "added beyond the loaded pages"})
        expect(todos(page)).to_contain_text("added beyond the loaded pages")  # seen at once, at the end
        # Asked for without scrolling to it (a click would scroll it into view, loading it twice over: by being
        # seen, then by the click landing on the next page's control).
        page.get_by_role("button", name="Show more").dispatch_event("click")
        expect(rows).to_have_count(3 * PAGE_SIZE + 1)
        assert page.locator("#todo-list .todo").evaluate_all("rows => new Set(rows.map(r => r.id)).size") \
            == 3 * PAGE_SIZE + 1  # no row twice


def test_a_reconnected_tab_keeps_the_pages_it_had_loaded(tmp_path, open_page):
    fill(tmp_path / "data", 1_000, done_share=0)
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        page = open_page(app.url)
        rows = todos(page).locator(":scope > li.todo")
        page.get_by_role("button", name="Show more").dispatch_event("click")
        expect(rows).to_have_count(2 * PAGE_SIZE)
        page.evaluate("htmx.config.wsReconnectDelay = () => 100; delete document.documentElement.dataset.synced")
        os.kill(app.processes["web"].pid, signal.SIGKILL)
        app.start_web()
        synced(page)  # the resync after the reconnect
        expect(rows).to_have_count(2 * PAGE_SIZE)  # not just the first page again
        expect(page.get_by_role("button", name="Show more")).to_have_count(1)
