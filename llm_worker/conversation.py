"""The worker's view of the journal (the client half of the zguide Clone pattern): entries in seq order, the last
seq applied, what is already answered, the current todo list, and the prompt that fits the model's context window.

The prompt policy, chosen for Ollama's prompt cache (llama-server keeps the previous prompt's tokens and evaluates
only what follows the longest common prefix; see ../shared/OLLAMA.md):

- The prompt is the system prompt, then the todo list as it stood when the window began, then the history from
  `window_start` on, ending with the turn being answered. All of it stays byte-identical from one reply to the next
  until the window moves: new history is only ever appended.
- When the history no longer fits the budget, the window moves in one big step: the oldest entries are dropped until
  the history fills at most a quarter of the budget. The next replies then append to that same beginning until the
  budget is full again, so what is left of the history is evaluated again once every three quarters of a budget,
  not on every reply (dropping one message at a time changes the prefix right after the system prompt each time).
  Keeping a quarter, not a half, makes the reply that moves the window cheaper and the moves rarer (bin/bench
  figure 13: the slowest 5% of first tokens at 1.3× those of a new list instead of 2×), at the cost of a shorter
  memory right after a move; the todo list carries what matters across it.
- The budget is `num_ctx − num_predict`, with `num_ctx` never above the model's own context length (from
  /api/show), and tokens are estimated from characters at a rate measured on earlier replies (Ollama reports each
  prompt's exact token count), so a prompt never overflows: Ollama would silently cut its oldest part, and with it
  the cache.
- The todo list changes with almost every action, but the history after it holds every one of those actions: so
  the list is the one from the window's start (taken again only when the window moves), and the list now is that
  list plus the actions below it. A list placed at the end instead would be evaluated again on every reply, and
  grow with the list: with hundreds of open todos, most of what a reply costs. It comes from the journal (and a
  snapshot in the first catch-up), so the model knows every todo even after the entries that created it have left
  the window. Open todos come first; when the list outgrows its share of the budget, the newest open ones are
  listed and the rest counted.
"""
from __future__ import annotations

import json
import time
from collections import deque
from enum import Enum

from services import protocol
from services.protocol import Message
from llm_worker.persona import SYSTEM_PROMPT, describe

MAX_ENTRIES = 5_000  # kept in memory; far more than any context window holds
CHARS_PER_TOKEN = 3  # before any reply says otherwise: a low estimate (English averages ~4), erring on the short side
CALIBRATION_MARGIN = 0.9  # the measured characters per token, shaded so a prompt errs on the short side
CALIBRATION_REPLIES = 5  # the estimate is the lowest of the last this many measurements
MESSAGE_OVERHEAD_TOKENS = 4  # role markers and separators per message in chat templates
WINDOW_KEEP = 4  # a moving window keeps 1/4 of the history budget (why: the policy above)
TODO_LIST_SHARE = 8  # the list may take 1/8 of the budget; beyond it, the newest open todos and counts


class Applied(Enum):
    APPLIED = "applied"
    OLD = "old"  # at or below the last seq: already seen (snapshot overlap or duplicate)
    GAP = "gap"  # a seq was skipped: catch up from the journal before going on


IN_REPLY = (protocol.REPLY_SAVED, protocol.TOOL_APPLIED, protocol.TOOL_PROPOSED)  # placed with the reply


def position(entry: Message) -> int:
    """Where an entry sits in the conversation: a reply (and what the assistant did while writing it) right after
    the last entry it answers, whatever its seq."""
    if entry.type in IN_REPLY:
        covers_seq = entry.data.get("covers_seq", 0)
        return covers_seq if type(covers_seq) is int else 0
    return entry.seq


class Conversation:
    def __init__(self) -> None:
        self.entries: deque[Message] = deque(maxlen=MAX_ENTRIES)
        self.last_seq = 0
        self.saved_through = 0  # the highest seq a saved reply covers
        self.own_unsaved: dict[str, int] = {}  # reply_id → covers_seq of own replies not saved yet
        self.todos: dict[int, tuple[str, bool]] = {}  # the list as the journal says it is now: id → (title, done)
        self.window_start = 0  # the position the prompt's history starts at (see the policy above)
        self.window_todos: dict[int, tuple[str, bool]] = {}  # the list just before `window_start`
        self.window_list = ""  # `window_todos` as the prompt shows it, fixed until the window moves
        self.measured_chars_per_token: deque[float] = deque(maxlen=CALIBRATION_REPLIES)

    @property
    def chars_per_token(self) -> float:
        if not self.measured_chars_per_token:
            return CHARS_PER_TOKEN
        return CALIBRATION_MARGIN * min(self.measured_chars_per_token)

    def estimate_tokens(self, text: str) -> int:
        return int(len(text) / self.chars_per_token) + 1 + MESSAGE_OVERHEAD_TOKENS

    def calibrate(self, messages: list[dict], prompt_tokens: int) -> None:
        """Learn the model's characters per token from a prompt and the token count Ollama reported for it (the
        final chunk's prompt_eval_count is the whole prompt, cached part included)."""
        text_tokens = prompt_tokens - MESSAGE_OVERHEAD_TOKENS * len(messages)
        if text_tokens > 0:
            self.measured_chars_per_token.append(sum(len(m["content"]) for m in messages) / text_tokens)

    def forget_calibration(self) -> None:
        """Another model, another tokenizer: what was measured for the last one no longer holds."""
        self.measured_chars_per_token.clear()

    @property
    def answered_through(self) -> int:
        """The highest seq a reply covers, counting own replies not yet back from the journal."""
        return max([self.saved_through, *self.own_unsaved.values()])

    def load_window(self, entries: list[Message], head_seq: int,
                    todos: list[tuple[int, str, bool]] | None = None) -> None:
        """Cold start (or a new journal): the recent window of the journal, and the todo list as it is at
        `head_seq`, replace whatever was known."""
        self.entries.clear()
        self.own_unsaved.clear()
        self.todos.clear()
        self.window_start, self.window_list = 0, ""
        self.last_seq = entries[0].seq - 1 if entries else head_seq
        self.saved_through = 0
        for entry in entries:
            self.apply(entry)
        self.last_seq = max(self.last_seq, head_seq)
        if todos is not None:  # the list at the head, including todos whose "added" is older than the window
            self.todos = {todo_id: (title, done) for todo_id, title, done in todos}
        # The list before the window, as near as the head's list tells: without the todos the window adds (its
        # deletes are gone from the head's list already; its toggles and renames show their outcome early).
        added = {e.data.get("id") for e in self.entries if e.type == protocol.TODO_ADDED
                 or (e.type == protocol.TOOL_APPLIED and e.data.get("action") == "add")}
        self.window_todos = {todo_id: todo for todo_id, todo in self.todos.items() if todo_id not in added}
        if not entries:
            self.saved_through = head_seq  # an empty journal has nothing to answer

    def apply(self, entry: Message) -> Applied:
        if entry.seq <= self.last_seq:
            return Applied.OLD
        if entry.seq != self.last_seq + 1:
            return Applied.GAP
        self.last_seq = entry.seq
        if entry.type == protocol.REPLY_SAVED:
            self._replace_provisional(entry)
            self.saved_through = max(self.saved_through, int(entry.data.get("covers_seq", 0)))
        elif entry.type in IN_REPLY:  # the assistant's change: before the words of the reply it came with
            self._insert_reply(entry)
            follow_list(self.todos, entry)
        elif entry.type not in protocol.UNSPOKEN:  # who answers, and notes the page showed, are not conversation
            self.entries.append(entry)
            follow_list(self.todos, entry)
        return Applied.APPLIED

    def add_own_reply(self, done: dict) -> None:
        """The reply just finished (`done` is its llm.done data), before its journal entry comes back from the web:
        it counts as answered now, so nothing is answered twice, and is in the context of the next generation."""
        self._insert_reply(Message(type=protocol.REPLY_SAVED, data=done, src="llm_worker", seq=None))
        self.own_unsaved[done["reply_id"]] = done["covers_seq"]

    def forget_own_reply(self, token: object) -> None:
        """The claim `token` ended before our reply under it was saved: it was never said, and its batch is
        unanswered again."""
        dropped = [e for e in self.entries if e.seq is None and e.data.get("token") == token]
        for entry in dropped:
            self.own_unsaved.pop(entry.data["reply_id"], None)
            self.entries.remove(entry)

    def unsaved_replies(self, older_than_s: float) -> list[Message]:
        """Own replies whose journal entry has not come back after `older_than_s` seconds."""
        cutoff = time.time() - older_than_s
        return [e for e in self.entries if e.seq is None and e.ts < cutoff]

    def _replace_provisional(self, saved: Message) -> None:
        if self.own_unsaved.pop(saved.data.get("reply_id"), None) is None:
            self._insert_reply(saved)  # another worker's reply (or one from before this process started)
            return
        for index, entry in enumerate(self.entries):
            if entry.seq is None and entry.data.get("reply_id") == saved.data.get("reply_id"):
                self.entries[index] = saved
                return
        self._insert_reply(saved)

    def _insert_reply(self, reply: Message) -> None:
        index = len(self.entries)
        while index > 0 and position(self.entries[index - 1]) > position(reply):
            index -= 1
        if len(self.entries) == self.entries.maxlen:
            self.entries.popleft()
            index = max(0, index - 1)
        self.entries.insert(index, reply)

    def next_batch(self) -> list[Message]:
        """What the next reply answers: every unanswered action up to and including the first unanswered chat
        message (which always gets its own reply), or, with no chat message waiting, all unanswered actions."""
        batch, answered = [], self.answered_through
        for entry in self.entries:
            # The assistant's own changes, and the person settling them, are not answered with a comment.
            if entry.type in (protocol.REPLY_SAVED, *protocol.TOOL_TYPES) or entry.seq <= answered:
                continue
            batch.append(entry)
            if entry.type in protocol.ASKS:
                break
        return batch

    def prompt(self, through_seq: int, budget_tokens: int) -> list[dict]:
        """The system prompt, the todo list at the window's start, and the history up to `through_seq` from there,
        within `budget_tokens` (the policy is in this module's docstring)."""
        list_budget = budget_tokens // TODO_LIST_SHARE
        if not self.window_list:
            self.window_list = todo_list(self.window_todos, list_budget, self.estimate_tokens)
        budget = budget_tokens - self.estimate_tokens(SYSTEM_PROMPT)
        history = [(position(entry), *describe(entry)) for entry in self.entries
                   if self.window_start <= position(entry) <= through_seq]
        cost = sum(self.estimate_tokens(content) for _, _, content in history)
        if cost > budget - self.estimate_tokens(self.window_list):
            # One big step down to a quarter of the budget (leaving the list its whole share: it is taken again
            # and may grow): the next replies share the new beginning.
            # The turn being answered always stays, however long: a prompt without it would answer nothing.
            dropped, keep = 0, len(history) - 1
            while dropped < keep and (cost > (budget - list_budget) // WINDOW_KEEP
                                      or (dropped and history[dropped][0] == history[dropped - 1][0])):
                # (an action and the reply to it share a position: they leave the window together)
                cost -= self.estimate_tokens(history[dropped][2])
                dropped += 1
            self._move_window(history[dropped][0] if dropped < len(history) else through_seq + 1, list_budget)
            history = history[dropped:]
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "system", "content": self.window_list}]
        for _, role, content in history:
            # Several actions in a row read as one turn; so do the assistant's changes and the reply they came with.
            if messages[-1]["role"] == role != "system":
                messages[-1]["content"] += "\n" + content
            else:
                messages.append({"role": role, "content": content})
        return messages

    def with_turns(self, prompt: list[dict], turns: list[dict], budget_tokens: int) -> list[dict]:
        """A reply's first prompt followed by the tool calls and results it has made since (a later round of the
        same reply), within `budget_tokens`: if they would not fit, the oldest history goes, for this round only;
        the system prompt, the list and the turn being answered stay."""
        head, history = prompt[:2], prompt[2:]
        cost = sum(self.estimate_tokens(json.dumps(turn)) for turn in turns)
        cost += sum(self.estimate_tokens(message["content"]) for message in prompt)
        while len(history) > 1 and cost > budget_tokens:
            cost -= self.estimate_tokens(history.pop(0)["content"])
        return head + history + turns

    def _move_window(self, start: int, list_budget: int) -> None:
        """The history now starts at position `start`: the actions that left it are folded into the list."""
        for entry in self.entries:
            if self.window_start <= position(entry) < start:
                follow_list(self.window_todos, entry)
        self.window_start = start
        self.window_list = todo_list(self.window_todos, list_budget, self.estimate_tokens)


def follow_list(todos: dict[int, tuple[str, bool]], entry: Message) -> None:
    """Apply a todo action to a list (id → (title, done)); other entries leave it as it is."""
    data = entry.data
    if entry.type in protocol.TOOL_TYPES:  # the entry says what it did to the list (see the bus protocol)
        todo = data.get("todo")
        if isinstance(todo, list) and len(todo) == 3 and type(todo[0]) is int:
            todos[todo[0]] = (str(todo[1]), bool(todo[2]))
        todos.pop(data.get("deleted"), None)
    elif entry.type == protocol.TODO_DELETED:
        todos.pop(data.get("id"), None)
    elif entry.type == protocol.TODO_CLEARED:  # one entry for all of them: the completed ones at this seq
        for todo_id in [todo_id for todo_id, (_, done) in todos.items() if done]:
            del todos[todo_id]
    elif entry.type in protocol.TODO_ACTIONS and isinstance(data.get("id"), int):
        title, done = todos.get(data["id"], ("", False))
        todos[data["id"]] = (str(data.get("title", title)), bool(data.get("done", done)))


def todo_list(todos: dict[int, tuple[str, bool]], budget_tokens: int, estimate_tokens) -> str:
    """The list as compact lines, open todos first (newest first), within `budget_tokens`; what does not fit is
    counted, so the model knows the list is longer than what it sees."""
    ordered = sorted(todos.items(), key=lambda item: (item[1][1], -item[0]))
    header = "The todo list when the conversation below began (the actions below change it):"
    shown, cost = [], estimate_tokens(header) + estimate_tokens("(and 00000 more open, 00000 done, not shown)")
    for todo_id, (title, done) in ordered:
        line = f"#{todo_id} {title}" + (" (done)" if done else "")
        cost += estimate_tokens(line) - MESSAGE_OVERHEAD_TOKENS + 1
        if cost > budget_tokens:
            break
        shown.append(line)
    hidden = ordered[len(shown):]
    if hidden:
        done = sum(1 for _, (_, is_done) in hidden if is_done)
        shown.append(f"(and {len(hidden) - done} more open, {done} done, not shown)")
    return header + "\n" + ("\n".join(shown) if todos else "(empty)")
