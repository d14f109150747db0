"""Logging setup shared by every process: one line per event, with the process name."""
from __future__ import annotations

import logging
import sys


def setup(process: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log would print one line per HTMX request; warnings and errors still show.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return logging.getLogger(process)
