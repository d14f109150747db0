"""The worker's two per-token mechanisms that replaced per-token work: TokenBatch (tokens read together leave as
one bus message) and Silence (one timer for the gaps between Ollama's lines, not one per line)."""
from __future__ import annotations

import asyncio

import pytest

from llm_worker.ollama import Silence
from llm_worker.tokens import TokenBatch


def test_a_lone_token_leaves_at_once_and_the_ones_read_with_it_leave_together_after():
    async def scenario() -> list[tuple[str, int]]:
        sent: list[tuple[str, int]] = []
        batch = TokenBatch(lambda text, index: sent.append((text, index)))
        for text in ("a", "b", "c", "d"):  # read from one socket buffer: no await in between
            batch.add(text)
        assert sent == [("a", 0)]  # the first at once; the others when this step of the loop ends
        await asyncio.sleep(0)
        assert sent == [("a", 0), ("bcd", 1)]
        batch.add("e")  # alone in its step: at once
        batch.add("f")
        batch.flush()  # the end of a reply: out at once, before its `done`
        await asyncio.sleep(0)
        return sent

    assert asyncio.run(scenario()) == [("a", 0), ("bcd", 1), ("e", 4), ("f", 5)]


def test_silence_times_out_only_while_waiting_and_counts_from_the_wait():
    async def scenario() -> None:
        silence = Silence(0.05)
        try:
            await silence.wait(asyncio.sleep(0.01))  # heard in time
            await asyncio.sleep(0.1)  # the caller handling a line: not a silence
            await silence.wait(asyncio.sleep(0.01))
            with pytest.raises(asyncio.TimeoutError):
                await silence.wait(asyncio.sleep(1))
        finally:
            silence.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_shorter_allowance_after_the_first_line_takes_effect_at_once():
    async def scenario() -> None:
        silence = Silence(10)  # the first line may be slow (a model loading)
        try:
            await silence.wait(asyncio.sleep(0.01))
            silence.allow(0.05)  # the gaps after it may not
            with pytest.raises(asyncio.TimeoutError):
                await silence.wait(asyncio.sleep(1))
        finally:
            silence.close()

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_cancel_from_elsewhere_stays_a_cancel():
    async def scenario() -> None:
        silence = Silence(10)
        task = asyncio.current_task()
        asyncio.get_running_loop().call_later(0.01, task.cancel)
        try:
            with pytest.raises(asyncio.CancelledError):
                await silence.wait(asyncio.sleep(1))
        finally:
            silence.close()

    asyncio.run(scenario())
