"""Keeps the fake honest: the official `ollama` client parses its answers, as it would a real server's."""
from __future__ import annotations

import ollama
import pytest

from tests.fake_ollama import FakeModel, FakeOllama


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
