"""The page as people use it, in Debian's chromium: keyboard, chat affordances, layout, and nothing anyone writes
becoming markup. Every test also fails on a Content-Security-Policy violation: the page must work under its CSP."""
from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.test_browser import browser  # noqa: F401 (the fixture)

XSS_TITLE = "<img src=x onerror=alert(1)>"
XSS_MESSAGE = "<script>alert(2)</script>"
XSS_REPLY = ["<img src=x onerror=alert(3)>", " [click](javascript:alert(4))", " ![x](javascript:alert(5))",
             " <a href=\"javascript:alert(6)\">raw</a>"]


@pytest.fixture
def page(system, browser):  # noqa: F811
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(system.url)
    expect(page.get_by_role("status")).to_contain_text("ready", timeout=10_000)
    yield page
    context.close()
    assert problems == []


def test_the_page_sends_a_csp_that_forbids_inline_and_foreign_scripts(system):
    policy = httpx.get(system.url + "/", timeout=5).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy


def test_nothing_a_person_or_the_model_writes_becomes_markup(system, fake_ollama, page):
    fake_ollama.knobs.reply = lambda request: XSS_REPLY
    page.get_by_label("New todo").fill(XSS_TITLE)
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("list", name="Todos")).to_contain_text(XSS_TITLE)
    page.get_by_label("Message").fill(XSS_MESSAGE)
    page.get_by_role("button", name="Send").click()
    log = page.get_by_role("log")
    expect(log).to_contain_text(XSS_MESSAGE)
    expect(log.locator(".msg.assistant")).to_have_count(2, timeout=10_000)
    expect(log.locator(".msg.assistant").last).to_contain_text("<img src=x onerror=alert(3)>")
    page.reload()  # and again as rendered from the store
    expect(page.get_by_role("log")).to_contain_text(XSS_MESSAGE)
    assert page.locator("img, script:not([src])").count() == 0
    assert page.locator("a[href^='javascript']").count() == 0


def test_enter_sends_shift_enter_adds_a_line_and_the_input_clears_and_keeps_focus(fake_ollama, page):
    message = page.get_by_label("Message")
    message.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(message).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    expect(page.get_by_role("log").locator(".msg.user")).to_have_text("first line\nsecond line")
    expect(page.get_by_label("Message")).to_have_value("")
    expect(page.get_by_label("Message")).to_be_focused()


def test_code_blocks_have_a_copy_button_that_copies(fake_ollama, page):
    fake_ollama.knobs.reply = lambda request: ["Try:\n\n", "```py\n", "print('hi')\n", "```\n"]
    page.get_by_label("Message").fill("show me code")
    page.get_by_role("button", name="Send").click()
    copy = page.get_by_role("button", name="Copy code")
    copy.click(timeout=10_000)
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"


def test_the_chat_follows_new_text_unless_scrolled_up_then_offers_to_jump(fake_ollama, page):
    fake_ollama.knobs.reply = lambda request: [f"line {i}\n\n" for i in range(60)]
    page.get_by_label("Message").fill("talk a lot")
    page.get_by_role("button", name="Send").click()
    log = page.get_by_role("log")
    expect(log.locator(".msg.assistant")).to_have_count(1, timeout=10_000)
    expect(log.locator(".typing")).to_have_count(0, timeout=10_000)
    at_bottom = "e => e.scrollHeight - e.scrollTop - e.clientHeight < 40"
    assert log.evaluate(at_bottom)
    fake_ollama.knobs.hold_after_tokens = 30
    page.get_by_label("Message").fill("again")
    page.get_by_role("button", name="Send").click()
    expect(log.locator(".typing")).to_have_count(1, timeout=10_000)
    log.evaluate("e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
    fake_ollama.release()
    jump = page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_visible(timeout=10_000)
    assert log.evaluate("e => e.scrollTop") == 0  # left where the person was reading
    jump.click()
    assert log.evaluate(at_bottom)
    expect(jump).to_be_hidden()


def test_a_todo_is_edited_in_place_with_enter_and_escape(page):
    page.get_by_label("New todo").fill("draft")
    page.keyboard.press("Enter")
    item = page.get_by_role("list", name="Todos").get_by_role("listitem")
    expect(item).to_contain_text("draft")
    page.get_by_role("button", name="Edit draft").click()
    page.get_by_label("Edit title").fill("thrown away")
    page.keyboard.press("Escape")
    expect(item).to_contain_text("draft")
    page.get_by_role("button", name="Edit draft").click()
    page.get_by_label("Edit title").fill("final")
    page.keyboard.press("Enter")
    expect(item).to_contain_text("final")
    expect(page.get_by_label("Edit title")).to_have_count(0)


def test_toggling_a_todo_keeps_the_lists_scroll_position(page, system):
    with httpx.Client(base_url=system.url, timeout=5) as client:
        for i in range(40):
            client.post("/todos", data={"title": f"item {i:02d}"})
    todo_list = page.get_by_role("list", name="Todos")
    expect(todo_list.get_by_role("listitem")).to_have_count(40)
    page.set_viewport_size({"width": 1000, "height": 500})
    checkbox = page.get_by_role("checkbox", name="Done: item 20")
    checkbox.scroll_into_view_if_needed()
    before = todo_list.evaluate("e => e.scrollTop")
    assert before > 0
    checkbox.check()  # the whole list is swapped in again over the WebSocket
    expect(page.get_by_role("checkbox", name="Done: item 20")).to_be_checked()
    assert todo_list.evaluate("e => e.scrollTop") == before


def test_every_named_control_is_reachable_by_keyboard(page):
    reached = set()
    for _ in range(15):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("""() => {
            const e = document.activeElement;
            return e.getAttribute('aria-label') || (e.labels && e.labels[0] && e.labels[0].textContent)
                || e.textContent.trim(); }"""))
    assert {"New todo", "Add", "Message", "Send", "Stop"} <= reached


def test_on_a_phone_the_panels_stack_and_nothing_overflows(page, tmp_path):
    page.set_viewport_size({"width": 390, "height": 844})
    todos = page.locator("section.todos").bounding_box()
    chat = page.locator("section.chat").bounding_box()
    assert chat["y"] >= todos["y"] + todos["height"]  # stacked, chat below the list
    assert chat["width"] <= 390 and todos["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    assert (tmp_path / "phone.png").stat().st_size > 0


def test_a_long_history_is_shown_in_pages_and_loads_earlier_on_request(system, page):
    with httpx.Client(base_url=system.url, timeout=5) as client:
        for i in range(55):  # each gets a reply: 110 messages, more than one page of 100
            client.post("/chat", data={"text": f"question {i:02d}"})
    last = system.bus.wait_for("journal.chat.sent", text="question 54")
    system.bus.wait_for("journal.reply.saved", timeout_s=30, covers_seq=last.seq)
    page.reload()
    log = page.get_by_role("log")
    expect(log.locator(".msg")).to_have_count(100)
    expect(log.locator(".msg.user", has_text="question 00")).to_have_count(0)  # only the newest 100 of 110
    page.get_by_role("button", name="Load earlier messages").click()
    expect(log.locator(".msg")).to_have_count(110)
    expect(log.locator(".msg.user").first).to_have_text("question 00")
    expect(page.get_by_role("button", name="Load earlier messages")).to_have_count(0)
