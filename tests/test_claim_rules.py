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


def chat(journal: Journal, text: str) -> int:
    with journal.entry(protocol.CHAT_SENT) as data:
        data.update(text=text)
    return journal.last_published.seq


def test_an_action_with_no_claim_current_is_offered_to_a_fresh_ready_worker_at_once(journal):
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    claims.heartbeat("w2", connection=5)
    claims.heartbeat("w1", connection=4)
    seq = act(journal, "a")
    claims.offer(seq, ready=["w1", "w2", "gone"])  # "gone" never sent a heartbeat
    granted = journal.last_published
    assert granted.type == protocol.CLAIM_GRANTED and granted.seq == seq + 1
    assert granted.data == {"worker_id": "w1", "covers_seq": seq}
    assert claims.holds("w1", granted.seq) and claims.current.connection == 4
    claims.offer(act(journal, "b"), ready=["w1", "w2"])  # one claim at a time: no second offer
    assert journal.last_published.type == protocol.TODO_ADDED
    # The offered worker asking anyway (it woke on the action before it saw the grant) gets the same claim.
    assert claims.request("w1", seq, 0, connection=4) == (granted.seq, "")


def test_an_offer_goes_to_the_last_holder_and_ends_at_the_first_unanswered_chat_message(journal):
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    for connection, worker_id in enumerate(("w1", "w2")):
        claims.heartbeat(worker_id, connection)
    first = act(journal, "a")
    token, _ = claims.request("w2", first, 0, None)
    claims.completed(token, first)
    question = chat(journal, "what now?")  # answered by nobody yet: the claim request failed, say
    later = act(journal, "b")
    claims.offer(later, ready=["w1", "w2"])
    assert journal.last_published.data == {"worker_id": "w2", "covers_seq": question}  # its Ollama has the cache
    assert later > question


def test_an_offer_declined_or_not_made_leaves_the_claim_to_whoever_asks(journal):
    ended = []
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: ended.append(reason))
    claims.offer(act(journal, "a"), ready=["w1"])  # w1 has sent no heartbeat: not offered
    assert claims.current is None
    claims.heartbeat("w1", connection=3)
    seq = act(journal, "b")
    claims.offer(seq, ready=["w1"])
    claims.release("w1", journal.last_published.seq, "declined")
    assert ended == ["declined"] and claims.current is None
    assert claims.request("w2", seq, 0, None)[0] is not None


def test_a_worker_whose_heartbeats_went_stale_gets_no_offer(journal, monkeypatch):
    import web.claims
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    claims.heartbeat("w1", connection=3)
    now = web.claims.time.monotonic()
    monkeypatch.setattr(web.claims.time, "monotonic", lambda: now + 2.0)  # 2 heartbeats later: alive, not fresh
    claims.offer(act(journal, "a"), ready=["w1"])
    assert claims.current is None and claims.alive("w1")


def test_a_worker_whose_link_closed_gets_no_offer(journal):
    claims = Claims(journal, heartbeat_s=1.0, on_end=lambda claim, reason: None)
    claims.heartbeat("w1", connection=3)  # fresh, and the last holder, say
    claims.heartbeat("w2", connection=4)
    claims.last_holder = "w1"
    claims.disconnected(3)  # killed while idle: its heartbeat is still fresh
    claims.offer(act(journal, "a"), ready=["w1", "w2"])
    assert claims.current.worker_id == "w2" and claims.current.connection == 4
