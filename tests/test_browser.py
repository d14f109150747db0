"""The real page in Debian's chromium, driven by Playwright through the accessible names in DESIGN.md."""
from __future__ import annotations

import os
import signal

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.system import running

CHROMIUM = "/usr/bin/chromium"
# As root in a sandbox, with no network beyond loopback: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_adding_a_todo_in_the_page_streams_a_comment_into_the_chat_log(system, fake_ollama, browser):
    fake_ollama.knobs.reply = lambda request: ["Feed", " the", " cat?", " **Finally**", " some", " ambition."]
    fake_ollama.knobs.hold_after_tokens = 2  # the reply pauses mid-stream until the test has looked
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(system.url)
    expect(page.get_by_role("status")).to_contain_text("ready", timeout=10_000)
    expect(page.get_by_role("status")).to_contain_text("fake-model:latest")
    page.get_by_label("New todo").fill("feed the cat")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("list", name="Todos")).to_contain_text("feed the cat")
    expect(page.get_by_label("New todo")).to_have_value("")
    log = page.get_by_role("log")
    # Mid-stream: part of the reply is there, as plain streamed text, before the rest has been generated.
    expect(log.locator(".body.streaming")).to_have_text("Feed the", timeout=10_000)
    expect(log.locator(".body.streaming")).to_be_visible()
    fake_ollama.release()
    # Finished: rendered from Markdown on the server.
    expect(log.locator("strong")).to_have_text("Finally", timeout=10_000)
    expect(log).to_contain_text("Feed the cat? Finally some ambition.")
    # A chat message, sent with the keyboard, gets its own reply.
    fake_ollama.knobs.reply = lambda request: ["Yes,", " you", " did."]
    page.get_by_label("Message").fill("Did I add a todo?")
    page.get_by_role("button", name="Send").click()
    expect(log).to_contain_text("Did I add a todo?")
    expect(log).to_contain_text("Yes, you did.", timeout=10_000)
    # A reload shows the same list and history.
    page.reload()
    expect(page.get_by_role("list", name="Todos")).to_contain_text("feed the cat")
    expect(page.get_by_role("log")).to_contain_text("Yes, you did.")
    assert all(url.startswith(system.url) for url in requests), [u for u in requests if not u.startswith(system.url)]


def test_an_empty_todo_shows_an_error_in_the_page_and_adds_nothing(system, browser):
    page = browser.new_page()
    page.goto(system.url)
    page.get_by_label("New todo").fill("   ")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("alert")).to_contain_text("cannot be empty")
    expect(page.get_by_role("list", name="Todos").locator("li.todo")).to_have_count(0)


def test_stop_in_the_page_ends_the_reply_and_marks_it(system, fake_ollama, browser):
    fake_ollama.knobs.tokens_per_s = 20
    fake_ollama.knobs.reply = lambda request: [f" blah{i}" for i in range(400)]
    page = browser.new_page()
    page.goto(system.url)
    page.get_by_label("New todo").fill("ramble")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_role("log").locator(".body.streaming")).to_contain_text("blah3", timeout=10_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("log").locator(".note")).to_have_text("stopped", timeout=10_000)
    expect(page.get_by_role("log").locator(".body.streaming")).to_have_count(0)


def test_the_status_follows_the_worker_in_the_page(system, browser):
    page = browser.new_page()
    page.goto(system.url)
    status = page.get_by_role("status")
    expect(status).to_contain_text("ready", timeout=10_000)
    worker = system.worker_pid()
    os.kill(worker, signal.SIGSTOP)  # silent: about three missed heartbeats later the page says so
    try:
        expect(status).to_contain_text("offline", timeout=10_000)
        expect(status).to_contain_text("not running")
    finally:
        os.kill(worker, signal.SIGCONT)
    expect(status).to_contain_text("ready", timeout=10_000)


def test_a_restarted_web_is_reconnected_to_and_the_page_catches_up(system, fake_ollama, browser):
    page = browser.new_page()
    page.goto(system.url)
    page.get_by_label("New todo").fill("before the crash")
    page.get_by_role("button", name="Add").click()
    log = page.get_by_role("log")
    expect(log.locator(".msg.assistant")).to_have_count(1, timeout=10_000)
    # Reconnect late, so the action below is certain to happen while this tab is disconnected.
    page.evaluate("htmx.config.wsReconnectDelay = () => 4000")
    os.kill(system.processes["web"].pid, signal.SIGKILL)
    system.start_web()
    # Someone else acts while this tab is disconnected; once back, the tab must show it without a reload.
    httpx.post(system.url + "/todos", data={"title": "made elsewhere"}, timeout=5)
    expect(page.get_by_role("list", name="Todos")).to_contain_text("made elsewhere", timeout=20_000)
    expect(log.locator(".msg.assistant")).to_have_count(2, timeout=10_000)  # its comment, and no duplicates
    expect(page.get_by_role("list", name="Todos").locator("li.todo")).to_have_count(2)


def test_a_message_sent_while_the_page_reconnects_stays_in_the_box_and_is_never_sent_later(system, browser):
    page = browser.new_page()
    page.goto(system.url)
    expect(page.get_by_role("status")).to_contain_text("ready")
    expect(page.locator("body[data-offline]")).to_have_count(0)  # connected
    page.evaluate("htmx.config.wsReconnectDelay = () => 2000")
    os.kill(system.processes["web"].pid, signal.SIGKILL)
    message = page.get_by_label("Message")
    message.fill("while away")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-form .error")).to_contain_text("Not connected")  # pressed before the reconnect
    expect(message).to_have_value("while away")
    assert page.url.rstrip("/") == system.url.rstrip("/")  # no plain POST to /chat either
    expect(page.locator("body[data-offline]")).to_have_count(1)
    expect(page.get_by_role("status")).to_contain_text("Not connected to the app: reconnecting")
    system.start_web()
    expect(page.locator("body[data-offline]")).to_have_count(0, timeout=20_000)  # reconnected
    expect(page.get_by_role("status")).to_contain_text("Assistant: ready")  # the web's own status, resynced
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text(["while away"], timeout=20_000)
    page.get_by_label("Message").fill("and after")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log").locator(".msg.user p")).to_have_text(["while away", "and after"])
    # Had the first press been queued, the message would have gone twice: once when the socket opened.
    assert system.bus.chats_sent(last="and after") == ["while away", "and after"]


# The page's WebSocket seems to be connecting until the test calls window.releaseSocket() (it opens) or
# window.failSocket() (it closes without having opened, as when the web is down). Meanwhile it reports CONNECTING and
# refuses to send, as a connecting socket does, while the real socket underneath opens as usual. Each socket htmx
# makes (it makes another to reconnect) is held in turn.
HOLD_SOCKET = """(() => {
  const Real = window.WebSocket;
  window.releaseSocket = window.failSocket = null;
  window.WebSocket = class extends Real {
    get readyState() { return this.released ? super.readyState : Real.CONNECTING; }
    send(data) {
      if (!this.released) throw new DOMException("Still in CONNECTING state.", "InvalidStateError");
      super.send(data);
    }
    set onopen(handler) {
      window.releaseSocket = () => { this.released = true; handler.call(this, new Event("open")); };
    }
    set onclose(handler) {
      window.failSocket = () => { super.close(); handler.call(this, new CloseEvent("close", {code: 1006})); };
    }
  };
})()"""


def held_page(system, browser):
    page = browser.new_page()
    page.add_init_script(HOLD_SOCKET)
    page.goto(system.url)
    page.wait_for_function("() => window.releaseSocket !== null")
    return page


def test_a_message_sent_before_the_page_first_connects_goes_once_it_has(system, browser):
    page = held_page(system, browser)
    message, log = page.get_by_label("Message"), page.get_by_role("log")
    message.fill("quick first words")
    page.get_by_role("button", name="Send").click()
    expect(message).to_have_value("")  # taken, to go when the socket opens
    expect(page.locator("#chat-form .error")).to_have_count(0)
    page.evaluate("window.releaseSocket()")
    expect(log.locator(".msg.user p")).to_have_text(["quick first words"])
    assert system.bus.chats_sent(last="quick first words") == ["quick first words"]


def test_a_message_sent_while_the_first_connection_fails_comes_back_to_the_box(system, browser):
    page = held_page(system, browser)
    message, log = page.get_by_label("Message"), page.get_by_role("log")
    message.fill("into the void")
    page.get_by_role("button", name="Send").click()
    expect(message).to_have_value("")
    page.evaluate("""() => { window.firstSocket = window.releaseSocket; window.releaseSocket = null;
        htmx.config.wsReconnectDelay = () => 50; window.failSocket(); }""")
    expect(message).to_have_value("into the void")  # back, not queued to go whenever a socket opens
    expect(page.locator("#chat-form .error")).to_contain_text("Not connected")
    page.wait_for_function("() => window.releaseSocket !== null")  # htmx's second try
    page.evaluate("window.releaseSocket()")
    expect(page.locator("body[data-offline]")).to_have_count(0)
    expect(log.locator(".msg.user")).to_have_count(0)
    page.get_by_role("button", name="Send").click()
    expect(log.locator(".msg.user p")).to_have_text(["into the void"])
    assert system.bus.chats_sent(last="into the void") == ["into the void"]


def test_the_status_counts_the_workers_and_names_the_one_answering(tmp_path, fake_ollama, browser):
    fake_ollama.knobs.tokens_per_s = 10
    fake_ollama.knobs.reply = lambda request: [" slowly"] * 40
    with running(tmp_path, fake_ollama.url, workers=2) as app:
        page = browser.new_page()
        page.goto(app.url)
        status = page.get_by_role("status")
        expect(status).to_contain_text("2 of 2 workers ready", timeout=15_000)
        page.get_by_label("Message").fill("who answers?")
        page.get_by_role("button", name="Send").click()
        start = app.bus.wait_for("llm.start", timeout_s=10)
        expect(status).to_contain_text(f"worker {start.data['worker_id']} answering")
        expect(status).to_contain_text(f"at {fake_ollama.url}")
        app.worker_of(start.data["worker_id"]).popen.send_signal(signal.SIGKILL)
        expect(status).to_contain_text(f"the answering worker {start.data['worker_id']} stopped or died")
        expect(status).to_contain_text("1 of 1 workers ready")
