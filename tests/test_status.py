"""The page's status line, summarised from every worker's last heartbeat and the current claim (web/relay.py)."""
from __future__ import annotations

from web.claims import Claim
from web.components import WorkerStatus
from web.relay import summarise

READY = WorkerStatus(state="ready", reason="", model="m", ollama_url="http://a:11434", worker_id="aaaa")
OFFLINE = WorkerStatus(state="offline", reason="Ollama is not reachable", model="m", worker_id="bbbb")


def test_the_answering_worker_is_named_and_the_others_counted():
    status = summarise([READY, OFFLINE], Claim(7, "aaaa", 5), lost="", last_answering="aaaa")
    assert (status.state, status.worker_id, status.workers, status.ready) == ("ready", "aaaa", 2, 1)
    assert status.ollama_url == "http://a:11434"


def test_the_last_worker_that_answered_and_failed_is_shown_until_another_answers():
    # Its reply failed and it gave the claim back: its Ollama problem is the news, not the idle worker's "ready".
    status = summarise([READY, OFFLINE], None, lost="", last_answering="bbbb")
    assert (status.state, status.reason, status.worker_id) == ("offline", "Ollama is not reachable", "")
    assert summarise([READY, OFFLINE], None, lost="", last_answering="").state == "ready"


def test_with_no_worker_alive_the_status_says_so_whatever_ollama_did():
    status = summarise([], None, lost="the answering worker bbbb stopped sending heartbeats", last_answering="bbbb")
    assert status.state == "offline" and "not running" in status.reason and "bbbb stopped" in status.reason
