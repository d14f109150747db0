"""The state behind the access gate (web/auth.py): the token file as it is now, session cookies signed with it, and
how many token attempts each address has left."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from services import access_token
from services.config import ConfigError
from web.ratelimit import TokenBucket

SESSION_MAX_AGE_S = 30 * 24 * 3600  # a phone stays signed in for a month, or until the token is rotated
ATTEMPT_BURST = 5  # token attempts one address may make at once...
ATTEMPTS_PER_S = 0.1  # ... and then one every 10 s
ATTEMPT_ADDRESSES = 1024  # addresses remembered; the longest idle is forgotten first

log = logging.getLogger(__name__)


class WatchedToken:
    """The token file's content, re-read whenever the file changes: a rotation takes effect without a restart."""

    def __init__(self, token_path: Path) -> None:
        self.path = token_path
        self._token: str | None = access_token.read_or_create(token_path)
        self._stamp = self._stamp_now()
        self.generation = 0  # one more each time the token changes: every session signed before has ended

    def _stamp_now(self) -> tuple | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def current(self) -> str | None:
        """None (nobody gets in) while the file is missing or broken; the log says how to fix it."""
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return self._token
        self._stamp = stamp
        try:
            token = access_token.read(self.path)
        except (OSError, ConfigError) as error:
            token = None
            log.error("no access token, so only loopback gets in (%s): run `python -m bin.token rotate`", error)
        if token != self._token:
            self._token = token
            self.generation += 1
            log.info("the access token changed: every earlier session has ended")
        return self._token


class Sessions:
    """Cookies of the form `issued.nonce.mac`, the MAC keyed by the current token."""

    def __init__(self, token: WatchedToken, clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self.clock = clock

    @staticmethod
    def _mac(token: str, payload: str) -> str:
        return hmac.new(token.encode(), payload.encode(), hashlib.sha256).hexdigest()

    def new(self, token: str) -> str:
        payload = f"{int(self.clock())}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(token, payload)}"

    def valid(self, cookie: str | None) -> bool:
        token = self.token.current()
        if token is None or not cookie or cookie.count(".") != 2:
            return False
        issued, nonce, mac = cookie.split(".")
        if not (issued.isascii() and issued.isdigit()) or self.clock() - int(issued) > SESSION_MAX_AGE_S:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(token, f"{issued}.{nonce}").encode())

    def accepts(self, candidate: str) -> str | None:
        """The token if `candidate` is it (compared in constant time), else None."""
        token = self.token.current()
        if token is not None and hmac.compare_digest(candidate.encode(), token.encode()):
            return token
        return None


class Attempts:
    """A token bucket per peer address for token attempts: guessing is slow, and one address flooding wrong tokens
    does not lock out the phone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: str) -> bool:
        bucket = self._buckets.pop(address, None) or TokenBucket(ATTEMPTS_PER_S, ATTEMPT_BURST, self.clock)
        self._buckets[address] = bucket  # newest last
        while len(self._buckets) > ATTEMPT_ADDRESSES:
            self._buckets.popitem(last=False)
        return bucket.take()
