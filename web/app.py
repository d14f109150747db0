"""The web process: FastHTML + HTMX routes for todos and chat, the WebSocket every tab listens on, and the bus
connections (journal publisher, catch-up server, LLM relay) that live as long as the app."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
from dataclasses import replace
from pathlib import Path

import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from fasthtml.common import FastHTML, Li, Link, Meta, Script, to_xml
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from services import curve, protocol
from services.busclient import Publisher, Subscriber
from services.tasks import supervised
from services.config import Settings
from services.text import is_valid_unicode, valid_unicode
from store import Store, Todo
from store.db import MAX_INTEGER
from web.clients import Clients
from web.components import (
    ChatForm, ChatHistory, ChatLog, Page, Status, TodoEditForm, TodoForm, TodoItem, TodoList, UserMessage, oob,
)
from web.guard import RATE_LIMITED_HEADERS, Guard, allowed_hosts
from web.journal import Journal
from web.ratelimit import TokenBucket
from web.relay import Relay
from web import workers

STATIC_DIR = Path(__file__).parent / "static"
MAX_TITLE_CHARS = 500
MAX_MESSAGE_CHARS = 4_000
CHAT_HISTORY_SHOWN = 100  # messages rendered at once; "Load earlier messages" fetches the ones before
CHAT_TYPES = (*protocol.ASKS, protocol.REPLY_SAVED, protocol.NOTE_SHOWN)  # what the chat log shows

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
    Meta(name="viewport", content="width=device-width, initial-scale=1"),
    Meta(name="htmx-config", content=json.dumps(HTMX_CONFIG)),
    Link(rel="stylesheet", href="/static/app.css"),
    Link(rel="icon", href="/static/favicon.svg", type="image/svg+xml"),  # else every load asks /favicon.ico: 404
    Script(src="/static/vendor/htmx-2.0.8.min.js"),
    Script(src="/static/vendor/htmx-ext-ws-2.0.4.js"),
    Script(src="/static/app.js", defer=True),
)


# The fresh forms a successful POST swaps back in never change: rendered once, not per request (building FT
# elements was a fifth of the web's CPU in a todo POST).
EMPTY_TODO_FORM = to_xml(TodoForm())
EMPTY_CHAT_FORM = to_xml(ChatForm())

log = logging.getLogger(__name__)


class InputError(ValueError):
    """Input a person can fix; its message is shown next to the field."""


def clean_text(text: object, what: str, limit: int) -> str:
    # A JSON body's values arrive as sent (12, true, [...]), and JSON's \ud800 escape makes a lone surrogate, which
    # the bus and the page cannot carry: refuse both.
    if not isinstance(text, str):
        raise InputError(f"{what} must be text.")
    if not is_valid_unicode(text):
        raise InputError(f"{what} is not valid Unicode: it contains a lone surrogate.")
    text = text.strip()
    if not text:
        raise InputError(f"{what} cannot be empty.")
    if len(text) > limit:
        raise InputError(f"{what} is too long: {len(text)} characters, the limit is {limit}.")
    return text


def shown(text: object) -> str:
    """What a form re-rendered around its error may show of the refused value: always something the page can carry."""
    return valid_unicode(text) if isinstance(text, str) else ""


def invalid(component) -> HTMLResponse:
    """422 with the form re-rendered around its error: htmx swaps it in (see HTMX_CONFIG), nothing is stored."""
    return HTMLResponse(to_xml(component), status_code=422)


def parse_seq(text: object) -> int:
    """A journal seq from a query string: a whole number from 1 to the largest that SQLite holds."""
    try:
        seq = int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else 0
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        seq = 0
    if not 0 < seq <= MAX_INTEGER:
        raise InputError(f"Expected a journal seq: a whole number from 1 to {MAX_INTEGER}.")
    return seq


async def database_unavailable(conn: HTTPConnection, error: sqlite3.OperationalError) -> Response | None:
    """Any route's answer when the database is locked by another process, full, or failing: the transaction was
    rolled back (see Store.transaction), so nothing was stored and the person can simply try again."""
    log.warning("database unavailable (%s): %s", error.sqlite_errorname, error)
    if conn.scope["type"] == "websocket":
        return None  # the endpoint has already closed it (1011), and the tab reconnects by itself
    if error.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        message = "The database is busy; try again in a moment."
    else:
        message = f"The database could not be used ({error}): free some disk space for DATA_DIR, then try again."
    # The notice area and retry hint of a rate-limited request: htmx shows the message there, not in the form.
    return PlainTextResponse(message, 503, headers=RATE_LIMITED_HEADERS)


def create_app(settings: Settings) -> FastHTML:
    curve.check_bind(settings.journal_addr, settings.bus_keys_dir)  # before anything is opened
    store = Store(settings.data_dir)
    clients = Clients()
    journal = Journal(store, publisher=None, history_window=settings.history_window)  # publisher set at startup
    relay = Relay(journal, clients, settings.heartbeat_s)

    async def lifespan(app):  # FastHTML takes the async generator itself, not a context manager
        # Sockets are created inside the running loop and closed with a short linger on the way out.
        context = zmq.asyncio.Context()
        authenticator = AsyncioAuthenticator(context)
        curve.allow_clients(authenticator, settings.bus_keys_dir)
        journal.publisher = Publisher(settings.bus_pub_addr, src="web", keys_dir=settings.bus_keys_dir)
        subscriber = Subscriber(settings.bus_sub_addr, [protocol.LLM], context, settings.bus_keys_dir)
        router = workers.bind(settings.journal_addr, context, settings.bus_keys_dir)
        requests = workers.WorkerRequests(router, journal, relay.claims)
        tasks = [
            supervised("journal server", requests.serve),
            supervised("connection watch", requests.watch_connections),
            supervised("relay", lambda: relay.run(subscriber)),
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
        hx_ext="ws", ws_connect="/ws",  # every tab listens on one WebSocket; frames are out-of-band swaps
    )
    app.state.relay, app.state.clients, app.state.store = relay, clients, store
    app.add_exception_handler(sqlite3.OperationalError, database_unavailable)
    app.add_middleware(Guard, hosts=allowed_hosts(settings.allowed_hosts, settings.web_port),
                       bucket=TokenBucket(settings.actions_per_s, settings.action_burst))

    # Every route is `async def` on purpose: FastHTML runs plain `def` routes in a thread pool, and the store's
    # connection and the PUB socket belong to the event loop's thread.

    # Each change sends every tab only the item it touched: rendering the whole list per action made a todo POST
    # cost O(list size) and stalled token relay meanwhile (see README, Performance). A tab that (re)connects gets
    # the whole list once.
    def todo_added(todo: Todo):
        clients.broadcast(oob(TodoItem(todo), target="todo-list"))

    def todo_changed(todo: Todo):
        clients.broadcast(oob(TodoItem(todo)))

    def todo_deleted(todo_id: int):
        clients.broadcast(Li(id=f"todo-{todo_id}", hx_swap_oob="delete"))

    def chat_history(before: int | None = None) -> list:
        # One more than shown, to know whether there is anything earlier: the page never renders it all.
        chat = store.recent_entries(CHAT_HISTORY_SHOWN + 1, CHAT_TYPES, before)
        return ChatHistory(chat[-CHAT_HISTORY_SHOWN:], more=len(chat) > CHAT_HISTORY_SHOWN)

    def chat_log():
        return ChatLog(chat_history(), list(relay.streaming.values()))

    @app.get("/chat/history")
    async def earlier_chat(before: str):  # parsed here: FastHTML's int cast answers 404 to "abc" and reads "" as 0
        try:
            seq = parse_seq(before)
        except InputError as error:
            return Response(str(error), status_code=400)
        return tuple(chat_history(seq))

    @app.get("/")
    async def index():
        return Page(TodoList(store.todos()), chat_log(), relay.status)

    # Text fields are read from the parsed body (`form: dict`), not as `title: str`: FastHTML's cast of a JSON
    # value raises IndexError on an empty list, a 500 before the route could refuse it.
    @app.post("/todos")
    async def add_todo(form: dict):
        title = form.get("title", "")
        try:
            title = clean_text(title, "A todo title", MAX_TITLE_CHARS)
        except InputError as error:
            return invalid(TodoForm(shown(title), str(error)))
        with journal.entry(protocol.TODO_ADDED) as data:
            todo = store.insert_todo(title)
            data.update(id=todo.id, title=todo.title)
        todo_added(todo)
        return HTMLResponse(EMPTY_TODO_FORM)

    @app.post("/todos/{todo_id}/toggle")
    async def toggle_todo(todo_id: int):
        todo = store.todo(todo_id)
        if todo is None:
            return Response("No such todo.", status_code=404)
        toggled = replace(todo, done=not todo.done)
        with journal.entry(protocol.TODO_TOGGLED) as data:
            store.update_todo(toggled)
            data.update(id=todo.id, title=todo.title, done=toggled.done)
        todo_changed(toggled)

    @app.get("/todos/{todo_id}")
    async def show_todo(todo_id: int):  # Escape while editing puts the item back
        todo = store.todo(todo_id)
        return TodoItem(todo) if todo else Response("No such todo.", status_code=404)

    @app.get("/todos/{todo_id}/edit")
    async def edit_form(todo_id: int):
        todo = store.todo(todo_id)
        return TodoEditForm(todo) if todo else Response("No such todo.", status_code=404)

    @app.put("/todos/{todo_id}")
    async def edit_todo(todo_id: int, form: dict):
        todo = store.todo(todo_id)
        if todo is None:
            return Response("No such todo.", status_code=404)
        title = form.get("title", "")
        try:
            title = clean_text(title, "A todo title", MAX_TITLE_CHARS)
        except InputError as error:
            return invalid(TodoEditForm(todo, shown(title), str(error)))
        if title != todo.title:
            edited = replace(todo, title=title)
            with journal.entry(protocol.TODO_EDITED) as data:
                store.update_todo(edited)
                data.update(id=todo.id, old_title=todo.title, title=title)
            todo_changed(edited)
            return TodoItem(edited)
        return TodoItem(todo)

    @app.delete("/todos/{todo_id}")
    async def delete_todo(todo_id: int):
        todo = store.todo(todo_id)
        if todo is None:
            return Response("No such todo.", status_code=404)
        with journal.entry(protocol.TODO_DELETED) as data:
            store.delete_todo(todo.id)
            data.update(id=todo.id, title=todo.title)
        todo_deleted(todo.id)

    @app.post("/chat")
    async def send_chat(form: dict):
        text = form.get("text", "")
        try:
            text = clean_text(text, "A message", MAX_MESSAGE_CHARS)
        except InputError as error:
            return invalid(ChatForm(shown(text), str(error)))
        with journal.entry(protocol.CHAT_SENT) as data:
            data.update(text=text)
        clients.broadcast(oob(UserMessage(journal.last_published), target="chat-log"))
        return HTMLResponse(EMPTY_CHAT_FORM)

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

    async def on_connect(ws):
        # A tab that (re)connects gets the whole current state, swapped in by id: after a restart of the web, or a
        # disconnect for falling behind, it shows what it missed without a reload and without duplicates.
        clients.connect(ws)
        clients.send(ws, oob(TodoList(store.todos()), swap="innerHTML"), oob(chat_log()), oob(Status(relay.status)))

    async def on_disconnect(ws):
        clients.disconnect(ws)

    @app.ws("/ws", conn=on_connect, disconn=on_disconnect)
    async def ws_message(msg: str = ""):
        pass  # tabs only listen; actions arrive as HTTP requests, which carry validation errors back

    return app
