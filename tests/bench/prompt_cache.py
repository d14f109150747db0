"""Figure 13 (issue 10): what Ollama's prompt cache has to evaluate per reply under the worker's prompt policy,
against the policy before it (fill the budget from the newest entry backwards), on the same long session, and the
time to first token that costs at a laptop CPU's prompt speed.

Computed in this process with the worker's own Conversation and the fake Ollama's runner model (tests/fake_runner.py:
2.5 characters a token, 4 tokens of template per message, the previous prompt cached and only what follows the
longest common prefix evaluated, as llama-server does with cache_prompt). No processes: only the policy is measured.
"""
from __future__ import annotations

from pathlib import Path

import httpx

from llm_worker.conversation import Conversation
from llm_worker.persona import SYSTEM_PROMPT, describe
from services import protocol
from services.protocol import Message
from tests.bench.harness import HTTP_TIMEOUT_S, bench_system, summary
from tests.fake_ollama import FakeOllama
from tests.fake_runner import Runner, prompt_token_count
from tests.system import HTMX

CHARS_PER_TOKEN = 2.5  # a dense tokenizer, as the issue asks
NUM_CTX, NUM_PREDICT = 2048, 512
CHECKPOINTS = (10, 100, 300, 1_000)  # actions into the session
WINDOW = 50  # replies measured around each checkpoint
LOAD_S = 2.0  # loading a 3B model from disk, about
PROMPT_TOKENS_PER_S = 200  # a 3B model's prompt evaluation on a laptop CPU (very roughly 50–300 tokens/s)


def previous_policy(conversation: Conversation, through_seq: int, budget_tokens: int) -> list[dict]:
    """The prompt before issue 10: the system prompt plus the newest history that fits, from the newest back."""
    budget = budget_tokens - conversation.estimate_tokens(SYSTEM_PROMPT)
    chosen = []
    for entry in reversed(conversation.entries):
        if entry.seq is not None and entry.seq > through_seq:
            continue
        role, content = describe(entry)
        cost = conversation.estimate_tokens(content)
        if cost > budget:
            break
        budget -= cost
        chosen.append((role, content))
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for role, content in reversed(chosen):
        if messages[-1]["role"] == role == "user":
            messages[-1]["content"] += "\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def session(policy: str, actions: int) -> dict[int, dict]:
    """A session of `actions` actions (mostly todo adds, every fifth a chat message), each answered before the
    next; per checkpoint, the uncached tokens of the replies just before it, and prompts over the budget."""
    conversation = Conversation()
    conversation.load_window([], 0)
    budget = NUM_CTX - NUM_PREDICT
    runner = Runner(chars_per_token=CHARS_PER_TOKEN, prompt_s_per_token=1 / PROMPT_TOKENS_PER_S)
    runner.load(now=0, keep_alive=-1)  # loaded before the first comment, as the worker does at start
    uncached: list[int] = []
    first_token_s: list[float] = []
    over: list[bool] = []
    results = {}
    seq = 0
    for number in range(1, actions + 1):
        seq += 1
        if number % 5:
            action = Message(protocol.TODO_ADDED, {"id": number, "title": f"chore number {number}"}, "web", seq=seq)
        else:
            action = Message(protocol.CHAT_SENT, {"text": f"what should I do after chore {number - 1}?"}, "web",
                             seq=seq)
        conversation.apply(action)
        prompt = (conversation.prompt(seq, budget) if policy == "new"
                  else previous_policy(conversation, seq, budget))
        tokens = prompt_token_count(prompt, CHARS_PER_TOKEN)
        if policy == "new":
            conversation.calibrate(prompt, tokens)  # as the worker does from prompt_eval_count
        cost = runner.evaluate(prompt, now=number, keep_alive=-1)
        uncached.append(cost.evaluated_tokens)
        first_token_s.append(cost.first_token_s)
        over.append(tokens > budget)
        seq += 1
        reply = f"Chore {number}, noted. Bold of you to think you will do it."
        conversation.apply(Message(protocol.REPLY_SAVED, {"reply_id": f"r{number}", "text": reply,
                                                          "covers_seq": seq - 1}, "web", seq=seq))
        if number in CHECKPOINTS:
            results[number] = {"uncached_tokens": summary([float(u) for u in uncached[-WINDOW:]]),
                               "first_token_ms": summary(first_token_s[-WINDOW:], 1000),
                               "prompts_over_budget_after_5": sum(over[5:])}
    return results


def prompt_cache() -> dict:
    """Figure 13 for both policies, and how many times fewer tokens the new one evaluates at each checkpoint."""
    old, new = session("old", max(CHECKPOINTS)), session("new", max(CHECKPOINTS))
    ratios = {n: old[n]["uncached_tokens"]["mean"] / max(new[n]["uncached_tokens"]["mean"], 1) for n in CHECKPOINTS}
    return {"chars_per_token": CHARS_PER_TOKEN, "num_ctx": NUM_CTX, "num_predict": NUM_PREDICT,
            "prompt_tokens_per_s": PROMPT_TOKENS_PER_S,
            "old": {str(n): v for n, v in old.items()}, "new": {str(n): v for n, v in new.items()},
            "fewer_uncached_x": {str(n): r for n, r in ratios.items()}}


def first_comment(tmp_path: Path) -> dict:
    """Figure 13, live: the first comment after the worker starts, against a fake Ollama (in this process) whose
    model takes LOAD_S to load. The worker loads it before it says it is ready, so the comment should not wait."""
    with FakeOllama() as fake:
        fake.knobs.load_s, fake.knobs.prompt_s_per_token = LOAD_S, 1 / PROMPT_TOKENS_PER_S
        with bench_system(tmp_path, fake.url) as app:
            with httpx.Client(base_url=app.url, headers=HTMX, timeout=HTTP_TIMEOUT_S, trust_env=False) as client:
                client.post("/todos", data={"title": "the first thing today"}).raise_for_status()
            saved = app.bus.wait_for("journal.reply.saved", timeout_s=30)
        first = fake.evaluations[0]
    return {"model_load_ms": LOAD_S * 1000, "load_in_first_comment_ms": first.load_s * 1000,
            "first_token_ms": first.first_token_s * 1000,
            "saved_load_duration_ms": saved.data["stats"].get("load_duration", 0) / 1e6}
