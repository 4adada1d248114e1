"""The SQLite store: pragmas, migrations, group commit, the audit chain."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edged.store import Database, audit, storage
from edged.store.checkpoint import CHECKPOINT_CHANGES, Checkpointer
from edged.store.database import open_sync
from edged.store.migrations import MIGRATIONS


async def test_pragmas_and_migrations(tmp_path: Path) -> None:
    db = Database(tmp_path / "edged.db")
    await db.open()
    try:
        assert db.migrations_applied == [v for v, _, _ in MIGRATIONS]
        mode, sync, fks = await db.read(lambda c: (
            c.execute("PRAGMA journal_mode").fetchone()[0],
            c.execute("PRAGMA synchronous").fetchone()[0],
            c.execute("PRAGMA foreign_keys").fetchone()[0]))
        assert (mode, sync, fks) == ("wal", 2, 1)  # 2 = FULL
    finally:
        await db.close()
    again = Database(tmp_path / "edged.db")
    await again.open()
    assert again.migrations_applied == []  # recorded in the file, not run twice
    await again.close()


async def test_concurrent_writes_share_commits_and_fail_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "edged.db")
    await db.open()

    def insert(n: int):  # type: ignore[no-untyped-def]
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO tokens (name, scope, token_hash, created_at)"
                         " VALUES (?, 'register', ?, 't')", (str(n), f"h{n}"))
            if n % 10 == 3:
                raise ValueError(f"write {n} fails")
            return n
        return write

    results = await asyncio.gather(*(db.write(insert(n)) for n in range(100)),
                                   return_exceptions=True)
    await db.close()
    failed = [r for r in results if isinstance(r, ValueError)]
    assert len(failed) == 10
    assert db.stats.commits < db.stats.writes  # some commits carried several writes
    conn = sqlite3.connect(tmp_path / "edged.db")
    subjects = {int(r[0]) for r in conn.execute("SELECT name FROM tokens")}
    assert subjects == {n for n in range(100) if n % 10 != 3}


async def test_inline_reads_see_the_last_commit_and_go_to_a_reader_when_locked(
        tmp_path: Path) -> None:
    import threading

    db = Database(tmp_path / "edged.db")
    await db.open()
    try:
        await db.write(lambda c: c.execute(
            "INSERT INTO tokens (name, scope, token_hash, created_at)"
            " VALUES ('a', 'register', 'h', 't')"))
        threads: list[str] = []

        def name(conn: sqlite3.Connection) -> str:
            threads.append(threading.current_thread().name)
            return str(conn.execute("SELECT name FROM tokens WHERE token_hash = 'h'")
                       .fetchone()[0])

        assert await db.read_inline(name) == "a"
        assert threads == [threading.current_thread().name]  # on the loop's thread
        await db.write(lambda c: c.execute("UPDATE tokens SET name = 'b'"))
        assert await db.read_inline(name) == "b"  # the very next read sees the commit

        # A file locked by another process: the inline read does not wait on the loop, it
        # goes to a reader thread, which waits there.
        other = tmp_path / "locked.db"
        holder = sqlite3.connect(other, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        busy = sqlite3.connect(other, isolation_level=None, timeout=0)
        tries: list[str] = []

        def locked_then_name(conn: sqlite3.Connection) -> str:
            tries.append(threading.current_thread().name)
            if len(tries) == 1:
                busy.execute("SELECT 1 FROM sqlite_master").fetchone()  # SQLITE_BUSY
            return name(conn)

        try:
            assert await db.read_inline(locked_then_name) == "b"
        finally:
            holder.close()
            busy.close()
        assert tries[0] == threading.current_thread().name
        assert tries[1].startswith("edged-reader")

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT nothing FROM tokens")

        with pytest.raises(sqlite3.OperationalError):  # other errors are the caller's
            await db.read_inline(broken)
    finally:
        await db.close()


async def test_closing_waits_for_a_read_under_way(tmp_path: Path) -> None:
    """A read running on a reader thread when the store closes (a long poll, the status
    page, at the daemon's stop) ends first, on its open connection; the connections are
    closed after it, never under it. Closing them first crashed a test worker of one CI run
    (SIGSEGV in sqlite3: ``Database.close`` on the loop's thread while ``_run_read``
    used the connection)."""
    db = Database(tmp_path / "edged.db")
    await db.open()
    await db.write(lambda c: c.execute("CREATE TABLE t (x)"))
    started, readers_closing = threading.Event(), threading.Event()
    shutdown = db._reader_exec.shutdown

    def shutting_down(wait: bool = True, **kwargs: Any) -> None:
        readers_closing.set()  # close() asks the reader threads to end: the read goes on
        shutdown(wait, **kwargs)

    db._reader_exec.shutdown = shutting_down  # type: ignore[method-assign]

    def read_while_closing(conn: sqlite3.Connection) -> int:
        started.set()
        readers_closing.wait(10)
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])

    reading = asyncio.create_task(db.read(read_while_closing))
    await asyncio.to_thread(started.wait, 10)
    await db.close()
    assert db._writer_conn is None
    assert await reading == 0


def test_audit_chain_detects_tampering(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "edged.db")
    for i in range(5):
        conn.execute("BEGIN IMMEDIATE")
        audit.append(conn, "test", "payment.approved", f"pay_{i}", {"amount": 100 + i})
        conn.execute("COMMIT")
    assert audit.check(conn).ok
    assert audit.check(conn).entries == 5
    conn.execute("UPDATE audit SET data = '{\"amount\":999}' WHERE seq = 3")
    result = audit.check(conn)
    assert not result.ok
    assert result.broken_at == 3


def test_audit_entries_cannot_fork_the_chain(tmp_path: Path) -> None:
    """One entry only may follow another: an entry takes the next seq (the primary key),
    and SQLite refuses a write from a transaction that read an older snapshot (WAL mode:
    SQLITE_BUSY_SNAPSHOT), so a writer that read a stale head cannot chain onto it."""
    conn = open_sync(tmp_path / "edged.db")
    with pytest.raises(RuntimeError):
        audit.append(conn, "test", "x", "outside a transaction", {})
    for subject in ("a", "b"):
        conn.execute("BEGIN IMMEDIATE")
        audit.append(conn, "test", "x", subject, {})
        conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError):  # a second entry after entry 1
        conn.execute("INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash,"
                     " hash, version) VALUES (2, 't', 'a', 'x', 'c', '{}', '', ?, 3)",
                     (bytes(32),))
    conn.execute("ROLLBACK")
    other = open_sync(tmp_path / "edged.db")
    conn.execute("BEGIN")
    assert audit.head(conn) is not None  # this transaction has read the head: entry 2
    other.execute("BEGIN IMMEDIATE")
    audit.append(other, "test", "x", "d", {})  # another writer appends entry 3
    other.execute("COMMIT")
    with pytest.raises(sqlite3.OperationalError):  # entry 3 again, after entry 2: refused
        audit.append(conn, "test", "x", "e", {})
    conn.execute("ROLLBACK")
    result = audit.check(conn)
    assert (result.ok, result.entries) == (True, 3), result
    other.close()


def test_concurrent_token_creation_keeps_the_chain(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = str(tmp_path / "data")
    procs = [subprocess.Popen([sys.executable, "-m", "edged", "token", "create", f"t{i}",
                               "--data-dir", data], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(8)]
    assert [p.wait(60) for p in procs] == [0] * 8
    conn = open_sync(tmp_path / "data" / "edged.db")
    result = audit.check(conn)
    assert (result.ok, result.entries) == (True, 8)

async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    from edged.errors import StoreError

    db = Database(tmp_path / "edged.db")
    await db.open()
    await db.close()
    with pytest.raises(StoreError):
        await db.write(lambda c: None)


def test_a_cli_write_waits_for_a_busy_database_instead_of_giving_up(tmp_path: Path) -> None:
    """The cause of the flaky chain test: a command gave up after SQLite's 10 s busy
    timeout while other writers held the file. Here the lock is held until that timeout
    has run out in the command (it says it tries again), and the command still waits."""
    import queue
    import subprocess
    import sys

    data = tmp_path / "data"
    conn = open_sync(data / "edged.db")
    conn.execute("BEGIN IMMEDIATE")  # another writer holds the file
    proc = subprocess.Popen([sys.executable, "-m", "edged", "token", "create", "patient",
                             "--data-dir", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    said: queue.Queue[str | None] = queue.Queue()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.put(line)
        said.put(None)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    err: list[str] = []
    try:
        while True:  # SQLite's 10 s busy timeout runs out in the command, which tries again
            line = said.get(timeout=60)
            assert line is not None, f"the command ended while the file was busy: {err}"
            err.append(line)
            if "the database is busy" in line and "trying again" in line:
                break
        assert proc.poll() is None, "the command gave up after its first busy timeout"
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    out = proc.stdout.read()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 0, err
    assert out.startswith("edg_")
    check = open_sync(data / "edged.db")
    assert audit.check(check).entries == 1


async def test_a_lone_write_runs_without_a_savepoint_and_fails_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "edged.db")
    await db.open()
    statements: list[str] = []

    def insert(name: str, fail: bool = False):  # type: ignore[no-untyped-def]
        def write(conn: sqlite3.Connection) -> str:
            conn.set_trace_callback(statements.append)
            conn.execute("INSERT INTO tokens (name, scope, token_hash, created_at)"
                         " VALUES (?, 'register', ?, 't')", (name, f"h-{name}"))
            if fail:
                raise ValueError("refused")
            return name
        return write

    try:
        assert await db.write(insert("a")) == "a"
        with pytest.raises(ValueError):
            await db.write(insert("b", fail=True))
        assert await db.write(insert("c")) == "c"
    finally:
        await db.close()
    assert not any("SAVEPOINT" in s or "RELEASE" in s for s in statements)
    assert "ROLLBACK" in statements
    conn = sqlite3.connect(tmp_path / "edged.db")
    assert {r[0] for r in conn.execute("SELECT name FROM tokens")} == {"a", "c"}
    conn.close()


def _token_insert(n: int, entered: threading.Event | None = None,
                  gate: threading.Event | None = None) -> Callable[[sqlite3.Connection], int]:
    def write(conn: sqlite3.Connection) -> int:
        if entered is not None and gate is not None:
            entered.set()
            gate.wait(30)  # the writer thread is busy with this group until the test says
        conn.execute("INSERT INTO tokens (name, scope, token_hash, created_at)"
                     " VALUES (?, 'register', ?, 't')", (str(n), f"h{n}"))
        return n
    return write


async def test_writes_that_arrive_while_a_group_commits_form_the_next_group(
        tmp_path: Path) -> None:
    db = Database(tmp_path / "edged.db")
    await db.open()
    try:
        start = db.stats.commits
        same_moment = await asyncio.gather(*(db.write(_token_insert(n)) for n in range(50)))
        assert same_moment == list(range(50))
        assert db.stats.commits - start == 1  # handed over together: one commit

        entered, gate = threading.Event(), threading.Event()
        first = asyncio.ensure_future(db.write(_token_insert(100, entered, gate)))
        assert await asyncio.to_thread(entered.wait, 30)  # the writer is inside that group
        later = [asyncio.ensure_future(db.write(_token_insert(n))) for n in range(101, 131)]
        for _ in range(3):
            await asyncio.sleep(0)  # handed over to the writer, which is still busy
        assert not first.done() and not any(f.done() for f in later)
        before = db.stats.commits
        gate.set()
        assert await first == 100
        assert await asyncio.gather(*later) == list(range(101, 131))
        assert db.stats.commits - before == 2  # the first group, then all the later ones
    finally:
        await db.close()


async def test_close_commits_the_writes_of_its_own_iteration(tmp_path: Path) -> None:
    db = Database(tmp_path / "edged.db")
    await db.open()
    pending = [asyncio.ensure_future(db.write(_token_insert(n))) for n in range(5)]
    await asyncio.sleep(0)  # they are queued for the writer
    await db.close()
    assert [await f for f in pending] == list(range(5))
    conn = sqlite3.connect(tmp_path / "edged.db")
    assert conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 5


async def test_inline_writes_run_on_the_loop_and_commit_on_the_writer_thread(
        tmp_path: Path) -> None:
    """An inline group's statements run on the event loop's thread, its COMMIT on the
    writer thread; each caller is answered only once that COMMIT is done: another
    connection (another process would see the same) reads every row at that moment."""
    db = Database(tmp_path / "edged.db")
    await db.open()
    seen: list[tuple[str, str]] = []
    outside = sqlite3.connect(tmp_path / "edged.db")

    def traced(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(
            lambda sql: seen.append((threading.current_thread().name, sql.split()[0])))

    try:
        await db.write(traced, inline=True)
        seen.clear()

        async def pay(n: int) -> int:
            await db.write(_token_insert(n), inline=True)
            return int(outside.execute("SELECT count(*) FROM tokens WHERE name = ?",
                                       (str(n),)).fetchone()[0])

        assert await asyncio.gather(*(pay(n) for n in range(20))) == [1] * 20
    finally:
        await db.close()
        outside.close()
    loop_thread = threading.current_thread().name
    inserts = [t for t, sql in seen if sql == "INSERT"]
    commits = [t for t, sql in seen if sql == "COMMIT"]
    assert inserts == [loop_thread] * 20
    assert commits and all(t == "edged-writer" for t in commits)
    assert len(commits) < 20  # they shared commits
    assert not [sql for _, sql in seen if sql in ("SAVEPOINT", "RELEASE")]  # none failed


async def test_inline_writes_fail_alone_and_a_full_disk_fails_their_group(
        tmp_path: Path) -> None:
    """An inline group runs without savepoints; when a write fails, the group runs again
    with one each, and only that write is undone."""
    from edged.store.database import StoreFull

    db = Database(tmp_path / "edged.db")
    await db.open()

    def failing(n: int) -> Callable[[sqlite3.Connection], int]:
        def write(conn: sqlite3.Connection) -> int:
            _token_insert(n)(conn)
            raise ValueError(f"write {n} fails")
        return write

    def full(conn: sqlite3.Connection) -> None:
        _token_insert(99)(conn)
        raise sqlite3.OperationalError("database or disk is full")

    try:
        results = await asyncio.gather(
            *(db.write(failing(n) if n % 4 == 1 else _token_insert(n), inline=True)
              for n in range(12)), return_exceptions=True)
        assert [type(r) for r in results] == [
            ValueError if n % 4 == 1 else int for n in range(12)]
        group = await asyncio.gather(db.write(_token_insert(20), inline=True),
                                     db.write(full, inline=True), return_exceptions=True)
        assert [type(r) for r in group] == [StoreFull, StoreFull]  # the group is undone
        assert db.full
        assert await db.write(_token_insert(21), inline=True) == 21  # space again
        assert not db.full
    finally:
        await db.close()
    conn = sqlite3.connect(tmp_path / "edged.db")
    names = {int(r[0]) for r in conn.execute("SELECT name FROM tokens")}
    conn.close()
    assert names == {n for n in range(12) if n % 4 != 1} | {21}


async def test_an_inline_write_on_a_locked_file_waits_on_the_writer_thread(
        tmp_path: Path) -> None:
    """Another process holds the write lock: the loop does not wait for it (a timer still
    fires), the writer thread does, and the write commits once the lock is free."""
    db = Database(tmp_path / "edged.db")
    await db.open()
    other = sqlite3.connect(tmp_path / "edged.db", isolation_level=None)
    threads: list[str] = []

    def insert(n: int) -> Callable[[sqlite3.Connection], int]:
        def write(conn: sqlite3.Connection) -> int:
            threads.append(threading.current_thread().name)
            return _token_insert(n)(conn)
        return write

    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(db.write(insert(7), inline=True))
        for _ in range(20):  # the loop keeps turning while the lock is held
            await asyncio.sleep(0.005)
        assert not write.done()
        other.execute("ROLLBACK")
        assert await asyncio.wait_for(write, 30) == 7
        assert await db.write(insert(8), inline=True) == 8  # the lock is free: on the loop
    finally:
        other.close()
        await db.close()
    assert threads == ["edged-writer", threading.current_thread().name]


def _in_database_file(path: Path) -> int:
    """Rows of ``t`` in the database file itself, the WAL not read (``immutable``): what
    checkpoints have copied there."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.OperationalError:  # the table itself is still only in the WAL
        return 0
    finally:
        conn.close()


async def test_commits_never_checkpoint_the_checkpointer_thread_does(tmp_path: Path) -> None:
    """SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages (its
    ``wal_autocheckpoint`` default): that commit, a register's payment, then waits while the
    whole WAL is copied and flushed. The writer has it off; past ``CHECKPOINT_CHANGES`` rows
    the checkpointer copies the WAL on its own thread and connection, and the writer's next
    transaction starts the WAL over."""
    path = tmp_path / "edged.db"
    db = Database(path)
    await db.open()
    page = "x" * 12_000  # four pages a row: 300 rows pass SQLite's 1,000 pages
    try:
        assert db.checkpointer is not None
        assert await db._on_writer(lambda: db._writer_conn.execute(  # type: ignore[union-attr]
            "PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        await db.write(lambda c: c.execute("CREATE TABLE t (x)"))
        for _ in range(30):
            await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(page,)] * 10))
        assert CHECKPOINT_CHANGES > 300
        assert _in_database_file(path) == 0  # 1,200 pages committed, none checkpointed
        assert db.checkpointer.runs == 0
        for _ in range(10):
            await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(page,)] * 10))
        for _ in range(500):  # the checkpointer's thread copies while the loop goes on
            if db.checkpointer.runs:
                break
            await asyncio.sleep(0.01)
        assert db.checkpointer.runs == 1
        assert _in_database_file(path) == 400  # what was committed when it was asked
        assert "edged-checkpoint" in {t.name for t in threading.enumerate()}
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('after')"))
        outside = sqlite3.connect(path)
        _, frames, _ = outside.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        outside.close()
        assert frames < 10  # the WAL started over: only the last write's pages are in it
    finally:
        await db.close()
    assert "edged-checkpoint" not in {t.name for t in threading.enumerate()}


async def test_continuous_writes_keep_the_wal_small(tmp_path: Path) -> None:
    """Writers that never pause (a drain, a catalogue import, a busy lane of registers):
    the checkpointer's copy can never end with every frame copied, since groups commit
    while it copies, and the WAL grew by all that was written (193 MB in three simulated
    days of ``bench/years.py``, against a 64 MB bound). Between two groups the writer
    copies the last few frames itself once the WAL is past ``CATCH_UP_FRAMES``, so that
    it starts over.

    The bound's own forced checkpoint is set out of reach (1 GB), so that only the catch-up
    keeps the WAL small here: without it the WAL reaches 94 MB (everything written); with
    it, 18-21 MB on an idle box and under three CPU hogs and a disk writer. A CI run that
    shared the box with the other tests' flushes saw 37 MB once, with the bound at its
    default 64 MB (whose forced checkpoint starts past half of it): the figure checked is
    the default bound, held by the catch-up alone."""
    path = tmp_path / "edged.db"
    db = Database(path, wal_max_bytes=1 << 30)
    await db.open()
    row = "y" * 3_000
    largest = 0

    async def writer() -> None:
        nonlocal largest
        for _ in range(120):
            await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(row,)] * 8))
            largest = max(largest, storage.file_size(storage.wal_path(path)))

    try:
        await db.write(lambda c: c.execute("CREATE TABLE t (x)"))
        await asyncio.gather(*(writer() for _ in range(24)))  # 23,040 rows, about 90 MB
        assert db.checkpointer is not None and db.checkpointer.runs >= 20
    finally:
        await db.close()
    # past CATCH_UP_FRAMES (about 16 MB) the WAL starts over after the next checkpoint
    assert largest < 64 << 20, largest >> 20


async def test_a_replicated_store_never_checkpoints(tmp_path: Path) -> None:
    """Litestream checkpoints a file it replicates: the daemon neither starts a
    checkpointer nor lets a commit checkpoint."""
    db = Database(tmp_path / "edged.db", replicated=True)
    await db.open()
    try:
        assert db.checkpointer is None
        assert await db._on_writer(lambda: db._writer_conn.execute(  # type: ignore[union-attr]
            "PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    finally:
        await db.close()


def test_a_checkpointer_that_cannot_open_the_file_asks_again_at_the_next_request(
        tmp_path: Path) -> None:
    """A failure to open its connection (a file system hiccup) is logged and the thread
    goes on: the next request opens it and checkpoints."""
    path = tmp_path / "edged.db"
    conn = open_sync(path)
    conn.close()
    opened: list[int] = []

    def connect() -> sqlite3.Connection:
        opened.append(1)
        if len(opened) == 1:
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(path)

    checkpointer = Checkpointer(connect, "test-checkpoint")
    checkpointer.start()
    try:
        checkpointer.request()
        for _ in range(500):
            if opened:
                break
            threading.Event().wait(0.01)
        for _ in range(500):
            checkpointer.request()
            if checkpointer.runs:
                break
            threading.Event().wait(0.01)
        assert checkpointer.runs >= 1 and len(opened) == 2
    finally:
        checkpointer.stop()
