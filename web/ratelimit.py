"""A token bucket for state-changing requests: a page flooding the app (a stuck key, a script) gets 429 instead of
growing the journal as fast as it can send. Sustained ACTIONS_PER_S with bursts up to ACTION_BURST."""
from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> bool:
        """Spend one token if there is one; False means: refuse this request."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
