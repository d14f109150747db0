"""Pieces of the page as FT components. The same component renders the page and goes over the WebSocket, wrapped by
`oob()` so htmx swaps it in place by id (or appends it) in every open tab."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from fasthtml.common import (
    A, Button, Details, Div, Footer, Form, H1, H2, Header, Input, Label, Li, Link, Main, Meta, Nav, NotStr, P,
    Section, Span, Summary, Textarea, Title, Safe, Ul, to_xml,
)

from services.protocol import CHAT_RETRY, CHAT_SENT, MODEL_CHOSEN, NOTE_SHOWN, TOOL_APPLIED, TOOL_PROPOSED, Message
from store import Todo
from web.markdown import to_html

THEME_COLOR = "#1d2330"  # the page's ink colour: the phone's status bar and an installed app's title bar
# The head every page shares, the login page included: layout at phone width, styles, and what "Add to Home
# Screen" needs (manifest, icons, theme colour). The icon link also spares every load a /favicon.ico 404.
PAGE_HEAD = (
    Meta(name="viewport", content="width=device-width, initial-scale=1"),
    Meta(name="theme-color", content=THEME_COLOR),
    Link(rel="stylesheet", href="/static/app.css"),
    Link(rel="icon", href="/static/favicon.svg", type="image/svg+xml"),
    Link(rel="apple-touch-icon", href="/static/apple-touch-icon.png"),  # iOS ignores the manifest's icons
    Link(rel="manifest", href="/static/manifest.webmanifest"),
)


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
    shown: bool = False  # tabs have its bubble (it goes out with the first token, see web/relay.py)
    thinking: str = ""  # the model's thinking, shown apart and collapsed (never part of the reply)
    thinking_parts: list[str] = field(default_factory=list)  # ... while it streams
    thinking_s: float | None = None  # how long it thought
    model: str = ""
    stats: dict = field(default_factory=dict)  # Ollama's numbers from the final chunk (services.protocol)


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
        Label("New todo", fr="new-todo", cls="sr-only"),
        Input(id="new-todo", name="title", value=value, placeholder="What needs doing?", autocomplete="off",
              maxlength=500, required=True, autofocus=True),
        Button("Add", type="submit"),
        P(error, cls="error", role="alert") if error else None,
        id="todo-form", hx_post="/todos", hx_swap="outerHTML",
    )


def TodoItem(todo: Todo):
    # No htmx attributes on the row: app.js listens once on the list and sends the row's request (toggle, edit,
    # delete) by its id, so each row carries only what a person reads (its accessible names) and not three URLs.
    return Li(
        Input(type="checkbox", checked=todo.done, aria_label=f"Done: {todo.title}"),
        Span(todo.title, cls="title"),
        Button("Edit", aria_label=f"Edit {todo.title}", cls="edit"),
        Button("Delete", aria_label=f"Delete {todo.title}", cls="delete"),
        id=f"todo-{todo.id}", cls="todo done" if todo.done else "todo",
    )


class TodoRows:
    """TodoItem for many todos at once: the component rendered once per kind (open, done) with marker values, then
    each todo's id and escaped title put in their places. A page of 200 rows took 50-90 ms as 200 FT trees (on the
    event loop, stalling every tab's stream), and takes well under a millisecond this way; the markup is the
    component's own, so the two cannot drift apart (tests/test_todo_paging.py compares them)."""

    ID, TITLE = 987_654_321_987_654_321, "\ue000"  # values no todo renders: a private-use character

    def __init__(self) -> None:
        self.parts = {done: self._split(done) for done in (False, True)}

    def _split(self, done: bool) -> list[tuple[str, str]]:
        """The rendered item as (markup, slot) pairs; slot: what follows it ("id", "text", "attribute" or "")."""
        markup = to_xml(TodoItem(Todo(self.ID, self.TITLE, done)), indent=False)
        pieces = re.split(f"({self.ID}|{self.TITLE})", markup)
        slots, before = [], ""
        for index in range(0, len(pieces), 2):
            marker = pieces[index + 1] if index + 1 < len(pieces) else ""
            before += pieces[index]
            in_tag = before.rfind("<") > before.rfind(">")  # escaped for an attribute value, else for text
            slot = "" if not marker else "id" if marker == str(self.ID) else "attribute" if in_tag else "text"
            slots.append((pieces[index], slot))
            before += marker
        return slots

    def __call__(self, todos: list[Todo]) -> Safe:
        rendered = []
        for todo in todos:
            values = {"id": str(todo.id), "text": html.escape(todo.title, quote=False),
                      "attribute": html.escape(todo.title)}
            rendered += [piece + values[slot] if slot else piece for piece, slot in self.parts[todo.done]]
        return Safe("".join(rendered))  # markup as it stands, at any depth of an FT tree or on its own


todo_rows = TodoRows()


def TodoGone(todo_id: int):
    """Tells every tab's list (through #todo-inbox, see app.js) that a todo was deleted."""
    return Li(cls="gone", data_todo=f"todo-{todo_id}")


def TodosCleared():
    """Tells every tab's list that every completed todo was deleted ("Clear completed")."""
    return Li(cls="cleared")


def MoreTodos(done: bool, after: int):
    # The end of a loaded page: the next page of the section replaces it, when clicked or scrolled into view.
    return Li(
        Button("Show more completed" if done else "Show more", type="button", hx_trigger="click, intersect once",
               hx_get=f"/todos/more?done={int(done)}&after={after}", hx_target="closest li", hx_swap="outerHTML"),
        cls="more", data_after=after,  # (what a reconnecting tab had loaded: see app.js, loadedThrough)
    )


def ShowCompleted(count: int):
    """Completed todos stay on the server until asked for: the first page replaces this control. The count is
    kept up to date by app.js from the footer's data-done."""
    return Li(
        Button("Show ", Span(f"{count:,}", cls="done-count"), " completed", type="button",
               hx_get="/todos/more?done=1&after=0", hx_target="closest li", hx_swap="outerHTML"),
        cls="more show-done", hidden=count == 0,
    )


def TodoEditForm(todo: Todo, value: str | None = None, error: str = ""):
    return Li(
        Form(
            Input(name="title", value=todo.title if value is None else value, aria_label="Edit title",
                  maxlength=500, required=True, autofocus=True),
            Button("Save", type="submit"),
            Button("Cancel", type="button", cls="cancel"),  # a phone has no Escape key
            P(error, cls="error", role="alert") if error else None,
            hx_put=f"/todos/{todo.id}", hx_target=f"#todo-{todo.id}", hx_swap="outerHTML",
        ),
        id=f"todo-{todo.id}", cls="todo editing",
    )


FILTERS = {"all": "All", "active": "Active", "completed": "Completed"}


def TodoFilters(current: str):
    # Plain links: the filter is in the URL, so it survives a reload and the WebSocket knows it (see Page).
    return Nav(*[A(label, href="/" if name == "all" else f"/?filter={name}",
                   aria_current="page" if name == current else None) for name, label in FILTERS.items()],
               id="todo-filters", aria_label="Filter todos")


def TodoList(filter: str, open_items: list, done_items: list | None):
    """Open todos, then (unless filtered out) the completed ones in a list of their own inside it. Changes from
    other tabs arrive in #todo-inbox and app.js puts each where it belongs (data-filter says what this tab shows)."""
    done = (Li(Ul(*done_items, id="done-list", aria_label="Completed"), id="done-section")
            if done_items is not None else None)
    return Ul(*open_items, done, id="todo-list", aria_label="Todos", data_filter=filter)


def TodoFooter(open_count: int, done_count: int):
    return Footer(
        Span(f"{open_count:,} item{'' if open_count == 1 else 's'} left", cls="left"),
        Button("Clear completed", type="button", hx_post="/todos/clear-completed", hx_swap="none",
               hidden=done_count == 0),
        id="todo-footer", data_done=done_count,
    )


# chat


def ChatForm(value: str = "", error: str = ""):
    return Form(
        Label("Message", fr="message", cls="sr-only"),
        Textarea(value, id="message", name="text", placeholder="Ask me anything. I may judge you.", rows=2,
                 maxlength=4000, required=True),
        # Send turns into Stop while a reply streams (app.css, from the streaming bubble in the log).
        Div(
            Button("Send", type="submit", cls="send"),
            Button("Stop", type="button", hx_post="/stop", hx_swap="none", cls="stop"),
            cls="chat-buttons",
        ),
        P(error, cls="error", role="alert") if error else None,
        # Sent over the tab's WebSocket by the page's script (chat-socket.js; see tab_socket in web/app.py); a
        # message refused comes back as this form, swapped in by id, with the text and why.
        # (Without the page's scripts, a plain POST to the same route.)
        id="chat-form", method="post", action="/chat",
    )


def Speaker(name: str):
    """Who said it, for screen readers (the colour says it to everyone else)."""
    return Span(f"{name}:", cls="sr-only")


def UserMessage(entry: Message):
    if entry.type == CHAT_RETRY:
        return Div(Speaker("You"), P("Try that again.", cls="retry"), id=f"entry-{entry.seq}", cls="msg user")
    return Div(Speaker("You"), P(entry.data["text"]), id=f"entry-{entry.seq}", cls="msg user")


def body_id(reply_id: str) -> str:
    """The id of a reply's text, which token frames append to; short, because every token frame carries it."""
    return f"rb-{reply_id}"


def AssistantReply(reply: Reply):
    if reply.done_reason is None:
        # Streaming: plain text; each token frame appends to this body (see token_frame). Empty, it reads
        # "typing…" (app.css).
        body = Div("".join(reply.parts), id=body_id(reply.reply_id), cls="body streaming")
    else:
        body = Div(NotStr(to_html(reply.text)), id=body_id(reply.reply_id), cls="body")
    note = {"stopped": "stopped", "interrupted": "interrupted", "length": "cut short (length limit)"}.get(
        reply.done_reason or ""
    )
    stats = ReplyStats(reply) if reply.done_reason in ("stop", "length") else None  # a stopped one says so instead
    actions = None
    if reply.done_reason and reply.done_reason != "interrupted":
        actions = Div(
            # (No type="button": outside a form a button submits nothing. Bytes in every finished reply's frame.)
            Button("Copy", cls="copy-reply", aria_label="Copy reply"),
            # Shown on the newest reply only (app.css); the journal says whether it still is (app.py). app.js sends
            # it, with the id of the reply it is in: every reply carried the same htmx attributes.
            Button("Regenerate", cls="regenerate"),
            cls="reply-actions",
        )
    return Div(Speaker("Assistant"), Thinking(reply), body, P(note, cls="note") if note else None, stats,
               actions, id=f"reply-{reply.reply_id}", cls="msg assistant")


def ModelNote(entry: Message):
    """A person chose another model (issue 12): the chat says so where it happened."""
    return Div(P(f"Model switched to {entry.data.get('model', '')}."), id=f"entry-{entry.seq}", cls="msg note")


def ErrorNote(text: str):
    # The text names its fix with `commands` in Markdown: rendered (and sanitised) like a reply, not shown raw.
    return Div(Speaker("Problem"), Div(NotStr(to_html(text)), cls="body"), cls="msg error", role="alert")


TOKEN_FRAME = "\x02"  # starts a token frame; every other frame is HTML, and starts with "<"


def token_frame(text: str) -> str:
    """A token for the reply streaming now: a marker and the bare text, which the page's script appends to that
    reply's body as text (web/static/chat-socket.js), never parsed as HTML. The htmx out-of-band envelope it replaces
    cost 57 bytes around a few bytes of text; this costs one (plus the WebSocket header). One reply streams at a time
    (web/relay.py), so the frame need not name it."""
    return TOKEN_FRAME + text


def ChatHistory(entries: list[Message], more: bool, settled: dict | None = None, rendered: dict | None = None) -> list:
    """Saved messages, oldest first, after a button that loads the ones before them (in place of itself).
    `settled`: the journal.tool.settled entry of each assistant change that has one, by the seq it settles.
    `rendered`: markup by (seq, settlement seq), kept by the caller. A saved entry never changes, but building 100
    of them as FT trees took ~45 ms of the event loop whenever the journal moved on and a tab (re)connected."""
    settled = settled or {}

    def item(entry: Message):
        settlement = settled.get(entry.seq)
        if rendered is None:
            return _saved_entry(entry, settlement)
        key = (entry.seq, settlement.seq if settlement else None)
        if key not in rendered:
            rendered[key] = Safe(to_xml(_saved_entry(entry, settlement), indent=False))
        return rendered[key]

    items = [item(entry) for entry in entries]
    if more and entries:
        items.insert(0, Button("Load earlier messages", type="button", id="load-earlier",
                               hx_get=f"/chat/history?before={entries[0].seq}", hx_swap="outerHTML"))
    return items


def _saved_entry(entry: Message, settlement: Message | None):
    return ToolEntry(entry, settlement) if entry.type in (TOOL_APPLIED, TOOL_PROPOSED) else _history_item(entry)


def ChatLog(history: list, replies: list[Reply]):
    items = [*history, *[AssistantReply(reply) for reply in replies]]
    return Div(*items, id="chat-log", role="log", aria_label="Chat history", aria_live="polite")


def _history_item(entry: Message):
    data = entry.data
    if entry.type in (CHAT_SENT, CHAT_RETRY):
        return UserMessage(entry)
    if entry.type == MODEL_CHOSEN:
        return ModelNote(entry)
    if entry.type == NOTE_SHOWN and data.get("kind") == "error":
        return ErrorNote(str(data.get("text", "")))
    if entry.type == NOTE_SHOWN:  # a reply cut off when its worker was lost, as the live tabs showed it
        return AssistantReply(Reply(str(data.get("reply_id", "")), str(data.get("text", "")), "interrupted"))
    thinking_s = data.get("thinking_s")
    return AssistantReply(Reply(
        data["reply_id"], data["text"], data.get("done_reason") or "stop", thinking=str(data.get("thinking", "")),
        thinking_s=thinking_s if isinstance(thinking_s, (int, float)) else None, model=str(data.get("model", "")),
        stats=data.get("stats") if isinstance(data.get("stats"), dict) else {}))


def status_parts(status: WorkerStatus) -> list:
    """The status line's parts, each with an id of its own, so that a change can send only what it changed."""
    label = {"thinking": "thinking…", "loading": "loading model…"}.get(status.state, status.state)
    parts = [Span(f"Assistant: {label}", id="llm-state", cls=f"state {status.state}")]
    if status.model:
        where = f" at {status.ollama_url}" if status.ollama_url else ""
        parts.append(Span(f"model {status.model}{where}", id="llm-model", cls="model"))
    if status.workers:
        # Which one answers is news only when there are several (and one worker's status then stays the same).
        answering = f", worker {status.worker_id} answering" if status.worker_id and status.workers > 1 else ""
        parts.append(Span(f"{status.ready} of {status.workers} workers ready{answering}", id="llm-workers",
                          cls="workers"))
    if status.state == "offline" and status.reason:
        parts.append(Span(status.reason, id="llm-reason", cls="reason"))
    if status.notice:
        parts.append(Span(status.notice, id="llm-notice", cls="reason"))
    return parts


def Status(status: WorkerStatus):
    return Div(*status_parts(status), id="llm-status", role="status")


def StatusChange(before: WorkerStatus, after: WorkerStatus) -> tuple:
    """What a tab showing `before` needs to show `after`: only the parts that differ, each swapped in by its id
    (a reply's start and end change one or two of them; the whole line was ~240 bytes), or the whole line when
    parts come or go."""
    old, new = status_parts(before), status_parts(after)
    if [part.id for part in old] != [part.id for part in new]:
        return (oob(Status(after)),)
    return tuple(oob(part) for part, was in zip(new, old) if part != was)


def Page(filter: str, todos: tuple, chat_log, status: WorkerStatus, models=None):
    """`todos`: the list and its footer for `filter`, which the WebSocket's URL carries so a reconnect resyncs
    the same view."""
    return (
        Title("Todo, with attitude"),
        A("Skip to chat", href="#message", cls="skip-link"),  # first, so the first Tab finds it
        H1("Todo, with attitude", cls="sr-only"),
        # On a phone one panel shows at a time; this bar switches, and counts comments that came while away.
        Nav(Button("Todos", type="button", id="show-todos", aria_pressed="true"),
            Button("Chat", Span(id="unread", cls="badge"), type="button", id="show-chat", aria_pressed="false"),
            cls="switcher", aria_label="Panels"),
        Main(
            Section(
                Header(H2("Todos"), TodoFilters(filter)),
                TodoForm(),
                *todos,
                Ul(id="todo-inbox", hidden=True),  # where changes from every tab land first (see app.js)
                cls="panel todos",
            ),
            Section(
                Header(H2("Assistant"), Status(status), models),  # models: the select and pulls (web/models.py)
                chat_log,
                # Shown by app.js when the person has scrolled up while new text arrives.
                Button("Jump to latest", id="jump-latest", type="button", hidden=True),
                Div(id="notice", aria_live="assertive"),  # where a 429 lands
                ChatForm(),
                cls="panel chat",
            ),
            cls="app", data_view="todos", ws_connect=f"/ws?filter={filter}",
        ),
        # On a phone, the newest comment peeks in under the list; tapping it opens the chat.
        Button(type="button", id="peek", hidden=True),
    )


# the assistant's tool calls, its thinking and its numbers (issue 11)


def thinking_id(reply_id: str) -> str:
    return f"th-{reply_id}"


def Thinking(reply: Reply):
    """The model's thinking, collapsed above its reply: "Thinking…" while it streams, "Thought for N s" after.
    Plain text, escaped like all model output; absent when the model did not think."""
    text = reply.thinking or "".join(reply.thinking_parts)
    if not text:
        return None
    if reply.done_reason is None:
        summary = "Thinking…"
    else:
        seconds = reply.thinking_s
        summary = "Thought" if seconds is None else f"Thought for {seconds:.{1 if seconds < 10 else 0}f} s"
    return Details(Summary(summary), Div(text, id=thinking_id(reply.reply_id), cls="thought"), cls="thinking")


def thinking_frame(reply: Reply, text: str) -> str:
    """A thinking chunk: the first one puts the disclosure above the reply's text, later ones append to it."""
    if len(reply.thinking_parts) == 1:
        return to_xml(Div(Thinking(reply), hx_swap_oob=f"beforebegin:#{body_id(reply.reply_id)}"), indent=False)
    return f'<span hx-swap-oob="beforeend:#{thinking_id(reply.reply_id)}">{html.escape(text, quote=False)}</span>'


def ReplyStats(reply: Reply):
    """Small and quiet, under a finished reply: the model, tokens per second and time to first token, from
    Ollama's final chunk (durations in nanoseconds)."""
    stats, parts = reply.stats, [reply.model] if reply.model else []
    if stats.get("eval_count") and stats.get("eval_duration"):
        parts.append(f"{stats['eval_count'] / (stats['eval_duration'] / 1e9):.1f} tokens/s")
    if "prompt_eval_duration" in stats or "load_duration" in stats:
        first_s = (stats.get("load_duration", 0) + stats.get("prompt_eval_duration", 0)) / 1e9
        parts.append(f"first token {first_s:.2f} s")
    return P(" · ".join(parts), cls="stats") if parts else None


TOOL_OUTCOMES = {"undone": "Undone.", "allowed": "Allowed.", "denied": "Denied: nothing changed."}


def ToolEntry(entry: Message, settled: Message | None):
    """What the assistant did (with Undo) or wants to do (with Allow and Deny), until the person settles it."""
    data = entry.data
    title = str(data.get("title", ""))
    proposed = entry.type == TOOL_PROPOSED
    if data.get("action") == "add":
        text = f"Added “{title}”."
    elif data.get("action") == "done":
        text = f"Marked “{title}” as {'done' if data.get('done') else 'not done'}."
    elif data.get("action") == "rename":
        text = f"Wants to rename “{title}” to “{data.get('new_title', '')}”."
    else:
        text = f"Wants to delete “{title}”."
    if settled is None:
        # Each button names its change for a screen reader (several may wait at once); its name stays the word.
        base, described = f"/tools/{entry.seq}", {"hx_swap": "none", "aria_describedby": f"tool-{entry.seq}-text"}
        buttons = ([Button("Allow", hx_post=f"{base}/allow", cls="allow", **described),
                    Button("Deny", hx_post=f"{base}/deny", cls="deny", **described)] if proposed
                   else [Button("Undo", hx_post=f"{base}/undo", cls="undo", **described)])
        after = Div(*buttons, cls="tool-actions")
    else:
        outcome = settled.data.get("outcome")
        after = P(TOOL_OUTCOMES.get(outcome) or f"Could not: {settled.data.get('reason', outcome)}.",
                  cls="outcome")
    return Div(Speaker("Assistant"), P(text, cls="action", id=f"tool-{entry.seq}-text"), after,
               id=f"tool-{entry.seq}", cls="msg tool pending" if proposed and settled is None else "msg tool")
