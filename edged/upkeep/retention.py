"""Retention: what the daemon no longer needs is deleted, in small batches, by policy.

Pruned (``[retention]``, ``[alerts] keep_days``; ``docs/design.md`` has the table):

- outbox rows sent (``done``) or ``discarded``, once older than ``outbox_days``, and the
  batches no row refers to any more;
- stored answers to Idempotency-Keys older than ``idempotency_days`` (7: a register retries
  a call for minutes, not days; a key older than that is a new call);
- Shopify deliveries (webhooks) processed and older than ``webhook_days``;
- stock changes Shopify acknowledged before ``stock_changes_days`` and that the last pull
  already counts (local stock no longer adds them);
- status-page sessions and pairing codes ``expired_days`` after they expired;
- cleared alerts older than ``[alerts] keep_days``.

Never pruned: payments, refunds, orders and their lines, adjustments, items, tokens,
secrets and the audit chain (``edged archive`` moves closed days to another file instead).
Rows still needed are never touched: an outbox row pending, in flight or dead; a delivery
not yet processed; a stock change not acknowledged.

Each batch reads the next rows in rowid order (oldest first) from where the last batch
stopped, on a reader, then deletes those the rule allows in one write through the
group-committing writer (checked again there), so no index is needed, no batch scans the
table, and a pass with nothing to delete writes nothing. The batch size adapts so that
one batch holds the writer at most ``batch_ms`` (5 ms). A pass stops at the first row
newer than the cut-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from edged.config import Config
from edged.store import Database, StoreFull
from sync.core.clock import Clock, utc_iso

log = logging.getLogger(__name__)

MIN_BATCH = 16
MAX_BATCH = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    """Rows of ``table`` that may go: ``prunable`` (SQL over the row, ``:cutoff`` and
    ``:now`` bound) once ``days`` of the config have passed."""

    name: str
    table: str
    age_column: str
    """Grows with the rowid: a row at least as new as the cut-off ends the pass."""
    prunable: str
    days: Callable[[Config], float]


RULES: tuple[Rule, ...] = (
    Rule("outbox", "outbox", "created_at",
         "state IN ('done', 'discarded') AND updated_at < :cutoff",
         lambda c: c.retention.outbox_days),
    Rule("outbox_batches", "outbox_batches", "created_at",
         "created_at < :cutoff AND NOT EXISTS (SELECT 1 FROM outbox o"
         " WHERE o.batch_id = outbox_batches.id)",
         lambda c: c.retention.outbox_days),
    Rule("idempotency", "idempotency", "created_at", "created_at < :cutoff",
         lambda c: c.retention.idempotency_days),
    Rule("webhooks", "webhook_inbox", "received_at",
         "processed_at IS NOT NULL AND processed_at < :cutoff",
         lambda c: c.retention.webhook_days),
    Rule("stock_changes", "stock_deltas", "created_at",
         "acknowledged = 1 AND acknowledged_at < :cutoff AND acknowledged_at <="
         " coalesce((SELECT reported_at FROM inventory_levels l"
         " WHERE l.item_id = stock_deltas.item_id), '')",
         lambda c: c.retention.stock_changes_days),
    Rule("sessions", "sessions", "created_at", "expires_at < :cutoff",
         lambda c: c.retention.expired_days),
    Rule("pairing_codes", "pairing_codes", "created_at", "expires_at < :cutoff",
         lambda c: c.retention.expired_days),
    Rule("alerts", "alerts", "raised_at",
         "cleared_at IS NOT NULL AND cleared_at < :cutoff",
         lambda c: float(c.alerts.keep_days)),
)


@dataclass(frozen=True, slots=True)
class Batch:
    deleted: int
    last_rowid: int | None
    """Where the next batch starts; None: the pass reached the cut-off or the end."""


def scan_batch(conn: sqlite3.Connection, rule: Rule, cutoff: str, after: int,
               limit: int) -> tuple[list[int], int | None]:
    """The next ``limit`` rows of ``rule`` after rowid ``after`` (a reader's work): the
    rowids it allows deleted, and where the next batch starts (None: the pass reached the
    cut-off or the end)."""
    rows = conn.execute(
        f"SELECT rowid, {rule.age_column} < :cutoff, {rule.prunable}"  # noqa: S608
        f" FROM {rule.table} WHERE rowid > :after ORDER BY rowid LIMIT :limit",
        {"cutoff": cutoff, "after": after, "limit": limit}).fetchall()
    doomed: list[int] = []
    last: int | None = None
    for rowid, old, prunable in rows:
        if not old:
            last = None
            break
        last = rowid
        if prunable:
            doomed.append(rowid)
    else:
        if len(rows) < limit:
            last = None
    return doomed, last


def delete_rows(conn: sqlite3.Connection, rule: Rule, cutoff: str, rowids: list[int]) -> int:
    """Delete the rows a scan found, inside the caller's write; each is checked again (a
    row may have changed since the scan: a dead outbox row retried, an alert raised again)."""
    before = conn.total_changes
    conn.executemany(
        f"DELETE FROM {rule.table} WHERE rowid = :rowid"  # noqa: S608
        f" AND {rule.age_column} < :cutoff AND ({rule.prunable})",
        [{"rowid": r, "cutoff": cutoff} for r in rowids])
    return conn.total_changes - before


def prune_batch(conn: sqlite3.Connection, rule: Rule, cutoff: str, after: int,
                limit: int) -> Batch:
    """One batch of ``rule`` scanned and deleted on one connection (the tools' way)."""
    doomed, last = scan_batch(conn, rule, cutoff, after, limit)
    return Batch(delete_rows(conn, rule, cutoff, doomed), last)


@dataclass
class PassReport:
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    longest_batch_ms: float = 0.0


class Retention:
    """Runs passes of every rule through the database's writer."""

    def __init__(self, cfg: Config, db: Database, clock: Clock,
                 rules: tuple[Rule, ...] = RULES) -> None:
        self._cfg = cfg
        self._db = db
        self._clock = clock
        self._rules = rules
        self._batch = {r.name: 256 for r in rules}
        self.last: PassReport | None = None
        self.totals: dict[str, int] = {r.name: 0 for r in rules}

    async def run_pass(self, now: datetime | None = None) -> PassReport:
        """Prune every rule once up to its cut-off; returns what was deleted."""
        now = now or self._clock.now()
        report = PassReport()
        target = self._cfg.retention.batch_ms / 1000.0
        for rule in self._rules:
            cutoff = utc_iso(now - timedelta(days=rule.days(self._cfg)))
            after = 0
            total = 0
            while True:
                limit = self._batch[rule.name]
                doomed, last = await self._db.read(
                    functools.partial(scan_batch, rule=rule, cutoff=cutoff, after=after,
                                      limit=limit))
                took: list[float] = []

                def write(conn: sqlite3.Connection, rule: Rule = rule, cutoff: str = cutoff,
                          doomed: list[int] = doomed, took: list[float] = took) -> int:
                    started = time.perf_counter()
                    try:
                        return delete_rows(conn, rule, cutoff, doomed)
                    finally:
                        took.append(time.perf_counter() - started)

                # nothing to delete, nothing to write: an idle pass costs the writer nothing
                batch = Batch(await self._db.write(write) if doomed else 0, last)
                report.batches += 1
                if took:
                    report.longest_batch_ms = max(report.longest_batch_ms, took[0] * 1000)
                    self._batch[rule.name] = _next_size(limit, took[0], target)
                total += batch.deleted
                if batch.last_rowid is None:
                    break
                after = batch.last_rowid
                await asyncio.sleep(0)  # the registers' writes go between two batches
            if total:
                report.deleted[rule.name] = total
                self.totals[rule.name] += total
        if report.deleted:
            log.info("retention: deleted %s (%d batches, the longest %.1f ms)",
                     ", ".join(f"{n} {k}" for k, n in report.deleted.items()),
                     report.batches, report.longest_batch_ms)
        self.last = report
        return report

    async def run(self) -> None:
        """A pass now, then every ``[retention] interval_minutes``, until cancelled. A full
        disk stops a pass (the store logs it once); the next one tries again."""
        while True:
            with contextlib.suppress(StoreFull):
                await self.run_pass()
            await self._clock.sleep(self._cfg.retention.interval_minutes * 60)


def _next_size(limit: int, seconds: float, target: float) -> int:
    """Halve a batch that took longer than the target; grow one well under it."""
    if seconds > target:
        return max(MIN_BATCH, limit // 2)
    if seconds < target / 4:
        return min(MAX_BATCH, limit * 2)
    return limit
