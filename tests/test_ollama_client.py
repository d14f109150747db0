"""The worker's Ollama client against the fake: model choice, streaming, thinking, every error path, deadlines."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from services import config
from llm_worker.ollama import Chunk, OllamaClient, OllamaError, parse_line
from tests.fake_ollama import FakeModel, FakeOllama

HELLO = [{"role": "user", "content": "hello"}]


def client_for(fake: FakeOllama, **overrides) -> OllamaClient:
    settings = dataclasses.replace(config.load({"OLLAMA_HOST": fake.url}), **overrides)
    return OllamaClient(settings)


async def collect(client: OllamaClient, model: str = "fake-model:latest", **options):
    try:
        return [chunk async for chunk in client.chat(model, HELLO, num_ctx=4096, **options)]
    finally:
        await client.close()


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_biggest_chat_model_is_chosen_and_never_an_embedding_model():
    models = [FakeModel("mxbai-embed-large:latest", "335M", ("embedding",)),
              FakeModel("big-embed:latest", "70B", ("embedding", "completion")),
              FakeModel("qwen3:8b", "8.2B", ("completion", "thinking")),
              FakeModel("llama3.2:latest", "3.2B")]
    with FakeOllama(models) as fake:
        assert run(client_for(fake).choose_model()) == "qwen3:8b"
        assert run(client_for(fake, ollama_model="llama3.2").choose_model()) == "llama3.2"
        # With no choice, the model in use stays while it is installed: a bigger one pulled is not switched to.
        assert run(client_for(fake).choose_model("", keep="llama3.2:latest")) == "llama3.2:latest"
        assert run(client_for(fake).choose_model("", keep="gone:latest")) == "qwen3:8b"
        with pytest.raises(OllamaError, match="ollama pull mistral"):
            run(client_for(fake, ollama_model="mistral").choose_model())
    with FakeOllama([FakeModel("only-embed", "137M", ("embedding",))]) as fake:
        with pytest.raises(OllamaError, match="No chat model"):
            run(client_for(fake).choose_model())


def test_replies_that_end_keep_their_connection_and_a_reply_left_early_closes_it():
    async def replies(client: OllamaClient) -> None:
        try:
            for _ in range(3):
                assert [c async for c in client.chat("fake-model:latest", HELLO, num_ctx=4096)][-1].done
            async for _ in client.chat("fake-model:latest", HELLO, num_ctx=4096):
                break  # stopped: closing the connection is what tells Ollama to stop generating
            assert [c async for c in client.chat("fake-model:latest", HELLO, num_ctx=4096)][-1].done
        finally:
            await client.close()

    with FakeOllama() as fake:
        run(replies(client_for(fake)))
        ports = fake.request_ports
        assert len(ports) == 5
        assert ports[0] == ports[1] == ports[2] == ports[3]  # a new TCP connection cost ~2 ms of each first token
        assert ports[4] != ports[3]


def test_a_stream_yields_content_and_the_final_counts_and_thinking_stays_apart():
    with FakeOllama([FakeModel("qwen3:8b", "8.2B", ("completion", "thinking"))]) as fake:
        fake.knobs.thinking = ["Hmm", ", let me think"]
        fake.knobs.reply = lambda request: ["Hi", " there"]
        chunks = run(collect(client_for(fake), "qwen3:8b"))
        assert "".join(c.content for c in chunks) == "Hi there"
        assert "".join(c.thinking for c in chunks) == "Hmm, let me think"
        assert chunks[-1].done and chunks[-1].done_reason == "stop" and chunks[-1].stats["eval_count"] == 2
        sent = fake.requests[0]
        assert sent["stream"] is True and sent["options"]["num_ctx"] == 4096


@pytest.mark.parametrize("knobs, message", [
    ({"status": 500, "error_message": "llama runner process has terminated"}, "500: llama runner"),
    ({"status": 503, "error_message": "server busy, please try again.  maximum pending requests exceeded"},
     "busy"),
    ({"error_after_tokens": 2}, "error mid-reply: an error was encountered"),
])
def test_errors_by_status_or_mid_stream_end_the_reply_with_a_clear_message(knobs, message):
    with FakeOllama() as fake:
        for key, value in knobs.items():
            setattr(fake.knobs, key, value)
        with pytest.raises(OllamaError, match=message):
            run(collect(client_for(fake)))


def test_a_missing_model_names_the_pull_command():
    with FakeOllama() as fake:
        with pytest.raises(OllamaError, match="ollama pull llama3.2"):
            run(collect(client_for(fake), model="llama3.2"))


def test_an_unreachable_ollama_says_how_to_start_it():
    fake = FakeOllama()  # never started
    with pytest.raises(OllamaError, match="not reachable.*ollama serve"):
        run(collect(client_for(fake)))


def test_on_sent_is_called_once_the_request_is_written_before_any_answer_and_never_when_it_cannot_be():
    # The worker says it started a reply (llm.start) from this hook: the bus and the web stay quiet while it writes.
    async def reply(client: OllamaClient, events: list) -> None:
        try:
            async for chunk in client.chat("fake-model:latest", HELLO, num_ctx=4096,
                                           on_sent=lambda: events.append(("sent", loop.time()))):
                events.append(("chunk", loop.time()))
        finally:
            await client.close()

    loop = asyncio.new_event_loop()
    with FakeOllama() as fake:
        fake.knobs.first_token_delay_s = 0.5  # a model evaluating the prompt: no answer, not even headers
        events: list = []
        loop.run_until_complete(reply(client_for(fake), events))
        assert [kind for kind, _ in events][:2] == ["sent", "chunk"] and [k for k, _ in events].count("sent") == 1
        assert events[1][1] - events[0][1] >= 0.4  # called when written, not when the answer came
        assert len(fake.requests) == 1
    unreachable: list = []
    with pytest.raises(OllamaError, match="not reachable"):
        loop.run_until_complete(reply(client_for(fake), unreachable))  # (stopped above)
    loop.close()
    assert unreachable == []


def test_on_sent_still_comes_once_before_the_first_chunk_from_a_transport_without_trace_hooks():
    import httpx

    def ollama(request: httpx.Request) -> httpx.Response:
        lines = [{"message": {"role": "assistant", "content": "hi"}, "done": False},
                 {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}]
        return httpx.Response(200, content="".join(json.dumps(line) + "\n" for line in lines).encode())

    async def reply(client: OllamaClient, events: list) -> None:
        client.http = httpx.AsyncClient(base_url="http://ollama.test", transport=httpx.MockTransport(ollama))
        try:
            async for chunk in client.chat("m", HELLO, num_ctx=4096, on_sent=lambda: events.append("sent")):
                events.append(chunk.content or "done")
        finally:
            await client.close()

    events: list = []
    run(reply(OllamaClient(config.load({})), events))
    assert events == ["sent", "hi", "done"]


def test_a_slow_first_token_is_waited_for_but_a_stalled_stream_is_not():
    with FakeOllama() as fake:
        fake.knobs.first_token_delay_s = 1.0  # a model loading: longer than the chunk deadline below
        chunks = run(collect(client_for(fake, first_token_timeout_s=5, chunk_timeout_s=0.5)))
        assert chunks[-1].done
        fake.knobs.first_token_delay_s = 0
        fake.knobs.hang_after_tokens = 2
        with pytest.raises(OllamaError, match="sent nothing for 0.5 s"):
            run(collect(client_for(fake, first_token_timeout_s=5, chunk_timeout_s=0.5)))
        fake.wait_for(lambda: fake.disconnects >= 1, 5, "the stalled stream to be closed")


@pytest.mark.parametrize("line, expected", [
    # JSON's "\ud800" escape decodes to a lone surrogate, which the bus cannot carry: it becomes U+FFFD
    ('{"message": {"role": "assistant", "content": "hi \\ud800"}, "done": false}', Chunk(content="hi \ufffd")),
    ('{"message": {"content": "", "thinking": "\\udfff"}, "done": false}', Chunk(thinking="\ufffd")),
    ('{"message": {"content": 5, "thinking": ["x"]}, "done": false}', Chunk()),  # not text: absent
    ('{"message": null, "done": false}', Chunk()),
    ('{"message": {"content": ""}, "done": true, "done_reason": 7}', Chunk(done=True)),
    ('{"message": {"content": ""}, "done": "yes"}', Chunk()),  # only a JSON true ends the reply
    ('{"done": true, "eval_count": "12", "eval_duration": 1.5, "total_duration": true, "load_duration": {},'
     ' "prompt_eval_count": 100000000000000000000000, "prompt_eval_duration": 42}',
     Chunk(done=True, stats={"eval_duration": 1.5, "prompt_eval_duration": 42})),  # numbers a msgpack int holds
])
def test_odd_but_legal_chunks_parse_into_text_the_bus_can_carry(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize("line, message", [
    ('{"message": "hi", "done": false}', "message is not an object"),
    ('{"message": ["hi"], "done": false}', "message is not an object"),
    ('{"error": "bad \\ud800 thing"}', "error mid-reply: bad \ufffd thing"),
    ('[1, 2]', "unexpected line"),
    ('{"message": ', "not JSON"),
])
def test_a_malformed_chunk_ends_the_reply_with_a_message_naming_it(line, message):
    with pytest.raises(OllamaError, match=message):
        parse_line(line)
