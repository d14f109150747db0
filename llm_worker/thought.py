"""A reply's thinking (Ollama's `message.thinking` chunks from a model with the "thinking" capability): kept apart
from the reply's text, bounded, and timed for the "Thought for N s" the page shows. It never enters a prompt."""
from __future__ import annotations

import time
from typing import Callable

from services.text import MAX_THINKING_CHARS


class Thought:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.parts: list[str] = []
        self.length = 0
        self.seconds = 0.0  # spent thinking, over every round of a reply that calls tools
        self._since: float | None = None  # thinking now, since then

    def add(self, text: str) -> str:
        """A thinking chunk; what to show of it: "" once the thinking is over its bound (it is then neither kept
        nor shown). Thinking again after a tool call starts a paragraph of its own."""
        if self._since is None:
            self._since = self.clock()
            if self.parts:
                text = "\n\n" + text
        if self.length + len(text) > MAX_THINKING_CHARS:
            return ""
        self.parts.append(text)
        self.length += len(text)
        return text

    def end(self) -> None:
        """The answer (or the round) began: thinking time stops counting."""
        if self._since is not None:
            self.seconds += self.clock() - self._since
            self._since = None

    def done_fields(self) -> dict:
        """What llm.done carries about it: nothing when the model did not think."""
        self.end()
        return {"thinking": "".join(self.parts), "thinking_s": round(self.seconds, 1)} if self.parts else {}
