"""Writes from the command line: they wait while the daemon (or another command) holds the
store, instead of failing on a file that is merely busy."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edged.store.database import open_sync

T = TypeVar("T")

BUSY_BUDGET = 120.0
"""Seconds a command-line write keeps retrying a database another process holds."""


def write_patiently(path: Path, fn: Callable[[sqlite3.Connection], T],
                    budget: float = BUSY_BUDGET) -> T:
    """Open, migrate and run ``fn`` in one write transaction, retrying while the file is
    busy (the daemon's group commit, another ``edged`` command, a migration at first
    start). SQLite's busy timeout bounds each wait; a command must not give up on a store
    that is merely busy, so the whole write is tried again until ``budget`` runs out."""
    deadline = time.monotonic() + budget
    pause = 0.05
    while True:
        conn: sqlite3.Connection | None = None
        try:
            conn = open_sync(path)
            conn.execute("BEGIN IMMEDIATE")
            value = fn(conn)
            conn.execute("COMMIT")
            return value
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
            print(f"edged: the database is busy ({exc}); trying again", file=sys.stderr)
        finally:
            if conn is not None:
                if conn.in_transaction:
                    conn.rollback()
                conn.close()
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (5, 6) or "locked" in str(exc) or "busy" in str(exc)  # BUSY, LOCKED
