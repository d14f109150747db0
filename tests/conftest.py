"""Fixtures: a fake Ollama, and the real processes (bus, web, worker) on free ports, stopped however a test ends."""
from __future__ import annotations

import pytest

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
