"""Gauges read at scrape time: queues, payments, stored offline payments, terminals, alerts.

Registered as an asynchronous collector of :class:`edged.ops.metrics.Metrics`; the names are
the ones ``deploy/prometheus/edged-rules.yml`` alerts on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from edged.config import Config
from edged.lanes.terminals import TerminalManager
from edged.ops import alerts
from edged.ops.metrics import Metrics
from edged.store import Database

SyncStatus = Callable[[], Awaitable[dict[str, Any]]]

PER_DESTINATION = ("edged_sync_queue_depth", "edged_sync_oldest_pending_age_seconds",
                   "edged_sync_dead_rows")
PER_CURRENCY = ("edged_offline_stored_amount", "edged_offline_stored_payments",
                "edged_offline_stored_oldest_age_seconds")


def collector(cfg: Config, db: Database, terminals: TerminalManager,
              sync_status: SyncStatus) -> Callable[[Metrics], Awaitable[None]]:
    async def collect(m: Metrics) -> None:
        sync = await sync_status()
        for name in PER_DESTINATION + PER_CURRENCY + ("edged_payments", "edged_alerts_open"):
            m.reset(name)
        for d in sync["destinations"]:
            dest = d["destination"]
            m.set("edged_sync_queue_depth", "Changes waiting or in flight, per destination",
                  d["pending"] + d["inflight"], destination=dest)
            m.set("edged_sync_oldest_pending_age_seconds", "Age of the oldest change not yet"
                  " synced (0: none)", d["oldest_pending_age_seconds"] or 0.0,
                  destination=dest)
            m.set("edged_sync_dead_rows", "Changes that failed for good (retry or discard)",
                  d["dead"], destination=dest)
        offline = sync["offline"]
        m.set("edged_offline_max_stored_amount", "[offline] max_stored_total, minor units"
              " per currency", offline["max_stored_total"])
        m.set("edged_offline_max_payment_amount", "[offline] max_payment, minor units",
              offline["max_payment"])
        m.set("edged_offline_max_age_seconds", "[offline] max_age_hours, in seconds",
              offline["max_age_hours"] * 3600)
        for s in offline["stored"]:
            cur = s["currency"]
            m.set("edged_offline_stored_amount", "Token payments stored offline, minor units",
                  s["total"], currency=cur)
            m.set("edged_offline_stored_payments", "Token payments stored offline",
                  s["count"], currency=cur)
            m.set("edged_offline_stored_oldest_age_seconds", "Age of the oldest stored"
                  " payment", s["oldest_age_seconds"], currency=cur)
        views = terminals.views()
        m.set("edged_terminals", "Terminals configured", len(views))
        m.set("edged_terminals_online", "Terminals online or busy",
              sum(1 for v in views if v.state != "offline"))

        def read(conn: sqlite3.Connection) -> tuple[list[Any], dict[tuple[str, str], int]]:
            rows = conn.execute("SELECT method, state, count(*) FROM payments"
                                " GROUP BY method, state").fetchall()
            return rows, alerts.open_count(conn)

        payments, open_alerts = await db.read(read)
        for method, state, count in payments:
            m.set("edged_payments", "Payments in the database, by method and state", count,
                  method=method, state=state)
        for (kind, severity), count in open_alerts.items():
            m.set("edged_alerts_open", "Alerts raised and not cleared", count, kind=kind,
                  severity=severity)
        stats = db.stats
        m.set("edged_db_failed_writes", "Writes rolled back alone inside a group commit",
              stats.failed_writes)

    return collect
