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


def test_markup_in_a_streaming_reply_is_shown_as_text(fake_ollama, page):
    # Token frames skip htmx: the page's script appends their text. It must stay text while the reply streams
    # (the finished reply is rendered from Markdown on the server and checked above).
    fake_ollama.knobs.reply = lambda request: ["Look:", *XSS_REPLY, " Done."]
    fake_ollama.knobs.hold_after_tokens = 1 + len(XSS_REPLY)  # held before " Done.": the reply still streams
    page.get_by_label("Message").fill("show me markup")
    page.get_by_role("button", name="Send").click()
    streaming = page.locator("#chat-log .body.streaming")
    expect(streaming).to_have_text("Look:" + "".join(XSS_REPLY), timeout=10_000)
    assert page.locator("#chat-log img, #chat-log a").count() == 0
    fake_ollama.release()
    expect(streaming).to_have_count(0, timeout=10_000)


def test_enter_sends_shift_enter_adds_a_line_and_the_input_clears_and_keeps_focus(fake_ollama, page):
    message = page.get_by_label("Message")
    message.click()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(message).to_have_value("first line\nsecond line")
    page.keyboard.press("Enter")
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text("first line\nsecond line")
    expect(page.get_by_label("Message")).to_have_value("")
    expect(page.get_by_label("Message")).to_be_focused()


def test_a_refused_message_comes_back_with_why_and_the_form_still_sends(system, page):
    # Spaces pass the textarea's `required`; the web refuses them over the WebSocket and sends the form back.
    message = page.get_by_label("Message")
    message.fill("   ")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-form .error")).to_have_text("A message cannot be empty.")
    expect(page.get_by_label("Message")).to_have_value("   ")  # the swapped-in form has what was typed
    page.get_by_label("Message").fill("now with words")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text("now with words")
    expect(page.locator("#chat-form .error")).to_have_count(0)
    expect(page.get_by_label("Message")).to_have_value("")
    assert system.bus.chats_sent(last="now with words") == ["now with words"]


def test_after_send_by_click_or_keyboard_the_message_box_has_the_focus(system, page):
    message = page.get_by_label("Message")
    message.fill("clicked")
    page.evaluate("""() => { window.blurs = 0;
        document.getElementById("message").addEventListener("blur", () => { window.blurs += 1; }); }""")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text("clicked")
    expect(message).to_be_focused()
    assert page.evaluate("window.blurs") == 0  # pressing Send never took the focus: nothing to move back
    # Send is hidden (Stop is shown) while the reply to the first message streams: the keyboard's way to Send is
    # tried once it is back, and only with Send holding the focus.
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=10_000)
    message.fill("by keyboard")
    page.get_by_role("button", name="Send").focus()  # reached with Tab, pressed with Enter
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("log").locator(".msg.user p").last).to_have_text("by keyboard")
    expect(message).to_have_value("")
    expect(message).to_be_focused()  # moved back, to type the next one


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
    expect(log.locator(".body.streaming")).to_have_count(0, timeout=10_000)
    at_bottom = "e => e.scrollHeight - e.scrollTop - e.clientHeight < 40"
    # The log follows once per frame (app.js followLog), so the last text may be a frame ahead of the scroll.
    page.wait_for_function(f"() => ({at_bottom})(document.getElementById('chat-log'))", timeout=5_000)
    fake_ollama.knobs.hold_after_tokens = 30
    page.get_by_label("Message").fill("again")
    page.get_by_role("button", name="Send").click()
    expect(log.locator(".body.streaming")).to_have_count(1, timeout=10_000)
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
    item = page.get_by_role("list", name="Todos").locator("li.todo")
    expect(item).to_contain_text("draft")
    page.get_by_role("button", name="Edit draft").click()
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("thrown away")
    page.keyboard.press("Escape")
    expect(item).to_contain_text("draft")
    page.get_by_role("button", name="Edit draft").click()
    expect(page.get_by_label("Edit title")).to_be_focused()  # settled: htmx has focused it
    page.get_by_label("Edit title").fill("final")
    page.keyboard.press("Enter")
    expect(item).to_contain_text("final")
    expect(page.get_by_label("Edit title")).to_have_count(0)


def test_toggling_a_todo_keeps_the_lists_scroll_position(page, system):
    with httpx.Client(base_url=system.url, timeout=5) as client:
        for i in range(40):
            client.post("/todos", data={"title": f"item {i:02d}"})
    todo_list = page.get_by_role("list", name="Todos")
    expect(todo_list.locator("li.todo")).to_have_count(40)
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
    assert {"Skip to chat", "New todo", "Add", "Message", "Send"} <= reached
    assert "Stop" not in reached  # nothing is streaming: there is nothing to stop


def test_the_skip_link_comes_first_and_shows_when_focused(page):
    first = page.evaluate("""() => [...document.querySelectorAll('a[href], button, input, textarea')]
        .filter(e => e.tabIndex >= 0 && !e.disabled && e.getClientRects().length)[0].textContent""")
    assert first == "Skip to chat"  # the first thing Tab reaches from the top of the page
    skip = page.get_by_role("link", name="Skip to chat")
    skip.focus()
    box = skip.bounding_box()
    assert box["x"] >= 0 and box["width"] > 50  # on screen, not parked off it
    page.keyboard.press("Enter")
    expect(page.get_by_label("Message")).to_be_focused()


def test_enter_during_an_input_method_composition_does_not_send(system, page):
    message = page.get_by_label("Message")
    message.fill("にほんご")
    message.dispatch_event("keydown", {"key": "Enter", "isComposing": True, "bubbles": True})
    expect(message).to_have_value("にほんご")  # still there: the composition was confirmed, nothing sent
    page.keyboard.press("End")
    message.press("Enter")
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text("にほんご")
    expect(page.get_by_role("log").locator(".msg.user")).to_have_count(1)  # the composing Enter sent nothing


def test_send_turns_into_stop_while_a_reply_streams(fake_ollama, page):
    fake_ollama.knobs.hold_after_tokens = 2
    try:
        page.get_by_label("Message").fill("go on")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=10_000)
        expect(page.get_by_role("button", name="Send")).to_be_hidden()
    finally:
        fake_ollama.release()
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=10_000)
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()


def test_a_whole_reply_can_be_copied_and_copied_resets(fake_ollama, page):
    fake_ollama.knobs.reply = lambda request: ["All", " **of**", " it."]
    page.get_by_label("Message").fill("say it")
    page.get_by_role("button", name="Send").click()
    copy = page.get_by_role("button", name="Copy reply")
    copy.click(timeout=10_000)
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "All of it."
    expect(copy).to_have_text("Copy", timeout=5_000)  # back after a moment


def test_every_message_says_who_said_it_to_screen_readers(fake_ollama, page):
    page.get_by_label("Message").fill("hello")
    page.get_by_role("button", name="Send").click()
    log = page.get_by_role("log")
    expect(log.locator(".msg.assistant")).to_have_count(1, timeout=10_000)
    assert log.locator(".msg.user .sr-only").inner_text() == "You:"
    assert log.locator(".msg.assistant .sr-only").inner_text() == "Assistant:"
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator("h1").count() == 1


def test_on_a_phone_one_panel_shows_and_a_new_comment_is_a_tap_away(fake_ollama, page, tmp_path):
    fake_ollama.knobs.reply = lambda request: ["Bold", " of", " you."]
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("section.todos")).to_be_visible()
    expect(page.locator("section.chat")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_label("New todo").fill("water the plants")
    page.get_by_role("button", name="Add").click()
    expect(page.locator("#unread")).to_have_text("1", timeout=10_000)  # counted on the Chat button
    peek = page.locator("#peek")
    expect(peek).to_contain_text("Bold of you.")  # and the comment itself, under the list
    for control in page.locator("button:visible, input[type=checkbox]:visible, #todo-filters a").all():
        box = control.bounding_box()
        assert box["width"] >= 44 and box["height"] >= 44, control.evaluate("e => e.outerHTML")
    page.screenshot(path=tmp_path / "phone.png", full_page=True)
    peek.click()
    expect(page.locator("section.chat")).to_be_visible()
    expect(page.locator("section.todos")).to_be_hidden()
    expect(page.locator("#unread")).to_have_text("")
    expect(page.get_by_role("log")).to_contain_text("Bold of you.")
    page.get_by_role("button", name="Todos").click()
    expect(page.locator("section.todos")).to_be_visible()


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
    log.evaluate("e => { e.scrollTop = 0; }")  # reading the oldest shown, the button just above it
    reading = page.locator("#" + log.locator(".msg.user").first.get_attribute("id"))
    before = reading.bounding_box()["y"]
    page.get_by_role("button", name="Load earlier messages").click()
    expect(log.locator(".msg")).to_have_count(110)
    expect(log.locator(".msg.user p").first).to_have_text("question 00")
    assert abs(reading.bounding_box()["y"] - before) < 60  # still where it was (the button's height aside)
    expect(page.get_by_role("button", name="Load earlier messages")).to_have_count(0)


@pytest.mark.parametrize("size", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}])
def test_axe_finds_no_serious_or_critical_accessibility_violation(fake_ollama, page, size):
    from axe_playwright_python.sync_playwright import Axe
    page.set_viewport_size(size)
    page.get_by_label("New todo").fill("check the contrast")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("list", name="Todos")).to_contain_text("check the contrast")
    if size["width"] < 720:
        page.get_by_role("button", name="Chat").click()
    expect(page.get_by_role("log").locator(".msg.assistant").last).to_contain_text("check the contrast", timeout=10_000)
    violations = Axe().run(page).response["violations"]
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in violations
               if v["impact"] in ("serious", "critical")]
    assert serious == []


def test_the_newest_reply_can_be_regenerated_and_a_reload_shows_it_all(fake_ollama, page):
    answers = iter(["First", "Second", "Third"])
    fake_ollama.knobs.reply = lambda request: [next(answers, "More")]
    log = page.get_by_role("log")
    for text in ("one", "two"):
        page.get_by_label("Message").fill(text)
        page.get_by_role("button", name="Send").click()
        expect(log.locator(".msg.assistant .body").last).to_have_text("Second" if text == "two" else "First",
                                                                      timeout=10_000)
    regenerate = log.get_by_role("button", name="Regenerate")
    expect(regenerate).to_have_count(1)  # on the newest reply only
    regenerate.click()
    expect(log.locator(".msg.assistant .body").last).to_have_text("Third", timeout=10_000)
    expect(log.locator(".msg.user .retry")).to_have_text("Try that again.")
    page.reload()
    expect(page.get_by_role("log").locator(".msg.assistant .body")).to_have_text(["First", "Second", "Third"])
    assert fake_ollama.requests[-1]["messages"][-1]["content"] == "[asked you to answer that again, differently]"


def test_chat_appends_are_the_page_scripts_in_order_and_other_frames_stay_htmxs(fake_ollama, page):
    # Your message and a reply's bubble are appended by chat-socket.js, not by htmx's swap (the reply's first token
    # waited behind it: figure 15); a frame that carries anything besides an append is left to htmx.
    page.evaluate("""() => { window.swappedInto = [];
        document.body.addEventListener("htmx:oobAfterSwap", (event) => window.swappedInto.push(event.detail.target.id));
    }""")
    log = page.get_by_role("log")
    for number, text in enumerate(("first", "second"), 1):
        page.get_by_label("Message").fill(text)
        page.get_by_role("button", name="Send").click()
        expect(log.locator(".msg.assistant:not(:has(.streaming))")).to_have_count(number, timeout=10_000)
    expect(log.locator(".msg")).to_have_class(["msg user", "msg assistant", "msg user", "msg assistant"])
    expect(log.locator(".msg.user p")).to_have_text(["first", "second"])
    assert "chat-log" not in page.evaluate("window.swappedInto")

    dispatch = """frame => { const event = new CustomEvent("htmx:wsBeforeMessage",
        {bubbles: true, cancelable: true, detail: {message: frame}});
      document.body.dispatchEvent(event); return event.defaultPrevented; }"""
    note = '<div hx-swap-oob="beforeend:#chat-log"><div class="msg note">a note</div></div>'
    assert page.evaluate(dispatch, note + '<span id="llm-state" hx-swap-oob="true">busy</span>') is False
    expect(log.locator(".msg")).to_have_count(4)  # untouched: htmx's to swap
    assert page.evaluate(dispatch, note) is True
    expect(log.locator(".msg").last).to_have_text("a note")
