"""Who the assistant is: the system prompt, and how each journal entry reads to the model."""
from __future__ import annotations

from services import protocol
from services.protocol import Message

SYSTEM_PROMPT = """\
You are the assistant living inside a todo app, and you are a Todo app with attitude: dry, witty, a little \
judgemental, never mean. Lines in [square brackets] are things the person just did in the app (adding, ticking off, \
renaming or deleting todos). React to those with one or two short sentences of commentary. When the person writes to \
you directly, give a real, helpful answer first and keep the attitude as seasoning. You remember everything in this \
conversation, including the todos mentioned in it. Use Markdown only when it helps (lists, code)."""


def describe(entry: Message) -> tuple[str, str]:
    """The (role, content) a journal entry contributes to the chat context."""
    data = entry.data
    if entry.type == protocol.CHAT_SENT:
        return "user", str(data["text"])
    if entry.type == protocol.CHAT_RETRY:
        return "user", "[asked you to answer that again, differently]"
    if entry.type == protocol.REPLY_SAVED:
        suffix = " [stopped by the person]" if data.get("done_reason") == "stopped" else ""
        return "assistant", str(data["text"]) + suffix
    if entry.type == protocol.MODEL_CHOSEN:
        return "user", (f"[switched your model from {data.get('previous') or 'the default'} to {data.get('model')}: "
                        "this is you, speaking through the new model]")
    title = str(data.get("title", ""))
    if entry.type in protocol.TOOL_TYPES:
        return describe_tool(entry)
    if entry.type == protocol.TODO_ADDED:
        return "user", f"[added todo #{data['id']}: “{title}”]"
    if entry.type == protocol.TODO_TOGGLED:
        state = "done" if data.get("done") else "not done"
        return "user", f"[marked todo #{data['id']} “{title}” as {state}]"
    if entry.type == protocol.TODO_EDITED:
        return "user", f"[renamed todo #{data['id']} from “{data.get('old_title', '')}” to “{title}”]"
    if entry.type == protocol.TODO_DELETED:
        return "user", f"[deleted todo #{data['id']}: “{title}”]"
    if entry.type == protocol.TODO_CLEARED:
        return "user", f"[cleared {data.get('count', 0)} completed todos]"
    raise ValueError(f"not a conversation entry: {entry.type}")


def describe_tool(entry: Message) -> tuple[str, str]:
    """What the assistant did or asked to do (its own turn), and what the person made of it (theirs)."""
    data = entry.data
    todo = f"todo #{data.get('id')} “{data.get('title', '')}”"
    action = data.get("action")
    change = {"add": f"adding {todo}", "done": f"marking {todo} as {'done' if data.get('done') else 'not done'}",
              "rename": f"renaming {todo} to “{data.get('new_title', '')}”"}.get(action, f"deleting {todo}")
    if entry.type == protocol.TOOL_APPLIED:
        return "assistant", f"[I made a change: {change}]"
    if entry.type == protocol.TOOL_PROPOSED:
        return "assistant", f"[I asked the person to allow {change}]"
    outcome = data.get("outcome")
    if outcome == "failed":
        verb = "undid your change:" if action in ("add", "done") else "allowed"
        return "user", f"[{verb} {change}, but it could not be done: {data.get('reason', '')}]"
    verb = {"undone": "undid your change:", "allowed": "allowed", "denied": "denied"}.get(outcome, "settled")
    return "user", f"[{verb} {change}]"
