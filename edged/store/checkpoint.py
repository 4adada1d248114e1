"""The WAL checkpoint, on a thread and a connection of its own: never inside a commit.

SQLite's own automatic checkpoint runs inside the ``COMMIT`` that takes the WAL past 1,000
pages: that commit copies every page of the WAL into the database file and flushes it
before it returns, and the register whose payment it was waits for all of it (on this
box a commit became 3 ms instead of 0.4 ms about once in 50; on an SD card, tens of
milliseconds). The writer connection has it off (``wal_autocheckpoint=0``) and asks this
checkpointer instead, after about as much writing: a ``PASSIVE`` checkpoint on another
connection copies the pages while the writer goes on committing (it takes no lock a writer
or reader waits for). The WAL starts over at a transaction that begins with every frame in
the database file, which under continuous writes never happens by itself: the frames
committed while this thread copied are still to copy. So once it has copied a WAL past
:data:`CATCH_UP_FRAMES`, the writer thread copies those few itself between two groups,
after the last group's answers are out and before the next group begins
(``Database._catch_up``: two flushes, which a busy writer pays once every few
checkpoints); its next transaction starts the WAL over. Should readers hold old snapshots
all the while, the writer's bound (``Database._bound_wal``) still truncates the WAL past
half its size.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

CHECKPOINT_CHANGES = 400
"""Rows written (``total_changes``) between two checkpoints: with the indexes and the
audit entry beside each row, about SQLite's own 1,000 pages."""

CATCH_UP_FRAMES = 4_000
"""Frames in the WAL (about 16 MB) past which the writer copies the last of them itself
after a checkpoint, so that the WAL starts over (a quarter of the default 64 MB bound).
Below it, the writer's next pause starts the WAL over, as it does between sales."""


class Checkpointer:
    """A thread that runs ``PRAGMA wal_checkpoint(PASSIVE)`` each time it is asked."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._wanted = threading.Event()
        self.running = threading.Lock()
        """Held while a checkpoint runs: a checkpoint of the writer's own (the WAL's bound)
        takes it first, or SQLite would answer it busy."""
        self._stopping = False
        self._thread = threading.Thread(target=self._main, daemon=True, name=name)
        self.runs = 0
        """Checkpoints run."""
        self.copied = threading.Event()
        """Set when a checkpoint has copied a WAL of more than :data:`CATCH_UP_FRAMES` as
        it stood when it began: the writer, between two groups, then copies what was
        committed meanwhile (a few pages), so that its next transaction can start the WAL
        over (``Database._catch_up``)."""

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Checkpoint soon (a request while one runs starts the next one after it)."""
        self._wanted.set()

    def stop(self) -> None:
        """Finish the checkpoint under way, if any, and close the connection."""
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                with self.running:
                    conn = self._checkpoint(conn)
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """One checkpoint; the connection to keep for the next (None after a failure to
        open it)."""
        try:
            if conn is None:
                conn = self._connect()
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next request tries again; the bound still holds
            log.warning("a background WAL checkpoint failed: %s", exc)
            return conn
        self.runs += 1
        if not busy and frames > CATCH_UP_FRAMES:
            self.copied.set()
        log.debug("WAL checkpoint: %d of %d frames in the database file%s", done, frames,
                  " (another checkpoint was running)" if busy else "")
        return conn
