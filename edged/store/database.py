"""One SQLite file: a group-committing writer thread and a pool of reader threads.

Writes and reads are plain functions over a ``sqlite3.Connection``, run on dedicated
threads so the event loop never blocks and so one query helper serves both inside a write
transaction and on a reader connection.

Group commit: every write submitted while the previous commit is being flushed waits in a
queue; the writer then runs them all in one ``BEGIN IMMEDIATE`` transaction, each inside
its own savepoint (one failing write is rolled back alone), and commits once — one fsync
for many registers. A caller is answered only after the commit that holds its write.

Where the statements run: a group of *inline* writes (``write(fn, inline=True)``: a few
statements by key, the register's hot path) runs its statements on the event loop's own
thread and hands only its ``COMMIT`` (the WAL write and the fsync, during which Python's
interpreter lock is free) to the writer thread; any other group runs on the writer thread
whole. Python code on two threads takes turns on one interpreter lock: statements run on the
writer thread took that lock back once per statement, against the loop, and each turn cost
context switches and waits (bench/README.md, issue 22). Either way the group is one
transaction on the one writer connection, and the next group starts once this one's commit
is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from edged.errors import StoreError
from edged.store import audit_key, files, storage
from edged.store.audit_key import AuditKey
from edged.store.checkpoint import CHECKPOINT_CHANGES, Checkpointer
from edged.store.migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 256
WAL_FORCE_PAUSE = 5.0  # seconds between two forced checkpoints of an oversized WAL
WAL_FORCE_WAIT_MS = 200  # how long a forced checkpoint waits for readers
WAL_CHECK_PAUSE = 0.2  # seconds between two looks at the WAL's size

_SQLITE_FULL = 13


class StoreFull(StoreError):
    """The disk (or the file system holding the data directory) is full: nothing was
    written, and the same write can be retried once there is space."""


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == _SQLITE_FULL) or \
            "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


class StoreConnection(sqlite3.Connection):
    """A connection to the store's file that knows where its audit key is (beside the
    database, or a systemd credential: :mod:`edged.store.audit_key`), read on first use."""

    data_dir: Path
    _audit_key: AuditKey | None = None

    @overload
    def audit_key(self) -> AuditKey: ...

    @overload
    def audit_key(self, create: bool) -> AuditKey | None: ...

    def audit_key(self, create: bool = True) -> AuditKey | None:
        """The key (made if there is none, unless ``create`` is false)."""
        if self._audit_key is None:
            self._audit_key = audit_key.load(self.data_dir, create=create)
        return self._audit_key


def connect(path: Path, *, writer: bool = False) -> StoreConnection:
    """A connection with the pragmas every connection must have (docs/design.md, the data).

    ``writer``: a connection that may create the file, which then gets incremental
    auto-vacuum (it must come before WAL mode on a new file; see edged.store.storage).
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0,
                           factory=StoreConnection)
    conn.data_dir = Path(path).parent
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=10000")
    if writer:  # before WAL: on a new file it takes effect (an old one needs a VACUUM)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@dataclass(slots=True)
class Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]
    inline: bool = False


@dataclass(slots=True)
class WriterStats:
    commits: int = 0
    writes: int = 0
    failed_writes: int = 0
    largest_group: int = 0


@dataclass(slots=True)
class _Outcome:
    ok: bool
    value: Any = None
    error: BaseException | None = None


class Database:
    """The daemon's only door to the SQLite file."""

    def __init__(self, path: Path, *, readers: int = 2,
                 on_full: Callable[[bool], None] | None = None,
                 wal_max_bytes: int = 64 << 20, replicated: bool = False) -> None:
        self.path = path
        self.replicated = replicated
        """Litestream replicates the file: it alone checkpoints (an application checkpoint
        racing it can leave a replica that restores corrupt), so the writer never does."""
        self.wal_max_bytes = wal_max_bytes
        """The WAL is checkpointed and truncated before it grows past this
        (edged.store.storage)."""
        self.wal_peak_bytes = 0
        """The largest WAL seen after a commit since the start."""
        self._wal_forced_at = 0.0
        self._wal_checked_at = 0.0
        self.full = False
        """True from a write that failed for want of space until a commit succeeds."""
        self.on_full = on_full
        self.space_low = False
        """Set by the space guard (edged.store.storage): the API refuses writes (ERR-1040)."""
        """Called with True when the store becomes unable to write, False when it can again."""
        self.stats = WriterStats()
        self._readers = readers
        self._writer_tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._writer_thread: threading.Thread | None = None
        self._pending: list[Job[Any]] = []  # writes waiting for the next group
        self._busy = False  # a group is in flight (its statements or its commit)
        self._start_scheduled = False
        self._idle: asyncio.Event | None = None  # set when no group is in flight (close)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader_exec = ThreadPoolExecutor(readers, thread_name_prefix="edged-reader")
        self._writer_conn: sqlite3.Connection | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._inline_conn: sqlite3.Connection | None = None
        self._closed = False
        self.migrations_applied: list[int] = []
        self.checkpointer: Checkpointer | None = None
        """Checkpoints the WAL off the commit path (none while Litestream replicates)."""
        self._changes_at_checkpoint = 0

    async def open(self) -> None:
        files.secure(self.path)
        self._loop = asyncio.get_running_loop()
        self._writer_thread = threading.Thread(target=self._writer_main, daemon=True,
                                               name="edged-writer")
        self._writer_thread.start()
        self.migrations_applied = await self._on_writer(self._open_writer)

    def _open_writer(self) -> list[int]:
        conn = connect(self.path, writer=True)
        self._writer_conn = conn
        # after a checkpoint resets it, the WAL file is cut back to a quarter of its bound
        conn.execute(f"PRAGMA journal_size_limit={self.wal_max_bytes // 4}")
        # no checkpoint inside a commit (edged.store.checkpoint): the checkpointer's thread,
        # or Litestream when it replicates the file
        conn.execute("PRAGMA wal_autocheckpoint=0")
        storage.convert_to_incremental(conn, self.path)
        applied = migrate(conn)
        # BEGIN never waits on the loop's thread: a file locked by another process sends
        # the group to the writer thread, which waits there (_begin)
        conn.execute("PRAGMA busy_timeout=0")
        if not self.replicated:  # started once the file is ready: a failed open leaves none
            self.checkpointer = Checkpointer(partial(connect, self.path), "edged-checkpoint")
            self.checkpointer.start()
        self._changes_at_checkpoint = conn.total_changes
        return applied

    def _writer_main(self) -> None:
        """The writer thread: runs what it is handed, in order, until handed None."""
        while (task := self._writer_tasks.get()) is not None:
            task()

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread (between groups) and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # the caller gets it
                _call_soon(loop, _settle, future, None, exc)
            else:
                _call_soon(loop, _settle, future, result, None)

        self._writer_tasks.put(run)
        return await future

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """Run ``fn`` in a write transaction; return once its commit is durable.

        ``inline``: ``fn`` is a few statements by key (no scan, no wait, nothing that may
        take long) and has no effect but its statements (it may run twice: _run_inline), so
        it may run on the event loop's own thread, its commit on the writer thread (see the
        module's docstring). Without it, ``fn`` runs on the writer thread.
        """
        if self._closed or self._writer_conn is None:
            raise StoreError("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(Job(fn, future, inline))
        if not self._busy and not self._start_scheduled:  # one group per loop iteration
            self._start_scheduled = True
            loop.call_soon(self._start_group)
        return await future

    def _start_group(self) -> None:
        """On the loop: the writes waiting become a group, unless one is in flight."""
        self._start_scheduled = False
        if self._busy or not self._pending:
            return
        batch = self._pending[:MAX_GROUP]
        del self._pending[:MAX_GROUP]
        self._busy = True
        if self._idle is not None:
            self._idle.clear()
        loop = self._loop
        assert loop is not None
        if all(job.inline for job in batch) and self._begin_now():
            try:
                outcomes = self._run_inline(batch)
            except BaseException as exc:  # the transaction is undone: nobody's write is in
                self._writer_tasks.put(partial(self._finish, loop, batch, None, exc))
                return
            if outcomes is not None:
                self._writer_tasks.put(partial(self._commit_inline, loop, batch, outcomes))
                return
        self._writer_tasks.put(partial(self._run_on_writer, loop, batch))

    def _run_inline(self, batch: list[Job[Any]]) -> list[_Outcome] | None:
        """On the loop, after BEGIN: the group's writes, first without a savepoint each.

        Inline writes are point writes that rarely fail (a key answered meanwhile): the
        group runs straight through, two statements a write fewer. Should one fail, the
        transaction is rolled back and the group runs again with a savepoint each, so that
        the failure undoes that write alone (an inline write can run twice: its effects are
        its statements). None: the file was locked meanwhile, the writer thread takes it.
        """
        conn = self._writer_conn
        assert conn is not None
        if len(batch) == 1:
            return self._run_jobs(batch)
        outcomes: list[_Outcome] = []
        for job in batch:
            try:
                outcomes.append(_Outcome(True, value=job.fn(conn)))
            except Exception as exc:
                if _is_full(exc):
                    raise
                break
        else:
            return outcomes
        conn.execute("ROLLBACK")
        if not self._begin_now():
            return None
        return self._run_jobs(batch)

    def _begin_now(self) -> bool:
        """BEGIN IMMEDIATE on the loop's thread if the file's write lock is free at once."""
        conn = self._writer_conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # locked by another process: the writer thread waits (and
            return False       # reports any other error to the group's callers)
        return True

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a reader connection (a consistent snapshot of the last commits)."""
        if self._closed:
            raise StoreError("the database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_exec, self._run_read, fn)

    async def read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a point read by primary key or unique index on the event loop's own thread.

        For the lookups on a request's path (its bearer token, its Idempotency-Key), where
        the trip to a reader thread and back costs more CPU and latency than the read
        (about 10 µs). In WAL mode a reader never waits for
        the writer; this connection does not wait at all (``busy_timeout=0``): should the
        file be locked (a recovery, an exclusive lock), the read goes to a reader thread.
        """
        if self._closed:
            raise StoreError("the database is closed")
        conn = self._inline_conn
        if conn is None:
            conn = self._inline_conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=0")
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise
        return await self.read(fn)

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._reader_local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def _commit_inline(self, loop: asyncio.AbstractEventLoop, batch: list[Job[Any]],
                       outcomes: list[_Outcome]) -> None:
        """The writer thread: commit the group whose statements ran on the loop (a lone
        write that failed was rolled back already: nothing to commit)."""
        self._settle(loop, batch, lambda: outcomes)

    def _run_on_writer(self, loop: asyncio.AbstractEventLoop, batch: list[Job[Any]]) -> None:
        """The writer thread: the whole group, BEGIN (waiting for the lock) to COMMIT."""
        def run() -> list[_Outcome]:
            self._begin()
            return self._run_jobs(batch)

        self._settle(loop, batch, run)

    def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[Job[Any]],
                work: Callable[[], list[_Outcome]]) -> None:
        """The writer thread: ``work``, then COMMIT if a transaction is open; the outcomes,
        or what failed, to the loop."""
        conn = self._writer_conn
        assert conn is not None
        try:
            outcomes = work()
            if conn.in_transaction:
                self._commit(conn)
        except BaseException as exc:
            self._finish(loop, batch, None, exc)
        else:
            self._count(batch, outcomes)
            self._finish(loop, batch, outcomes, None)

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[Job[Any]],
                outcomes: list[_Outcome] | None, problem: BaseException | None) -> None:
        """The writer thread: the group's outcomes to the loop, in one call.

        ``problem``: the group's transaction failed as a whole (its commit, or a full disk):
        nobody's write is durable, and each caller gets the reason.
        """
        conn = self._writer_conn
        if problem is not None and conn is not None:
            _rollback(conn)
        full: bool | None = False
        if problem is not None:
            if _is_full(problem):
                full = True
                outcomes = [_Outcome(False, error=StoreFull(f"disk full: {problem}"))
                            for _ in batch]
            else:
                full = None  # says nothing about space
                log.error("group commit of %d writes failed: %s", len(batch), problem)
                outcomes = [_Outcome(False, error=StoreError(f"commit failed: {problem}"))
                            for _ in batch]
        else:
            self._bound_wal()  # before the loop may begin the next group on the connection
            checkpointer = self.checkpointer
            if checkpointer is not None and checkpointer.copied.is_set():
                # the answers go out first; the next group begins once the WAL is copied
                assert outcomes is not None
                _call_soon(loop, self._deliver, batch, outcomes, full, problem)
                self._catch_up(checkpointer)
                _call_soon(loop, self._resume)
                return
        assert outcomes is not None
        _call_soon(loop, self._group_done, batch, outcomes, full, problem)

    def _catch_up(self, checkpointer: Checkpointer) -> None:
        """The writer thread, between two groups: copy what was committed while the
        checkpointer copied the rest, so that the next transaction starts the WAL over (a
        few pages; under continuous writes the WAL would otherwise grow until its bound)."""
        conn = self._writer_conn
        if conn is None or not checkpointer.running.acquire(blocking=False):
            return  # the checkpointer copies again: it asks once more when done
        try:
            checkpointer.copied.clear()
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next checkpoint asks again; the bound still holds
            log.warning("copying the last of the WAL failed: %s", exc)
        finally:
            checkpointer.running.release()

    def _group_done(self, batch: list[Job[Any]], outcomes: list[_Outcome], full: bool | None,
                    problem: BaseException | None) -> None:
        """On the loop: answer the group's writes, then start the next group at once."""
        self._busy = False
        self._deliver(batch, outcomes, full, problem)
        self._start_next()

    def _resume(self) -> None:
        """On the loop, after a catch-up: the connection is free again."""
        self._busy = False
        self._start_next()

    def _start_next(self) -> None:
        if self._pending:
            self._start_group()
        elif self._idle is not None:
            self._idle.set()

    @staticmethod
    def _commit(conn: sqlite3.Connection) -> None:
        """The group's COMMIT: its WAL frames written and flushed (a function of its own so
        that a profile tells it apart, bench/profile_api.py)."""
        conn.execute("COMMIT")

    def _begin(self) -> None:
        """BEGIN IMMEDIATE on the writer thread, waiting up to 10 s for another process's
        write lock (a command, Litestream) as every connection does."""
        conn = self._writer_conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise
        conn.execute("PRAGMA busy_timeout=10000")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout=0")

    def _count(self, batch: list[Job[Any]], outcomes: list[_Outcome]) -> None:
        self.stats.commits += 1
        self.stats.writes += len(batch)
        self.stats.largest_group = max(self.stats.largest_group, len(batch))
        self.stats.failed_writes += sum(1 for o in outcomes if not o.ok)

    def _bound_wal(self) -> None:
        """Between two groups: ask the checkpointer after every ``CHECKPOINT_CHANGES`` rows.
        Should the WAL pass half its bound (it could not start over: a reader held an old
        snapshot, or writes never paused), checkpoint it in full and truncate it here,
        waiting at most a moment for readers, at most once every few seconds."""
        conn = self._writer_conn
        assert conn is not None
        if self.checkpointer is not None and \
                conn.total_changes - self._changes_at_checkpoint >= CHECKPOINT_CHANGES:
            self._changes_at_checkpoint = conn.total_changes
            self.checkpointer.request()
        now = time.monotonic()
        if now - self._wal_checked_at < WAL_CHECK_PAUSE:  # a stat per group cost 1/6 of
            return                                       # the writer's time in a drain
        self._wal_checked_at = now
        wal = storage.file_size(storage.wal_path(self.path))
        self.wal_peak_bytes = max(self.wal_peak_bytes, wal)
        checkpointer = self.checkpointer
        if wal <= self.wal_max_bytes // 2 or checkpointer is None:  # None: Litestream does
            return
        if now - self._wal_forced_at < WAL_FORCE_PAUSE:
            return
        self._wal_forced_at = now
        conn.execute(f"PRAGMA busy_timeout={WAL_FORCE_WAIT_MS}")
        try:
            with checkpointer.running:
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("checkpointing a WAL of %d MB failed: %s", wal >> 20, exc)
        else:
            if busy:
                log.warning("the WAL is %d MB and a reader keeps it from being truncated"
                            " (%d of %d frames checkpointed)", wal >> 20, done, frames)
        finally:
            conn.execute("PRAGMA busy_timeout=0")

    def _deliver(self, batch: list[Job[Any]], outcomes: list[_Outcome], full: bool | None,
                 problem: BaseException | None) -> None:
        """On the loop: answer each write of a group once its commit is known."""
        if full is not None:
            self._set_full(full, problem)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if outcome.ok:
                job.future.set_result(outcome.value)
            else:
                assert outcome.error is not None
                job.future.set_exception(outcome.error)

    def _set_full(self, full: bool, exc: BaseException | None) -> None:
        """One loud line when the store stops being able to write, one when it can again."""
        if full == self.full:
            return
        self.full = full
        if full:
            log.error("the store cannot write: the file system of %s is full (%s); writes"
                      " answer 503 ERR-1019 until there is space", self.path.parent, exc)
        else:
            log.warning("the store writes again: space is back in %s", self.path.parent)
        if self.on_full is not None:
            self.on_full(full)

    def _run_jobs(self, batch: list[Job[Any]]) -> list[_Outcome]:
        """The group's writes, after its BEGIN, each in its own savepoint (a lone write in
        none: a failure rolls the transaction back). Raises what undoes the whole group
        (a full disk); the caller rolls back then."""
        conn = self._writer_conn
        assert conn is not None
        outcomes: list[_Outcome] = []
        if len(batch) == 1:  # alone in its transaction: no savepoint needed to undo it
            try:
                outcomes.append(_Outcome(True, value=batch[0].fn(conn)))
            except Exception as exc:
                if _is_full(exc):
                    raise  # as in a group: the store is full, StoreFull for the caller
                conn.execute("ROLLBACK")
                outcomes.append(_Outcome(False, error=exc))
            return outcomes
        for job in batch:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except Exception as exc:  # one write's failure undoes only that write
                if _is_full(exc):
                    raise  # SQLite may have rolled the transaction back: none is written
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append(_Outcome(False, error=exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append(_Outcome(True, value=value))
        return outcomes

    async def close(self) -> None:
        """Finish every write submitted and every read under way, then close every
        connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer_thread is None:  # never opened
            self._reader_exec.shutdown(wait=True)
            return
        self._idle = asyncio.Event()
        if not self._busy:
            self._start_group()  # the writes of this iteration still go in
        while self._busy or self._pending:
            self._idle.clear()
            if not self._busy:
                self._start_group()
            await self._idle.wait()
        await self._on_writer(self._close_writer)
        self._writer_tasks.put(None)
        await asyncio.to_thread(self._writer_thread.join)
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None
        # the reads in flight end first (a long poll's, the status page's): a connection
        # closed while its thread still uses it crashes the process (SIGSEGV in sqlite3)
        await asyncio.to_thread(self._reader_exec.shutdown, wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _close_writer(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self._writer_conn is not None:
            try:
                self._writer_conn.execute("PRAGMA busy_timeout=10000")
                self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # the WAL stays; the next start reads it
                log.warning("the last checkpoint before closing failed: %s", exc)
            self._writer_conn.close()
            self._writer_conn = None


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Hand a result to the loop; a loop already closed has nobody left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def open_sync(path: Path) -> StoreConnection:
    """A migrated connection for the command-line tools (no event loop needed)."""
    files.secure(path)
    conn = connect(path, writer=True)
    # a command never checkpoints while the daemon runs (the daemon or Litestream does;
    # closing the last connection still checkpoints when nothing else has the file open)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    migrate(conn)
    return conn
