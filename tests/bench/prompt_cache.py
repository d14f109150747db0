"""Figure 13 (issue 10): what Ollama's prompt cache has to evaluate per reply under the worker's prompt policy,
against the policy before it (fill the budget from the newest entry backwards), on the same long session.

Computed in this process with the worker's own Conversation and the fake Ollama's tokenizer (2.5 characters a token,
4 tokens of template per message): the cache keeps the previous prompt and evaluates only what follows the longest
common prefix with it, as llama-server does with cache_prompt. No model, no processes: only the policy is measured.
"""
from __future__ import annotations

from llm_worker.conversation import Conversation
from llm_worker.persona import SYSTEM_PROMPT, describe
from services import protocol
from services.protocol import Message
from tests.bench.harness import summary
from tests.fake_ollama import prompt_token_count

CHARS_PER_TOKEN = 2.5  # a dense tokenizer, as the issue asks
NUM_CTX, NUM_PREDICT = 2048, 512
CHECKPOINTS = (10, 100, 300, 1_000)  # actions into the session
WINDOW = 50  # replies measured around each checkpoint


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


def uncached_tokens(previous: list[dict], prompt: list[dict]) -> int:
    """Tokens after the longest common prefix (by message, then by character inside the first differing one)."""
    shared = 0
    while shared < min(len(previous), len(prompt)) and previous[shared] == prompt[shared]:
        shared += 1
    cached = prompt_token_count(prompt[:shared], CHARS_PER_TOKEN)
    if shared < min(len(previous), len(prompt)) and previous[shared]["role"] == prompt[shared]["role"]:
        a, b = previous[shared]["content"], prompt[shared]["content"]
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        cached += int(common / CHARS_PER_TOKEN)
    return prompt_token_count(prompt, CHARS_PER_TOKEN) - cached


def session(policy: str, actions: int) -> dict[int, dict]:
    """A session of `actions` actions (mostly todo adds, every fifth a chat message), each answered before the
    next; per checkpoint, the uncached tokens of the replies just before it, and prompts over the budget."""
    conversation = Conversation()
    conversation.load_window([], 0)
    budget = NUM_CTX - NUM_PREDICT
    previous: list[dict] = []
    uncached: list[int] = []
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
        uncached.append(uncached_tokens(previous, prompt))
        over.append(tokens > budget)
        previous = prompt
        seq += 1
        reply = f"Chore {number}, noted. Bold of you to think you will do it."
        conversation.apply(Message(protocol.REPLY_SAVED, {"reply_id": f"r{number}", "text": reply,
                                                          "covers_seq": seq - 1}, "web", seq=seq))
        if number in CHECKPOINTS:
            results[number] = {"uncached_tokens": summary([float(u) for u in uncached[-WINDOW:]]),
                               "prompts_over_budget_after_5": sum(over[5:])}
    return results


def prompt_cache() -> dict:
    """Figure 13 for both policies, and how many times fewer tokens the new one evaluates at each checkpoint."""
    old, new = session("old", max(CHECKPOINTS)), session("new", max(CHECKPOINTS))
    ratios = {n: old[n]["uncached_tokens"]["mean"] / max(new[n]["uncached_tokens"]["mean"], 1) for n in CHECKPOINTS}
    return {"chars_per_token": CHARS_PER_TOKEN, "num_ctx": NUM_CTX, "num_predict": NUM_PREDICT,
            "old": {str(n): v for n, v in old.items()}, "new": {str(n): v for n, v in new.items()},
            "fewer_uncached_x": {str(n): r for n, r in ratios.items()}}
