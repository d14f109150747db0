"""The web process: FastHTML + HTMX routes for todos and chat, the WebSocket every tab listens on, and the bus
connections (journal publisher, catch-up server, LLM relay) that live as long as the app."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
from pathlib import Path

import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from fasthtml.common import FastHTML, Meta, Safe, Script, to_xml
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket
from starlette.staticfiles import StaticFiles

from services import curve, protocol
from services.busclient import DropLog, Publisher, Subscriber
from services.tasks import supervised
from services.config import Settings
from store import Store
from store.db import MAX_INTEGER
from web.clients import Clients
from web.components import PAGE_HEAD, ChatForm, ChatHistory, ChatLog, Page, Status, UserMessage, oob
from web.guard import RATE_LIMITED, RATE_LIMITED_HEADERS, add_perimeter
from web.inputs import MAX_MESSAGE_CHARS, InputError, clean_text, form_fields, invalid, shown, whole_number
from web.journal import Journal
from web.relay import Relay
from web import assistant_actions, models, todos, workers

STATIC_DIR = Path(__file__).parent / "static"
CHAT_HISTORY_SHOWN = 100  # messages rendered at once; "Load earlier messages" fetches the ones before
RENDERED_ENTRIES_KEPT = 3 * CHAT_HISTORY_SHOWN  # the recent ones, and pages of earlier ones someone loaded
UNSUPPORTED_DATA = 1003  # WebSocket close code: a frame the endpoint cannot take
# What the chat log shows (a model switch, and what the assistant changed or proposes, too).
CHAT_TYPES = (*protocol.ASKS, protocol.REPLY_SAVED, protocol.NOTE_SHOWN, protocol.MODEL_CHOSEN,
              protocol.TOOL_APPLIED, protocol.TOOL_PROPOSED)

# htmx does not swap 4xx responses by default; a 422 carries the form back with its error message.
HTMX_CONFIG = {
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "422", "swap": True, "error": False},
        {"code": "429", "swap": True, "error": False},  # retargeted to #notice by the guard
        {"code": "503", "swap": True, "error": False},  # retargeted to #notice too: see database_unavailable
        {"code": "[45]..", "swap": False, "error": True},
    ],
    # The page runs under a CSP without 'unsafe-eval' or inline styles: keep htmx from needing either.
    "allowEval": False,
    "allowScriptTags": False,
    "includeIndicatorStyles": False,
}
HEADERS = (
    *PAGE_HEAD,
    Meta(name="htmx-config", content=json.dumps(HTMX_CONFIG)),
    Script(src="/static/vendor/htmx-2.0.8.min.js"),
    Script(src="/static/vendor/htmx-ext-ws-2.0.4.js"),
    Script(src="/static/app.js", defer=True),
    Script(src="/static/chat-socket.js", defer=True),  # (after app.js: it uses its helpers)
)


# The fresh form a successful POST swaps back in never changes: rendered once, not per request (see web/todos.py).

log = logging.getLogger(__name__)


def parse_seq(text: object) -> int:
    """A journal seq from a query string: a whole number from 1 to the largest that SQLite holds."""
    seq = whole_number(text, "a journal seq", MAX_INTEGER)
    if seq == 0:
        raise InputError(f"Expected a journal seq: a whole number from 1 to {MAX_INTEGER}.")
    return seq


async def database_unavailable(conn: HTTPConnection, error: sqlite3.OperationalError) -> Response | None:
    """Any route's answer when the database is locked by another process, full, or failing: the transaction was
    rolled back (see Store.transaction), so nothing was stored and the person can simply try again."""
    if conn.scope["type"] == "websocket":
        log.warning("database unavailable (%s): %s", error.sqlite_errorname, error)
        return None  # the connection ends with the endpoint, and the tab reconnects by itself
    # The notice area and retry hint of a rate-limited request: htmx shows the message there, not in the form.
    return PlainTextResponse(unavailable(error), 503, headers=RATE_LIMITED_HEADERS)


def unavailable(error: sqlite3.Error) -> str:
    """What to tell the person when the database refused a change (logged here)."""
    name = getattr(error, "sqlite_errorname", "")
    log.warning("database unavailable (%s): %s", name, error)
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return "The database is busy; try again in a moment."
    if name == "SQLITE_FULL":
        return f"The database could not be used ({error}): free some disk space for DATA_DIR, then try again."
    return f"The database could not be used ({error}); nothing was stored. The web's log says more."


def create_app(settings: Settings) -> FastHTML:
    curve.check_bind(settings.journal_addr, settings.bus_keys_dir)  # before anything is opened
    store = Store(settings.data_dir)
    clients = Clients()
    journal = Journal(store, publisher=None, history_window=settings.history_window)  # publisher set at startup
    relay = Relay(journal, clients, settings.heartbeat_s)
    model_panel = models.ModelPanel(journal, clients, settings.heartbeat_s)

    async def lifespan(app):  # FastHTML takes the async generator itself, not a context manager
        # Sockets are created inside the running loop and closed with a short linger on the way out.
        context = zmq.asyncio.Context()
        authenticator = AsyncioAuthenticator(context)
        curve.allow_clients(authenticator, settings.bus_keys_dir)
        journal.publisher = Publisher(settings.bus_pub_addr, src="web", keys_dir=settings.bus_keys_dir)
        subscriber = Subscriber(settings.bus_sub_addr, [protocol.LLM], context, settings.bus_keys_dir)
        router = workers.bind(settings.journal_addr, context, settings.bus_keys_dir)
        requests = workers.WorkerRequests(router, journal, relay.claims, tools)
        tasks = [
            supervised("journal server", requests.serve),
            supervised("connection watch", requests.watch_connections),
            supervised("relay", lambda: relay.run(subscriber)),
            supervised("models", lambda: model_panel.run(settings, context)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            subscriber.close()
            router.close(linger=0)
            journal.publisher.close()
            if settings.bus_keys_dir is not None:
                authenticator.stop()
            context.term()
            store.close()

    app = FastHTML(
        hdrs=HEADERS, default_hdrs=False, canonical=False, sess_cls=None, secret_key=secrets.token_hex(16),
        htmlkw={"lang": "en"},
        lifespan=lifespan, routes=[Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")],
        hx_ext="ws",  # every tab listens on one WebSocket (see Page: its URL names the tab's filter); its frames
        # are out-of-band swaps, but for those static/chat-socket.js handles itself
    )
    app.state.relay, app.state.clients, app.state.store = relay, clients, store
    app.add_exception_handler(sqlite3.OperationalError, database_unavailable)
    change_budget = add_perimeter(app, settings)

    # Every route is `async def` on purpose: FastHTML runs plain `def` routes in a thread pool, and the store's
    # connection and the PUB socket belong to the event loop's thread.

    # Each change sends every tab only the item it touched: rendering the whole list per action made a todo POST
    # cost O(list size) and stalled token relay meanwhile (see README, Performance). The list's routes, and what a
    # change sends, are in web/todos.py.
    lists = todos.add_routes(app, store, journal, clients)
    models.add_routes(app, model_panel)
    tools = assistant_actions.AssistantActions(store, journal, clients, lists, relay.claims, relay.show_reply)
    assistant_actions.add_routes(app, tools)

    rendered_entries: dict = {}  # {(seq, settlement seq): markup}, oldest first

    def chat_history(before: int | None = None) -> list:
        # One more than shown, to know whether there is anything earlier: the page never renders it all.
        chat = store.recent_entries(CHAT_HISTORY_SHOWN + 1, CHAT_TYPES, before)
        settled = store.settlements([e.seq for e in chat if e.type in protocol.TOOL_TYPES])  # Undo, Allow/Deny
        history = ChatHistory(chat[-CHAT_HISTORY_SHOWN:], more=len(chat) > CHAT_HISTORY_SHOWN, settled=settled,
                              rendered=rendered_entries)
        for key in list(rendered_entries)[:-RENDERED_ENTRIES_KEPT]:  # the first rendered go first
            del rendered_entries[key]
        return history

    recent_chat: dict = {}  # the saved history as rendered at a journal head: {head seq: markup}

    def chat_log():
        # The saved history changes only with a new journal entry, while every page load and every tab's resync
        # shows it: rendered once per journal head (100 messages were ~10 ms of the event loop per connecting tab).
        head = store.last_seq()
        if head not in recent_chat:
            recent_chat.clear()
            recent_chat[head] = Safe(to_xml(tuple(chat_history()), indent=False))
        # A reply whose bubble is not out yet is left out too: it arrives with its first token (web/relay.py).
        return ChatLog([recent_chat[head]], [reply for reply in relay.streaming.values() if reply.shown])

    @app.get("/chat/history")
    async def earlier_chat(before: str):  # parsed here: FastHTML's int cast answers 404 to "abc" and reads "" as 0
        try:
            seq = parse_seq(before)
        except InputError as error:
            return Response(str(error), status_code=400)
        return tuple(chat_history(seq))

    @app.get("/")
    async def index(filter: str = ""):
        shown_filter = todos.filter_of(filter)
        return Page(shown_filter, lists.view(shown_filter), chat_log(), relay.status, model_panel.view())

    def take_message(text: object) -> None:
        """A person's chat message, by either way in: journaled, published, and shown in every tab; InputError
        (nothing stored) if it is not one."""
        text = clean_text(text, "A message", MAX_MESSAGE_CHARS)
        with journal.entry(protocol.CHAT_SENT) as data:
            data.update(text=text)
        clients.broadcast(oob(UserMessage(journal.last_published), target="chat-log"))

    @app.post("/chat")
    async def send_chat(form: dict):
        # For scripts and tests: the page sends its messages over its WebSocket (see message_from_tab).
        text = form.get("text", "")
        try:
            take_message(text)
        except InputError as error:
            return invalid(ChatForm(shown(text), str(error)))
        return Response(status_code=204)

    unreadable = DropLog("frame from a tab that no page of ours sends")

    def message_from_tab(fields: dict):
        """The chat form a tab sent over its WebSocket (static/chat-socket.js). Nothing goes back when the message
        is taken (every tab, this one included, shows it); else the form, with the text and why not."""
        text = fields.get("text", "")
        try:
            if not change_budget.take():  # the budget of every change by HTTP (web/guard.py)
                raise InputError(RATE_LIMITED)
            take_message(text)
        except InputError as error:
            return oob(ChatForm(shown(text), str(error)))
        except sqlite3.Error as error:  # rolled back: nothing stored, and the person can try again
            return oob(ChatForm(shown(text), unavailable(error)))
        return None

    @app.post("/chat/retry")
    async def retry_reply(form: dict):
        # Only the newest reply is offered for another try (app.css shows its button alone).
        reply_id = form.get("reply_id")
        last = store.last_of((protocol.REPLY_SAVED,))
        if last is None or reply_id != last.data.get("reply_id"):
            return Response("Only the newest reply can be tried again.", status_code=409)
        with journal.entry(protocol.CHAT_RETRY) as data:
            data.update(reply_id=reply_id)
        clients.broadcast(oob(UserMessage(journal.last_published), target="chat-log"))

    @app.post("/stop")
    async def stop():
        journal.publisher.publish(protocol.STOP, {})

    last_resync: dict = {}  # view -> (journal head, list version, status, markup)

    def resync(view: tuple) -> str:
        # Tabs reconnect together (a restart of the web, a network blip): each view's frame is rendered once for
        # all of them, until the journal, the list or the status changes, or while a reply streams.
        head, status = store.last_seq(), relay.status
        cached = last_resync.get(view)
        if relay.streaming or cached is None or cached[:3] != (head, lists.version, status):
            markup = to_xml((lists.resync(*view), oob(chat_log()), oob(Status(status))), indent=False)
            if len(last_resync) >= todos.MAX_CACHED_VIEWS:
                last_resync.clear()
            last_resync[view] = cached = (head, lists.version, status, markup)
        return cached[3]

    async def tab_socket(ws: WebSocket) -> None:
        """Each tab's one WebSocket. Everything the page shows live goes out on it; what comes in is the chat form.
        A chat message is on the path of the reply's first token, and as an htmx POST it cost that token ~10 ms in
        chromium here: the request, the web's middleware and form parsing, and htmx handling the answer while the
        reply's first frames waited. The todo list's changes stay HTTP requests."""
        await ws.accept()
        # A tab that (re)connects gets the current state of what it shows, swapped in by id: after a restart of the
        # web, or a disconnect for falling behind, it shows what it missed without a reload and without duplicates.
        # Only the rows it had loaded, by its URL: never the whole list.
        clients.connect(ws)
        try:
            clients.send_html(ws, resync(todos.view_of(ws.query_params)) + model_panel.resync())
            while (frame := await ws.receive())["type"] == "websocket.receive":
                try:
                    fields = form_fields(frame.get("text"))  # (None: a binary frame)
                except ValueError as error:
                    # Whoever sends it is no page of ours: closed, so that it cannot keep the loop parsing
                    # 64 KiB frames for nothing, as the rate limit counts only what a form sends.
                    unreadable.record(error)
                    await ws.close(UNSUPPORTED_DATA)
                    return
                answer = message_from_tab(fields)
                if answer is not None:
                    clients.send(ws, answer)
        finally:
            clients.disconnect(ws)

    app.router.routes.append(WebSocketRoute("/ws", tab_socket))

    return app
