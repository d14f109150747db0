"""The model select and model pulls, on the web's side (issue 12; the bus side is in services/protocol.py,
"Models"): which chat models the workers have, the person's choice (journaled, then sent to every worker), and the
one pull at a time that a worker the web picks runs, shown to every tab with its progress."""
from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

from fasthtml.common import Button, Div, FastHTML, Form, Input, Label, Option, P, Progress, Select, Span, to_xml
from starlette.responses import HTMLResponse, Response

from services import protocol
from services.busclient import Subscriber
from services.config import Settings
from web.clients import Clients
from web.components import ModelNote, oob
from web.inputs import InputError, clean_text, invalid, shown
from web.journal import Journal

ALIVE_HEARTBEATS = 3.5  # a worker not heard from for this many heartbeats is gone (as claims count it)
PULL_SILENT_HEARTBEATS = 4  # a pull not heard of for this long is sent again (its worker died, or the message was lost)
MAX_OUTCOME_CHARS = 500
CANCELLED_KEPT = 20  # pull ids remembered as cancelled: their late progress is answered with another cancel

log = logging.getLogger(__name__)


@dataclass
class WorkerModels:
    models: list[str]  # its Ollama's installed chat models, best first
    model: str  # the one it uses now
    pinned: bool  # OLLAMA_MODEL is set where it runs
    missing: str  # the model it wants and cannot find
    heard_at: float


@dataclass
class Pull:
    pull_id: str
    model: str
    worker_id: str  # the worker running it
    heard_at: float  # its last progress (or when it was sent)
    status: str = "starting"
    completed: int = 0
    total: int = 0
    bytes_per_s: float = 0.0

    @property
    def percent(self) -> int:
        return min(100, self.completed * 100 // self.total) if self.total else 0


def model_name(text: object) -> str:
    name = clean_text(text, "A model name", 200)
    if not protocol.MODEL_NAME.fullmatch(name):
        raise InputError(f"{name!r} is not a model name Ollama accepts (letters, digits and . _ : / -), "
                         "like llama3.2 or qwen3:8b.")
    return name


def size(count: float) -> str:
    """Bytes as Ollama's own progress shows them (decimal units)."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# components


def ModelPicker(models: list[str], in_use: str, pinned: bool, error: str = ""):
    options = [Option(name + (" (in use)" if name == in_use else ""), value=name, selected=name == in_use)
               for name in models] or [Option("no chat models listed yet", value="")]
    note = Span("set by OLLAMA_MODEL, which wins over this choice", id="model-pinned", cls="hint") if pinned else None
    return Form(
        Label("Model", fr="model-select"),
        Select(*options, id="model-select", name="model", disabled=pinned or not models,
               aria_describedby="model-pinned" if pinned else None),
        note,
        P(error, cls="error", role="alert") if error else None,
        # Choosing is the action: no button. The answer replaces the form (the error, or the new choice marked).
        id="model-picker", hx_post="/model", hx_trigger="change", hx_swap="outerHTML",
    )


def PullForm(value: str = "", error: str = ""):
    return Form(
        Label("Pull a model", fr="pull-model"),
        Input(id="pull-model", name="model", value=value, placeholder="e.g. llama3.2", maxlength=200,
              required=True, autocomplete="off"),
        Button("Pull", type="submit"),
        P(error, cls="error", role="alert") if error else None,
        id="pull-form", hx_post="/pull", hx_swap="outerHTML",
    )


def PullStatus(pull: Pull | None, outcome: str, missing: str):
    """The running pull (every tab shows the same), else the last one's outcome, and an offer to pull a missing
    model."""
    if pull is not None:
        speed = f", {size(pull.bytes_per_s)}/s" if pull.bytes_per_s else ""
        amount = f"{size(pull.completed)} of {size(pull.total)}{speed}" if pull.total else "starting…"
        return Div(
            P(f"Pulling {pull.model}: {pull.status}"),
            # The bar people see; the element around it is what assistive technology (and the tests) read.
            Div(Progress(value=pull.percent, max=100, aria_hidden="true"), role="progressbar",
                aria_label=f"Pulling {pull.model}", aria_valuemin=0, aria_valuemax=100, aria_valuenow=pull.percent,
                aria_valuetext=f"{pull.percent}%, {amount}", cls="pull-bar"),
            P(amount, cls="pull-bytes"),
            Button("Cancel pull", type="button", hx_post="/pull/cancel", hx_swap="none"),
            id="pull-status",  # not a live region: it changes several times a second (the outcome is an alert)
        )
    offer = None
    if missing:
        offer = P(f"Model {missing} is not installed. ",
                  # Answered like the field's Pull: an error shows under the field.
                  Button(f"Pull {missing}", type="button", hx_post="/pull", hx_vals=json.dumps({"model": missing}),
                         hx_target="#pull-form", hx_swap="outerHTML"))
    return Div(P(outcome, role="alert") if outcome else None, offer, id="pull-status")


class ModelPanel:
    def __init__(self, journal: Journal, clients: Clients, heartbeat_s: float) -> None:
        self.journal = journal
        self.clients = clients
        self.heartbeat_s = heartbeat_s
        self.workers: dict[str, WorkerModels] = {}
        self.pull: Pull | None = None
        self.outcome = ""  # how the last pull ended, until the next one starts
        self.cancelled: deque[str] = deque(maxlen=CANCELLED_KEPT)
        self._shown = ("", "")  # the picker and pull status as every tab has them
        self._state: tuple | None = None  # what they were rendered from

    # what the workers have

    def live(self) -> dict[str, WorkerModels]:
        now = time.monotonic()
        return {w: m for w, m in self.workers.items() if now - m.heard_at <= ALIVE_HEARTBEATS * self.heartbeat_s}

    def installed(self) -> list[str]:
        """Every live worker's chat models, the first worker's order first."""
        return list(dict.fromkeys(itertools.chain.from_iterable(m.models for m in self.live().values())))

    def in_use(self) -> str:
        return next((m.model for m in self.live().values() if m.model), "")

    def pinned(self) -> bool:
        return any(m.pinned for m in self.live().values())

    def missing(self) -> str:
        return next((m.missing for m in self.live().values() if m.missing), "")

    # page

    def picker(self, error: str = ""):
        return ModelPicker(self.installed(), self.in_use(), self.pinned(), error)

    def status(self):
        return PullStatus(self.pull, self.outcome, self.missing())

    def view(self) -> tuple:
        return Div(self.picker(), PullForm(), self.status(), id="models")

    def resync(self) -> str:
        """What a (re)connecting tab is sent: the picker and the pull as they are now; as every tab has them (no
        rendering) unless they changed since (then `show` sends them to every tab soon)."""
        if self._state == self._inputs():
            return "".join(self._shown)
        return to_xml((oob(self.picker()), oob(self.status())), indent=False)

    def _inputs(self) -> tuple:
        """Everything the picker and the pull status are rendered from."""
        pull = self.pull
        return (self.installed(), self.in_use(), self.pinned(), self.missing(), self.outcome, None if pull is None
                else (pull.model, pull.status, pull.completed, pull.total, pull.bytes_per_s))

    def show(self) -> None:
        """Send every tab what changed. A heartbeat changes nothing, most of the time: then nothing is rendered
        (every worker's status came with a render of the picker and the pull, on the event loop that relays)."""
        state = self._inputs()
        if state == self._state:
            return
        self._state = state
        shown = (to_xml(oob(self.picker()), indent=False), to_xml(oob(self.status()), indent=False))
        changed = [markup for markup, before in zip(shown, self._shown) if markup != before]
        self._shown = shown
        if changed:
            self.clients.broadcast_html("".join(changed))

    # the bus

    async def run(self, settings: Settings, context) -> None:
        subscriber = Subscriber(settings.bus_sub_addr, [protocol.LLM_STATUS, protocol.LLM_PULL], context,
                                settings.bus_keys_dir)
        try:
            while True:
                message = await subscriber.receive(timeout_s=self.heartbeat_s)
                if message is not None:
                    try:
                        self.handle(message)
                    except (KeyError, TypeError, ValueError) as error:
                        log.warning("dropped malformed %s message: %s", message.type, error)
                self.check_pull()
                self.show()
        finally:
            subscriber.close()

    def handle(self, message: protocol.Message) -> None:
        data = message.data
        worker_id = data["worker_id"]
        if not isinstance(worker_id, str) or not protocol.WORD.fullmatch(worker_id):
            raise ValueError("bad worker id")
        if message.type == protocol.LLM_STATUS:
            models = data.get("models", [])
            if not isinstance(models, list):
                raise TypeError("models is not a list")
            models = models[:protocol.MAX_MODELS]
            self.workers[worker_id] = WorkerModels(
                [m for m in models if isinstance(m, str) and protocol.MODEL_NAME.fullmatch(m)],
                _name_or_empty(data.get("model")), data.get("pinned") is True, _name_or_empty(data.get("missing")),
                time.monotonic())
        else:
            self._progress(worker_id, data)

    def _progress(self, worker_id: str, data: dict) -> None:
        pull_id, state = data["pull_id"], data["state"]
        if state not in protocol.PULL_STATES:
            raise ValueError(f"unknown pull state {state!r}")
        pull = self.pull
        if pull is None or pull.pull_id != pull_id:
            if pull_id in self.cancelled:  # the cancel was lost, or crossed this progress
                self.journal.publisher.publish(protocol.CANCEL_PULL, {"pull_id": pull_id})
            elif pull is None and state == "pulling" and isinstance(pull_id, str) and protocol.WORD.fullmatch(pull_id):
                model = _name_or_empty(data.get("model"))  # a pull from before this process restarted: show it
                if model:
                    self.pull = Pull(pull_id, model, worker_id, time.monotonic())
                    self._progress(worker_id, data)
            return
        pull.heard_at, pull.worker_id = time.monotonic(), worker_id
        if state == "pulling":
            completed, total, speed = data["completed"], data["total"], data["bytes_per_s"]
            if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 <= n < 2**63  # not NaN or inf
                       for n in (completed, total, speed)):
                raise ValueError("pull progress is not counts")
            pull.completed, pull.total, pull.bytes_per_s = int(completed), int(total), float(speed)
            pull.status = str(data.get("status", ""))[:200]
            return
        self.pull = None
        if state == "done":
            self.outcome = f"Pulled {pull.model}."
            # Every worker lists its models again, and one that was missing this model uses it now.
            self.journal.publisher.publish(protocol.USE_MODEL, {"model": self.journal.chosen_model()})
        elif state == "failed":
            self.outcome = str(data.get("error", "")).strip()[:MAX_OUTCOME_CHARS] or f"Pulling {pull.model} failed."
        else:
            self.outcome = f"The pull of {pull.model} was cancelled."

    def check_pull(self) -> None:
        """A pull not heard of for a while is sent again: to its worker if that is alive (the control message may
        have been lost), else to another one. Ollama resumes it where it stopped."""
        pull = self.pull
        if pull is None or time.monotonic() - pull.heard_at <= PULL_SILENT_HEARTBEATS * self.heartbeat_s:
            return
        live = self.live()
        if not live:
            pull.status = "waiting for an assistant worker to resume it"
            return
        worker_id = pull.worker_id if pull.worker_id in live else min(live)
        log.info("pull %s of %s not heard of: sending it to worker %s", pull.pull_id, pull.model, worker_id)
        self._send(pull, worker_id)

    def _send(self, pull: Pull, worker_id: str) -> None:
        pull.worker_id, pull.heard_at = worker_id, time.monotonic()
        self.journal.publisher.publish(protocol.PULL, {"pull_id": pull.pull_id, "model": pull.model,
                                                       "worker_id": worker_id})

    # actions

    def choose(self, model: str) -> None:
        previous = self.in_use()
        with self.journal.entry(protocol.MODEL_CHOSEN) as data:
            data.update(model=model, previous=previous)
        self.clients.broadcast(oob(ModelNote(self.journal.last_published), target="chat-log"))
        self.journal.publisher.publish(protocol.USE_MODEL, {"model": model})

    def start_pull(self, model: str) -> None:
        live = self.live()
        if self.pull is not None:
            raise InputError(f"Already pulling {self.pull.model}: wait for it to finish, or cancel it.")
        if not live:
            raise InputError("No assistant worker is running to pull it: start one (`honcho start`), then pull.")
        # The least busy-looking worker would be a guess; any one will do, and only that one pulls.
        self.pull, self.outcome = Pull(secrets.token_hex(6), model, "", 0.0), ""
        self._send(self.pull, min(live))
        self.show()

    def cancel_pull(self) -> None:
        pull = self.pull
        if pull is None:
            return
        self.cancelled.append(pull.pull_id)
        self.journal.publisher.publish(protocol.CANCEL_PULL, {"pull_id": pull.pull_id})
        self.pull, self.outcome = None, f"The pull of {pull.model} was cancelled."
        self.show()


def _name_or_empty(value: object) -> str:
    return value if isinstance(value, str) and protocol.MODEL_NAME.fullmatch(value) else ""


def add_routes(app: FastHTML, panel: ModelPanel) -> None:
    @app.post("/model")
    async def choose_model(form: dict):
        text = form.get("model", "")
        try:
            model = model_name(text)
            if panel.pinned():
                raise InputError("OLLAMA_MODEL is set where the assistant runs: it wins over this choice. Unset it "
                                 "(and restart the assistant) to choose here.")
            if model not in panel.installed():
                raise InputError(f"{model} is not an installed chat model: choose one from the list, or pull it.")
        except InputError as error:
            return invalid(panel.picker(str(error)))
        if model != panel.in_use() or model != panel.journal.chosen_model():
            panel.choose(model)
        return HTMLResponse(to_xml(ModelPicker(panel.installed(), model, False), indent=False))

    @app.post("/pull")
    async def pull_model(form: dict):
        text = form.get("model", "")
        try:
            panel.start_pull(model_name(text))
        except InputError as error:
            return invalid(PullForm(shown(text), str(error)))
        return PullForm()

    @app.post("/pull/cancel")
    async def cancel_pull():
        panel.cancel_pull()
        return Response(status_code=204)
