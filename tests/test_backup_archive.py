"""``edged backup create``, the daily ``[backup]`` copy, and ``edged archive`` (issue 21,
points 1 and 4).

A backup is made while the daemon takes payments (SQLite's online backup API: one
consistent snapshot) and is checked before it takes its name; a copy whose audit chain is
broken never does. The daily copy runs at ``[backup] at`` on the daemon's clock and keeps
``keep`` copies. ``edged archive --before DATE`` moves closed days to
``edged-archive.db``; ``edged audit verify`` still walks the whole chain (archive, then
live), and finds an entry altered in the archive.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edged.store.database import connect
from edged.upkeep import archive, backup
from edged.config.upkeep import BackupConfig
from tests.clock import ManualClock
from tests.daemon_process import UNLIMITED_API, DaemonProcess, create_tokens, run_cli
from tests.helpers import make_config, running


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "edged.toml"
    path.write_text("[api]\n" + "".join(f"{k} = {v!r}\n" for k, v in UNLIMITED_API.items())
                    + extra, encoding="utf-8")
    return path


@pytest.mark.timeout(120)
def test_a_backup_made_under_load_is_consistent_and_checked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = create_tokens(data, ["lane"])["lane"]
    config = _config(tmp_path)
    with DaemonProcess(data, config=config) as daemon:
        stop = threading.Event()
        taken: list[str] = []

        def register() -> None:
            for n in range(5000):
                if stop.is_set():
                    return
                resp = daemon.post("/v1/payments", {"amount": 100 + n, "currency": "EUR",
                                                    "method": "cash"}, token=token,
                                   key=f"b-{n}")
                assert resp.status == 201, resp.text
                taken.append(resp.json()["id"])

        worker = threading.Thread(target=register)
        worker.start()
        try:
            while len(taken) < 100:
                worker.join(0.01)
            done = daemon.cli("backup", "create", str(tmp_path / "copy.db"))
            at_copy = len(taken)
        finally:
            stop.set()
            worker.join(60)
        assert "integrity_check ok, audit chain ok" in done.stdout
    conn = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [r[0] for r in conn.execute("SELECT id FROM payments ORDER BY n")]
    finally:
        conn.close()
    # one snapshot: a prefix of the payments, in order, every audit entry with its payment
    assert 100 <= len(ids) <= at_copy + 1
    assert ids == taken[:len(ids)]
    entries, payments = backup.verify_copy(tmp_path / "copy.db")
    assert payments == len(ids) and entries == len(ids) + 1  # + the token's creation


def test_a_copy_with_a_broken_chain_never_takes_the_backups_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_tokens(data, ["lane-1", "lane-2"])
    conn = sqlite3.connect(data / "edged.db")
    conn.execute("UPDATE audit SET subject = 'someone else' WHERE seq = 1")
    conn.commit()
    conn.close()
    done = run_cli(data, "backup", "create", str(tmp_path / "copy.db"), check=False)
    assert done.returncode == 1 and "broken audit chain" in done.stderr
    assert not (tmp_path / "copy.db").exists()
    assert not list(tmp_path.glob(".copy.db*"))


async def test_the_daily_copy_runs_at_its_time_and_keeps_the_last_ones(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2027, 1, 10, 1, 0, tzinfo=UTC))
    folder = tmp_path / "backups"
    cfg = make_config(tmp_path / "data", backup=BackupConfig(dir=str(folder), at="03:30",
                                                             keep=2))
    async with running(cfg, clock) as api:
        made: list[str] = []
        for _day in range(3):
            for _ in range(50):  # the task is waiting for 03:30
                await asyncio.sleep(0.01)
                if clock.sleeping:
                    break
            clock.advance(24 * 3600)
            for _ in range(300):
                await asyncio.sleep(0.01)
                copies = sorted(p.name for p in folder.glob("edged-2*.db"))
                if copies and copies[-1] not in made:
                    made.append(copies[-1])
                    break
        _, st = await api.get("/v1/status", token=api.manager_token)
    assert made == ["edged-20270110-033000.db", "edged-20270111-033000.db",
                    "edged-20270112-033000.db"]
    assert sorted(p.name for p in folder.glob("edged-*.db")) == made[1:]  # keep = 2
    assert st["storage"]["backup"]["last_path"].endswith(made[-1])
    assert st["storage"]["backup"]["last_error"] is None
    backup.verify_copy(folder / made[-1])


def _payment(conn: sqlite3.Connection, pid: str, state: str, when: datetime,
             order: str | None = None) -> None:
    from edged.store import audit  # noqa: PLC0415
    from sync.core.clock import utc_iso  # noqa: PLC0415

    stamp = utc_iso(when)
    if order is not None:
        conn.execute("INSERT INTO orders (id, reference, currency, total, created_at) VALUES"
                     " (?, ?, 'EUR', 100, ?)", (order, f"ref-{order}", stamp))
        conn.execute("INSERT INTO order_lines VALUES (?, 0, 1, 1, 100)", (order,))
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, order_id,"
                 " created_at, updated_at) VALUES (?, 'cash', ?, 100, 'EUR', ?, ?, ?)",
                 (pid, state, order, stamp, stamp))
    audit.append(conn, "test", f"payment.{state}", pid, {}, at=when)


def test_archive_moves_closed_days_and_the_chain_still_verifies(tmp_path: Path) -> None:
    """Also: the archive and a backup's copies are 0600 under the usual umask (022), as the
    README promises of the database files."""
    previous = os.umask(0o022)
    try:
        _archive_moves_closed_days(tmp_path)
    finally:
        os.umask(previous)


def _archive_moves_closed_days(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_tokens(data, ["lane"])
    day = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
    conn = connect(data / "edged.db")  # the store's own: it knows the audit key
    conn.execute("BEGIN")
    conn.execute("INSERT INTO items (id, sku, title, updated_at) VALUES (1, 'A', 'a', '')")
    _payment(conn, "p-old-1", "approved", day - timedelta(days=2), order="o-old-1")
    _payment(conn, "p-old-2", "declined", day - timedelta(days=2))
    _payment(conn, "p-old-unknown", "unknown", day - timedelta(days=1))  # not closed: stays
    _payment(conn, "p-today", "approved", day, order="o-today")
    conn.execute("COMMIT")
    conn.close()
    result = archive.run(data / "edged.db", day.date(), "UTC",
                         now=day + timedelta(hours=1))
    assert result.moved["payments"] == 2 and result.moved["orders"] == 1
    assert result.moved["order_lines"] == 1 and result.moved["audit"] >= 2
    live = sqlite3.connect(data / "edged.db")
    kept = sorted(r[0] for r in live.execute("SELECT id FROM payments"))
    live.close()
    assert kept == ["p-old-unknown", "p-today"]
    arch = sqlite3.connect(data / archive.ARCHIVE_NAME)
    moved = sorted(r[0] for r in arch.execute("SELECT id FROM payments"))
    arch.close()
    assert moved == ["p-old-1", "p-old-2"]
    for name in (archive.ARCHIVE_NAME, archive.ARCHIVE_NAME + "-wal",
                 archive.ARCHIVE_NAME + "-shm"):  # as private as the store, whatever the umask
        if (data / name).exists():
            assert (data / name).stat().st_mode & 0o777 == 0o600, name
    verify = run_cli(data, "audit", "verify", check=False)
    assert verify.returncode == 0, verify.stderr
    entries = int(verify.stdout.split(":")[1].split()[0])
    assert entries == 5  # the token's creation and four payments, across the two files

    # running it again moves nothing more and breaks nothing
    again = archive.run(data / "edged.db", day.date(), "UTC", now=day + timedelta(hours=1))
    assert again.moved["payments"] == 0
    assert run_cli(data, "audit", "verify", check=False).returncode == 0
    # a backup carries the archive with it, and checks the chain across both
    done = run_cli(data, "backup", "create", str(tmp_path / "b" / "copy.db"))
    assert (tmp_path / "b" / "copy-archive.db").exists(), done.stdout
    for copy in ("copy.db", "copy-archive.db"):
        assert (tmp_path / "b" / copy).stat().st_mode & 0o777 == 0o600, copy

    # an entry altered in the archive is found
    arch = sqlite3.connect(data / archive.ARCHIVE_NAME)
    arch.execute("UPDATE audit SET actor = 'forger' WHERE seq = 2")
    arch.commit()
    arch.close()
    broken = run_cli(data, "audit", "verify", check=False)
    assert broken.returncode == 1 and "BROKEN at entry 2" in broken.stderr


def test_archive_refuses_a_day_not_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    create_tokens(data, ["lane"])
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    done = run_cli(data, "archive", "--before", tomorrow, check=False)
    assert done.returncode == 1 and "only days that are over" in done.stderr
    done = run_cli(data, "archive", "--before", "last week", check=False)
    assert done.returncode == 2
