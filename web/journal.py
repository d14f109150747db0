"""The web's journal: each entry is written to SQLite (getting its seq) and only then published; catch-up pages of it
are the snapshot half of the zguide Clone pattern (served to workers by web/workers.py)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

from services import protocol
from services.busclient import Publisher
from services.protocol import Message
from store import Store

ACTIONS = (*protocol.TODO_ACTIONS, protocol.MODEL_CHOSEN, *protocol.ASKS)  # what the assistant answers
CATCHUP_PAGE = 5_000  # entries per catch-up reply; the worker asks again until it reaches last_seq

log = logging.getLogger(__name__)


class Journal:
    def __init__(self, store: Store, publisher: Publisher, history_window: int) -> None:
        self.store = store
        self.publisher = publisher
        self.history_window = history_window
        self.last_published: Message | None = None  # the entry the last `entry()` block wrote
        self.on_action: Callable[[Message], None] | None = None  # told of each action once it is written
        self._outbox: list[Message] | None = None  # entries written but not yet published, in seq order

    @contextmanager
    def entry(self, kind: str, src: str | None = None) -> Iterator[dict]:
        """`with journal.entry(TODO_ADDED) as data:` — change the store and fill `data` inside the block; the change
        and its journal entry commit together, and the entry is published after the commit. An action's follow-up
        entries (an offered claim) are published right behind it, so a worker hears both at once. `src` names who
        acted when it is not the web on a person's behalf ("assistant": an accepted tool call)."""
        data: dict = {}
        with self.store.transaction():
            yield data
            message = self.store.append(kind, data, src or self.publisher.src)
        self.last_published = message
        if self._outbox is not None:  # written while following up another entry: published right after it
            self._outbox.append(message)
            return
        self._outbox = [message]
        try:
            if self.on_action is not None and kind in ACTIONS:
                self.on_action(message)  # may grant the claim on it: that entry goes out with the action's
        finally:
            outbox, self._outbox = self._outbox, None
            for entry in outbox:
                self.publisher.send(entry)
            self.last_published = message  # the entry this block wrote, not its follow-up

    def chosen_model(self) -> str:
        """The chat model a person chose last ("" if none: the best installed)."""
        chosen = self.store.last_of((protocol.MODEL_CHOSEN,))
        return str(chosen.data.get("model", "")) if chosen else ""

    def catchup(self, after: int | None) -> dict:
        """The fields of a catch-up reply: the recent window and the todo list (after=None), or a page of entries
        after `after`."""
        page = {"journal_id": self.store.journal_id, "last_seq": self.store.last_seq()}
        if after is None:  # a worker starting over also gets the list as it is, whatever the window holds
            entries = self.store.recent_entries(self.history_window)
            page["todos"] = [[todo.id, todo.title, todo.done] for todo in self.store.todos()]
            page["model"] = self.chosen_model()  # chosen perhaps long before the window
        else:
            entries = self.store.entries_after(after, CATCHUP_PAGE)
        return {**page, "entries": [e.envelope() for e in entries]}
