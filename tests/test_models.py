"""Choosing and pulling models (issue 12), with real processes: the select's models, a switch reaching every worker
and surviving restarts, OLLAMA_MODEL winning, and pulls that run once, show progress in every tab, cancel, fail
clearly and resume after a worker restart."""
from __future__ import annotations

import re

import httpx
import pytest

from llm_worker.models import Progress
from tests.fake_ollama import EMBEDDING_MODEL, FakeModel, FakeOllama
from tests.system import HTMX, Tab, running

BIG, SMALL, FRESH = "big:latest", "small:latest", "fresh:latest"
PROGRESS = re.compile(r'role="progressbar"[^>]*aria-valuenow="(\d+)"|aria-valuenow="(\d+)"[^>]*role="progressbar"')


@pytest.fixture
def fake():
    models = [FakeModel(BIG, "8B"), FakeModel(SMALL, "1B"), EMBEDDING_MODEL]
    with FakeOllama(models=models, registry=[FakeModel(FRESH, "2B")]) as fake:
        yield fake


def ready_workers(app, count: int) -> set[str]:
    """The ids of `count` workers once each has said it is ready."""
    def ready(items) -> set[str]:
        return {m.data["worker_id"] for m in items if m.type == "llm.status" and m.data["state"] == "ready"}

    return ready(app.bus.messages.wait_until(lambda items: len(ready(items)) >= count, 20, f"{count} ready workers"))


def chosen_entries(app) -> list:
    return app.bus.of_type("journal.model.chosen")


def test_the_select_lists_installed_chat_models_never_an_embedding_model(tmp_path, fake):
    fake.pull_knobs.tags_capabilities = False  # an older Ollama: capabilities only from /api/show
    with running(tmp_path, fake.url) as app:
        status = app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        assert status.data["models"] == [BIG, SMALL] and status.data["model"] == BIG
        page = httpx.get(app.url, timeout=5).text
        assert re.search(r'<label for="model-select">Model</label>', page)
        assert f'<option value="{BIG}" selected>{BIG} (in use)</option>' in page
        assert f'<option value="{SMALL}">{SMALL}</option>' in page
        assert "nomic-embed" not in page


def test_choosing_a_model_switches_every_worker_and_the_assistant_hears_of_it(tmp_path, fake):
    with running(tmp_path, fake.url, workers=2) as app:
        workers = ready_workers(app, 2)
        start = len(app.bus.messages.items)
        response = httpx.post(app.url + "/model", data={"model": SMALL}, headers=HTMX, timeout=5)
        assert response.status_code == 200 and f'value="{SMALL}" selected' in response.text
        entry = app.bus.wait_for("journal.model.chosen", model=SMALL, previous=BIG)
        app.bus.wait_for("control.model", model=SMALL, start=start)
        for worker_id in workers:
            app.bus.wait_for("llm.status", timeout_s=10, start=start, worker_id=worker_id, model=SMALL)
        # The switch is an action: the assistant comments on it, through the new model, knowing what happened.
        fake.wait_for(lambda: any(r["model"] == SMALL for r in fake.requests), what="a reply from the new model")
        reply = next(r for r in fake.requests if r["model"] == SMALL)
        assert any(f"switched your model from {BIG} to {SMALL}" in m["content"] for m in reply["messages"])
        page = httpx.get(app.url, timeout=5).text
        assert f'id="entry-{entry.seq}"' in page and f"Model switched to {SMALL}." in page


def test_the_chosen_model_survives_a_restart_of_everything_unless_ollama_model_says_otherwise(tmp_path, fake):
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready", model=BIG)
        assert httpx.post(app.url + "/model", data={"model": SMALL}, headers=HTMX, timeout=5).status_code == 200
        app.bus.wait_for("llm.status", timeout_s=10, state="ready", model=SMALL)
        app.bus.wait_for("journal.reply.saved", timeout_s=10)  # the comment on the switch: entries after it
    loads = len(fake.loads)
    # A window of one entry: the choice is older than the window, so the catch-up reply itself must carry it.
    with running(tmp_path, fake.url, HISTORY_WINDOW="1") as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready", model=SMALL)
        assert [load["model"] for load in fake.loads[loads:]] == [SMALL]  # never the best installed first
        tab = Tab(app.ws_url)
        tab.wait_for_text(f'<option value="{SMALL}" selected>{SMALL} (in use)</option>')
        tab.close()
    with running(tmp_path, fake.url, OLLAMA_MODEL=BIG) as app:
        status = app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        assert status.data["model"] == BIG and status.data["pinned"] is True


def test_ollama_model_in_the_environment_wins_and_the_select_says_so(tmp_path, fake):
    with running(tmp_path, fake.url, OLLAMA_MODEL=SMALL) as app:
        status = app.bus.wait_for("llm.status", timeout_s=15, state="ready", model=SMALL)
        assert status.data["pinned"] is True
        tab = Tab(app.ws_url)  # the web has heard that status too once a tab is sent the select it makes
        tab.wait_for_text("set by OLLAMA_MODEL")
        tab.close()
        page = httpx.get(app.url, timeout=5).text
        select = re.search(r'<select[^>]*id="model-select"[^>]*>', page).group(0)
        assert " disabled" in select
        assert "set by OLLAMA_MODEL" in page
        response = httpx.post(app.url + "/model", data={"model": BIG}, headers=HTMX, timeout=5)
        assert response.status_code == 422 and "OLLAMA_MODEL is set" in response.text
        assert chosen_entries(app) == []


@pytest.mark.parametrize("model, error", [
    ("", "cannot be empty"),
    ("nomic-embed-text:latest", "is not an installed chat model"),
    ("no-such:latest", "is not an installed chat model"),
    ("<img src=x>", "is not a model name"),
])
def test_a_choice_that_is_not_an_installed_chat_model_is_refused(tmp_path, fake, model, error):
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        response = httpx.post(app.url + "/model", data={"model": model}, headers=HTMX, timeout=5)
        assert response.status_code == 422 and error in response.text
        assert "<img" not in response.text
        assert chosen_entries(app) == [] and app.bus.of_type("control.model") == []


def test_a_pull_runs_once_and_every_tab_sees_its_progress_then_the_model_is_listed(tmp_path, fake):
    fake.pull_knobs.hold_at_bytes = 20_000_000
    with running(tmp_path, fake.url, workers=2) as app:
        workers = ready_workers(app, 2)
        tabs = [Tab(app.ws_url), Tab(app.ws_url)]
        try:
            response = httpx.post(app.url + "/pull", data={"model": "fresh"}, headers=HTMX, timeout=5)
            assert response.status_code == 200 and 'id="pull-form"' in response.text
            fake.wait_for(lambda: fake.pull_knobs.hold_at_bytes is None, what="the pull to reach its hold")
            for tab in tabs:
                frame = tab.frames.wait_for(lambda f: any(0 < int(a or b) < 100 for a, b in PROGRESS.findall(f)),
                                            what="a progress bar part way")
                assert "Cancel pull" in frame and re.search(r"\d+\.\d MB of 40\.0 MB, [\d.]+ [KMG]?B/s", frame)
            page = httpx.get(app.url, timeout=5).text  # a reload shows the pull still going
            assert PROGRESS.search(page) and "Pulling fresh" in page
            fake.release_pull()
            for tab in tabs:
                tab.wait_for_text("Pulled fresh.")
                tab.frames.wait_for(lambda f: f'<option value="{FRESH}">' in f, what="the new model in the select")
            for worker_id in workers:
                app.bus.messages.wait_until(lambda items, w=worker_id: any(
                    m.type == "llm.status" and m.data["worker_id"] == w and FRESH in m.data["models"]
                    for m in items), what=f"worker {worker_id} to list {FRESH}")
            assert [p["model"] for p in fake.pulls] == ["fresh"]  # one pull, not one per worker
            assert len({m.data["worker_id"] for m in app.bus.of_type("llm.pull")}) == 1
        finally:
            for tab in tabs:
                tab.close()


def test_cancel_pull_closes_the_download_and_every_tab_says_so(tmp_path, fake):
    fake.pull_knobs.hold_at_bytes = 10_000_000
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        tab = Tab(app.ws_url)
        try:
            httpx.post(app.url + "/pull", data={"model": "fresh"}, headers=HTMX, timeout=5)
            tab.frames.wait_for(lambda f: bool(PROGRESS.search(f)), what="a progress bar")
            fake.wait_for(lambda: fake.pull_knobs.hold_at_bytes is None, what="the pull to reach its hold")
            assert httpx.post(app.url + "/pull/cancel", headers=HTMX, timeout=5).status_code == 204
            tab.wait_for_text("The pull of fresh was cancelled.")
            app.bus.wait_for("control.cancel")
            app.bus.wait_for("llm.pull", state="cancelled")
            fake.release_pull()
            fake.wait_for(lambda: fake.pull_disconnects == 1, what="the pull's connection to close")
            assert not PROGRESS.search(httpx.get(app.url, timeout=5).text)
            assert FRESH not in [m.name for m in fake.models]
        finally:
            tab.close()


@pytest.mark.parametrize("model, fault, message", [
    ("no-such-model", None, "Ollama has no model named no-such-model (pull model manifest: file does not exist)"),
    ("fresh", "broken", "The connection to Ollama broke while pulling fresh"),
    ("fresh", "down", "Could not pull fresh: Ollama is not reachable at"),
])
def test_an_unknown_name_or_a_network_failure_gives_one_clear_message(tmp_path, fake, model, fault, message):
    fake.pull_knobs.break_at_bytes = 10_000_000 if fault == "broken" else None
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        if fault == "down":
            fake.stop()
        tab = Tab(app.ws_url)
        try:
            assert httpx.post(app.url + "/pull", data={"model": model}, headers=HTMX, timeout=5).status_code == 200
            tab.wait_for_text(message)
            app.bus.wait_for("llm.pull", state="failed")
            page = httpx.get(app.url, timeout=5).text
            assert page.count(message) == 1 and not PROGRESS.search(page)
        finally:
            tab.close()


@pytest.mark.parametrize("model, error", [("", "cannot be empty"), ("bad name!", "is not a model name")])
def test_a_pull_of_something_that_is_not_a_model_name_is_refused(tmp_path, fake, model, error):
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        response = httpx.post(app.url + "/pull", data={"model": model}, headers=HTMX, timeout=5)
        assert response.status_code == 422 and error in response.text
        assert app.bus.of_type("control.pull") == [] and fake.pulls == []


def test_a_worker_restart_resumes_the_pull_where_it_stopped(tmp_path, fake):
    fake.pull_knobs.hold_at_bytes = 20_000_000
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        tab = Tab(app.ws_url)
        try:
            httpx.post(app.url + "/pull", data={"model": "fresh"}, headers=HTMX, timeout=5)
            fake.wait_for(lambda: fake.pull_knobs.hold_at_bytes is None, what="the pull to reach its hold")
            assert app.processes["worker"].stop() == 0
            fake.release_pull()  # the first stream ends now: its connection is gone
            app.start_worker(name="worker2")
            fake.wait_for(lambda: len(fake.pulls) == 2, timeout_s=15, what="the pull sent to the new worker")
            assert fake.pull_offsets[1] >= 20_000_000  # Ollama resumed: the bytes already in were not fetched again
            tab.wait_for_text("Pulled fresh.", timeout_s=15)
        finally:
            tab.close()


def test_pull_progress_sums_the_layers_and_a_resumed_layer_is_not_counted_as_speed():
    progress = Progress()
    progress.update({"status": "pulling manifest"})
    progress.update({"status": "pulling 0123", "digest": "sha256:0123", "total": 1000})  # `completed` not yet sent
    progress.update({"status": "pulling 0123", "digest": "sha256:0123", "total": 1000, "completed": 600})
    progress.update({"status": "pulling 4567", "digest": "sha256:4567", "total": 50, "completed": 50})
    assert (progress.completed, progress.total, progress.status) == (650, 1050, "pulling 4567")
    resumed = Progress()  # a pull that finds 600 bytes already there: none of them arrived just now
    resumed.update({"status": "pulling 0123", "digest": "sha256:0123", "total": 1000, "completed": 600})
    assert resumed.bytes_per_s == 0.0
    for bad in ({"digest": "sha256:x", "total": -1, "completed": 5}, {"digest": "sha256:y", "total": True},
                {"digest": 7, "total": 10, "completed": 1}, {"status": ["not", "text"]}):
        resumed.update(bad)  # a hostile or odd line changes no count
    assert (resumed.completed, resumed.total, resumed.status) == (600, 1000, "pulling 0123")


def test_a_restarted_web_shows_the_pull_still_going_and_how_it_ended(tmp_path, fake):
    fake.pull_knobs.hold_at_bytes = 20_000_000
    with running(tmp_path, fake.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        httpx.post(app.url + "/pull", data={"model": "fresh"}, headers=HTMX, timeout=5)
        fake.wait_for(lambda: fake.pull_knobs.hold_at_bytes is None, what="the pull to reach its hold")
        assert app.processes["web"].stop() is not None  # ended by SIGTERM, within the time honcho gives
        app.start_web()  # it knows nothing of the pull until the worker's next progress says so
        tab = Tab(app.ws_url)
        try:
            tab.frames.wait_for(lambda f: any(int(a or b) == 50 for a, b in PROGRESS.findall(f)), what="the pull")
            fake.release_pull()
            tab.wait_for_text("Pulled fresh.")
            assert len(fake.pulls) == 1  # the same pull went on: the web restart did not start another
        finally:
            tab.close()
