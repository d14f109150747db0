"""The web process's durable state: todos and the journal, in one SQLite file."""
from store.db import Store, Todo

__all__ = ["Store", "Todo"]
