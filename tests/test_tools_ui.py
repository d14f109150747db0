"""The assistant's changes and its thinking in Debian's chromium (issue 11): Undo, Allow and Deny from any tab, with
every other tab following and a reload keeping the outcome; thinking in a collapsed disclosure above the reply."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.fake_ollama import FakeModel, FakeOllama
from tests.system import running
from tests.test_browser import browser  # noqa: F401 (the fixture)
from tests.test_system import post
from tests.test_todo_paging_ui import open_page, synced  # noqa: F401 (the fixture)
from tests.test_tools import call, once


def change(page, text: str):
    return page.get_by_role("log").locator(".msg.tool", has_text=text)


def test_undo_allow_and_deny_work_from_any_tab_and_every_tab_follows(system, fake_ollama, open_page):  # noqa: F811
    post(system, "/todos", title="buy milk")
    post(system, "/todos", title="old chore")
    system.bus.wait_for("journal.reply.saved", covers_seq=system.bus.wait_for("journal.todo.added", id=2).seq)
    fake_ollama.knobs.tool_calls = once(call("add_todo", title="call the dentist"),
                                        call("rename_todo", id=1, title="buy oat milk"), call("delete_todo", id=2))
    one, two = open_page(system.url), open_page(system.url)
    one.get_by_label("Message").fill("dentist, oat milk, and drop the chore")
    one.get_by_role("button", name="Send").click()
    for page in (one, two):
        expect(page.get_by_role("list", name="Todos")).to_contain_text("call the dentist")
        expect(change(page, "Wants to rename “buy milk” to “buy oat milk”.").get_by_role("button", name="Allow")
               ).to_be_visible()
        expect(change(page, "Wants to delete “old chore”.").get_by_role("button", name="Deny")).to_be_visible()
    expect(two.get_by_role("list", name="Todos")).to_contain_text("buy milk")  # nothing renamed by itself

    change(two, "Added “call the dentist”.").get_by_role("button", name="Undo").click()
    expect(change(one, "Added “call the dentist”.")).to_contain_text("Undone.")
    expect(one.get_by_role("list", name="Todos")).not_to_contain_text("call the dentist")
    expect(change(one, "call the dentist").get_by_role("button", name="Undo")).to_have_count(0)

    change(one, "buy oat milk").get_by_role("button", name="Allow").click()
    expect(two.get_by_role("list", name="Todos")).to_contain_text("buy oat milk")
    expect(change(two, "buy oat milk")).to_contain_text("Allowed.")

    change(two, "old chore").get_by_role("button", name="Deny").click()
    expect(change(one, "old chore")).to_contain_text("Denied: nothing changed.")
    expect(one.get_by_role("list", name="Todos")).to_contain_text("old chore")

    synced(one, reload=True)  # journal state: the outcomes, and no buttons, after a reload
    log = one.get_by_role("log")
    expect(log.locator(".msg.tool .outcome")).to_have_text(["Undone.", "Allowed.", "Denied: nothing changed."])
    expect(log.get_by_role("button", name=re.compile("^(Undo|Allow|Deny)$"))).to_have_count(0)


def test_thinking_streams_into_a_collapsed_disclosure_above_the_reply(tmp_path, open_page):  # noqa: F811
    with FakeOllama([FakeModel("qwen3:latest", capabilities=("completion", "thinking"))]) as fake:
        fake.knobs.thinking = ["Weighing", " <i>options</i>"]
        fake.knobs.reply = lambda request: ["Do", " it."]
        fake.knobs.hold_after_tokens = 0  # after the thinking, before the answer: until released
        with running(tmp_path, fake.url) as app:
            app.bus.wait_for("llm.status", timeout_s=15, state="ready")
            page = open_page(app.url)
            page.get_by_label("Message").fill("should I?")
            page.get_by_role("button", name="Send").click()
            log = page.get_by_role("log")
            thinking = log.locator(".msg.assistant details.thinking")
            expect(thinking.locator("summary")).to_have_text("Thinking…")
            expect(thinking.locator(".thought")).to_have_text("Weighing <i>options</i>")  # escaped, not markup
            expect(thinking.locator(".thought")).to_be_hidden()  # collapsed
            expect(log.locator(".body.streaming")).to_have_text("")  # never in the reply's text
            thinking.locator("summary").click()  # opened while it streams ...
            expect(thinking.locator(".thought")).to_be_visible()
            fake.release()
            expect(thinking.locator("summary")).to_have_text(re.compile(r"^Thought for [\d.]+ s$"))
            expect(log.locator(".msg.assistant .body")).to_have_text("Do it.")
            expect(thinking.locator(".thought")).to_be_visible()  # ... it stays open when the reply is finished
            assert page.locator(".thought i").count() == 0
            synced(page, reload=True)
            expect(log.locator("details.thinking summary")).to_have_text(re.compile(r"^Thought for [\d.]+ s$"))
            expect(log.locator("details.thinking .thought")).to_be_hidden()  # collapsed again after a reload
            expect(log.locator(".msg.assistant .stats")).to_contain_text("qwen3:latest")
