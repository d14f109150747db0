"""A fake Ollama server speaking the real HTTP API (see shared/OLLAMA.md): /, /api/version, /api/tags, /api/show,
/api/ps and /api/chat with NDJSON streaming, real field names, status codes and error bodies. It records every
request, and has knobs for speed, time to first token and faults. What the model runner costs (tokenizer, prompt
cache, load time, keep-alive) is modelled in tests/fake_runner.py. Runs uvicorn in a thread: `with FakeOllama() as f:`.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fake_runner import Evaluation, Runner

VERSION = "0.13.0"


@dataclass
class FakeModel:
    name: str
    parameter_size: str = "3.2B"
    capabilities: tuple[str, ...] = ("completion", "tools", "thinking")  # as qwen3
    family: str = "llama"
    context_length: int = 131072  # model_info["<family>.context_length"] in /api/show


def _stamp_arrival(app):
    """Notes when each request arrived, before this fake's Python reads and parses its body: the time Ollama takes
    to do that (in Go, a fraction of it) is its own, part of the model's time to first token (tests/bench)."""
    async def stamped(scope, receive, send):
        scope["arrived_at"] = time.time()
        await app(scope, receive, send)
    return stamped


def default_reply(request: dict) -> list[str]:
    """A deterministic reply that quotes the last user message, in word-sized tokens."""
    last = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    text = f"Noted, human. You said: {last[-80:]}"
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass
class Knobs:
    reply: Callable[[dict], list[str]] = default_reply  # the tokens of each reply
    first_token_delay_s: float = 0.0  # before headers, as while a model loads
    tokens_per_s: float = 0.0  # 0: as fast as possible
    # message.thinking chunks sent before the content, when the model has the "thinking" capability and the
    # request's `think` is not false (as Ollama: a thinking model thinks by default)
    thinking: list[str] = field(default_factory=list)
    # The tool calls one reply makes instead of text ([{"name", "arguments"}], sent as one tool_calls chunk), given
    # the request; [] answers in text. Only when the request offers `tools`.
    tool_calls: Callable[[dict], list[dict]] = lambda request: []
    status: int = 200  # non-200: answer /api/chat with this status and {"error": error_message}
    error_message: str = "an error was encountered while running the model"
    error_after_tokens: int | None = None  # send an {"error": ...} line after this many tokens
    hang_after_tokens: int | None = None  # stop sending (connection kept open) after this many tokens
    hold_after_tokens: int | None = None  # pause after this many tokens until FakeOllama.release() is called
    done_reason: str = "stop"
    chars_per_token: float = 4.0  # the tokenizer the final chunk's prompt_eval_count counts with
    prompt_s_per_token: float = 0.0  # evaluating each prompt token after the cached prefix (before the first chunk)
    load_s: float = 0.0  # loading a model that is not loaded (first use, or keep_alive ran out)


EMBEDDING_MODEL = FakeModel("nomic-embed-text:latest", "137M", ("embedding",), "nomic-bert", 2048)


@dataclass
class PullKnobs:
    """How /api/pull behaves (issue 12)."""
    layer_bytes: tuple[int, ...] = (40_000_000, 12_000)  # a model's layers: the weights, then small ones
    chunk_bytes: int = 2_000_000  # received between two progress lines
    line_delay_s: float = 0.005
    hold_at_bytes: int | None = None  # pause (connection open) once this many bytes are in, until release_pull()
    break_at_bytes: int | None = None  # drop the connection mid-stream once this many are in (a network failure)
    tags_capabilities: bool = True  # False: /api/tags without `capabilities`, as older servers (then /api/show)


class FakeOllama:
    def __init__(self, models: list[FakeModel] | None = None, port: int | None = None,
                 registry: list[FakeModel] | None = None) -> None:
        self.models = models if models is not None else [FakeModel("fake-model:latest")]
        self.registry = registry or []  # what /api/pull can fetch (and then installs); anything else is unknown
        self.pull_knobs = PullKnobs()
        self.pulls: list[dict] = []  # every /api/pull body, in order
        self.pull_offsets: list[int] = []  # bytes each pull found already there (Ollama resumes)
        self.pulled_bytes: dict[str, int] = {}  # model → bytes received so far, kept across pulls
        self.pull_disconnects = 0  # pulls the client closed before the end
        self.pull_released = threading.Event()
        self.knobs = Knobs()
        self.port = port or free_port()
        self.requests: list[dict] = []  # every /api/chat body that asks for a reply, in order
        self.request_times: list[float] = []  # time.time() each of `requests` arrived (its headers were read)
        self.request_ports: list[int] = []  # the client's port for each of `requests`: the same one, a kept connection
        self.loads: list[dict] = []  # every /api/chat body with empty messages (load the model), in order
        self.evaluations: list[Evaluation] = []  # what each prompt it evaluated cost, in order
        self._runners: dict[str, Runner] = {}  # model name → its runner (loaded or not, and its cached prompt)
        self.disconnects = 0  # streams the client closed before the end
        self.tokens_sent: list[tuple[float, str]] = []  # (time.time(), text) as each token is written
        self._changed = threading.Condition()
        self.released = threading.Event()  # see Knobs.hold_after_tokens
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # lifecycle

    def start(self) -> "FakeOllama":
        app = Starlette(routes=[
            Route("/", self._root), Route("/api/version", self._version), Route("/api/tags", self._tags),
            Route("/api/ps", self._ps), Route("/api/show", self._show, methods=["POST"]),
            Route("/api/chat", self._chat, methods=["POST"]), Route("/api/pull", self._pull, methods=["POST"]),
        ])
        config = uvicorn.Config(_stamp_arrival(app), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        # Bound here for TCP_NODELAY, which Ollama's Go server sets on every connection and uvicorn's own socket
        # lacks: without it each small NDJSON line waited for the ACK of the one before on a kept-alive connection.
        sock = socket.create_server(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Ollama did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.released.set()  # a held stream must not keep a thread waiting after the server is gone
        self.pull_released.set()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FakeOllama":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def release(self) -> None:
        """Let streams held by `hold_after_tokens` go on."""
        self.released.set()

    # waiting on what happened

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10, what: str = "condition") -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout=timeout_s):
                raise TimeoutError(f"fake Ollama: timed out after {timeout_s} s waiting for {what}")

    def wait_for_requests(self, count: int, timeout_s: float = 10) -> list[dict]:
        self.wait_for(lambda: len(self.requests) >= count, timeout_s, f"{count} chat requests")
        return self.requests

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # the API

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [self._describe(m) for m in self.models]})

    async def _pull(self, request: Request) -> Response:
        body = await request.json()
        name = body.get("model") or body.get("name") or ""
        self.pull_offsets.append(self.pulled_bytes.get(name, 0))
        self.pulls.append(body)
        self._notify()
        if not name:
            return JSONResponse({"error": "model is required"}, status_code=400)
        return StreamingResponse(self._pull_stream(name),
                                 media_type="application/x-ndjson")

    async def _pull_stream(self, name: str):
        """As Ollama streams a pull: the manifest, each layer's bytes (resuming what an earlier pull of it left),
        verification, success; an unknown name is an error line after the first; closing the connection cancels."""
        knobs, finished = self.pull_knobs, False
        model = next((m for m in self.registry if name in (m.name, m.name.removesuffix(":latest"))), None)
        offset = self.pulled_bytes.get(name, 0)
        try:
            yield _line({"status": "pulling manifest"})
            if model is None:
                yield _line({"error": "pull model manifest: file does not exist"})
                finished = True
                return
            start = 0
            for index, layer in enumerate(knobs.layer_bytes):
                digest = f"sha256:{index:02d}" + "c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b7"[:62]
                status = f"pulling {digest[7:19]}"
                completed = min(layer, max(0, offset - start))
                yield _line({"status": status, "digest": digest, "total": layer, **({"completed": completed}
                                                                                   if completed else {})})
                while completed < layer:
                    got = start + completed
                    if knobs.hold_at_bytes is not None and got >= knobs.hold_at_bytes:
                        knobs.hold_at_bytes = None
                        self._notify()
                        await asyncio.get_running_loop().run_in_executor(None, self.pull_released.wait, 60)
                    if knobs.break_at_bytes is not None and got >= knobs.break_at_bytes:
                        knobs.break_at_bytes = None
                        raise ConnectionResetError("fake Ollama: the network went away mid-pull")
                    await asyncio.sleep(knobs.line_delay_s)
                    completed = min(layer, completed + knobs.chunk_bytes)
                    self.pulled_bytes[name] = start + completed
                    yield _line({"status": status, "digest": digest, "total": layer, "completed": completed})
                start += layer
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                yield _line({"status": status})
            if self._find(name) is None:
                self.models.insert(0, model)  # newest first, as /api/tags lists them
            finished = True
        finally:
            if not finished:
                self.pull_disconnects += 1
            self._notify()

    def release_pull(self) -> None:
        """Let a pull held by `pull_knobs.hold_at_bytes` go on."""
        self.pull_released.set()

    async def _ps(self, request: Request) -> Response:
        return JSONResponse({"models": []})

    async def _show(self, request: Request) -> Response:
        body = await request.json()
        model = self._find(body.get("model") or body.get("name") or "")
        if model is None:
            return JSONResponse({"error": f"model '{body.get('model')}' not found"}, status_code=404)
        return JSONResponse({
            "modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
            "details": self._describe(model)["details"], "capabilities": list(model.capabilities),
            "model_info": {"general.architecture": model.family,
                           f"{model.family}.context_length": model.context_length},
            "modified_at": _now(),
        })

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        loading = body.get("messages") == []  # load the model: answers once, done_reason "load"
        (self.loads if loading else self.requests).append(body)
        if not loading:
            self.request_times.append(request.scope["arrived_at"])
            self.request_ports.append(request.client.port)
        self._notify()
        knobs = self.knobs
        name = body.get("model") or ""
        if not name:
            return JSONResponse({"error": "model is required"}, status_code=400)
        model = self._find(name)
        if model is None:
            return JSONResponse({"error": f'model "{name}" not found, try pulling it first'}, status_code=404)
        if "completion" not in model.capabilities:
            return JSONResponse({"error": f'"{name}" does not support chat'}, status_code=400)
        if body.get("tools") and "tools" not in model.capabilities:
            return JSONResponse({"error": f"registry.ollama.ai/library/{name} does not support tools"},
                                status_code=400)
        if body.get("think") not in (None, False) and "thinking" not in model.capabilities:
            return JSONResponse({"error": f'"{name}" does not support thinking'}, status_code=400)
        runner = self._runner(model.name)
        if loading:
            await asyncio.sleep(runner.load(time.monotonic(), body.get("keep_alive")))
            load = {"model": name, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant",
                    "content": ""}, "done_reason": "load", "done": True}
            if body.get("stream", True) is False:
                return JSONResponse(load)
            return StreamingResponse(iter([_line(load)]), media_type="application/x-ndjson")
        if knobs.status != 200:
            await asyncio.sleep(knobs.first_token_delay_s)
            return JSONResponse({"error": knobs.error_message}, status_code=knobs.status)
        # Ollama renders the tools' schemas into the prompt (here: ahead of the messages, as qwen's template does),
        # so they count in prompt_eval_count and take room in the context.
        tools = [{"role": "tools", "content": json.dumps(body["tools"])}] if body.get("tools") else []
        cost = runner.evaluate(tools + (body.get("messages") or []), time.monotonic(), body.get("keep_alive"))
        self.evaluations.append(cost)
        # Loading and evaluating the prompt come before the first chunk: not even headers are sent meanwhile.
        await asyncio.sleep(knobs.first_token_delay_s + cost.first_token_s)
        calls = knobs.tool_calls(body) if body.get("tools") else []
        tokens = [] if calls else knobs.reply(body)
        thinks = "thinking" in model.capabilities and body.get("think") is not False
        thinking = knobs.thinking if thinks else []
        if body.get("stream", True) is False:
            return JSONResponse(self._final(name, "".join(tokens), len(tokens), knobs.done_reason, cost))
        return StreamingResponse(self._stream(name, tokens, knobs, cost, thinking, calls),
                                 media_type="application/x-ndjson")

    def _runner(self, name: str) -> Runner:
        runner = self._runners.setdefault(name, Runner())
        runner.chars_per_token, runner.prompt_s_per_token = self.knobs.chars_per_token, self.knobs.prompt_s_per_token
        runner.load_s = self.knobs.load_s
        return runner

    def unload(self) -> None:
        """As if keep_alive ran out for every model: the next request pays the load time again."""
        for runner in self._runners.values():
            runner.loaded_until = float("-inf")

    async def _stream(self, name: str, tokens: list[str], knobs: Knobs, cost: Evaluation, thinking: list[str],
                      calls: list[dict]):
        finished = False
        try:
            for text in thinking:
                if knobs.tokens_per_s:
                    await asyncio.sleep(1 / knobs.tokens_per_s)
                yield _line(self._chunk(name, "", thinking=text))
            if calls:  # as Ollama: every call in one chunk, with empty content, arguments as an object
                message = {"role": "assistant", "content": "", "tool_calls": [
                    {"id": f"call_{index}_{len(self.requests)}",
                     "function": {"index": index, "name": call["name"], "arguments": call["arguments"]}}
                    for index, call in enumerate(calls)]}
                yield _line({"model": name, "created_at": _now(), "message": message, "done": False})
            for index, text in enumerate(tokens):
                if knobs.error_after_tokens == index:
                    yield _line({"error": knobs.error_message})
                    finished = True
                    return
                if knobs.hang_after_tokens == index:
                    await asyncio.sleep(3600)
                if knobs.hold_after_tokens == index:
                    await asyncio.get_running_loop().run_in_executor(None, self.released.wait, 60)
                if knobs.tokens_per_s:
                    await asyncio.sleep(1 / knobs.tokens_per_s)
                self.tokens_sent.append((time.time(), text))
                yield _line(self._chunk(name, text))
            yield _line(self._final(name, "", len(tokens), knobs.done_reason, cost))
            finished = True
        finally:
            if not finished:
                self.disconnects += 1
            self._notify()

    # shapes

    def _find(self, name: str) -> FakeModel | None:
        for model in self.models:
            if name in (model.name, model.name.removesuffix(":latest")):
                return model
        return None

    def _describe(self, model: FakeModel) -> dict:
        return {
            "name": model.name, "model": model.name, "modified_at": _now(), "size": 2_019_393_189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {"parent_model": "", "format": "gguf", "family": model.family, "families": [model.family],
                        "parameter_size": model.parameter_size, "quantization_level": "Q4_K_M"},
            **({"capabilities": list(model.capabilities)} if self.pull_knobs.tags_capabilities else {}),
        }

    def _chunk(self, name: str, content: str, thinking: str = "") -> dict:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        return {"model": name, "created_at": _now(), "message": message, "done": False}

    def _final(self, name: str, content: str, eval_count: int, done_reason: str, cost: Evaluation) -> dict:
        # Durations are nanoseconds, as Ollama's; prompt_eval_duration covers only the evaluated (uncached) part.
        load_ns, prompt_ns = int(cost.load_s * 1e9), int(cost.prompt_s * 1e9)
        return {
            "model": name, "created_at": _now(), "message": {"role": "assistant", "content": content},
            "done": True, "done_reason": done_reason, "total_duration": load_ns + prompt_ns + 987_654_321,
            "load_duration": load_ns, "prompt_eval_count": cost.prompt_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": eval_count, "eval_duration": 987_654_321,
        }


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
