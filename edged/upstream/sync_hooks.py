"""What an upstream outcome means for the store's own records.

Run by the sync engine inside the transaction that records the outcome, so a row is never
marked done without its business consequence, nor the other way round.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from edged.inbound import pickups
from edged.payments.states import (
    Actor,
    IllegalTransition,
    PaymentState,
    RefundState,
    move_payment,
    move_refund,
)
from edged.store import audit
from sync.core.clock import Clock, utc_iso
from sync.core.contract import (
    InventoryAdjust,
    InventorySet,
    OutboxKind,
    PaymentCancel,
    PaymentCapture,
    PaymentForward,
    decode,
)
from sync.core.gateway import OutboxRow, RowFailure

log = logging.getLogger(__name__)

DECLINED = "ERR-6071"
#: A processor's status of a payment authorised and not captured (Stripe, Square).
HELD = ("requires_capture", "APPROVED")

Event = tuple[str, dict[str, Any]]


class StoreHooks:
    """Implements ``sync.core.outbox.OutboxHooks``; returns events to publish after the commit."""

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
        elif isinstance(payload, PaymentCapture):
            held = conn.execute("SELECT amount FROM payments WHERE id = ?",
                                (payload.payment_id,)).fetchone()
            taken = result.get("amount") or payload.amount or (held[0] if held else None)
            return self._move(conn, row, PaymentState.APPROVED, now, Actor.PROCESSOR,
                              {"finished_at": now, "captured": taken},
                              {"captured": taken, "processor_ref": payload.processor_ref})
        elif isinstance(payload, PaymentCancel):
            return self._move(conn, row, PaymentState.CANCELED, now, Actor.PROCESSOR,
                              {"finished_at": now, "failure": "voided before capture"},
                              {"processor_ref": payload.processor_ref})
        elif row.kind in (OutboxKind.PICKUP_READY, OutboxKind.PICKUP_HANDOVER):
            return pickups.synced(conn, row.kind, row.subject_id, now)
        elif row.kind == OutboxKind.REFUND_CREATE:
            try:
                move_refund(conn, row.subject_id, RefundState.SUCCEEDED, Actor.PROCESSOR, now,
                            processor_ref=result.get("processor_ref"))
            except IllegalTransition as exc:
                log.error("refund success not recorded: %s", exc)
                return []
            audit.append(conn, row.destination, "refund.succeeded", row.subject_id,
                         {"processor_ref": result.get("processor_ref")})
            return [("refund", {"id": row.subject_id, "state": "succeeded"})]
        return []

    def _payment_forwarded(self, conn: sqlite3.Connection, row: OutboxRow,
                           payload: PaymentForward, result: Mapping[str, Any],
                           now: str) -> list[Event]:
        # the processor's own answer settles it: a failure said while in doubt no longer holds
        fields = {"processor_ref": result.get("processor_ref"), "finished_at": now,
                  "failure": None}
        for name in ("brand", "last4"):
            if result.get(name) is not None:
                fields[name] = result.get(name)
        held = result.get("status") in HELD  # manual capture: authorised, not yet taken
        return self._move(conn, row, PaymentState.AUTHORIZED if held else PaymentState.APPROVED,
                          now, Actor.PROCESSOR, fields,
                          {"processor_ref": result.get("processor_ref"),
                           "amount": payload.amount, "currency": payload.currency})

    def _move(self, conn: sqlite3.Connection, row: OutboxRow, new: PaymentState, now: str,
              actor: Actor, fields: dict[str, Any], data: dict[str, Any]) -> list[Event]:
        """An upstream outcome, through the table: never over a settled payment."""
        try:
            move_payment(conn, row.subject_id, new, actor, now, **fields)
        except IllegalTransition as exc:
            log.error("%s answered %s for a payment the table keeps: %s", row.destination,
                      new, exc)
            return [("alert", {"kind": "payment.conflict", "payment": row.subject_id,
                               "state": exc.old, "upstream": str(new),
                               "message": str(exc)})]
        audit.append(conn, row.destination, f"payment.{new}", row.subject_id, data)
        return [("payment", {"id": row.subject_id, "state": str(new)})]

    def failed(self, conn: sqlite3.Connection, row: OutboxRow,
               failure: RowFailure) -> list[Event]:
        now = self._now()
        events: list[Event] = []
        if row.kind == OutboxKind.PAYMENT_FORWARD:
            current = conn.execute("SELECT state FROM payments WHERE id = ?",
                                   (row.subject_id,)).fetchone()
            state: str | None = current[0] if current else None
            new: PaymentState | None
            actor = Actor.PROCESSOR
            if failure.outcome_unknown:  # gave up in doubt: maybe charged; a person decides
                new = PaymentState.UNKNOWN if state in (PaymentState.PENDING,
                                                        PaymentState.STORED) else None
                actor = Actor.SYNC
            elif failure.code == DECLINED:
                new = PaymentState.FORWARD_DECLINED if state == PaymentState.STORED \
                    else PaymentState.DECLINED
            elif state == PaymentState.STORED:  # refused for good after the goods went:
                new = PaymentState.FORWARD_DECLINED  # not taken, no longer held as stored
            else:
                new = PaymentState.FAILED if state == PaymentState.PENDING else None
            if new is not None:
                events += self._move(conn, row, new, now, actor,
                                     {"failure": f"{failure.code}: {failure.message}",
                                      "finished_at": now},
                                     {"code": failure.code, "message": failure.message})
            if new == PaymentState.FORWARD_DECLINED or state == PaymentState.STORED:
                events.append(("alert", {"kind": "payment.forward_failed",
                                         "payment": row.subject_id, "state": str(new or state),
                                         "message": failure.message}))
        elif row.kind in (OutboxKind.PAYMENT_CAPTURE, OutboxKind.PAYMENT_CANCEL):
            if failure.outcome_unknown:  # gave up in doubt: maybe captured or voided
                events += self._move(conn, row, PaymentState.UNKNOWN, now, Actor.SYNC,
                                     {"failure": f"{failure.code}: {failure.message}"},
                                     {"code": failure.code, "message": failure.message})
            # refused: the payment stays authorized; the dead row and its alert say why
            events.append(("alert", {"kind": "sync.dead", "destination": row.destination,
                                     "job": row.id, "subject": row.subject_id,
                                     "code": failure.code, "message": failure.message}))
        elif row.kind == OutboxKind.REFUND_CREATE:
            refund, who = (RefundState.UNKNOWN, Actor.SYNC) if failure.outcome_unknown \
                else (RefundState.FAILED, Actor.PROCESSOR)
            try:
                move_refund(conn, row.subject_id, refund, who, now,
                            failure=f"{failure.code}: {failure.message}")
            except IllegalTransition as exc:
                log.error("refund outcome not recorded: %s", exc)
                return events
            audit.append(conn, row.destination, f"refund.{refund}", row.subject_id,
                         {"code": failure.code, "message": failure.message})
            events.append(("refund", {"id": row.subject_id, "state": str(refund)}))
        else:
            events.append(("alert", {"kind": "sync.dead", "destination": row.destination,
                                     "job": row.id, "subject": row.subject_id,
                                     "code": failure.code, "message": failure.message}))
        return events


def job_discarded(conn: sqlite3.Connection, kind: str, subject_id: str, actor: str,
                  now: str) -> list[Event]:
    """A manager gave up a dead job for good: what it means for the store's records.

    A stored payment whose forward is discarded (e.g. held past the offline maximum age)
    will never be collected: it is ``forward_declined`` (not taken) and stops counting
    against the offline caps. Anything else keeps its state.
    """
    if kind != OutboxKind.PAYMENT_FORWARD:
        return []
    row = conn.execute("SELECT state FROM payments WHERE id = ?", (subject_id,)).fetchone()
    if row is None or row[0] != PaymentState.STORED:
        return []
    move_payment(conn, subject_id, PaymentState.FORWARD_DECLINED, Actor.MANAGER, now,
                 finished_at=now, failure=f"not collected: its forward was discarded by {actor}")
    audit.append(conn, actor, "payment.forward_declined", subject_id,
                 {"why": "forward discarded by a manager"})
    return [("payment", {"id": subject_id, "state": str(PaymentState.FORWARD_DECLINED)})]
