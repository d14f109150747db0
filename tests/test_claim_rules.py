"""The claim rules of web/claims.py against a real SQLite journal, without processes: who gets a claim, when."""
from __future__ import annotations

import pytest

from services import protocol
from store import Store
from web.claims import Claims
from web.journal import Journal


class Publisher:
    src = "web"

    def __init__(self) -> None:
        self.sent: list[protocol.Message] = []

    def send(self, message: protocol.Message) -> None:
        self.sent.append(message)


@pytest.fixture
def journal(tmp_path):
    store = Store(tmp_path)
    yield Journal(store, Publisher(), history_window=10)
    store.close()


def act(journal: Journal, title: str) -> int:
    with journal.entry(protocol.TODO_ADDED) as data:
        data.update(id=1, title=title)
    return journal.last_published.seq


def test_one_claim_at_a_time_and_a_retried_request_gets_the_same_one(journal):
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    seq = act(journal, "a")
    token, _ = claims.request("w1", seq, 0, connection=7)
    assert token is not None and claims.request("w1", seq, 0, connection=7) == (token, "")
    assert claims.request("w2", seq, 0, connection=8) == (None, "held by w1")


def test_a_worker_behind_the_journal_is_refused(journal):
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    first = act(journal, "a")
    token, _ = claims.request("w1", first, 0, None)
    claims.completed(token, first)
    second = act(journal, "b")
    token, reason = claims.request("w2", second, 0, None)  # it has not seen the reply through `first` yet
    assert token is None and "catch up" in reason
    assert claims.request("w2", second, first, None)[0] is not None


def test_the_holder_waits_for_its_done_but_a_failed_or_lost_reply_does_not_block_the_next_batch(journal):
    ended = []
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: ended.append(reason))
    first = act(journal, "a")
    token, _ = claims.request("w1", first, 0, None)
    later = act(journal, "b")
    # It counts its reply through `first` as answered: the done is on its way over the bus.
    assert claims.request("w1", later, first, None)[0] is None and not ended
    # It does not count it (the reply failed, and the error never arrived): the old claim ends, a new one is granted.
    renewed, _ = claims.request("w1", later, 0, None)
    assert renewed is not None and renewed != token and ended == ["replaced"]
    assert journal.publisher.sent[-2].type == protocol.CLAIM_ENDED
