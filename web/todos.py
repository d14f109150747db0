"""The todo list's routes. A page, a reconnect and a change cost what is on screen, not the whole list: open todos
come first in pages of PAGE_SIZE, completed ones stay behind "Show N completed" and come in pages too, and the
filters (All / Active / Completed) choose sections of that same paging. Each change is sent to every tab as the one
row it touched, plus the counts; app.js puts the row where that tab's view wants it."""
from __future__ import annotations

import bisect
from dataclasses import replace

from fasthtml.common import FastHTML, Safe, to_xml
from starlette.responses import HTMLResponse, Response

from services import protocol
from store import Store, Todo
from store.db import MAX_INTEGER
from web.clients import Clients
from web.components import (
    FILTERS, MoreTodos, ShowCompleted, TodoEditForm, TodoFooter, TodoForm, TodoGone, TodoItem, TodoList,
    TodosCleared, oob, todo_rows,
)
from web.inputs import MAX_TITLE_CHARS, InputError, clean_text, invalid, shown, whole_number
from web.journal import Journal

# Rows per page of a section: a screenful several times over, and a page (or a resync) that renders in a few ms.
PAGE_SIZE = 200
# A tab that had loaded more pages gets them back when it reconnects, up to this many rows per section (then "Show
# more" again): what it showed, with the rendering that holds the event loop bounded (~5 ms).
RESYNC_MAX_ROWS = 1_000
MAX_CACHED_VIEWS = 16  # resync frames kept, one per view (filter and loaded rows); the views are the tabs' to name
INBOX = "todo-inbox"  # where a change lands in every tab before app.js places it

# The fresh form a successful POST swaps back in never changes: rendered once, not per request (building FT
# elements was a fifth of the web's CPU in a todo POST).
EMPTY_TODO_FORM = to_xml(TodoForm())


def filter_of(text: object) -> str:
    """The filter named in a URL; anything else shows everything, as the plain page does."""
    return text if isinstance(text, str) and text in FILTERS else "all"


def view_of(params) -> tuple[str, int, int]:
    """The view a tab's WebSocket URL names: its filter, and the last row it had loaded in each section (0: just
    the first page). Anything malformed counts as the plain first page."""
    def through(name: str) -> int:
        try:
            return whole_number(params.get(name, ""), name, MAX_INTEGER)
        except InputError:
            return 0
    return filter_of(params.get("filter")), through("open_to"), through("done_to")


class TodoLists:
    """The list as each view shows it, and what every tab is sent when it changes."""

    def __init__(self, store: Store, clients: Clients) -> None:
        self.store = store
        self.clients = clients
        # [open, done], counted once and then kept by each change (only this process writes todos): counting on
        # the index cost ~1 ms per 10,000 todos, on every change and every page.
        self.counted = list(store.todo_counts())
        self.version = 0  # of the list: one more with each change
        self._resyncs: dict[tuple, Safe] = {}  # (filter, open_to, done_to) -> its resync, at version `_resynced`
        self._resynced = -1

    def section(self, done: bool, after: int = 0, through: int = 0) -> list:
        """One page of open (or completed) todos after id `after`, ending with the control that loads the next; or
        from the start through id `through` (a reconnecting tab's loaded pages), at least a page and at most
        RESYNC_MAX_ROWS."""
        todos = self.store.todos_page(done, after, PAGE_SIZE + 1)
        shown = PAGE_SIZE
        if len(todos) > PAGE_SIZE and through > todos[PAGE_SIZE - 1].id:  # the tab had loaded more than a page
            todos = self.store.todos_page(done, after, RESYNC_MAX_ROWS + 1)
            shown = bisect.bisect_right([todo.id for todo in todos[:RESYNC_MAX_ROWS]], through)
        items = [todo_rows(todos[:shown])]
        if len(todos) > shown:
            items.append(MoreTodos(done, todos[shown - 1].id))
        return items

    def view(self, filter: str, open_to: int = 0, done_to: int = 0) -> tuple:
        """The list and its footer as `filter` shows them: the first page of each section it includes (or, with
        `open_to` / `done_to`, the rows through those ids: see `resync`)."""
        open_count, done_count = self.counted
        open_items = [] if filter == "completed" else self.section(False, through=open_to)
        if filter == "all" and not done_to:
            done_items = [ShowCompleted(done_count)]
        else:
            done_items = self.section(True, through=done_to) if filter != "active" else None
        return TodoList(filter, open_items, done_items), TodoFooter(open_count, done_count)

    def resync(self, filter: str, open_to: int = 0, done_to: int = 0) -> Safe:
        """What a connecting tab of this filter is sent about the list, swapped in by id: what it showed, i.e. the
        rows through the last one it had loaded in each section (its WebSocket URL says which; see app.js), or the
        first page, and the footer. Tabs reconnect together (after a restart of the web, or a network blip): each
        view is rendered once for all of them until the list changes."""
        if self._resynced != self.version or len(self._resyncs) >= MAX_CACHED_VIEWS:
            self._resyncs.clear()
            self._resynced = self.version
        view = (filter, open_to, done_to)
        if view not in self._resyncs:
            todo_list, footer = self.view(*view)
            self._resyncs[view] = Safe(to_xml((oob(todo_list, swap="innerHTML"), oob(footer)), indent=False))
        return self._resyncs[view]

    def counts(self):
        return oob(TodoFooter(*self.counted))

    def changed(self, todo: Todo, was: Todo | None) -> None:
        """`todo` was added (`was` None) or changed, and committed."""
        if was is not None:
            self.counted[was.done] -= 1
        self.counted[todo.done] += 1
        self.version += 1
        self.clients.broadcast(oob(TodoItem(todo), target=INBOX), self.counts())

    def deleted(self, todo: Todo) -> None:
        self.counted[todo.done] -= 1
        self.version += 1
        self.clients.broadcast(oob(TodoGone(todo.id), target=INBOX), self.counts())

    def cleared(self, count: int) -> None:
        self.counted[True] -= count
        self.version += 1
        self.clients.broadcast(oob(TodosCleared(), target=INBOX), self.counts())


def add_routes(app: FastHTML, store: Store, journal: Journal, clients: Clients) -> TodoLists:
    lists = TodoLists(store, clients)

    @app.get("/todos/more")
    async def more_todos(done: str = "", after: str = ""):
        """The next page of a section, in place of the control that asked for it (see MoreTodos)."""
        try:
            done_flag = whole_number(done, "done (0 or 1)", 1)
            after_id = whole_number(after, "the id after which to list", MAX_INTEGER)
        except InputError as error:
            return Response(str(error), status_code=400)
        return tuple(lists.section(bool(done_flag), after_id))

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
        lists.changed(todo, None)
        return HTMLResponse(EMPTY_TODO_FORM)

    @app.post("/todos/clear-completed")
    async def clear_completed():
        # One journal entry for all of them, not one per todo: the worker and every tab learn it in one message.
        if lists.counted[True] == 0:
            return Response(status_code=204)
        with journal.entry(protocol.TODO_CLEARED) as data:
            data.update(count=store.delete_done())
        lists.cleared(data["count"])

    @app.post("/todos/{todo_id}/toggle")
    async def toggle_todo(todo_id: int):
        todo = store.todo(todo_id)
        if todo is None:
            return Response("No such todo.", status_code=404)
        toggled = replace(todo, done=not todo.done)
        with journal.entry(protocol.TODO_TOGGLED) as data:
            store.update_todo(toggled)
            data.update(id=todo.id, title=todo.title, done=toggled.done)
        lists.changed(toggled, todo)

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
            lists.changed(edited, todo)
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
        lists.deleted(todo)

    return lists
