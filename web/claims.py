"""Who answers: at most one claim at a time, granted through the journal (so its seq is a fencing token that only
grows), held for as long as the holder's heartbeats and its connection last. The rules are in the bus protocol's
docstring (services/protocol.py, "Several workers, one answer"); this module keeps them."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from services import protocol
from web.journal import Journal

MISSED_HEARTBEATS = 3.5  # heartbeats a holder (or any worker) may miss before it is taken for gone
FRESH_HEARTBEATS = 1.5  # an offer goes only to a worker heard from within this many heartbeats
OFFER_SCAN = 1_000  # unanswered entries looked through for the first chat message that ends an offered batch

log = logging.getLogger(__name__)


@dataclass
class Claim:
    token: int  # the seq of its journal.claim.granted entry
    worker_id: str
    covers_seq: int
    connection: int | None = None  # the file descriptor its holder's requests arrive on, when known


class Claims:
    def __init__(self, journal: Journal, heartbeat_s: float, on_end: Callable[[Claim, str], None]) -> None:
        self.journal = journal
        self.heartbeat_s = heartbeat_s
        self.on_end = on_end  # the relay: interrupt the reply streaming under this claim
        self.heartbeats: dict[str, float] = {}  # worker_id → monotonic time of its last heartbeat
        self.connections: dict[str, int] = {}  # worker_id → the connection its last request came on
        self.current: Claim | None = None
        self.last_holder = ""
        self.answered_through = 0
        self._restore()

    def _restore(self) -> None:
        """After a restart of the web: the last grant still holds if no reply or end came after it. Its holder gets
        a fresh lease, so a worker that is still streaming keeps its claim."""
        store = self.journal.store
        last = store.last_of((protocol.REPLY_SAVED, protocol.CLAIM_GRANTED, protocol.CLAIM_ENDED))
        saved = store.last_of((protocol.REPLY_SAVED,))
        self.answered_through = int(saved.data.get("covers_seq", 0)) if saved else 0
        if last is not None and last.type == protocol.CLAIM_GRANTED:
            self.current = Claim(last.seq, str(last.data["worker_id"]), int(last.data["covers_seq"]))
            self.heartbeats[self.current.worker_id] = time.monotonic()

    # requests from workers

    def request(self, worker_id: str, covers_seq: int, answered_through: int,
                connection: int | None) -> tuple[int | None, str]:
        """Grant the claim on the batch ending at `covers_seq` to a worker that counts everything through
        `answered_through` as answered, or say why not: (token, "") or (None, reason)."""
        current = self.current
        if current is not None and current.worker_id != worker_id and self.alive(current.worker_id):
            return None, f"held by {current.worker_id}"
        if answered_through < self.answered_through:  # behind the journal: it would answer actions again
            return None, f"answered through {self.answered_through}, not {answered_through}: catch up first"
        if not self.answered_through < covers_seq <= self.journal.store.last_seq():
            return None, f"nothing to answer through seq {covers_seq} (answered through {self.answered_through})"
        if current is not None and current.worker_id == worker_id:
            if current.covers_seq == covers_seq:
                current.connection = connection
                return current.token, ""  # a retried request: the same claim
            if answered_through >= current.covers_seq:
                # Its `done` travels the bus and this request a direct link, so it can overtake the done: the
                # worker asks again once it sees its reply saved.
                return None, f"the reply through seq {current.covers_seq} is not saved yet"
        if current is not None:  # lapsed, its holder's reply failed or was lost, or it sees another batch
            self.end(current, "lapsed" if current.worker_id != worker_id else "replaced")
        self.heartbeat(worker_id, connection)
        return self._grant(worker_id, covers_seq), ""

    def offer(self, action_seq: int, ready: list[str]) -> None:
        """An action was journaled: with no claim current, grant the batch it ends to one of the `ready` workers
        at once, so it need not ask (see the protocol's docstring, "Offers")."""
        # Only to a worker whose link is open: a killed one's closes at once, and its claim could not end with it.
        fresh = [w for w in ready if self.alive(w, FRESH_HEARTBEATS) and w in self.connections]
        if self.current is not None or not fresh or action_seq <= self.answered_through:
            return
        unanswered = self.journal.store.entries_after(self.answered_through, OFFER_SCAN)
        chats = [e.seq for e in unanswered if e.type in protocol.ASKS and e.seq <= action_seq]
        worker_id = self.last_holder if self.last_holder in fresh else min(fresh)
        self._grant(worker_id, chats[0] if chats else action_seq)

    def _grant(self, worker_id: str, covers_seq: int) -> int:
        with self.journal.entry(protocol.CLAIM_GRANTED) as data:
            data.update(worker_id=worker_id, covers_seq=covers_seq)
        self.current = Claim(self.journal.last_published.seq, worker_id, covers_seq, self.connections.get(worker_id))
        self.last_holder = worker_id
        return self.current.token

    def release(self, worker_id: str, token: int, reason: str) -> None:
        """The holder gave up (its reply failed): it retries with backoff, and the entry wakes the other workers."""
        if self.holds(worker_id, token):
            self.end(self.current, reason)

    def holds(self, worker_id: object, token: object) -> bool:
        return self.current is not None and self.current.token == token and self.current.worker_id == worker_id

    def completed(self, token: int, covers_seq: int) -> None:
        """The holder's reply is saved (its entry ends the claim)."""
        self.answered_through = max(self.answered_through, covers_seq)
        if self.current is not None and self.current.token == token:
            self.current = None

    # leases

    def heartbeat(self, worker_id: str, connection: int | None = None) -> None:
        self.heartbeats[worker_id] = time.monotonic()
        if connection is not None:
            self.connections[worker_id] = connection
            if self.current is not None and self.current.worker_id == worker_id:
                self.current.connection = connection  # an offered claim learns its holder's connection here

    def alive(self, worker_id: str, heartbeats: float = MISSED_HEARTBEATS) -> bool:
        last = self.heartbeats.get(worker_id)
        return last is not None and time.monotonic() - last <= heartbeats * self.heartbeat_s

    def live_workers(self) -> list[str]:
        for worker_id in [w for w in self.heartbeats if not self.alive(w)]:
            del self.heartbeats[worker_id]  # forget the gone, so the maps stay as small as the fleet
            self.connections.pop(worker_id, None)
        return list(self.heartbeats)

    def check_lease(self) -> None:
        if self.current is not None and not self.alive(self.current.worker_id):
            self.end(self.current, "lapsed")

    def disconnected(self, connection: int) -> None:
        """The holder's link closed: a killed process. Freezing keeps it open; only the lease catches that."""
        for worker_id in [w for w, fd in self.connections.items() if fd == connection]:
            del self.connections[worker_id]  # the descriptor may be reused by the next connection
            if self.current is None or self.current.worker_id != worker_id:
                self.heartbeats.pop(worker_id, None)  # gone: not counted, not offered anything
        if self.current is not None and self.current.connection == connection:
            self.heartbeats.pop(self.current.worker_id, None)
            self.end(self.current, "disconnected")

    def end(self, claim: Claim, reason: str) -> None:
        # Every worker sees the entry: the holder abandons the reply, the others may claim at once. Written first:
        # if the database refuses, the claim stays current and the next check ends it.
        with self.journal.entry(protocol.CLAIM_ENDED) as data:
            data.update(token=claim.token, worker_id=claim.worker_id, reason=reason)
        log.info("claim %d of worker %s ended: %s", claim.token, claim.worker_id, reason)
        if self.current is claim:
            self.current = None
        self.on_end(claim, reason)
