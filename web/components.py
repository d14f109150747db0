"""Pieces of the page as FT components. The same component renders the page and goes over the WebSocket, wrapped by
`oob()` so htmx swaps it in place by id (or appends it) in every open tab."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

from fasthtml.common import (
    A, Button, Div, Form, H1, H2, Header, Input, Label, Li, Main, Nav, NotStr, P, Section, Span, Textarea, Title, Ul,
)

from services.protocol import CHAT_RETRY, CHAT_SENT, NOTE_SHOWN, Message
from store import Todo
from web.markdown import to_html


@dataclass
class WorkerStatus:
    state: str = "offline"  # ready | thinking | loading | offline | starting | restarting
    reason: str = "waiting for the assistant to start"
    model: str = ""
    ollama_url: str = ""
    worker_id: str = ""  # the worker answering now, if any
    workers: int = 0  # alive (sending heartbeats)
    ready: int = 0  # ... and able to answer
    notice: str = ""  # why the answering worker was lost, until the next reply is saved


@dataclass
class Reply:
    reply_id: str
    text: str
    done_reason: str | None = None  # None while streaming
    parts: list[str] = field(default_factory=list)
    token: int | None = None  # the claim it streams under


def oob(component, target: str | None = None, swap: str = "true"):
    """Wrap a component for an out-of-band swap: replace the element with the same id ("true"), or only its
    children ("innerHTML": the element, and so its scroll position, stays), or append into `target`."""
    if target is None:
        component.attrs["hx-swap-oob"] = swap
        return component
    return Div(component, hx_swap_oob=f"beforeend:#{target}")


# todos


def TodoForm(value: str = "", error: str = ""):
    # The form replaces itself with the response: a fresh empty form on success, itself plus the error on 422.
    return Form(
        Label("New todo", fr="new-todo", cls="visually-hidden"),
        Input(id="new-todo", name="title", value=value, placeholder="What needs doing?", autocomplete="off",
              maxlength=500, required=True, autofocus=True),
        Button("Add", type="submit"),
        P(error, cls="error", role="alert") if error else None,
        id="todo-form", hx_post="/todos", hx_swap="outerHTML",
    )


def TodoItem(todo: Todo):
    return Li(
        Input(type="checkbox", checked=todo.done, aria_label=f"Done: {todo.title}",
              hx_post=f"/todos/{todo.id}/toggle", hx_swap="none"),
        Span(todo.title, cls="title"),
        Button("Edit", aria_label=f"Edit {todo.title}", hx_get=f"/todos/{todo.id}/edit",
               hx_target=f"#todo-{todo.id}", hx_swap="outerHTML"),
        Button("Delete", aria_label=f"Delete {todo.title}", hx_delete=f"/todos/{todo.id}", hx_swap="none"),
        id=f"todo-{todo.id}", cls="todo done" if todo.done else "todo",
    )


def TodoEditForm(todo: Todo, value: str | None = None, error: str = ""):
    return Li(
        Form(
            Input(name="title", value=todo.title if value is None else value, aria_label="Edit title",
                  maxlength=500, required=True, autofocus=True),
            Button("Save", type="submit"),
            P(error, cls="error", role="alert") if error else None,
            hx_put=f"/todos/{todo.id}", hx_target=f"#todo-{todo.id}", hx_swap="outerHTML",
        ),
        id=f"todo-{todo.id}", cls="todo editing",
    )


def TodoList(todos: list[Todo]):
    return Ul(*[TodoItem(todo) for todo in todos], id="todo-list", aria_label="Todos")


# chat


def ChatForm(value: str = "", error: str = ""):
    return Form(
        Label("Message", fr="message", cls="visually-hidden"),
        Textarea(value, id="message", name="text", placeholder="Ask me anything. I may judge you.", rows=2,
                 maxlength=4000, required=True),
        # Send turns into Stop while a reply streams (app.css, from the streaming bubble in the log).
        Div(
            Button("Send", type="submit", cls="send"),
            Button("Stop", type="button", hx_post="/stop", hx_swap="none", cls="stop"),
            cls="chat-buttons",
        ),
        P(error, cls="error", role="alert") if error else None,
        id="chat-form", hx_post="/chat", hx_swap="outerHTML",
    )


def Speaker(name: str):
    """Who said it, for screen readers (the colour says it to everyone else)."""
    return Span(f"{name}:", cls="visually-hidden")


def UserMessage(entry: Message):
    if entry.type == CHAT_RETRY:
        return Div(Speaker("You"), P("Try that again.", cls="retry"), id=f"entry-{entry.seq}", cls="msg user")
    return Div(Speaker("You"), P(entry.data["text"]), id=f"entry-{entry.seq}", cls="msg user")


def body_id(reply_id: str) -> str:
    """The id of a reply's text, which token frames append to; short, because every token frame carries it."""
    return f"rb-{reply_id}"


def AssistantReply(reply: Reply):
    if reply.done_reason is None:
        # Streaming: plain text; each token frame appends to this body (see token_frame).
        body = Div("".join(reply.parts), id=body_id(reply.reply_id), cls="body streaming")
    else:
        body = Div(NotStr(to_html(reply.text)), id=body_id(reply.reply_id), cls="body")
    note = {"stopped": "stopped", "interrupted": "interrupted", "length": "cut short (length limit)"}.get(
        reply.done_reason or ""
    )
    typing = P("typing…", cls="typing") if reply.done_reason is None else None  # gone when the reply is swapped in
    actions = None
    if reply.done_reason and reply.done_reason != "interrupted":
        actions = Div(
            Button("Copy", type="button", cls="copy-reply", aria_label="Copy reply"),
            # Shown on the newest reply only (app.css); the journal says whether it still is (app.py).
            Button("Regenerate", type="button", cls="regenerate", hx_post="/chat/retry", hx_swap="none",
                   hx_vals=json.dumps({"reply_id": reply.reply_id})),
            cls="reply-actions",
        )
    return Div(Speaker("Assistant"), body, typing, P(note, cls="note") if note else None, actions,
               id=f"reply-{reply.reply_id}", cls="msg assistant")


def ErrorNote(text: str):
    # The text names its fix with `commands` in Markdown: rendered (and sanitised) like a reply, not shown raw.
    return Div(Speaker("Problem"), Div(NotStr(to_html(text)), cls="body"), cls="msg error", role="alert")


def token_frame(reply_id: str, text: str) -> str:
    """Only the new text, appended to the streaming body: never the whole reply again. Written as a string, not an
    FT component: this runs once per token, and building and rendering an element cost ~40 µs against ~0.3 µs."""
    return f'<span hx-swap-oob="beforeend:#{body_id(reply_id)}">{html.escape(text, quote=False)}</span>'



def ChatHistory(entries: list[Message], more: bool) -> list:
    """Saved messages, oldest first, after a button that loads the ones before them (in place of itself)."""
    items = [_history_item(e) for e in entries]
    if more and entries:
        items.insert(0, Button("Load earlier messages", type="button", id="load-earlier",
                               hx_get=f"/chat/history?before={entries[0].seq}", hx_swap="outerHTML"))
    return items


def ChatLog(history: list, replies: list[Reply]):
    items = [*history, *[AssistantReply(reply) for reply in replies]]
    return Div(*items, id="chat-log", role="log", aria_label="Chat history", aria_live="polite")


def _history_item(entry: Message):
    data = entry.data
    if entry.type in (CHAT_SENT, CHAT_RETRY):
        return UserMessage(entry)
    if entry.type == NOTE_SHOWN and data.get("kind") == "error":
        return ErrorNote(str(data.get("text", "")))
    if entry.type == NOTE_SHOWN:  # a reply cut off when its worker was lost, as the live tabs showed it
        return AssistantReply(Reply(str(data.get("reply_id", "")), str(data.get("text", "")), "interrupted"))
    return AssistantReply(Reply(data["reply_id"], data["text"], data.get("done_reason") or "stop"))


def Status(status: WorkerStatus):
    label = {"thinking": "thinking…", "loading": "loading model…"}.get(status.state, status.state)
    details = [Span(f"Assistant: {label}", cls=f"state {status.state}")]
    if status.model:
        where = f" at {status.ollama_url}" if status.ollama_url else ""
        details.append(Span(f"model {status.model}{where}", cls="model"))
    if status.workers:
        answering = f", worker {status.worker_id} answering" if status.worker_id else ""
        details.append(Span(f"{status.ready} of {status.workers} workers ready{answering}", cls="workers"))
    if status.state == "offline" and status.reason:
        details.append(Span(status.reason, cls="reason"))
    if status.notice:
        details.append(Span(status.notice, cls="reason"))
    return Div(*details, id="llm-status", role="status")


def Page(todo_list, chat_log, status: WorkerStatus):
    return (
        Title("Todo, with attitude"),
        A("Skip to chat", href="#message", cls="skip-link"),  # first, so the first Tab finds it
        H1("Todo, with attitude", cls="visually-hidden"),
        # On a phone one panel shows at a time; this bar switches, and counts comments that came while away.
        Nav(Button("Todos", type="button", id="show-todos", aria_pressed="true"),
            Button("Chat", Span(id="unread", cls="badge"), type="button", id="show-chat", aria_pressed="false"),
            cls="switcher", aria_label="Panels"),
        Main(
            Section(
                Header(H2("Todos")),
                TodoForm(),
                todo_list,
                cls="panel todos",
            ),
            Section(
                Header(H2("Assistant"), Status(status)),
                chat_log,
                # Shown by app.js when the person has scrolled up while new text arrives.
                Button("Jump to latest", id="jump-latest", type="button", hidden=True),
                Div(id="notice", aria_live="assertive"),  # where a 429 lands
                ChatForm(),
                cls="panel chat",
            ),
            cls="app", data_view="todos",
        ),
        # On a phone, the newest comment peeks in under the list; tapping it opens the chat.
        Button(type="button", id="peek", hidden=True),
    )
