"""Regenerates the README's screenshot: the real app (bus, web, worker) against the fake Ollama, driven in Debian's
chromium by Playwright. Run `bin/screenshot` after a UI change."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.fake_ollama import FakeOllama
from tests.system import ROOT, running
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

REPLIES = [
    "Milk. Again. Your fridge must be a **shrine** to dairy by now.",
    "A report? Bold of you to assume you will start it before the deadline.",
    "Ticking off milk before writing the report. Priorities: *impeccable*.",
    "Here is your plan, since you asked nicely:\n\n1. Open the document\n2. Type words\n3. Stop opening "
    "the fridge\n\n```sh\necho 'focus'\n```",
]


PHONE_WIDTH = 390  # an iPhone 14's CSS width; app.css switches to one panel at a time below 720


def tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def take(out: Path, width: int, height: int) -> None:
    replies = iter(REPLIES)
    with FakeOllama() as fake, running(Path(tempfile.mkdtemp()), fake.url) as app:
        fake.knobs.reply = lambda request: tokens(next(replies, "Noted."))
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(app.url)
            log = page.locator("#chat-log")  # (not by role: on a phone it is hidden until Chat is tapped)
            for count, title in enumerate(["buy milk", "write the quarterly report"], start=1):
                page.get_by_label("New todo").fill(title)
                page.get_by_role("button", name="Add").click()
                expect(log.locator(".msg.assistant")).to_have_count(count, timeout=15_000)
            page.get_by_role("checkbox", name="Done: buy milk").check()
            expect(log.locator(".msg.assistant")).to_have_count(3, timeout=15_000)
            if width <= PHONE_WIDTH:  # one panel at a time there: the comments wait behind the Chat button
                page.get_by_role("button", name="Chat").click()
            page.get_by_label("Message").fill("How do I actually get the report done?")
            page.get_by_role("button", name="Send").click()
            expect(log.locator("code")).to_have_count(1, timeout=15_000)
            page.screenshot(path=out)
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/screenshot", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--phone", action="store_true", help="390×844, into docs/screenshot-phone.png")
    args = parser.parse_args(argv)
    if args.phone:
        args.width, args.height = PHONE_WIDTH, 844
        if args.out == parser.get_default("out"):
            args.out = ROOT / "docs" / "screenshot-phone.png"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    take(args.out, args.width, args.height)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
