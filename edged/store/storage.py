"""The database file over years: incremental vacuum, a bounded WAL, free space watched.

- **auto_vacuum = INCREMENTAL**: a new file gets it before its first table (``connect``
  asks for it first thing); an existing file made before it needs one ``VACUUM`` to change,
  which :func:`convert_to_incremental` does at the daemon's start when there is room for
  the copy SQLite makes. Then :func:`vacuum_step` gives free pages back to the file system
  a few hundred at a time, each step one short write.
- **WAL**: SQLite checkpoints after a commit once the WAL holds 1000 pages (on the writer
  thread, between two groups, so nothing is appended meanwhile and the WAL starts over at
  the next write); ``journal_size_limit`` then truncates the file back. The writer also
  forces a ``TRUNCATE`` checkpoint should the file still grow past half ``[storage]
  wal_max_mb`` (a reader holding an old snapshot): see ``edged.store.database``.
- **Free space**: :class:`SpaceGuard` reads ``statvfs`` of the data directory; below
  ``[storage] min_free_mb`` writes from the API are refused with 503 ERR-1040 (nothing is
  half-done; the register retries with the same key) and an alert is raised, before SQLite
  itself would fail with a full disk (ERR-1019).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

INCREMENTAL = 2


def wal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def convert_to_incremental(conn: sqlite3.Connection, db_path: Path) -> bool:
    """Give an existing file ``auto_vacuum=INCREMENTAL`` with one VACUUM; True if done.

    VACUUM writes a copy of the database (through the WAL) before it replaces it, so it runs
    only with room for twice the file; otherwise it is tried again at the next start.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL:
        return False
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a file with no table yet: free
        return True
    size = file_size(db_path)
    if free_bytes(db_path.parent) < 2 * size + (16 << 20):
        log.warning("the database %s (%d MB) is not yet in incremental auto-vacuum mode and"
                    " there is not room for the one VACUUM that converts it; it stays as it"
                    " is until a start with more free space", db_path, size >> 20)
        return False
    started = time.monotonic()
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.warning("converted %s to incremental auto-vacuum with one VACUUM (%d MB -> %d MB,"
                " %.1f s)", db_path, size >> 20, file_size(db_path) >> 20,
                time.monotonic() - started)
    return True


@dataclass(frozen=True, slots=True)
class VacuumStep:
    freed_pages: int
    free_pages_left: int


def vacuum_step(conn: sqlite3.Connection, pages: int) -> VacuumStep:
    """Free up to ``pages`` pages at the end of the file (inside the caller's write).

    Python's sqlite3 steps ``PRAGMA incremental_vacuum(N)`` once, and each step frees one
    page: hence one statement per page (a few microseconds each).
    """
    before = conn.execute("PRAGMA freelist_count").fetchone()[0]
    for _ in range(min(pages, before)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    after = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return VacuumStep(before - after, after)


@dataclass(frozen=True, slots=True)
class FileSizes:
    db_bytes: int
    wal_bytes: int
    free_pages: int
    page_size: int
    free_disk_bytes: int


def sizes(conn: sqlite3.Connection, db_path: Path) -> FileSizes:
    return FileSizes(file_size(db_path), file_size(wal_path(db_path)),
                     conn.execute("PRAGMA freelist_count").fetchone()[0],
                     conn.execute("PRAGMA page_size").fetchone()[0],
                     free_bytes(db_path.parent))


class SpaceGuard:
    """Whether the data directory's disk has room; the state changes are logged once."""

    def __init__(self, data_dir: Path, min_free_bytes: int) -> None:
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.low = False
        self.free = 0

    def check(self) -> bool:
        """Read the free space now; True when it is low."""
        try:
            self.free = free_bytes(self.data_dir)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.data_dir, exc)
            return self.low
        low = self.free < self.min_free_bytes
        if low != self.low:
            if low:
                log.error("the disk of %s has %d MB free, under [storage] min_free_mb = %d:"
                          " new writes from the API answer 503 ERR-1040 until there is"
                          " room", self.data_dir, self.free >> 20, self.min_free_bytes >> 20)
            else:
                log.warning("the disk of %s has room again (%d MB free): writes are taken",
                            self.data_dir, self.free >> 20)
            self.low = low
        return low
