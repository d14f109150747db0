"""Fixtures: a fake Ollama, and the real processes (bus, web, worker) on free ports, stopped however a test ends."""
from __future__ import annotations

import pytest

from tests.fake_ollama import FakeOllama
from tests.system import BusWatcher, System


@pytest.fixture
def fake_ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def system(tmp_path, fake_ollama):
    """Bus, web and worker running against the fake Ollama; its bus watcher is attached before the worker starts."""
    app = System(tmp_path, fake_ollama.url)
    watcher = None
    try:
        app.start_bus()
        watcher = BusWatcher(app.env["BUS_SUB_ADDR"])
        app.bus = watcher
        app.start_web()
        app.start_worker()
        watcher.wait_for("llm.status", timeout_s=15, state="ready")
        yield app
    finally:
        if watcher is not None:
            watcher.close()
        codes = app.stop()
        print(app.logs())
        assert all(code is not None for code in codes.values()), f"a process ignored SIGTERM: {codes}"
