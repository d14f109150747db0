"""Choosing and pulling models in Debian's chromium (issue 12), through the accessible names in DESIGN.md: the
"Model" select, the "Pull a model" field with "Pull", the progress bar and "Cancel pull". Every test also fails on
a console error (a Content-Security-Policy violation included)."""
from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
from playwright.sync_api import expect

from tests.fake_ollama import EMBEDDING_MODEL, FakeModel, FakeOllama
from tests.system import running
from tests.test_browser import browser  # noqa: F401 (the fixture)

BIG, SMALL, FRESH = "big:latest", "small:latest", "fresh:latest"


@pytest.fixture
def fake():
    models = [FakeModel(BIG, "8B"), FakeModel(SMALL, "1B"), EMBEDDING_MODEL]
    with FakeOllama(models=models, registry=[FakeModel(FRESH, "2B")]) as fake:
        yield fake


@pytest.fixture
def start(tmp_path, fake):
    """Starts the system (bus, web, a worker) with these settings; stopped after the tabs are closed."""
    with ExitStack() as stack:
        yield lambda **env: stack.enter_context(running(tmp_path, fake.url, **env))


@pytest.fixture
def open_page(browser, start):  # noqa: F811 (depends on `start`: its tabs close before the processes stop)
    contexts, problems = [], []

    def open_page(url: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert problems == []


def test_the_model_select_lists_chat_models_and_switches_the_assistant(start, fake, open_page):
    app = start()
    page = open_page(app.url)
    select = page.get_by_label("Model", exact=True)
    expect(select.locator("option")).to_have_text([f"{BIG} (in use)", SMALL])  # no embedding model
    select.select_option(SMALL)
    expect(page.get_by_role("status")).to_contain_text(f"model {SMALL}")
    expect(page.get_by_role("log")).to_contain_text(f"Model switched to {SMALL}.")
    expect(select.locator("option:checked")).to_have_text(f"{SMALL} (in use)")
    page.reload()  # the history and the select say the same after a reload
    expect(page.get_by_role("log")).to_contain_text(f"Model switched to {SMALL}.")
    expect(page.get_by_label("Model", exact=True).locator("option:checked")).to_have_text(f"{SMALL} (in use)")


def test_the_select_says_when_ollama_model_decides(start, fake, open_page):
    app = start(OLLAMA_MODEL=BIG)
    page = open_page(app.url)
    select = page.get_by_label("Model", exact=True)
    expect(select).to_be_disabled()
    expect(select).to_have_accessible_description(re.compile("set by OLLAMA_MODEL"))


def test_every_tab_shows_the_pull_progress_and_cancel_pull_stops_it(start, fake, open_page):
    fake.pull_knobs.hold_at_bytes = 20_000_000
    app = start()
    app.bus.wait_for("llm.status", timeout_s=15, state="ready")
    page, other = open_page(app.url), open_page(app.url)
    page.get_by_label("Pull a model").fill("fresh")
    page.get_by_role("button", name="Pull", exact=True).click()
    for tab in (page, other):
        bar = tab.get_by_role("progressbar")
        expect(bar).to_have_attribute("aria-valuenow", "50")  # held at 20 of 40 MB
        expect(tab.locator("#pull-status")).to_contain_text("MB of 40.0 MB")
    expect(page.get_by_label("Pull a model")).to_have_value("")  # the field is free for the next name
    other.get_by_role("button", name="Cancel pull").click()
    for tab in (page, other):
        expect(tab.get_by_role("progressbar")).to_have_count(0)
        expect(tab.get_by_role("alert")).to_have_text("The pull of fresh was cancelled.")
    fake.release_pull()


def test_a_missing_model_is_offered_for_pulling_and_used_once_pulled(start, fake, open_page):
    app = start(OLLAMA_MODEL=FRESH)
    page = open_page(app.url)
    expect(page.get_by_role("status")).to_contain_text("offline")
    page.get_by_role("button", name=f"Pull {FRESH}").click()
    expect(page.get_by_role("alert").filter(has_text="Pulled")).to_have_text(f"Pulled {FRESH}.")
    status = page.get_by_role("status")
    expect(status).to_contain_text("ready")
    expect(status).to_contain_text(f"model {FRESH}")
    expect(page.get_by_label("Model", exact=True).locator("option:checked")).to_have_text(f"{FRESH} (in use)")


def test_an_unknown_model_is_one_clear_message_in_the_page(start, fake, open_page):
    app = start()
    app.bus.wait_for("llm.status", timeout_s=15, state="ready")
    page = open_page(app.url)
    page.get_by_label("Pull a model").fill("no-such-model")
    page.get_by_label("Pull a model").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Ollama has no model named no-such-model")
    expect(page.get_by_role("alert")).to_have_count(1)
    expect(page.get_by_role("progressbar")).to_have_count(0)
