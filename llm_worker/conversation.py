"""The worker's view of the journal (the client half of the zguide Clone pattern): entries in seq order, the last
seq applied, what is already answered, the current todo list, and the prompt that fits the model's context window.

The prompt policy, chosen for Ollama's prompt cache (llama-server keeps the previous prompt's tokens and evaluates
only what follows the longest common prefix; see ../shared/OLLAMA.md):

- The prompt is the system prompt, then the history from `window_start` on, then the current todo list, then the
  turn being answered. Everything before the todo list stays byte-identical from one reply to the next: new history
  is only ever appended.
- When the history no longer fits the budget, the window moves in one big step: the oldest entries are dropped until
  the history fills at most half the budget. The next replies then append to that same beginning until the budget
  is full again, so the whole history is evaluated again once every half a budget, not on every reply (dropping
  one message at a time changes the prefix right after the system prompt each time).
- The budget is `num_ctx − num_predict`, with `num_ctx` never above the model's own context length (from
  /api/show), and tokens are estimated from characters at a rate measured on earlier replies (Ollama reports each
  prompt's exact token count), so a prompt never overflows: Ollama would silently cut its oldest part, and with it
  the cache.
- The todo list changes with almost every action, so it goes at the end, just before the turn being answered. It
  comes from the journal (and a snapshot in the first catch-up), so the model knows every todo even after the
  entries that created it have left the window.
"""
from __future__ import annotations

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
TODO_LIST_SHARE = 8  # the list may take 1/8 of the budget (it is evaluated anew on every reply); beyond it, the newest


class Applied(Enum):
    APPLIED = "applied"
    OLD = "old"  # at or below the last seq: already seen (snapshot overlap or duplicate)
    GAP = "gap"  # a seq was skipped: catch up from the journal before going on


def position(entry: Message) -> int:
    """Where an entry sits in the conversation: a reply right after the last entry it answers, whatever its seq."""
    if entry.type == protocol.REPLY_SAVED:
        return int(entry.data.get("covers_seq", 0))
    return entry.seq


class Conversation:
    def __init__(self) -> None:
        self.entries: deque[Message] = deque(maxlen=MAX_ENTRIES)
        self.last_seq = 0
        self.saved_through = 0  # the highest seq a saved reply covers
        self.own_unsaved: dict[str, int] = {}  # reply_id → covers_seq of own replies not saved yet
        self.todos: dict[int, tuple[str, bool]] = {}  # the list as the journal says it is now: id → (title, done)
        self.window_start = 0  # the position the prompt's history starts at (see the policy above)
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
        self.window_start = 0
        self.last_seq = entries[0].seq - 1 if entries else head_seq
        self.saved_through = 0
        for entry in entries:
            self.apply(entry)
        self.last_seq = max(self.last_seq, head_seq)
        if todos is not None:  # the list at the head, including todos whose "added" is older than the window
            self.todos = {todo_id: (title, done) for todo_id, title, done in todos}
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
        elif entry.type not in protocol.CLAIM_TYPES:  # claims say who answers, they are not conversation
            self.entries.append(entry)
            self._follow_list(entry)
        return Applied.APPLIED

    def _follow_list(self, entry: Message) -> None:
        data = entry.data
        if entry.type == protocol.TODO_DELETED:
            self.todos.pop(data.get("id"), None)
        elif entry.type == protocol.TODO_CLEARED:  # one entry for all of them: the completed ones at this seq
            self.todos = {todo_id: todo for todo_id, todo in self.todos.items() if not todo[1]}
        elif entry.type in protocol.TODO_ACTIONS and isinstance(data.get("id"), int):
            title, done = self.todos.get(data["id"], ("", False))
            self.todos[data["id"]] = (str(data.get("title", title)), bool(data.get("done", done)))

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
            if entry.type == protocol.REPLY_SAVED or entry.seq <= answered:
                continue
            batch.append(entry)
            if entry.type == protocol.CHAT_SENT:
                break
        return batch

    def prompt(self, through_seq: int, budget_tokens: int) -> list[dict]:
        """The system prompt, the history up to `through_seq` from the window's start, and the todo list, within
        `budget_tokens` (the policy is in this module's docstring)."""
        todo_list = self._todo_list(budget_tokens // TODO_LIST_SHARE)
        budget = budget_tokens - self.estimate_tokens(SYSTEM_PROMPT) - self.estimate_tokens(todo_list)
        history = [(position(entry), *describe(entry)) for entry in self.entries
                   if self.window_start <= position(entry) <= through_seq]
        cost = sum(self.estimate_tokens(content) for _, _, content in history)
        if cost > budget:  # one big step down to half the budget: the next replies share the new beginning
            dropped = 0
            while dropped < len(history) and (
                    cost > budget // 2 or (dropped and history[dropped][0] == history[dropped - 1][0])):
                # (an action and the reply to it share a position: they leave the window together)
                cost -= self.estimate_tokens(history[dropped][2])
                dropped += 1
            history = history[dropped:]
            self.window_start = history[0][0] if history else through_seq + 1
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for _, role, content in history:
            if messages[-1]["role"] == role == "user":  # several actions in a row read as one turn
                messages[-1]["content"] += "\n" + content
            else:
                messages.append({"role": role, "content": content})
        # The list changes with nearly every action: just before the turn being answered, after the cached part.
        turn = [messages.pop()] if messages[-1]["role"] == "user" else []
        return [*messages, {"role": "system", "content": todo_list}, *turn]

    def _todo_list(self, budget_tokens: int) -> str:
        """The current todos, open ones first, as compact lines; the newest that fit if they are many."""
        lines = [f"#{todo_id} {title}" + (" (done)" if done else "")
                 for todo_id, (title, done) in sorted(self.todos.items(), key=lambda item: (item[1][1], -item[0]))]
        shown, cost = [], self.estimate_tokens("The todo list now:")
        for line in lines:
            cost += self.estimate_tokens(line) - MESSAGE_OVERHEAD_TOKENS + 1
            if cost > budget_tokens:
                break
            shown.append(line)
        more = f"\n(and {len(lines) - len(shown)} more)" if len(shown) < len(lines) else ""
        return "The todo list now:\n" + ("\n".join(shown) if lines else "(empty)") + more
