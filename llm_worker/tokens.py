"""How a reply's tokens leave the worker for the bus."""
from __future__ import annotations

import asyncio
from typing import Callable


class TokenBatch:
    """A token that arrives alone goes out at once; tokens that arrive together go out together. Ollama's chunks
    that were read in one go from the socket (they piled up while the worker was busy) reach `add` within one step
    of the event loop: the first leaves at once, the rest as one more llm.token message when the step ends. Every
    bus message costs each process on its way a wakeup of ZeroMQ's I/O thread, about 30-40 µs of CPU on these 2
    cores whatever its size (measured: tests/bench/profile.py), so a backlog is cleared with two messages instead
    of one per token, while a model's pace (one token per read) costs no wait at all."""

    def __init__(self, send: Callable[[str, int], None]) -> None:
        self._send = send  # (the text, the index of its first token in the reply)
        self._pending: list[str] = []
        self._sent = 0
        self._in_step = False  # a token went out in this step of the loop: the next ones wait for its end

    def add(self, text: str) -> None:
        if self._in_step:
            self._pending.append(text)
            return
        self._in_step = True
        asyncio.get_running_loop().call_soon(self._step_ended)
        self._send(text, self._sent)
        self._sent += 1

    def _step_ended(self) -> None:
        self._in_step = False
        self.flush()

    def flush(self) -> None:
        if self._pending:
            text, index = "".join(self._pending), self._sent
            self._sent += len(self._pending)
            self._pending.clear()
            self._send(text, index)
