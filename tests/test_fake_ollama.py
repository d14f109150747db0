"""Keeps the fake honest: the official `ollama` client parses its answers, as it would a real server's."""
from __future__ import annotations

import math

import ollama
import pytest

from llm_worker.tools import TOOLS
from tests.fake_ollama import FakeModel, FakeOllama
from tests.fake_runner import Runner, keep_alive_s, prompt_token_count, tokenize


def test_the_official_client_accepts_the_fake():
    models = [FakeModel("nomic-embed-text:latest", "137M", ("embedding",)), FakeModel("llama3.2:latest")]
    with FakeOllama(models) as fake:
        client = ollama.Client(host=fake.url, timeout=5)
        listed = client.list()
        assert [m.model for m in listed.models] == ["nomic-embed-text:latest", "llama3.2:latest"]
        assert listed.models[1].details.parameter_size == "3.2B"
        shown = client.show("llama3.2")
        assert "completion" in shown.capabilities
        chunks = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
        assert "".join(c.message.content for c in chunks) == "Noted, human. You said: hi"
        assert chunks[-1].done and chunks[-1].done_reason == "stop" and chunks[-1].eval_count == 5
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.status_code == 404 and "not found" in missing.value.error
        with pytest.raises(ollama.ResponseError) as embedding:
            client.chat(model="nomic-embed-text", messages=[{"role": "user", "content": "hi"}])
        assert embedding.value.status_code == 400 and "does not support chat" in embedding.value.error
        assert len(fake.requests) == 3


def test_the_fake_evaluates_only_what_follows_the_cached_prefix_and_says_so():
    first = [{"role": "system", "content": "persona " * 20}, {"role": "user", "content": "hello"}]
    second = [*first, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now?"}]
    changed = [{"role": "system", "content": "another persona " * 10}, *second[1:]]
    with FakeOllama() as fake:
        fake.knobs.prompt_s_per_token = 0.001
        client = ollama.Client(host=fake.url, timeout=5)
        finals = [list(client.chat(model="fake-model", messages=m, stream=True))[-1] for m in (first, second, changed)]
    whole = [prompt_token_count(m, fake.knobs.chars_per_token) for m in (first, second, changed)]
    assert [f.prompt_eval_count for f in finals] == whole  # the whole prompt, cached part included
    evaluated = [e.evaluated_tokens for e in fake.evaluations]
    assert evaluated == [whole[0], whole[1] - whole[0], whole[2] - 3]  # only the start and the role are shared
    assert [f.prompt_eval_duration for f in finals] == [n * 1_000_000 for n in evaluated]


def test_the_fake_charges_a_load_only_when_the_model_is_not_loaded():
    runner = Runner(load_s=2.0)
    assert runner.load(now=0, keep_alive="30m") == 2.0
    assert runner.evaluate([{"role": "user", "content": "hi"}], now=100, keep_alive="30m").load_s == 0
    assert runner.evaluate([{"role": "user", "content": "hi"}], now=100 + 30 * 60 + 3, keep_alive=10).load_s == 2.0
    assert runner.slot == tokenize([{"role": "user", "content": "hi"}], 4.0)  # a fresh load starts with no cache
    assert runner.load(now=5000, keep_alive=-1) == 2.0 and runner.load(now=10**9, keep_alive=0) == 0
    assert runner.load(now=10**9, keep_alive="5m") == 2.0  # keep_alive 0 unloaded it


@pytest.mark.parametrize("value, seconds", [("30m", 1800), ("10s", 10), ("1h", 3600), ("250ms", 0.25), (90, 90),
                                            (-1, math.inf), ("-1m", math.inf), (None, 300), ("soon", 300)])
def test_keep_alive_reads_as_ollama_reads_it(value, seconds):
    assert keep_alive_s(value) == seconds


def test_the_official_client_accepts_the_fakes_pull_its_progress_error_and_resume():
    with FakeOllama([], registry=[FakeModel("fresh:latest", "2B")]) as fake:
        fake.pull_knobs.break_at_bytes = 10_000_000
        client = ollama.Client(host=fake.url, timeout=5)
        with pytest.raises(ollama.ResponseError) as unknown:
            list(client.pull("no-such-model", stream=True))
        assert "file does not exist" in unknown.value.error
        progress = []
        with pytest.raises(Exception):  # the connection drops mid-pull
            for update in client.pull("fresh", stream=True):
                progress.append(update)
        assert progress[0].status == "pulling manifest"
        layer = [p for p in progress if p.digest]
        assert layer[0].total == 40_000_000 and layer[0].completed is None  # `completed` is missing at first
        assert layer[-1].completed == 10_000_000 and layer[-1].status == f"pulling {layer[-1].digest[7:19]}"
        resumed = list(client.pull("fresh", stream=True))
        assert next(p for p in resumed if p.digest).completed == 10_000_000  # Ollama resumes where it stopped
        assert [p.status for p in resumed[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
        assert [m.model for m in client.list().models] == ["fresh:latest"]
        assert fake.pull_offsets == [0, 0, 10_000_000] and fake.pull_disconnects == 1


def test_the_official_client_reads_the_fakes_tool_calls_and_thinking_and_sends_the_results_back():
    with FakeOllama() as fake:
        fake.knobs.thinking = ["Adding", " it."]
        fake.knobs.tool_calls = lambda request: ([] if request["messages"][-1]["role"] == "tool"
                                                 else [{"name": "add_todo", "arguments": {"title": "milk"}}])
        client = ollama.Client(host=fake.url, timeout=5)
        asked = [{"role": "user", "content": "remind me: milk"}]
        chunks = list(client.chat(model="fake-model", messages=asked, tools=TOOLS, think=True, stream=True))
        assert "".join(c.message.thinking or "" for c in chunks) == "Adding it."
        calls = [call for chunk in chunks for call in chunk.message.tool_calls or []]
        assert [(c.function.name, c.function.arguments) for c in calls] == [("add_todo", {"title": "milk"})]
        assert chunks[-1].done and chunks[-1].done_reason == "stop"
        result = {"role": "tool", "content": "Added todo #1.", "tool_name": "add_todo"}
        answer = list(client.chat(model="fake-model", messages=[*asked, chunks[-2].message, result], tools=TOOLS,
                                  stream=True))
        assert "".join(c.message.content for c in answer).startswith("Noted, human.")
        sent = fake.requests[-1]["messages"]
        assert sent[1]["tool_calls"][0]["function"] == {"name": "add_todo", "arguments": {"title": "milk"}}
        assert sent[2] == result
    with FakeOllama([FakeModel("plain:latest", capabilities=("completion",))]) as fake:
        client = ollama.Client(host=fake.url, timeout=5)
        for options, refusal in [({"tools": TOOLS}, "does not support tools"),
                                 ({"think": True}, "does not support thinking")]:
            with pytest.raises(ollama.ResponseError) as refused:
                client.chat(model="plain", messages=asked, **options)
            assert refused.value.status_code == 400 and refusal in refused.value.error
