"""How a reply's tokens leave the worker for the bus."""
from __future__ import annotations

import asyncio
from typing import Callable


class TokenBatch:
    """Each token goes out at once, except that tokens Ollama sent together go out together: those read in one go
    from the socket (they piled up while the worker was busy) leave as one llm.token message. Every bus message costs
    each process on its way a wakeup of ZeroMQ's I/O thread, about 30-40 µs of CPU on these 2 cores whatever its
    size (measured: tests/bench/profile.py), so a backlog is cleared with one message instead of one per token. A
    token that arrives alone waits only for the end of the event loop's current step."""

    def __init__(self, send: Callable[[str, int], None]) -> None:
        self._send = send  # (the text, the index of its first token in the reply)
        self._pending: list[str] = []
        self._sent = 0
        self._scheduled = False

    def add(self, text: str) -> None:
        self._pending.append(text)
        if not self._scheduled:
            # Runs once this step of the loop ends, i.e. when reading the stream would wait for the network:
            # everything already received is in `_pending` by then.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            text, index = "".join(self._pending), self._sent
            self._sent += len(self._pending)
            self._pending.clear()
            self._send(text, index)
