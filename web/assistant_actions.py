"""The assistant's tool calls, on the web's side. A call is validated exactly like a person's input (web/inputs.py:
the same limits, the same messages) and then either applied through the journal with the assistant as its source
(adding a todo, marking one done or not done: the person may Undo it) or recorded as a proposal that changes
nothing until the person allows it (renaming, deleting). Undo, Allow and Deny settle an entry once, through the
journal too, so they survive reloads and restarts of any process (see services/protocol.py, journal.tool.*)."""
from __future__ import annotations

import logging
from dataclasses import replace

from fasthtml.common import Div, FastHTML
from starlette.responses import Response

from services.protocol import MAX_TOOL_CALLS, TOOL_APPLIED, TOOL_PROPOSED, TOOL_SETTLED, WORD, Message
from store import Store, Todo
from store.db import MAX_INTEGER
from web.claims import Claims
from web.clients import Clients
from web.components import ToolEntry, oob
from web.inputs import MAX_TITLE_CHARS, InputError, clean_text, whole_number
from web.journal import Journal
from web.todos import TodoLists

ASSISTANT = "assistant"  # the journal's src for what the assistant did
# name → its arguments and their kinds; the worker offers the same names (llm_worker/tools.py)
TOOL_ARGUMENTS = {
    "add_todo": ("title",),
    "set_todo_done": ("id", "done"),
    "rename_todo": ("id", "title"),
    "delete_todo": ("id",),
}

log = logging.getLogger(__name__)


class ToolError(ValueError):
    """A call the model can fix; str() goes back to it as the tool's result."""


def arguments_of(name: str, arguments: dict) -> dict:
    """The call's arguments, checked like a person's input: exactly the tool's names, each of its kind."""
    expected = TOOL_ARGUMENTS.get(name)
    if expected is None:
        raise ToolError(f"Unknown tool {name[:60]!r}. The tools are: {', '.join(TOOL_ARGUMENTS)}.")
    unexpected = sorted(str(key)[:40] for key in arguments if key not in expected)
    missing = [key for key in expected if key not in arguments]
    if unexpected or missing:
        raise ToolError(f"{name} takes exactly: {', '.join(expected)}"
                        + (f"; missing: {', '.join(missing)}" if missing else "")
                        + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "") + ".")
    checked = {}
    try:
        if "title" in expected:
            checked["title"] = clean_text(arguments["title"], "A todo title", MAX_TITLE_CHARS)
        if "id" in expected:
            checked["id"] = todo_id_of(arguments["id"])
    except InputError as error:
        raise ToolError(str(error)) from None
    if "done" in expected:
        if not isinstance(arguments["done"], bool):
            raise ToolError("done must be true or false.")
        checked["done"] = arguments["done"]
    return checked


def todo_id_of(value: object) -> int:
    """A todo's id as a model may send it: a number, or its digits as text (as in a person's URL)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        value = value.strip().removeprefix("#")
    return whole_number(value, "a todo id (the number after # in the list)", MAX_INTEGER)


def change_text(data: dict) -> str:
    """What an assistant's entry does, as the person reads it (and the model, as its tool's result)."""
    title, todo_id = data.get("title", ""), data.get("id")
    action = data.get("action")
    if action == "add":
        return f"Added todo #{todo_id} “{title}”."
    if action == "done":
        return f"Marked todo #{todo_id} “{title}” as {'done' if data.get('done') else 'not done'}."
    if action == "rename":
        return f"Proposed renaming todo #{todo_id} “{title}” to “{data.get('new_title', '')}”."
    return f"Proposed deleting todo #{todo_id} “{title}”."


class AssistantActions:
    def __init__(self, store: Store, journal: Journal, clients: Clients, lists: TodoLists, claims: Claims,
                 show_reply) -> None:
        self.store, self.journal, self.clients, self.lists, self.claims = store, journal, clients, lists, claims
        self.show_reply = show_reply  # (reply_id, token): the streaming bubble the tool entries go above

    # the worker's requests (protocol OP_TOOL)

    def request(self, request: dict) -> tuple[bool, str]:
        """(ok, the text the model reads as the tool's result). Never raises for anything a worker sends."""
        if not self.claims.holds(request["worker_id"], request["token"]):
            return False, "This reply no longer holds the claim: nothing was changed."
        reply_id, call_id = request["reply_id"], request["call_id"]
        if not WORD.fullmatch(reply_id) or not WORD.fullmatch(call_id):
            return False, "Malformed call: reply_id and call_id must be plain words."
        claim = self.claims.current
        earlier = self.store.tool_calls_since(claim.token)  # everything the holder did under this claim
        for entry in earlier:
            if entry.data.get("call_id") == call_id:  # the link sent the request again: answer it again
                return True, self._result(entry)
        if len(earlier) >= MAX_TOOL_CALLS:
            return False, f"At most {MAX_TOOL_CALLS} changes per reply: this one was not made."
        try:
            arguments = arguments_of(request["name"], request["arguments"])
            base = {"call_id": call_id, "reply_id": reply_id, "covers_seq": claim.covers_seq}
            entry = self._apply(request["name"], arguments, base)
        except ToolError as error:
            return False, str(error)
        if entry is None:
            return True, "Nothing to change: the todo is already like that."
        self.show_reply(reply_id, claim.token)
        # Above the reply being written, where a reload shows it too (its entry comes before the reply's).
        self.clients.broadcast(Div(ToolEntry(entry, None), hx_swap_oob=f"beforebegin:#reply-{reply_id}"))
        return True, self._result(entry)

    def _todo(self, todo_id: int) -> Todo:
        todo = self.store.todo(todo_id)
        if todo is None:
            raise ToolError(f"No such todo: #{todo_id}. Use an id from the list.")
        return todo

    def _apply(self, name: str, arguments: dict, base: dict) -> Message | None:
        if name == "add_todo":
            with self.journal.entry(TOOL_APPLIED, src=ASSISTANT) as data:
                todo = self.store.insert_todo(arguments["title"])
                data.update(base, action="add", id=todo.id, title=todo.title, done=False,
                            todo=[todo.id, todo.title, False])
            self.lists.changed(todo, None)
            return self.journal.last_published
        todo = self._todo(arguments["id"])
        if name == "set_todo_done":
            if todo.done == arguments["done"]:
                return None
            changed = replace(todo, done=arguments["done"])
            with self.journal.entry(TOOL_APPLIED, src=ASSISTANT) as data:
                self.store.update_todo(changed)
                data.update(base, action="done", id=todo.id, title=todo.title, done=changed.done,
                            todo=[todo.id, todo.title, changed.done])
            self.lists.changed(changed, todo)
            return self.journal.last_published
        if name == "rename_todo" and arguments["title"] == todo.title:
            return None
        # Renames and deletions only wait for the person: a title may carry instructions the model followed.
        with self.journal.entry(TOOL_PROPOSED, src=ASSISTANT) as data:
            data.update(base, id=todo.id, title=todo.title, **(
                {"action": "rename", "new_title": arguments["title"]} if name == "rename_todo"
                else {"action": "delete"}))
        return self.journal.last_published

    def _result(self, entry: Message) -> str:
        if entry.type == TOOL_PROPOSED:
            return (change_text(entry.data) + " Nothing has changed yet: it waits for the person to click Allow "
                    "or Deny in the chat.")
        return change_text(entry.data) + " The person can undo it."

    # the person's Undo, Allow and Deny

    def settle(self, seq: int, decision: str) -> Response:
        entry = self.store.entry(seq)
        wanted = TOOL_APPLIED if decision == "undo" else TOOL_PROPOSED
        if entry is None or entry.type != wanted:
            return Response("No such change by the assistant.", status_code=404)
        earlier = self.store.settlements([seq]).get(seq)
        if earlier is not None:  # another tab (or a second click) was first
            return Response(f"That change was already {earlier.data.get('outcome')}.", status_code=409)
        data = entry.data
        todo = self.store.todo(int(data["id"]))
        show_change = None
        with self.journal.entry(TOOL_SETTLED) as settled:
            settled.update(settles=seq, action=data["action"], id=data["id"], title=data["title"],
                           outcome={"undo": "undone", "allow": "allowed", "deny": "denied"}[decision])
            if "new_title" in data:
                settled["new_title"] = data["new_title"]
            if decision != "deny":
                show_change = self._settle_change(data, todo, settled)
        if show_change is not None:  # committed: now every tab's list may show it
            show_change()
        self.clients.broadcast(oob(ToolEntry(entry, self.journal.last_published)))
        return Response(status_code=204)

    def _settle_change(self, data: dict, todo: Todo | None, settled: dict):
        """Inside the settling entry's transaction: the change Undo or Allow makes, and what it did to the list;
        returns what shows it in every tab, once committed."""
        if todo is None or todo.title != data["title"]:
            # Ids are reused once the newest todo is deleted: a different title is a different todo (or one the
            # person has changed since), and the change is not made to it.
            settled.update(outcome="failed", reason=f"todo #{data['id']} was changed or deleted since")
            return None
        if data["action"] in ("add", "delete"):  # undoing an add deletes; allowing a delete deletes
            self.store.delete_todo(todo.id)
            settled["deleted"] = todo.id
            return lambda: self.lists.deleted(todo)
        changed = (replace(todo, done=not data["done"]) if data["action"] == "done"
                   else replace(todo, title=data["new_title"]))
        self.store.update_todo(changed)
        settled["todo"] = [changed.id, changed.title, changed.done]
        return lambda: self.lists.changed(changed, todo)


def add_routes(app: FastHTML, actions: AssistantActions) -> None:
    for decision in ("undo", "allow", "deny"):
        app.post(f"/tools/{{seq}}/{decision}")(_settle_route(actions, decision))


def _settle_route(actions: AssistantActions, decision: str):
    async def settle(seq: str):  # parsed here: FastHTML's int cast answers 404 to "abc"
        try:
            entry_seq = whole_number(seq, "a journal seq", MAX_INTEGER)
        except InputError as error:
            return Response(str(error), status_code=400)
        return actions.settle(entry_seq, decision)
    settle.__name__ = f"settle_{decision}"
    return settle
