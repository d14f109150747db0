"""Editing and moving through the todo list as people expect from TodoMVC, in Debian's chromium: where focus lands
after each action, double-click, save on blur, Cancel, one editor at a time, a remote change that waits for the
editor, and a new todo brought into view."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.system import running
from tests.test_browser import browser  # noqa: F401 (the fixture)
from tests.test_system import post
from tests.test_todo_paging_ui import open_page  # noqa: F401 (the fixture: a tab, once resynced, CSP-checked)


@pytest.fixture
def web(tmp_path):
    """Bus and web, no worker: the list needs none."""
    with running(tmp_path, "http://127.0.0.1:9", worker=False) as app:
        yield app


@pytest.fixture
def tab(web, open_page):  # noqa: F811
    return lambda: open_page(web.url)


def add(web, *titles: str) -> None:
    for title in titles:
        post(web, "/todos", title=title).raise_for_status()


def row(page, title: str):
    return page.get_by_role("list", name="Todos").locator("li.todo", has_text=title)


def test_focus_stays_on_the_row_after_a_toggle_an_edit_and_an_escape_and_moves_on_after_a_delete(web, tab):
    add(web, "first", "second", "third")
    page = tab()
    page.get_by_role("checkbox", name="Done: second").focus()
    page.keyboard.press("Space")
    expect(row(page, "second")).to_have_class("todo done")
    # Ticked off, it moves to the completed ones at the end; focus stays where it was, on the row after it.
    expect(page.get_by_role("checkbox", name="Done: third")).to_be_focused()
    page.get_by_role("checkbox", name="Done: second").focus()
    page.keyboard.press("Space")  # back among the open ones, in its place
    expect(row(page, "second")).to_have_class("todo")
    page.get_by_role("button", name="Edit second").focus()
    page.get_by_role("button", name="Edit second").press("Enter")
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("second, renamed")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Edit second, renamed")).to_be_focused()
    page.keyboard.press("Enter")  # the Edit button again
    expect(page.get_by_label("Edit title")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Edit second, renamed")).to_be_focused()
    page.get_by_role("button", name="Delete second, renamed").press("Enter")
    expect(row(page, "second")).to_have_count(0)
    expect(page.get_by_role("checkbox", name="Done: third")).to_be_focused()  # the next row


def test_double_click_edits_one_at_a_time_blur_saves_and_cancel_puts_back(web, tab):
    add(web, "alpha", "beta")
    page = tab()
    page.get_by_text("alpha", exact=True).dblclick()
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("alpha, saved on blur")
    page.get_by_text("beta", exact=True).dblclick()  # leaving the first editor saves it; only one stays open
    expect(page.get_by_label("Edit title")).to_have_count(1)
    expect(row(page, "alpha, saved on blur")).to_have_count(1)
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("beta, thrown away")
    page.get_by_role("button", name="Cancel").click()
    expect(row(page, "beta")).to_have_text("betaEditDelete")
    expect(page.get_by_label("Edit title")).to_have_count(0)


def test_a_change_from_another_tab_does_not_wipe_what_you_are_typing(web, tab):
    add(web, "shared")
    page, other = tab(), tab()
    page.get_by_role("button", name="Edit shared").click()
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("half-typ")
    other.get_by_role("checkbox", name="Done: shared").check()
    expect(other.locator("li.todo.done")).to_have_count(1)
    page.wait_for_function("document.getElementById('todo-inbox').children.length === 0")  # the change came in
    expect(page.get_by_label("Edit title")).to_have_value("half-typ")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("li.todo.done")).to_have_text("sharedEditDelete")  # shown once the editor closed


def test_a_new_todo_is_brought_into_view_and_flagged(web, tab):
    add(web, *[f"filler {n:02d}" for n in range(40)])
    page = tab()
    page.set_viewport_size({"width": 1000, "height": 500})
    page.get_by_label("New todo").fill("the one I just added")
    page.keyboard.press("Enter")
    added = row(page, "the one I just added")
    expect(added).to_have_class("todo new")
    expect(added).to_be_in_viewport()
