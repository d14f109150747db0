"""Ollama's HTTP API as the worker uses it: pick the chat model and stream /api/chat line by line, with separate
connect, first-token and between-chunk deadlines. Every failure becomes an OllamaError that names the fix."""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import httpx

from services.config import Settings
from services.protocol import MAX_MODELS, MODEL_NAME, reply_stats
from services.text import valid_unicode
from llm_worker.tools import ToolCall, parse_tool_calls



class Silence:
    """A deadline on the gaps between a stream's lines: `wait(read)` raises TimeoutError once nothing came for
    `allowed_s`. One timer per allowance, not one per line: asyncio.timeout() around each read scheduled and
    cancelled a timer for every token, a fifth of the worker's CPU per token (tests/bench/profile.py). The timer
    cancels the task only while it waits in `wait`, never while its caller handles a line."""

    def __init__(self, allowed_s: float) -> None:
        self.allowed_s = allowed_s
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._waiting_since = self._loop.time()
        self._waiting = self._expired = False
        self._timer = self._loop.call_at(self._waiting_since + allowed_s, self._check)

    async def wait(self, read):
        self._waiting, self._waiting_since = True, self._loop.time()
        try:
            return await read
        except asyncio.CancelledError:
            if self._expired and self._task.uncancel() == 0:  # our cancel, and nobody else's: a timeout
                raise asyncio.TimeoutError from None
            raise
        finally:
            self._waiting = False

    def _check(self) -> None:
        now, due = self._loop.time(), self._waiting_since + self.allowed_s
        if self._waiting and now >= due:
            self._expired = True
            self._task.cancel()
        else:  # heard from in time (or not waiting now): look again when the current wait could run out
            self._timer = self._loop.call_at(due if self._waiting else now + self.allowed_s, self._check)

    def allow(self, seconds: float) -> None:
        """From now on, gaps of up to `seconds` (the first line may take longer than the gaps after it)."""
        if seconds != self.allowed_s:
            self.allowed_s = seconds
            self._timer.cancel()
            self._timer = self._loop.call_at(self._waiting_since + seconds, self._check)

    def close(self) -> None:
        self._timer.cancel()


class OllamaError(Exception):
    """A failure a person can act on; str() is the message shown in the chat."""


@dataclass
class Chunk:
    content: str = ""
    thinking: str = ""
    done: bool = False
    done_reason: str = ""
    stats: dict = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)


# After the final line, how long its chunked end may take before the connection is dropped instead: the reply's
# `done` waits for it (Ollama sends it at once; a buffering proxy might not).
END_OF_STREAM_S = 0.1


class ModelMissing(OllamaError):
    """The wanted model is not installed: the page offers to pull it."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(message)
        self.model = model


def model_missing(model: str) -> OllamaError:
    return ModelMissing(f"Model {model} is not installed in Ollama: pull it (Pull in the page, or `ollama pull "
                        f"{model}`), or set OLLAMA_MODEL to an installed chat model.", model)


def parameter_count(size: str) -> float:
    """'8.0B' → 8e9, '270M' → 2.7e8; unknown sizes sort last."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMBT]?)\s*", size or "", re.IGNORECASE)
    if not match:
        return 0.0
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match.group(2).upper()]
    return float(match.group(1)) * scale


def is_chat_model(capabilities: list[str]) -> bool:
    return "completion" in capabilities and "embedding" not in capabilities


class OllamaClient:
    def __init__(self, settings: Settings) -> None:
        self.url = settings.ollama_url
        self.settings = settings
        # read=None: the stream's deadlines are enforced per line below, where first token and later chunks differ.
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=None, write=10.0, pool=10.0)
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout)
        self.chat_models: list[str] = []  # as /api/tags listed them last, best first

    async def close(self) -> None:
        await self.http.aclose()

    async def choose_model(self, wanted: str | None = None, keep: str = "") -> str:
        """`wanted` (by default OLLAMA_MODEL) if set and installed; otherwise `keep` (the model in use) while it is
        installed, so that pulling a bigger model does not switch to it unasked; otherwise the installed chat model
        with the most parameters (ties: the newest, which /api/tags lists first). Embedding models are never
        chosen. Also keeps the installed chat models, best first, in `chat_models` (the page's select shows them)."""
        installed = [m for m in (await self._get_json("GET", "/api/tags")).get("models") or [] if isinstance(m, dict)]
        self.chat_models = await self._chat_models(installed)
        wanted = self.settings.ollama_model if wanted is None else wanted
        if wanted:
            names = {m.get("name") for m in installed} | {m.get("model") for m in installed}
            if wanted not in names and f"{wanted}:latest" not in names:
                raise model_missing(wanted)
            return wanted
        if keep in self.chat_models:
            return keep
        if not self.chat_models:
            raise OllamaError(f"No chat model is installed in Ollama at {self.url}: run `ollama pull llama3.2` "
                              "(or any chat model), or set OLLAMA_MODEL.")
        return self.chat_models[0]

    async def _chat_models(self, installed: list[dict]) -> list[str]:
        found = []
        for index, model in enumerate(installed[:MAX_MODELS]):
            name = model.get("name") or model.get("model") or ""
            if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
                continue  # it goes to the bus and into every tab's select: plain names only
            capabilities = model.get("capabilities")
            if capabilities is None:  # older servers list capabilities only in /api/show
                capabilities = (await self._get_json("POST", "/api/show", {"model": name})).get("capabilities", [])
            size = parameter_count((model.get("details") or {}).get("parameter_size", ""))
            if isinstance(capabilities, list) and is_chat_model(capabilities):
                found.append((-size, index, name))
        return [name for *_, name in sorted(found)]

    async def context_window(self, model: str) -> int:
        """OLLAMA_NUM_CTX, or the model's own context length from /api/show when that is smaller: asking for more
        than the model has gains nothing and costs memory."""
        info = (await self._get_json("POST", "/api/show", {"model": model})).get("model_info") or {}
        length = info.get(f"{info.get('general.architecture')}.context_length")
        if isinstance(length, int) and not isinstance(length, bool) and length > self.settings.num_predict:
            return min(self.settings.num_ctx, length)
        return self.settings.num_ctx

    async def load(self, model: str, num_ctx: int) -> None:
        """Load the model without generating (an empty-messages /api/chat answers once, done_reason "load"), so
        the first reply does not wait for it; it then stays loaded for OLLAMA_KEEP_ALIVE."""
        body = {"model": model, "messages": [], "stream": False, "keep_alive": self.settings.keep_alive,
                "options": {"num_ctx": num_ctx}}  # the same num_ctx as replies: another one would load it again
        try:
            async with asyncio.timeout(self.settings.first_token_timeout_s):
                response = await self.http.post("/api/chat", json=body)
        except asyncio.TimeoutError:
            raise OllamaError(f"Ollama did not load {model} within {self.settings.first_token_timeout_s:g} s. "
                              "Raise OLLAMA_FIRST_TOKEN_TIMEOUT_S if it needs longer.") from None
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if response.status_code != 200:
            raise self._status_error(response, model)

    async def capabilities(self, model: str) -> frozenset[str]:
        """What the model can do ("completion", "tools", "thinking", ...), from /api/show."""
        found = (await self._get_json("POST", "/api/show", {"model": model})).get("capabilities")
        return frozenset(c for c in found if isinstance(c, str)) if isinstance(found, list) else frozenset()

    async def chat(self, model: str, messages: list[dict], num_ctx: int, tools: list[dict] | None = None,
                   think: bool | str | None = None, on_sent: Callable[[], None] | None = None
                   ) -> AsyncIterator[Chunk]:
        """Stream one reply. Leaving the iteration early closes the HTTP connection, which stops Ollama generating.
        `tools` and `think` are sent only when given: a model without the capability answers 400 to them.
        `on_sent` is called once the whole request is written (httpcore's trace hook), before any answer."""
        body = {"model": model, "messages": messages, "stream": True, "keep_alive": self.settings.keep_alive,
                "options": {"num_ctx": num_ctx, "num_predict": self.settings.num_predict}}
        if tools:
            body["tools"] = tools
        if think is not None:
            body["think"] = think
        request = self.http.build_request("POST", "/api/chat", json=body)
        sent = on_sent is None

        def written() -> None:
            nonlocal sent
            if not sent:
                sent = True
                on_sent()

        async def trace(event: str, info: dict) -> None:
            if event == "http11.send_request_body.complete":
                written()

        if on_sent is not None:  # (otherwise httpcore need not await a hook at each step of every request)
            request.extensions["trace"] = trace
        response = await self._send(request, model)
        written()  # at the latest with the answer: should an httpx to come not call the hook, it is late, not lost
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._status_error(response, model)
            lines = response.aiter_lines()
            silence = Silence(self.settings.first_token_timeout_s)
            try:
                while True:
                    try:
                        line = await silence.wait(anext(lines))
                    except StopAsyncIteration:
                        raise OllamaError(f"Ollama ended the reply without finishing it (model {model}).") from None
                    except asyncio.TimeoutError:
                        raise OllamaError(f"Ollama sent nothing for {silence.allowed_s:g} s in the middle of a reply; "
                                          "it may be overloaded. Raise OLLAMA_CHUNK_TIMEOUT_S if this is expected."
                                          ) from None
                    except httpx.HTTPError as error:
                        raise OllamaError(f"The connection to Ollama broke mid-reply ({error}).") from None
                    silence.allow(self.settings.chunk_timeout_s)
                    if not line.strip():
                        continue
                    chunk = parse_line(line)
                    yield chunk
                    if chunk.done:
                        await self._read_to_the_end(lines, silence)
                        return
            finally:
                silence.close()
        finally:
            await response.aclose()

    @staticmethod
    async def _read_to_the_end(lines: AsyncIterator[str], silence: Silence) -> None:
        """What follows the final line (the chunked body's end), so that closing the response hands the connection
        back to the pool: closed half-read, every reply opened a new one, ~2 ms of its first token here. Nothing
        may follow but blank lines; a stream that goes on, or stalls, is simply closed."""
        silence.allow(END_OF_STREAM_S)
        try:
            while not (await silence.wait(anext(lines))).strip():
                pass
        except (StopAsyncIteration, asyncio.TimeoutError, httpx.HTTPError):
            pass

    async def _send(self, request: httpx.Request, model: str) -> httpx.Response:
        # Ollama sends not even headers while a model loads (up to 5 minutes): that wait is the first-token deadline.
        try:
            async with asyncio.timeout(self.settings.first_token_timeout_s):
                return await self.http.send(request, stream=True)
        except asyncio.TimeoutError:
            raise OllamaError(f"Ollama did not start answering within {self.settings.first_token_timeout_s:g} s "
                              f"(model {model} may still be loading). Raise OLLAMA_FIRST_TOKEN_TIMEOUT_S if it "
                              "needs longer.") from None
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None

    async def _get_json(self, method: str, path: str, body: dict | None = None) -> dict:
        try:
            response = await self.http.request(method, path, json=body, timeout=self.settings.connect_timeout_s * 3)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if response.status_code != 200:
            raise self._status_error(response, body.get("model", "") if body else "")
        return response.json()

    def _unreachable(self, error: Exception) -> OllamaError:
        return OllamaError(f"Ollama is not reachable at {self.url} ({type(error).__name__}): start it with "
                           "`ollama serve`, or set OLLAMA_HOST to where it runs.")

    def _status_error(self, response: httpx.Response, model: str) -> OllamaError:
        try:
            detail = str(response.json().get("error", ""))
        except ValueError:
            detail = response.text[:200]
        if response.status_code == 404:
            return model_missing(model)
        if response.status_code == 400 and "does not support chat" in detail:
            return OllamaError(f"{model} is not a chat model (Ollama: {detail}): set OLLAMA_MODEL to a chat model.")
        if response.status_code == 503:
            return OllamaError(f"Ollama is busy ({detail or 'server busy'}): the reply will be retried shortly.")
        if response.status_code == 403:
            return OllamaError(f"Ollama at {self.url} refused the request (403): check OLLAMA_HOST and OLLAMA_ORIGINS.")
        return OllamaError(f"Ollama answered {response.status_code}: {detail or 'no detail'}.")


def ndjson_object(line: str, during: str) -> dict:
    """One line of an NDJSON stream (a reply, a pull) as the object every line must be."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise OllamaError(f"Ollama sent a line that is not JSON {during}: {line[:120]!r}") from None
    if not isinstance(obj, dict):
        raise OllamaError(f"Ollama sent an unexpected line {during}: {line[:120]!r}")
    return obj


def parse_line(line: str) -> Chunk:
    """One NDJSON line of /api/chat. An `error` line (sent after streaming began) ends the reply with its message."""
    obj = ndjson_object(line, "in a reply")
    if "error" in obj:
        raise OllamaError(f"Ollama reported an error mid-reply: {valid_unicode(str(obj['error']))}")
    message = obj.get("message") or {}
    if not isinstance(message, dict):
        raise OllamaError(f"Ollama sent a chunk whose message is not an object: {line[:120]!r}")
    # Everything below is published on the bus: a field of the wrong type counts as absent, text is made valid
    # Unicode (JSON's \ud800 escape decodes to a lone surrogate, which msgpack refuses), and stats are numbers.
    return Chunk(
        content=_text(message.get("content")),
        thinking=_text(message.get("thinking")),
        done=obj.get("done") is True,
        done_reason=_text(obj.get("done_reason")),
        stats=reply_stats(obj),
        tool_calls=parse_tool_calls(message.get("tool_calls")),
    )


def _text(value: object) -> str:
    return valid_unicode(value) if isinstance(value, str) else ""
