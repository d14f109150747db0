"""The access-token page and the installable app as a phone's browser sees them, in Debian's chromium at phone width
on the far end of a private network (tests/lan.py): the token form fits and works without script, and the app page
loads its manifest, icons and favicon with nothing in the console."""
from __future__ import annotations

import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.screenshot import PHONE_WIDTH
from tests.system import ROOT
from tests.test_access import lan  # noqa: F401 (the fixture)
from tests.test_browser import browser  # noqa: F401 (the fixture)

PHONE = {"viewport": {"width": PHONE_WIDTH, "height": 844}, "is_mobile": True, "has_touch": True}


@pytest.fixture
def phone(browser):  # noqa: F811
    """A phone-sized page that records console errors, CSP violations and failed requests."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: page.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield page
    context.close()


def app_manifest(page) -> dict:
    """The manifest as chromium fetched and parsed it for "Add to Home Screen"; its parse errors fail the test."""
    found = page.context.new_cdp_session(page).send("Page.getAppManifest")
    assert found["url"].endswith("/static/manifest.webmanifest") and found["errors"] == [], found
    return found["manifest"]


def installability_errors(page) -> set[str]:
    errors = page.context.new_cdp_session(page).send("Page.getInstallabilityErrors")["installabilityErrors"]
    return {error["errorId"] for error in errors}


def test_on_loopback_the_page_is_installable_and_its_console_is_clean(system, phone):
    phone.goto(system.url)
    expect(phone.locator("#llm-status")).to_contain_text("ready")  # (hidden behind Chat at phone width)
    assert app_manifest(phone)["name"] == "Todo, with attitude"
    assert installability_errors(phone) == {"in-incognito"}  # Playwright's contexts are incognito; nothing else
    assert phone.problems == []


def test_the_token_page_fits_a_phone_and_lets_the_token_in(lan, phone):  # noqa: F811
    response = phone.goto(lan.url + "/?filter=active")
    assert response.status == 401
    expect(phone.get_by_role("heading", name="Todo, with attitude")).to_be_visible()
    expect(phone.get_by_role("list", name="Todos")).to_have_count(0)
    field = phone.get_by_label("Access token")
    expect(field).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH  # no sideways scrolling
    box = field.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH and box["height"] >= 44
    assert field.evaluate("e => getComputedStyle(e).fontSize") == "16px"  # iOS zooms in on smaller inputs
    field.fill("not the token")
    phone.get_by_role("button", name="Open").click()
    expect(phone.get_by_role("alert")).to_have_text("That is not the access token.")
    phone.get_by_label("Access token").fill(lan.token)
    phone.get_by_role("button", name="Open").click()
    expect(phone.get_by_role("list", name="Todos")).to_be_attached()
    expect(phone.get_by_role("button", name="Chat")).to_be_visible()  # the phone layout: one panel at a time
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    assert phone.context.cookies()[0]["httpOnly"] and phone.context.cookies()[0]["sameSite"] == "Strict"
    assert phone.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    # The only problems were the two refusals the person saw: the first page and the wrong token.
    assert [p for p in phone.problems if not p.startswith("401 ") and "status of 401" not in p] == []


def test_the_app_opened_from_the_link_is_installable_with_a_clean_console(lan, phone):  # noqa: F811
    phone.goto(lan.link)
    assert phone.url == lan.url + "/"  # the token is gone from the address bar (and from history)
    expect(phone.get_by_role("list", name="Todos")).to_be_attached()
    phone.get_by_label("New todo").fill("from the phone")
    phone.get_by_role("button", name="Add").click()
    expect(phone.get_by_role("list", name="Todos")).to_contain_text("from the phone")
    phone.get_by_role("button", name="Chat").click()
    expect(phone.get_by_role("log").locator(".msg.assistant")).to_have_count(1)  # streamed over the WebSocket
    manifest = app_manifest(phone)
    assert manifest["display"] == "kStandalone" and manifest["themeColor"] == "rgba(29,35,48,1)"
    assert {icon["sizes"] for icon in manifest["icons"]} >= {"192x192", "512x512"}
    # Over plain http beyond loopback chromium offers a home-screen shortcut, not a full install: say only that.
    assert installability_errors(phone) <= {"in-incognito", "not-from-secure-origin"}
    for icon in ("/static/icon-192.png", "/static/icon-512.png", "/static/apple-touch-icon.png",
                 "/static/favicon.svg"):
        assert phone.request.get(lan.url + icon).status == 200, icon
    assert phone.locator("meta[name=theme-color]").get_attribute("content") == "#1d2330"
    assert phone.problems == []


def test_a_rotation_takes_an_open_phone_page_back_to_the_token_page(lan, phone):  # noqa: F811
    with phone.expect_websocket() as opened:
        phone.goto(lan.link)
    opened.value.wait_for_event("framereceived")  # the tab is live: its resync frame came
    subprocess.run([sys.executable, "-m", "bin.token", "rotate"], cwd=ROOT, env=lan.app.env, check=True,
                   capture_output=True, timeout=20)
    expect(phone.get_by_label("Access token")).to_be_visible()  # the WebSocket closed (1008) and the page reloaded
    expect(phone.get_by_role("list", name="Todos")).to_have_count(0)
