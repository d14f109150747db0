"""Fixtures: a fake Ollama, and the real processes (bus, web, worker) on free ports, stopped however a test ends."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.fake_ollama import FakeOllama
from tests.system import running


@pytest.fixture
def fake_ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def system(tmp_path, fake_ollama):
    """Bus, web and worker running against the fake Ollama, the worker ready."""
    with running(tmp_path, fake_ollama.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        yield app


# Browser assertions wait up to 10 s: generous for a loaded 2-core machine, and still a deadline.
expect.set_options(timeout=10_000)
