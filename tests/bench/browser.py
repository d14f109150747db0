"""Figure 15 (issue 10): in Debian's chromium, a click on Send → the reply's first token visible in the page, minus
the model's own time to first token, and where the rest goes. Each hop is read off a clock every process shares:
the page's (performance.timeOrigin + now), the bus envelopes' `ts` (stamped by the sender), and the fake Ollama's
record of when a request arrived and when it wrote the first token. The fake runs in its own process, as in the
other figures: first with no time to first token of its own (the token then comes while chromium is still busy
with the person's own message, and goes in the reply's bubble), then with MODEL_FIRST_TOKEN_S (a small model on a
laptop evaluating a short prompt: the bubble is out by then, and the token comes alone, as with a real model)."""
from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

from services import protocol
from web.components import TOKEN_FRAME
from tests.bench.harness import PROSE_TOKENS, FakeOllamaProcess, LazyTap, bench_system, exit_on_sigterm, summary
from tests.bench.tabs import frame_bytes
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

WAIT_MS = 15_000
MODEL_FIRST_TOKEN_S = 0.5  # longer than web/relay.py's STATUS_HOLD_S: the bubble goes out ahead of the token
# The page records when Send is clicked and when the marker text first shows in the chat log (a mutation observer
# runs before the next paint, so this is when the token becomes visible, give or take a frame).
WATCH = """marker => { window.firstShown = new Promise(resolve => {
  const now = () => performance.timeOrigin + performance.now();
  const log = document.getElementById("chat-log");
  const seen = new MutationObserver(() => {
    if (log.textContent.includes(marker)) {
      seen.disconnect();
      resolve({clicked: window.clickedAt, arrived: window.arrivedAt, shown: now()});
    }
  });
  const arrival = event => {
    if (String(event.detail.message).includes(marker)) {
      window.arrivedAt = now();
      document.body.removeEventListener("htmx:wsBeforeMessage", arrival);
    }
  };
  document.body.addEventListener("htmx:wsBeforeMessage", arrival);
  seen.observe(log, {childList: true, subtree: true, characterData: true});
  document.querySelector("#chat-form button[type=submit]").addEventListener(
    "click", () => { window.clickedAt = now(); }, {capture: true, once: true});
}); }"""
FIRST_SHOWN = """wait => Promise.race([window.firstShown, new Promise((_, fail) => setTimeout(
  () => fail(new Error("the reply's first token never showed")), wait))])"""
HOPS = ("click → chat journaled (WebSocket, SQLite, publish)", "journaled → claim granted (bus, worker's request)",
        "claim granted → request written: llm.start (worker: prompt, httpx)", "llm.start → Ollama request arrives",
        "first token written → worker publishes it", "published → frame in the page (bus, relay, WebSocket)",
        "frame in the page → visible (appended, drawn)")


def first_visible_token(tmp_path: Path, fake: FakeOllamaProcess, rounds: int) -> dict:
    first_reply = fake.set(tokens=4) + 1
    with bench_system(tmp_path, fake.url) as app:
        # One subscriber in this process, read between rounds (see LazyTap): it is also `app.bus`, which running()
        # closes at the end.
        app.bus.close()
        app.bus = tap = LazyTap(app.settings.bus_sub_addr, (protocol.JOURNAL, protocol.LLM_START, protocol.LLM_TOKEN))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                figure = summarise(run_rounds(page, app, fake, tap, first_reply, rounds, "at once"), rounds)
                first_reply = fake.set(tokens=4, first_token_delay_s=MODEL_FIRST_TOKEN_S) + 1
                figure["with_model_first_token"] = {
                    "model_first_token_s": MODEL_FIRST_TOKEN_S,
                    **summarise(run_rounds(page, app, fake, tap, first_reply, rounds, "later"), rounds)}
                figure["whole_reply"] = whole_reply(page, app, fake, 2 * rounds + 2)
            finally:
                browser.close()
    return figure


def summarise(samples: list[dict], rounds: int) -> dict:
    overheads = [s["total"] - s["model"] for s in samples]
    return {"rounds": len(samples), "rounds_left_out": rounds - len(samples), "overhead_ms": summary(overheads, 1000),
            "model_first_token_ms": summary([s["model"] for s in samples], 1000),
            "hops_ms": {hop: summary([s["hops"][i] for s in samples], 1000) for i, hop in enumerate(HOPS)}}


def record_frames(page) -> list[str]:
    """Every WebSocket frame the page receives, as chromium's DevTools protocol reports it."""
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    return frames


def whole_reply(page, app, fake: FakeOllamaProcess, number: int) -> dict:
    """Issue 16: everything the tab receives from the click on Send to the status saying "ready" again, for a
    reply of 40 word-sized tokens (PROSE), in WebSocket frame bytes (payload + header, uncompressed): by kind."""
    fake.set(tokens=0, prose=True, tokens_per_s=100)  # at a model's pace: tokens travel one by one
    # The frames of a fresh load only. (Playwright's driver sends this process every frame, listened to or not.)
    frames = record_frames(page)
    page.goto(app.url)
    page.get_by_role("status").filter(has_text="ready").wait_for(timeout=WAIT_MS)
    before = len(frames)
    page.get_by_label("Message").fill(f"question {number}")
    page.get_by_role("button", name="Send").click()
    wait_saved(app, f"question {number}")
    page.locator("#chat-log .msg.assistant:not(:has(.streaming))").last.wait_for(timeout=WAIT_MS)
    page.get_by_role("status").filter(has_text="ready").wait_for(timeout=WAIT_MS)
    got = [frame if isinstance(frame, str) else frame.decode() for frame in frames[before:]]
    kinds: dict[str, list[int]] = {}
    for frame in got:
        kinds.setdefault(frame_kind(frame), []).append(frame_bytes(frame))
    text = "".join(PROSE_TOKENS)
    return {"tokens": len(PROSE_TOKENS), "text_bytes": len(text.encode()),
            "bytes": sum(map(sum, kinds.values())), "frames": len(got),
            "by_kind": {kind: {"frames": len(sizes), "bytes": sum(sizes)} for kind, sizes in kinds.items()},
            "examples": {frame_kind(frame): frame for frame in got}}


def frame_kind(frame: str) -> str:
    if frame.startswith(TOKEN_FRAME):
        return "token"
    for marker, kind in (('id="llm-', "status"), ('class="msg user"', "your message"),
                         ('class="body streaming"', "reply bubble"), ('id="reply-', "finished reply")):
        if marker in frame:
            return kind
    return "other"


def run_rounds(page, app, fake: FakeOllamaProcess, tap: LazyTap, first_reply: int, rounds: int,
               label: str) -> list[dict]:
    page.goto(app.url)
    page.get_by_role("status").filter(has_text="ready").wait_for(timeout=WAIT_MS)
    shown = []
    for number in range(rounds + 1):  # the first round warms up (first request, first render): not counted
        page.evaluate(WATCH, first_token(first_reply + number))
        page.get_by_label("Message").fill(f"question {number}, answered {label}")
        page.get_by_role("button", name="Send").click()
        shown.append((page.evaluate(FIRST_SHOWN, WAIT_MS), wait_saved(app, f"question {number}, answered {label}")))
    written, arrived = fake.take_sent(), fake.request_times()
    samples = [sample(times, written, arrived, tap, chat, first_reply + number)
               for number, (times, chat) in enumerate(shown) if number]
    return [s for s in samples if s is not None]


def first_token(reply: int) -> str:
    return f"r{reply}t00000 "  # harness.NumberedReply's first token of that reply


def wait_saved(app, text: str):
    chat = app.bus.wait_for("journal.chat.sent", timeout_s=WAIT_MS / 1000, text=text)
    app.bus.wait_for("journal.reply.saved", timeout_s=WAIT_MS / 1000, covers_seq=chat.seq)
    return chat


def sample(times: dict, written: dict[str, float], arrived: list[float], tap: LazyTap, chat,
           reply: int) -> dict | None:
    """One round's hops; None if a hop is missing (a claim that lapsed and was granted again, on a busy machine):
    such rounds are left out and counted."""
    messages = tap.messages
    granted = next((m for m in messages if m.type == protocol.CLAIM_GRANTED and m.data["covers_seq"] == chat.seq), None)
    start = next((m for m in messages if m.type == protocol.LLM_START and m.data["covers_seq"] == chat.seq), None)
    token = start and next((m for m in messages if m.type == protocol.LLM_TOKEN
                            and m.data["reply_id"] == start.data["reply_id"]), None)
    if granted is None or token is None:
        return None
    request_at, written_at = arrived[reply - 1], written[first_token(reply)]
    clicked, arrived_at, shown = times["clicked"] / 1000, times["arrived"] / 1000, times["shown"] / 1000
    hops = [chat.ts - clicked, granted.ts - chat.ts, start.ts - granted.ts, request_at - start.ts,
            token.ts - written_at, arrived_at - token.ts, shown - arrived_at]
    return {"total": shown - clicked, "model": written_at - request_at, "hops": hops}


if __name__ == "__main__":
    import json
    import sys
    import tempfile
    exit_on_sigterm()
    fake_process = FakeOllamaProcess()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
            print(json.dumps(first_visible_token(Path(tmp), fake_process, rounds), indent=1))
    finally:
        fake_process.stop()
