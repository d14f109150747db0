"""The worker's side of choosing and pulling models (issue 12; the bus side is in services/protocol.py, "Models"):
which model it wants (OLLAMA_MODEL wins over the person's choice), and pulls through Ollama's streaming /api/pull,
reported on the bus as they go."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from contextlib import aclosing
from typing import AsyncIterator, Callable

import httpx

from services import protocol
from services.config import Settings
from services.text import valid_unicode
from services.protocol import MODEL_NAME
from llm_worker.ollama import OllamaClient, OllamaError, Silence, ndjson_object

MODELS_REFRESH_S = 30.0  # the installed models are listed again this often (someone may `ollama pull` meanwhile)
PROGRESS_EVERY_S = 0.25  # Ollama sends a line per chunk it receives: the bus and every tab get a few a second
SPEED_WINDOW_S = 3.0  # the speed shown is the bytes received over about this long
MAX_STATUS_CHARS = 200

log = logging.getLogger(__name__)


class ModelChoice:
    """The model this worker wants: OLLAMA_MODEL if set (it wins), else the one a person chose, else "" (the best
    installed)."""

    def __init__(self, pinned: str) -> None:
        self.pinned = pinned
        self.chosen = ""

    @property
    def wanted(self) -> str:
        return self.pinned or self.chosen

    def choose(self, model: object) -> bool:
        """Take a choice from the journal or the bus; True if the wanted model changed."""
        if not isinstance(model, str) or (model and not MODEL_NAME.fullmatch(model)):
            log.warning("ignored a model choice that is not a model name: %r", str(model)[:80])
            return False
        before, self.chosen = self.wanted, model
        return self.wanted != before


class Progress:
    """A pull's progress summed over its layers (Ollama reports each layer as `pulling <digest>` with its own total
    and completed bytes), and the speed over the last few seconds."""

    def __init__(self) -> None:
        self.status = "starting"
        self.layers: dict[str, tuple[int, int]] = {}  # digest → (completed, total)
        self.samples: deque[tuple[float, int]] = deque()  # (monotonic time, completed bytes)

    def update(self, line: dict) -> None:
        status = line.get("status")
        if isinstance(status, str) and status:
            self.status = valid_unicode(status)[:MAX_STATUS_CHARS]
        digest, total, completed = line.get("digest"), line.get("total"), line.get("completed", 0)
        if isinstance(digest, str) and _is_count(total) and _is_count(completed):  # `completed` is absent at first
            if digest[:100] not in self.layers:
                self.samples.clear()  # a resumed layer starts part done: that part was not received just now
            self.layers[digest[:100]] = (min(completed, total), total)
        now = time.monotonic()
        self.samples.append((now, self.completed))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_S:
            self.samples.popleft()

    @property
    def completed(self) -> int:
        return sum(done for done, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(total for _, total in self.layers.values())

    @property
    def bytes_per_s(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (start, first), (end, last) = self.samples[0], self.samples[-1]
        return max(0.0, (last - first) / (end - start)) if end > start else 0.0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


async def pull_lines(ollama: OllamaClient, settings: Settings, model: str) -> AsyncIterator[dict]:
    """Ollama's /api/pull stream, one JSON object per line, until `success`. An `error` line, a status other than
    200 or a broken stream raise OllamaError; leaving the iteration closes the connection, which cancels the pull."""
    request = ollama.http.build_request("POST", "/api/pull", json={"model": model, "stream": True})
    # Between lines, the long deadline: Ollama says nothing while it verifies a big model's digest.
    deadline_s = settings.first_token_timeout_s
    try:
        async with asyncio.timeout(deadline_s):
            response = await ollama.http.send(request, stream=True)
    except asyncio.TimeoutError:
        raise OllamaError(f"Ollama did not start pulling {model} within {deadline_s:g} s.") from None
    except httpx.HTTPError as error:
        raise OllamaError(f"Could not pull {model}: Ollama is not reachable at {ollama.url} "
                          f"({type(error).__name__}). Start it with `ollama serve`, then pull again.") from None
    try:
        if response.status_code != 200:
            await response.aread()
            raise pull_failed(model, _error_text(response.text) or f"status {response.status_code}")
        lines = response.aiter_lines()
        silence = Silence(deadline_s)  # one timer for the gaps between lines, as for a reply (ollama.Silence)
        try:
            while True:
                try:
                    line = await silence.wait(anext(lines))
                except StopAsyncIteration:
                    raise OllamaError(f"Ollama ended the pull of {model} before it finished: pull it again "
                                      "(Ollama resumes where it stopped).") from None
                except asyncio.TimeoutError:
                    raise OllamaError(f"Ollama sent nothing for {deadline_s:g} s while pulling {model}.") from None
                except httpx.HTTPError as error:
                    raise OllamaError(f"The connection to Ollama broke while pulling {model} "
                                      f"({type(error).__name__}): pull it again; Ollama resumes where it stopped."
                                      ) from None
                if not line.strip():
                    continue
                obj = ndjson_object(line, f"while pulling {model}")
                if "error" in obj:
                    raise pull_failed(model, str(obj["error"]))
                yield obj
                if obj.get("status") == "success":
                    return
        finally:
            silence.close()
    finally:
        await response.aclose()


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        return body[:200]


def pull_failed(model: str, detail: str) -> OllamaError:
    detail = valid_unicode(detail)[:300]
    if "file does not exist" in detail or "not found" in detail:
        return OllamaError(f"Ollama has no model named {model} ({detail}): check the name at "
                           "https://ollama.com/library and pull again.")
    return OllamaError(f"Pulling {model} failed: {detail}.")


class Pulls:
    """The pulls this worker runs, by pull_id; each publishes llm.pull as it goes (see the protocol)."""

    def __init__(self, ollama: OllamaClient, settings: Settings, publish: Callable[..., None],
                 on_pulled: Callable[[str], None]) -> None:
        self.ollama = ollama
        self.settings = settings
        self.publish = publish
        self.on_pulled = on_pulled  # a model was pulled: list the models again
        self.running: dict[str, tuple[str, Progress, asyncio.Task]] = {}  # pull_id → (model, progress, task)
        self._cancelled: set[str] = set()  # asked to stop (not shutting down)

    def start(self, pull_id: object, model: object) -> None:
        if not isinstance(pull_id, str) or not protocol.WORD.fullmatch(pull_id):
            log.warning("ignored a pull with a bad pull_id")
            return
        if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
            log.warning("ignored a pull of something that is not a model name")
            return
        if pull_id in self.running:  # sent again because our progress was late: it is running
            return
        progress = Progress()
        self.running[pull_id] = (model, progress, asyncio.create_task(self._pull(pull_id, model, progress)))

    def cancel(self, pull_id: object) -> None:
        running = self.running.get(pull_id) if isinstance(pull_id, str) else None
        if running is not None:
            self._cancelled.add(pull_id)
            running[2].cancel()

    def beat(self) -> None:
        """Every heartbeat: each running pull's progress, so the web knows it is alive even while Ollama is quiet."""
        for pull_id, (model, progress, _) in self.running.items():
            self._report(pull_id, model, progress, "pulling")

    async def close(self) -> None:
        """Shutting down: the pulls end without a word, so the web gives them to another worker."""
        tasks = [task for _, _, task in self.running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pull(self, pull_id: str, model: str, progress: Progress) -> None:
        log.info("pulling %s (%s)", model, pull_id)
        state, error, reported = "done", "", 0.0
        try:
            async with aclosing(pull_lines(self.ollama, self.settings, model)) as lines:
                async for line in lines:
                    progress.update(line)
                    if time.monotonic() - reported >= PROGRESS_EVERY_S:
                        reported = time.monotonic()
                        self._report(pull_id, model, progress, "pulling")
        except OllamaError as failure:
            state, error = "failed", str(failure)
            log.warning("%s", error)
        except Exception as failure:  # a bug or an answer nobody foresaw: the pull ends, loudly, never silently
            log.exception("pull of %s failed unexpectedly", model)
            state, error = "failed", f"Pulling {model} failed unexpectedly ({type(failure).__name__}); see the log."
        except asyncio.CancelledError:
            if pull_id not in self._cancelled:
                raise  # shutting down
            state = "cancelled"
        finally:
            self.running.pop(pull_id, None)
            self._cancelled.discard(pull_id)
        log.info("pull of %s: %s", model, state)
        self._report(pull_id, model, progress, state, error)
        if state == "done":
            self.on_pulled(model)

    def _report(self, pull_id: str, model: str, progress: Progress, state: str, error: str = "") -> None:
        self.publish(protocol.LLM_PULL, pull_id=pull_id, model=model, state=state, status=progress.status,
                     completed=progress.completed, total=progress.total, bytes_per_s=progress.bytes_per_s,
                     error=error)
