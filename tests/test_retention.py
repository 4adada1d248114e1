"""Retention and a bounded file (issue 21, points 1 and 2), on a real daemon in-process.

What a technician would check: old rows the daemon no longer needs are gone after a
pass, everything still needed or kept by law is untouched; a pass goes in small batches
that let the registers' writes through; the database file is in incremental auto-vacuum
mode (an old file converted at start) and gives its free pages back; the WAL is cut back
once a reader that held it lets go; a disk running out of room refuses new writes with
503 ERR-1040 and an alert before SQLite ever meets a full disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edged.config import ConfigError, load
from edged.store import Database
from edged.upkeep import retention
from edged.store import storage
from edged.config.upkeep import RetentionConfig, StorageConfig
from sync.core.clock import utc_iso
from tests.clock import ManualClock
from tests.helpers import Api, make_config, running

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def _iso(days_ago: float) -> str:
    return utc_iso(NOW - timedelta(days=days_ago))


def _seed(path: Path) -> None:
    """Rows of every kind the policy covers, old and new, needed and not."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    q = conn.execute
    q("BEGIN")
    q("INSERT INTO items (id, sku, title, updated_at) VALUES (1, 'A', 'a', ?)", (_iso(400),))
    q("INSERT INTO inventory_levels VALUES (1, 10, ?)", (_iso(5),))
    q("INSERT INTO outbox_batches (id, destination, kind, idempotency_key, payload, created_at)"
      " VALUES (1, 'shopify', 'inventory.adjust', 'b-old', '{}', ?),"
      " (2, 'shopify', 'inventory.adjust', 'b-used', '{}', ?)", (_iso(60), _iso(60)))
    rows = [  # (key, state, created days ago, updated days ago, batch)
        ("done-old", "done", 60, 59, 1), ("discarded-old", "discarded", 50, 45, None),
        ("dead-old", "dead", 70, 69, 2), ("pending-old", "pending", 65, 65, None),
        ("done-new", "done", 3, 2, None), ("done-late", "done", 40, 10, None)]
    for key, state, created, updated, batch in rows:
        q("INSERT INTO outbox (destination, kind, subject_id, idempotency_key, payload, state,"
          " batch_id, created_at, updated_at) VALUES ('shopify', 'inventory.adjust', 's',"
          " ?, '{}', ?, ?, ?, ?)", (key, state, batch, _iso(created), _iso(updated)))
    for key, days in (("idem-old", 8), ("idem-new", 6)):
        q("INSERT INTO idempotency VALUES ('token:1', ?, 'POST', '/v1/payments', 'h', 201,"
          " '{}', ?)", (key, _iso(days)))
    for n, (days, processed) in enumerate(((40, True), (40, False), (5, True))):
        q("INSERT INTO webhook_inbox (source, delivery_id, topic, body, received_at,"
          " processed_at) VALUES ('shopify', ?, 't', x'00', ?, ?)",
          (f"d{n}", _iso(days), _iso(days) if processed else None))
    deltas = [  # (acknowledged, acked days ago): acked 100 days ago but the report is newer
        (1, 100), (0, None), (1, 3)]
    for n, (acked, days) in enumerate(deltas):
        q("INSERT INTO stock_deltas (item_id, delta, source, source_id, acknowledged,"
          " acknowledged_at, created_at) VALUES (1, -1, 'sale', ?, ?, ?, ?)",
          (f"o{n}", acked, None if days is None else _iso(days), _iso(120)))
    q("INSERT INTO tokens (id, name, scope, token_hash, created_at) VALUES"
      " (99, 'old', 'manager', 'h99', ?)", (_iso(300),))
    q("INSERT INTO sessions VALUES ('s-old', 99, ?, ?), ('s-live', 99, ?, ?)",
      (_iso(3), _iso(2.5), _iso(0.1), utc_iso(NOW + timedelta(hours=6))))
    q("INSERT INTO pairing_codes (salt, code_hash, scope, created_at, expires_at) VALUES"
      " ('s', 'h', 'register', ?, ?)", (_iso(4), _iso(4)))
    q("INSERT INTO alerts (key, kind, severity, message, raised_at, cleared_at) VALUES"
      " ('a-old', 'k', 'info', 'm', ?, ?), ('a-open', 'k', 'info', 'm', ?, NULL),"
      " ('a-new', 'k', 'info', 'm', ?, ?)",
      (_iso(40), _iso(35), _iso(40), _iso(3), _iso(2)))
    q("INSERT INTO payments (id, method, state, amount, currency, created_at, updated_at)"
      " VALUES ('pay_old', 'cash', 'approved', 100, 'EUR', ?, ?)", (_iso(900), _iso(900)))
    q("COMMIT")
    conn.close()


async def _settled(api: Api) -> None:
    """The daemon's own pass at start is over (it runs again only when the clock moves)."""
    for _ in range(500):
        if api.daemon.upkeep.retention.last is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the retention pass at start did not finish")


def _left(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "outbox": sorted(r[0] for r in conn.execute("SELECT idempotency_key FROM outbox")),
            "batches": sorted(r[0] for r in conn.execute(
                "SELECT idempotency_key FROM outbox_batches")),
            "idempotency": sorted(r[0] for r in conn.execute("SELECT key FROM idempotency")),
            "webhooks": sorted(r[0] for r in conn.execute("SELECT delivery_id FROM"
                                                          " webhook_inbox")),
            "deltas": sorted(r[0] for r in conn.execute("SELECT source_id FROM stock_deltas")),
            "sessions": sorted(r[0] for r in conn.execute("SELECT id_hash FROM sessions")),
            "pairing": [str(r[0]) for r in conn.execute("SELECT id FROM pairing_codes")],
            "alerts": sorted(r[0] for r in conn.execute("SELECT key FROM alerts")),
            "payments": [r[0] for r in conn.execute("SELECT id FROM payments")],
        }
    finally:
        conn.close()


async def test_a_pass_prunes_by_policy_and_keeps_what_is_needed(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    cfg = make_config(tmp_path / "data")
    async with running(cfg, clock) as api:
        await _settled(api)
        _seed(api.daemon.db.path)
        report = await api.daemon.upkeep.retention.run_pass()
        left = _left(api.daemon.db.path)
    # sent or discarded for 30 days: gone; pending, dead and recent: kept (and the batch a
    # dead row still names); a row finished 10 days ago stays though it is 40 days old
    assert left["outbox"] == ["dead-old", "done-late", "done-new", "pending-old"]
    assert left["batches"] == ["b-used"]
    assert left["idempotency"] == ["idem-new"]  # 7 days by default
    assert left["webhooks"] == ["d1", "d2"]  # unprocessed and recent deliveries stay
    # acknowledged 100 days ago and counted by the report of 5 days ago: gone; one not
    # acknowledged, one acknowledged after the report: kept (local stock adds them)
    assert left["deltas"] == ["o1", "o2"]
    assert left["sessions"] == ["s-live"]
    assert left["pairing"] == []
    assert left["alerts"] == ["a-new", "a-open"]
    assert left["payments"] == ["pay_old"]  # kept by law, however old
    assert report.deleted == {"outbox": 2, "outbox_batches": 1, "idempotency": 1,
                              "webhooks": 1, "stock_changes": 1, "sessions": 1,
                              "pairing_codes": 1, "alerts": 1}


async def test_the_policy_comes_from_the_config(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    cfg = make_config(tmp_path / "data",
                      retention=RetentionConfig(outbox_days=90, idempotency_days=1))
    async with running(cfg, clock) as api:
        await _settled(api)
        _seed(api.daemon.db.path)
        await api.daemon.upkeep.retention.run_pass()
        left = _left(api.daemon.db.path)
    assert "done-old" in left["outbox"]  # 59 days < 90
    assert left["idempotency"] == []  # 6 days > 1


def test_the_retention_section_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[retention]\nidempotency_days = 14\nbatch_ms = 2\n"
                    "[storage]\nwal_max_mb = 32\nmin_free_mb = 100\n", encoding="utf-8")
    cfg = load(good)
    assert cfg.retention.idempotency_days == 14 and cfg.storage.wal_max_mb == 32
    bad = tmp_path / "bad.toml"
    bad.write_text("[retention]\noutbox_days = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"retention\.outbox_days: must be greater than 0"):
        load(bad)
    bad.write_text("[retention]\nkeep_forever = true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"retention\.keep_forever: unknown key"):
        load(bad)


async def test_a_long_pass_lets_the_registers_write_between_its_batches(
        tmp_path: Path) -> None:
    """20,000 stale stored answers: the pass takes many batches, and a payment taken while
    it runs is acknowledged before the pass ends (never queued behind the whole pass)."""
    clock = ManualClock(NOW)
    async with running(make_config(tmp_path / "data"), clock) as api:
        await _settled(api)
        conn = sqlite3.connect(api.daemon.db.path)
        conn.executemany("INSERT INTO idempotency VALUES ('token:9', ?, 'POST', '/v1/payments',"
                         " 'h', 201, '{}', ?)", [(f"k{n}", _iso(30)) for n in range(20_000)])
        conn.commit()
        conn.close()
        ret = api.daemon.upkeep.retention
        passing = asyncio.create_task(ret.run_pass())
        await asyncio.sleep(0)
        status, body = await api.post("/v1/payments", {"amount": 250, "currency": "EUR",
                                                       "method": "cash"})
        assert status == 201, body
        assert not passing.done(), "the payment waited for the whole pass"
        report = await passing
    # (the payment's own stored answer is stamped with the real clock, years before NOW)
    assert report.deleted["idempotency"] >= 20_000
    assert report.batches > 20_000 // retention.MAX_BATCH


async def test_a_new_file_is_incremental_and_an_old_one_is_converted_at_start(
        tmp_path: Path) -> None:
    old = tmp_path / "old" / "edged.db"
    old.parent.mkdir()
    conn = sqlite3.connect(old)  # a file made before issue 21: auto_vacuum NONE
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE filler (x)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 2000)
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    for path in (old, tmp_path / "new" / "edged.db"):
        db = Database(path)
        await db.open()
        try:
            mode = await db.read(lambda c: c.execute("PRAGMA auto_vacuum").fetchone()[0])
        finally:
            await db.close()
        assert mode == storage.INCREMENTAL, path
    conn = sqlite3.connect(old)  # nothing lost in the conversion
    assert conn.execute("SELECT count(*) FROM filler").fetchone()[0] == 2000
    conn.close()


async def test_free_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    async with running(make_config(tmp_path / "data"), clock) as api:
        db = api.daemon.db
        await db.write(lambda c: c.execute("CREATE TABLE scratch (x)"))
        await db.write(lambda c: c.executemany("INSERT INTO scratch VALUES (?)",
                                               [("y" * 2000,)] * 3000))
        await db.write(lambda c: c.execute("DELETE FROM scratch"))
        sizes = await db.read(lambda c: storage.sizes(c, db.path))
        assert sizes.free_pages > 1000
        freed = await api.daemon.upkeep.vacuum()
        after = await db.read(lambda c: storage.sizes(c, db.path))
    assert freed >= sizes.free_pages - 1 and after.free_pages <= 1
    assert after.db_bytes < sizes.db_bytes or after.free_pages < sizes.free_pages
    conn = sqlite3.connect(tmp_path / "data" / "edged.db")  # after the final checkpoint
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    assert pages < 1000  # 3000 rows of 2 KB took ~1500 pages: the file gave them back


async def test_the_wal_is_cut_back_once_a_reader_lets_go(tmp_path: Path) -> None:
    """A reader holding an old snapshot keeps the checkpointer from starting the WAL
    over; once it lets go, the writer truncates the WAL past half its bound."""
    path = tmp_path / "edged.db"
    db = Database(path, wal_max_bytes=4 << 20)
    await db.open()
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t (x)"))
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot held
        for _ in range(40):
            await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)",
                                                   [("z" * 1000,)] * 100))
        held = storage.file_size(storage.wal_path(path))
        assert held > 2 << 20
        reader.execute("COMMIT")
        reader.close()
        db._wal_forced_at = db._wal_checked_at = 0.0  # the pauses between looks are over
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('last')"))
        # the check runs after a group is answered: the next write follows it on the thread
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('after')"))
        after = storage.file_size(storage.wal_path(path))
        assert db.wal_peak_bytes >= held
    finally:
        await db.close()
    assert after < 1 << 20, (held, after)


async def test_a_disk_running_out_of_room_refuses_writes_before_sqlite_fails(
        tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    cfg = make_config(tmp_path / "data", storage=StorageConfig(min_free_mb=1,
                                                                check_seconds=1))
    async with running(cfg, clock) as api:
        status, first = await api.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                                         "method": "cash"}, key="k-first")
        assert status == 201
        guard = api.daemon.upkeep.guard
        guard.min_free_bytes = 1 << 62  # the disk is "nearly full" now
        clock.advance(1)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if api.daemon.db.space_low:
                break
        assert api.daemon.db.space_low
        before = api.count("payments")
        status, body = await api.post("/v1/payments", {"amount": 200, "currency": "EUR",
                                                       "method": "cash"}, key="k-low")
        assert status == 503 and body["error"]["code"] == "ERR-1040", body
        assert body["error"]["retryable"] is True
        assert api.count("payments") == before  # nothing was changed
        # a retry of what was already answered still gets its answer
        again = await api.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                                 "method": "cash"}, key="k-first")
        assert again == (201, first)
        await api.daemon.services.manager.alerts.evaluate()  # or its own round did already
        assert api.count("alerts", "key = 'storage.space_low' AND cleared_at IS NULL") == 1
        _, st = await api.get("/v1/status", token=api.manager_token)
        assert st["storage"]["space_low"] is True
        guard.min_free_bytes = 0  # room again
        clock.advance(1)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if not api.daemon.db.space_low:
                break
        status, _ = await api.post("/v1/payments", {"amount": 200, "currency": "EUR",
                                                     "method": "cash"}, key="k-low")
        assert status == 201


def test_the_storage_section_refuses_a_tiny_wal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\nwal_max_mb = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"storage\.wal_max_mb: must be at least 4"):
        load(bad)
    assert replace(StorageConfig(), wal_max_mb=8).wal_max_mb == 8
