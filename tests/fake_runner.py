"""What the fake Ollama's model runner costs, modelled deterministically (see shared/OLLAMA.md, "Prompt cache,
loading, keep-alive"): a tokenizer, the slot that keeps the previous prompt's tokens (only what follows the longest
common prefix is evaluated, as llama-server does with cache_prompt), a price per evaluated token, and a load time
paid again once `keep_alive` has run out. The bench's prompt-cache figure uses the same model in-process."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default: 5 minutes
DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def rendered(message: dict) -> str:
    """A message's text as the template puts it in the prompt: its content, and an assistant's tool calls as JSON
    after it (as qwen's template writes them)."""
    calls = message.get("tool_calls")
    return str(message.get("content", "")) + (json.dumps(calls) if calls else "")


def tokenize(messages: list[dict], chars_per_token: float) -> list[str]:
    """The prompt as tokens: per message 3 template tokens (start, role, newline), its text in pieces of
    `chars_per_token` characters, and an end token: 4 + ceil(len / chars_per_token) per message."""
    tokens: list[str] = []
    for message in messages:
        content = rendered(message)
        pieces = math.ceil(len(content) / chars_per_token)
        tokens += ["<|start|>", str(message.get("role", "")), "\n"]
        tokens += [content[int(i * chars_per_token):int((i + 1) * chars_per_token)] for i in range(pieces)]
        tokens.append("<|end|>")
    return tokens


def prompt_token_count(messages: list[dict], chars_per_token: float) -> int:
    """The whole prompt's tokens (what Ollama reports as prompt_eval_count)."""
    return sum(math.ceil(len(rendered(m)) / chars_per_token) + 4 for m in messages)


def keep_alive_s(value: object) -> float:
    """Ollama's keep_alive: seconds, or a duration string ("30m", "10s"); negative means forever."""
    if isinstance(value, bool) or value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = DURATION.match(str(value).strip())
        if match is None:
            return DEFAULT_KEEP_ALIVE_S
        seconds = float(match.group(1)) * UNIT_S[match.group(2)]
    return math.inf if seconds < 0 else seconds


@dataclass
class Evaluation:
    """What one request cost: Ollama's own numbers, and the seconds the fake waits before the first chunk."""
    prompt_tokens: int  # prompt_eval_count: cached + evaluated
    evaluated_tokens: int  # the part after the common prefix
    load_s: float  # 0 unless the model had to be loaded
    prompt_s: float  # evaluated_tokens × the price per token

    @property
    def first_token_s(self) -> float:
        return self.load_s + self.prompt_s


@dataclass
class Runner:
    """One model's runner with one slot (OLLAMA_NUM_PARALLEL=1). Times are given, not read, so it is deterministic."""
    chars_per_token: float = 4.0
    prompt_s_per_token: float = 0.0
    load_s: float = 0.0
    loaded_until: float = -math.inf
    slot: list[str] = field(default_factory=list)

    def load(self, now: float, keep_alive: object) -> float:
        """Load the model unless it still is (an empty-messages request); the load time it cost."""
        cost = 0.0
        if now >= self.loaded_until:
            cost, self.slot = self.load_s, []  # a fresh runner: nothing cached
        seconds = keep_alive_s(keep_alive)
        self.loaded_until = -math.inf if seconds == 0 else now + cost + seconds  # keep_alive 0 unloads
        return cost

    def evaluate(self, messages: list[dict], now: float, keep_alive: object) -> Evaluation:
        load = self.load(now, keep_alive)
        tokens = tokenize(messages, self.chars_per_token)
        common = 0
        for cached, new in zip(self.slot, tokens):
            if cached != new:
                break
            common += 1
        # llama-server always evaluates at least the last token, even for a prompt it has seen whole.
        evaluated = max(len(tokens) - common, 1) if tokens else 0
        self.slot = tokens
        return Evaluation(len(tokens), evaluated, load, evaluated * self.prompt_s_per_token)
