"""SQLite in WAL mode under DATA_DIR: the todos, and the journal of every action, chat message and finished reply,
each with its `seq`. The journal's rows are bus messages (services.protocol.Message) with their seq filled in."""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from services.protocol import REPLY_SAVED, TOOL_APPLIED, TOOL_PROPOSED, TOOL_SETTLED, Message

# How long a statement waits for another connection's lock before raising "database is locked". The store runs on
# the web's event loop, so sqlite's default of 5 s would freeze every tab; the web answers 503 instead (see
# web/app.py), and the person retries.
BUSY_TIMEOUT_S = 0.1
# SQLite integers are signed 64-bit: no row has an id beyond this, and sqlite3 raises OverflowError binding one.
MAX_INTEGER = 2**63 - 1

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
-- The page shows open todos and completed ones in pages of each, by id: (done, id) serves both, and their counts.
CREATE INDEX IF NOT EXISTS todos_done_id ON todos (done, id);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    src TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_type_seq ON journal (type, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_reply_id ON journal (json_extract(data, '$.reply_id'))
    WHERE type = '{REPLY_SAVED}';
-- An assistant's change is settled (undone, allowed, denied) at most once: found by the seq it settles.
CREATE INDEX IF NOT EXISTS journal_settles ON journal (json_extract(data, '$.settles'))
    WHERE type = '{TOOL_SETTLED}';
"""


@dataclass(frozen=True)
class Todo:
    id: int
    title: str
    done: bool


class Store:
    """One connection, used only from the web's event loop thread; writes are small and WAL keeps them fast."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "app.sqlite3"
        # Autocommit mode: transactions are opened explicitly by `transaction()`.
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL's usual pairing
        self.db.executescript(SCHEMA)
        # The journal's identity, made with the database: a worker that sees another one rebuilds what it knows.
        self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?)", (uuid.uuid4().hex,))
        self.journal_id = self.db.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (busy) leaves the transaction open; after a full disk or an I/O error SQLite may
            # already have rolled it back.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    # todos

    def todos(self) -> list[Todo]:
        rows = self.db.execute("SELECT id, title, done FROM todos ORDER BY id").fetchall()
        return [Todo(row["id"], row["title"], bool(row["done"])) for row in rows]

    def todos_page(self, done: bool, after: int, limit: int) -> list[Todo]:
        """Up to `limit` open (or completed) todos with ids above `after`, in id order: one page of a section."""
        rows = self.db.execute("SELECT id, title, done FROM todos WHERE done = ? AND id > ? ORDER BY id LIMIT ?",
                               (int(done), min(after, MAX_INTEGER), limit)).fetchall()
        return [Todo(row["id"], row["title"], bool(row["done"])) for row in rows]

    def todo_counts(self) -> tuple[int, int]:
        """(open, completed), counted on the (done, id) index."""
        counts = dict(self.db.execute("SELECT done, COUNT(*) FROM todos GROUP BY done").fetchall())
        return counts.get(0, 0), counts.get(1, 0)

    def delete_done(self) -> int:
        """Deletes every completed todo; returns how many there were."""
        return self.db.execute("DELETE FROM todos WHERE done = 1").rowcount

    def todo(self, todo_id: int) -> Todo | None:
        if not 0 < todo_id <= MAX_INTEGER:  # ids count up from 1
            return None
        row = self.db.execute("SELECT id, title, done FROM todos WHERE id = ?", (todo_id,)).fetchone()
        return Todo(row["id"], row["title"], bool(row["done"])) if row else None

    def insert_todo(self, title: str) -> Todo:
        cursor = self.db.execute("INSERT INTO todos (title, created_at) VALUES (?, ?)", (title, time.time()))
        return Todo(cursor.lastrowid, title, False)

    def update_todo(self, todo: Todo) -> None:
        self.db.execute("UPDATE todos SET title = ?, done = ? WHERE id = ?", (todo.title, int(todo.done), todo.id))

    def delete_todo(self, todo_id: int) -> None:
        self.db.execute("DELETE FROM todos WHERE id = ?", (todo_id,))

    # journal

    def append(self, kind: str, data: dict, src: str) -> Message:
        ts = time.time()
        cursor = self.db.execute(
            "INSERT INTO journal (ts, type, src, data) VALUES (?, ?, ?, ?)", (ts, kind, src, json.dumps(data))
        )
        return Message(type=kind, data=data, src=src, seq=cursor.lastrowid, ts=ts)

    def has_reply(self, reply_id: str) -> bool:
        row = self.db.execute(
            # The type is a literal, not a parameter, so SQLite can use the partial index on reply_id.
            f"SELECT 1 FROM journal WHERE type = '{REPLY_SAVED}' AND json_extract(data, '$.reply_id') = ?",
            (reply_id,),
        ).fetchone()
        return row is not None

    def settlements(self, seqs: list[int]) -> dict[int, Message]:
        """The journal.tool.settled entry of each of these assistant changes that has one, by the seq it settles."""
        if not seqs:
            return {}
        rows = self.db.execute(
            f"SELECT * FROM journal WHERE type = '{TOOL_SETTLED}' AND json_extract(data, '$.settles') "
            f"IN ({','.join('?' * len(seqs))})", seqs).fetchall()
        return {entry.data["settles"]: entry for entry in map(_message, rows)}

    def tool_calls_since(self, seq: int) -> list[Message]:
        """The assistant's accepted tool calls after `seq` (a claim's grant: everything its holder did under it)."""
        rows = self.db.execute(f"SELECT * FROM journal WHERE seq > ? AND type IN ('{TOOL_APPLIED}', '{TOOL_PROPOSED}') "
                               "ORDER BY seq", (min(seq, MAX_INTEGER),)).fetchall()
        return [_message(row) for row in rows]

    def entry(self, seq: int) -> Message | None:
        row = self.db.execute("SELECT * FROM journal WHERE seq = ?", (seq,)).fetchone() if 0 < seq <= MAX_INTEGER \
            else None
        return _message(row) if row else None

    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM journal").fetchone()[0]

    def entries_after(self, seq: int, limit: int) -> list[Message]:
        seq = min(seq, MAX_INTEGER)  # a catch-up request may carry any 64-bit msgpack integer, unsigned too
        rows = self.db.execute("SELECT * FROM journal WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        return [_message(row) for row in rows]

    def recent_entries(self, limit: int, kinds: tuple[str, ...] | None = None,
                       before: int | None = None) -> list[Message]:
        """The newest `limit` entries (of the given types, older than seq `before`), oldest first."""
        conditions, params = [], []
        if kinds:
            conditions.append(f"type IN ({','.join('?' * len(kinds))})")
            params += kinds
        if before is not None:
            conditions.append("seq < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self.db.execute(f"SELECT * FROM journal {where} ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [_message(row) for row in reversed(rows)]

    def last_of(self, kinds: tuple[str, ...]) -> Message | None:
        """The newest entry of any of these types (the claims' state is rebuilt from these at start)."""
        found = self.recent_entries(1, kinds)
        return found[0] if found else None


def _message(row: sqlite3.Row) -> Message:
    return Message(type=row["type"], data=json.loads(row["data"]), src=row["src"], seq=row["seq"], ts=row["ts"])
