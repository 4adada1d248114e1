"""``edged archive --before DATE``: closed days moved to ``DATA_DIR/edged-archive.db``.

Tax law keeps sales for years; the live database need not carry them. What moves, for the
days before DATE (in ``[manager] timezone``; only days already over):

- payments in a final state (approved, declined, canceled, failed, forward_declined)
  whose refunds are all final, whose order (if any) moves with them, and for which no
  outbox row still waits, is in flight or is dead;
- those orders and their lines, and those refunds;
- the audit chain's entries of those days, always but the very last entry (the next
  entry chains onto it). ``edged audit verify`` reads the archive's entries, then the live
  ones, through one function (``edged.store.audit.verify``), so the chain still verifies whole.

Each batch is copied into the archive and committed there first (``INSERT OR IGNORE``),
then deleted from the live file in a second transaction: SQLite's transactions are atomic
per file in WAL mode, so a stop in between leaves rows in both files, never in neither,
and the next run finishes the move. Batches are small, so a running daemon's writer waits
at most a moment.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from edged.errors import EdgedError
from edged.ops import reports
from edged.store import files
from sync.core.clock import utc_iso

log = logging.getLogger(__name__)

ARCHIVE_NAME = "edged-archive.db"
TABLES = ("payments", "refunds", "orders", "order_lines", "audit")
FINAL_PAYMENTS = ("approved", "declined", "canceled", "failed", "forward_declined")
FINAL_REFUNDS = ("succeeded", "failed")
BATCH = 500


class ArchiveError(EdgedError):
    """The archive cannot be made as asked; the message says why."""


@dataclass
class ArchiveResult:
    path: Path
    cutoff: str
    moved: dict[str, int] = field(default_factory=dict)


def archive_path(data_dir: Path) -> Path:
    return data_dir / ARCHIVE_NAME


def open_archive(path: Path, live: sqlite3.Connection) -> sqlite3.Connection:
    """The archive file (0600, as the database), its tables made like the live ones (no
    foreign keys enforced)."""
    files.private_db(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for table in TABLES:
        sql = live.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (table,)).fetchone()[0]
        conn.execute(sql.replace(f"CREATE TABLE {table}",
                                 f"CREATE TABLE IF NOT EXISTS {table}", 1)
                     .replace('CREATE TABLE "payments"', "CREATE TABLE IF NOT EXISTS payments"))
    conn.execute("CREATE TABLE IF NOT EXISTS archive_runs (at TEXT NOT NULL, before TEXT"
                 " NOT NULL, moved TEXT NOT NULL)")
    return conn


def cutoff_for(day: date, zone: str, now: datetime) -> str:
    """The first instant of ``day`` (UTC ISO); refused unless ``day`` is today or earlier."""
    today = reports.today(now, zone)
    if day > today:
        raise ArchiveError(f"--before {day} is after today ({today}): only days that are"
                           " over can be archived")
    return reports.bounds(day, zone).start


_OPEN_OUTBOX = ("SELECT 1 FROM outbox o WHERE o.state IN ('pending', 'inflight', 'dead')"
                " AND o.subject_id = {}")


def _payment_batch(conn: sqlite3.Connection, cutoff: str, after: int) -> list[sqlite3.Row]:
    final_p = ", ".join(f"'{s}'" for s in FINAL_PAYMENTS)
    final_r = ", ".join(f"'{s}'" for s in FINAL_REFUNDS)
    return conn.execute(
        f"SELECT p.n, p.id, p.order_id FROM payments p WHERE p.n > ? AND p.created_at < ?"  # noqa: S608
        f" AND p.state IN ({final_p})"
        f" AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = p.id"
        f"   AND (r.state NOT IN ({final_r}) OR EXISTS ({_OPEN_OUTBOX.format('r.id')})))"
        f" AND NOT EXISTS ({_OPEN_OUTBOX.format('p.id')})"
        f" AND (p.order_id IS NULL OR ("
        f"   EXISTS (SELECT 1 FROM orders o WHERE o.id = p.order_id AND o.created_at < ?)"
        f"   AND NOT EXISTS ({_OPEN_OUTBOX.format('p.order_id')})"
        f"   AND NOT EXISTS (SELECT 1 FROM payments q WHERE q.order_id = p.order_id"
        f"     AND (q.state NOT IN ({final_p}) OR q.created_at >= ?))))"
        f" ORDER BY p.n LIMIT ?", (after, cutoff, cutoff, cutoff, BATCH)).fetchall()


def _move(live: sqlite3.Connection, arch: sqlite3.Connection, table: str, where: str,
          args: tuple[object, ...]) -> int:
    rows = live.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchall()  # noqa: S608
    if not rows:
        return 0
    cols = rows[0].keys()
    arch.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES"  # noqa: S608
                     f" ({', '.join('?' for _ in cols)})", [tuple(r) for r in rows])
    return len(rows)


def run(live_path: Path, day: date, zone: str, now: datetime | None = None) -> ArchiveResult:
    """Move the closed days before ``day`` out of the live database at ``live_path``."""
    now = now or datetime.now(UTC)
    live = sqlite3.connect(live_path, isolation_level=None, timeout=30)
    live.row_factory = sqlite3.Row
    live.execute("PRAGMA busy_timeout=30000")
    live.execute("PRAGMA foreign_keys=ON")
    live.execute("PRAGMA wal_autocheckpoint=0")  # the daemon or Litestream checkpoints
    cutoff = cutoff_for(day, zone, now)
    path = archive_path(live_path.parent)
    result = ArchiveResult(path, cutoff, {t: 0 for t in TABLES})
    arch = open_archive(path, live)
    try:
        after = 0
        while True:
            batch = _payment_batch(live, cutoff, after)
            if not batch:
                break
            after = batch[-1]["n"]
            pay_ids = [r["id"] for r in batch]
            order_ids = sorted({r["order_id"] for r in batch if r["order_id"]})
            marks = ", ".join("?" for _ in pay_ids)
            omarks = ", ".join("?" for _ in order_ids) or "NULL"
            arch.execute("BEGIN IMMEDIATE")
            counts = {
                "orders": _move(live, arch, "orders", f"id IN ({omarks})", tuple(order_ids)),
                "order_lines": _move(live, arch, "order_lines", f"order_id IN ({omarks})",
                                     tuple(order_ids)),
                "payments": _move(live, arch, "payments", f"id IN ({marks})", tuple(pay_ids)),
                "refunds": _move(live, arch, "refunds", f"payment_id IN ({marks})",
                                 tuple(pay_ids)),
            }
            arch.execute("COMMIT")  # durable in the archive before it leaves the live file
            live.execute("BEGIN IMMEDIATE")
            live.execute(f"DELETE FROM refunds WHERE payment_id IN ({marks})", pay_ids)  # noqa: S608
            live.execute(f"DELETE FROM payments WHERE id IN ({marks})", pay_ids)  # noqa: S608
            live.execute(f"DELETE FROM order_lines WHERE order_id IN ({omarks})", order_ids)  # noqa: S608
            live.execute(f"DELETE FROM orders WHERE id IN ({omarks})", order_ids)  # noqa: S608
            live.execute("COMMIT")
            for table, n in counts.items():
                result.moved[table] += n
        result.moved["audit"] = _move_audit(live, arch, cutoff)
        arch.execute("INSERT INTO archive_runs (at, before, moved) VALUES (?, ?, ?)",
                     (utc_iso(now), cutoff, repr(result.moved)))
    finally:
        arch.close()
        live.close()
    log.info("archived the days before %s to %s: %s", cutoff, path, result.moved)
    return result


def _move_audit(live: sqlite3.Connection, arch: sqlite3.Connection, cutoff: str) -> int:
    """The chain's entries before ``cutoff``: a prefix of it, always but the last entry."""
    last = live.execute("SELECT max(seq) FROM audit").fetchone()[0]
    if last is None:
        return 0
    limit = last - 1
    first_new = live.execute("SELECT min(seq) FROM audit WHERE at >= ?", (cutoff,)).fetchone()[0]
    if first_new is not None:
        limit = min(limit, first_new - 1)
    moved = 0
    while True:
        lowest = live.execute("SELECT min(seq) FROM audit").fetchone()[0]
        if lowest is None or lowest > limit:
            return moved
        upto = min(limit, lowest + BATCH - 1)
        arch.execute("BEGIN IMMEDIATE")
        moved += _move(live, arch, "audit", "seq <= ?", (upto,))
        arch.execute("COMMIT")
        live.execute("BEGIN IMMEDIATE")
        live.execute("DELETE FROM audit WHERE seq <= ?", (upto,))
        live.execute("COMMIT")
