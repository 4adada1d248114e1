"""What an upstream outcome means for the store's own records.

Run by the sync engine inside the transaction that records the outcome, so a row is never
marked done without its business consequence, nor the other way round.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from edged import audit
from sync.clock import Clock, utc_iso
from sync.contract import InventoryAdjust, InventorySet, OutboxKind, PaymentForward, decode
from sync.gateway import OutboxRow, RowFailure

log = logging.getLogger(__name__)

DECLINED = "ERR-6071"

Event = tuple[str, dict[str, Any]]


class StoreHooks:
    """Implements ``sync.outbox.OutboxHooks``; returns events to publish after the commit."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    def applied(self, conn: sqlite3.Connection, row: OutboxRow,
                result: Mapping[str, Any]) -> list[Event]:
        now = self._now()
        payload = decode(row.kind, row.payload)
        if row.kind == OutboxKind.ORDER_CREATE:
            conn.execute("UPDATE stock_deltas SET acknowledged = 1, acknowledged_at = ?"
                         " WHERE source = 'sale' AND source_id = ? AND acknowledged = 0",
                         (now, row.subject_id))
        elif isinstance(payload, InventoryAdjust | InventorySet):
            conn.execute("UPDATE stock_deltas SET acknowledged = 1, acknowledged_at = ?"
                         " WHERE id = ? AND acknowledged = 0", (now, payload.delta_id))
        elif isinstance(payload, PaymentForward):
            return self._payment_forwarded(conn, row, payload, result, now)
        elif row.kind == OutboxKind.REFUND_CREATE:
            conn.execute("UPDATE refunds SET state = 'succeeded', processor_ref = ?,"
                         " updated_at = ? WHERE id = ? AND state = 'queued'",
                         (result.get("processor_ref"), now, row.subject_id))
            audit.append(conn, row.destination, "refund.succeeded", row.subject_id,
                         {"processor_ref": result.get("processor_ref")})
            return [("refund", {"id": row.subject_id, "state": "succeeded"})]
        return []

    def _payment_forwarded(self, conn: sqlite3.Connection, row: OutboxRow,
                           payload: PaymentForward, result: Mapping[str, Any],
                           now: str) -> list[Event]:
        conn.execute(
            "UPDATE payments SET state = 'approved', processor_ref = ?, brand ="
            " coalesce(?, brand), last4 = coalesce(?, last4), updated_at = ?,"
            " finished_at = ? WHERE id = ? AND state IN ('pending', 'stored')",
            (result.get("processor_ref"), result.get("brand"), result.get("last4"), now, now,
             row.subject_id))
        audit.append(conn, row.destination, "payment.approved", row.subject_id,
                     {"processor_ref": result.get("processor_ref"),
                      "amount": payload.amount, "currency": payload.currency})
        return [("payment", {"id": row.subject_id, "state": "approved"})]

    def failed(self, conn: sqlite3.Connection, row: OutboxRow,
               failure: RowFailure) -> list[Event]:
        now = self._now()
        events: list[Event] = []
        if row.kind == OutboxKind.PAYMENT_FORWARD:
            current = conn.execute("SELECT state FROM payments WHERE id = ?",
                                   (row.subject_id,)).fetchone()
            state: str | None = current[0] if current else None
            new: str | None
            if failure.code == DECLINED:
                new = "forward_declined" if state == "stored" else "declined"
            else:
                new = "failed" if state == "pending" else state
            if new and new != state:
                conn.execute("UPDATE payments SET state = ?, failure = ?, updated_at = ?,"
                             " finished_at = ? WHERE id = ?",
                             (new, f"{failure.code}: {failure.message}", now, now,
                              row.subject_id))
                audit.append(conn, row.destination, f"payment.{new}", row.subject_id,
                             {"code": failure.code, "message": failure.message})
                events.append(("payment", {"id": row.subject_id, "state": new}))
            if new == "forward_declined" or state == "stored":
                events.append(("alert", {"kind": "payment.forward_failed",
                                         "payment": row.subject_id, "state": new,
                                         "message": failure.message}))
        elif row.kind == OutboxKind.REFUND_CREATE:
            conn.execute("UPDATE refunds SET state = 'failed', failure = ?, updated_at = ?"
                         " WHERE id = ? AND state = 'queued'",
                         (f"{failure.code}: {failure.message}", now, row.subject_id))
            audit.append(conn, row.destination, "refund.failed", row.subject_id,
                         {"code": failure.code, "message": failure.message})
            events.append(("refund", {"id": row.subject_id, "state": "failed"}))
        else:
            events.append(("alert", {"kind": "sync.dead", "destination": row.destination,
                                     "job": row.id, "subject": row.subject_id,
                                     "code": failure.code, "message": failure.message}))
        return events
