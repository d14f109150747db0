"""The store against a real SQLite file: a lock held by another connection costs a fraction of a second, a failed
transaction leaves nothing behind, and ids or seqs beyond SQLite's 64-bit integers find nothing instead of raising."""
from __future__ import annotations

import sqlite3
import time

import pytest

from store import Store
from store.db import BUSY_TIMEOUT_S, MAX_INTEGER


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path)
    yield store
    store.close()


def test_a_write_while_another_connection_holds_the_lock_fails_fast_and_leaves_no_transaction_open(store):
    lock = sqlite3.connect(store.path, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            with store.transaction():
                store.insert_todo("blocked")
        assert time.monotonic() - started < BUSY_TIMEOUT_S + 1
    finally:
        lock.close()
    assert not store.db.in_transaction
    with store.transaction():
        store.insert_todo("later")
    assert [todo.title for todo in store.todos()] == ["later"]


def test_a_failing_change_is_rolled_back_with_its_journal_entry(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert_todo("half done")
            store.append("journal.todo.added", {"title": "half done"}, "web")
            raise RuntimeError("the route failed after writing")
    assert not store.db.in_transaction
    assert store.todos() == [] and store.last_seq() == 0


def test_a_commit_that_fails_leaves_no_transaction_open(store):
    # A deferred constraint is checked only at COMMIT: the one failure of a COMMIT a test can cause on demand.
    store.db.executescript("PRAGMA foreign_keys = ON; CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                           "CREATE TABLE child (parent INTEGER REFERENCES parent DEFERRABLE INITIALLY DEFERRED);")
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction():
            store.db.execute("INSERT INTO child VALUES (1)")
    assert not store.db.in_transaction
    with store.transaction():
        store.insert_todo("later")
    assert [todo.title for todo in store.todos()] == ["later"]


def test_ids_and_seqs_beyond_sqlite_integers_find_nothing(store):
    with store.transaction():
        store.insert_todo("one")
    for todo_id in (MAX_INTEGER + 1, 10**30, 0, -1, -(10**30)):
        assert store.todo(todo_id) is None
    assert store.todo(1).title == "one"
    assert store.entries_after(2**64 - 1, 10) == []  # the largest integer a msgpack catch-up request carries
