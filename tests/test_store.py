"""The SQLite store: pragmas, migrations, group commit, the audit chain."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edged import audit
from edged.store import Database
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
            conn.execute("INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash)"
                         " VALUES ('t', 'a', 'x', ?, '{}', '', '')", (str(n),))
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
    subjects = {int(r[0]) for r in conn.execute("SELECT subject FROM audit")}
    assert subjects == {n for n in range(100) if n % 10 != 3}


def test_audit_chain_detects_tampering(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "edged.db")
    for i in range(5):
        audit.append(conn, "test", "payment.approved", f"pay_{i}", {"amount": 100 + i})
    assert audit.verify(conn).ok
    assert audit.verify(conn).entries == 5
    conn.execute("UPDATE audit SET data = '{\"amount\":999}' WHERE seq = 3")
    result = audit.verify(conn)
    assert not result.ok
    assert result.broken_at == 3


async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    from edged.errors import StoreError

    db = Database(tmp_path / "edged.db")
    await db.open()
    await db.close()
    with pytest.raises(StoreError):
        await db.write(lambda c: None)
