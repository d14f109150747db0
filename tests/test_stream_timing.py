"""The worker's two per-token mechanisms that replaced per-token work: TokenBatch (tokens read together leave as
one bus message) and Silence (one timer for the gaps between Ollama's lines, not one per line)."""
from __future__ import annotations

import asyncio

import pytest

from llm_worker.ollama import Silence
from llm_worker.tokens import TokenBatch


def test_tokens_added_in_one_step_leave_together_and_a_lone_token_leaves_at_once():
    async def scenario() -> list[tuple[str, int]]:
        sent: list[tuple[str, int]] = []
        batch = TokenBatch(lambda text, index: sent.append((text, index)))
        for text in ("a", "b", "c"):  # read from one socket buffer: no await in between
            batch.add(text)
        assert sent == []  # not before this step of the loop ends
        await asyncio.sleep(0)
        batch.add("d")
        await asyncio.sleep(0)
        batch.add("e")
        batch.flush()  # the end of a reply: out at once, before its `done`
        await asyncio.sleep(0)
        return sent

    assert asyncio.run(scenario()) == [("abc", 0), ("d", 3), ("e", 4)]


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
