"""Whether a manager may retry a dead sync job (issue 16 item 5).

A retry sends the row again under its key. For a processor row that is a money movement,
so it is refused when the records already say how the money ended: a forward whose payment
is ``failed``, ``declined``, ``canceled``, ``forward_declined`` or ``approved`` (a retry
would charge a card the register was told was not charged, or charge it twice); a refund
that ``failed`` or ``succeeded`` (the same amount may have been refunded again since); a
capture or void of a payment no longer ``authorized``. What a retry is for stays open: a
forward held ``stored`` past its maximum age or that died ``unknown`` (the resend reads back
first), a refund ``unknown``, a capture of an ``authorized`` payment. Shopify rows carry no
money and are always retryable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from edged.payments.states import PaymentState, RefundState
from sync.core.contract import OutboxKind

P, R = PaymentState, RefundState

#: Kind → (the table its subject lives in, the states in which a retry may be sent).
RETRYABLE: Mapping[str, tuple[str, frozenset[str]]] = {
    OutboxKind.PAYMENT_FORWARD: ("payments", frozenset({P.PENDING, P.STORED, P.UNKNOWN})),
    OutboxKind.PAYMENT_CAPTURE: ("payments", frozenset({P.AUTHORIZED, P.UNKNOWN})),
    OutboxKind.PAYMENT_CANCEL: ("payments", frozenset({P.AUTHORIZED, P.UNKNOWN})),
    OutboxKind.REFUND_CREATE: ("refunds", frozenset({R.QUEUED, R.UNKNOWN})),
}


def retry_refusal(conn: sqlite3.Connection, kind: str, subject_id: str) -> str | None:
    """Why a retry of this job is refused (``None``: it may be retried)."""
    rule = RETRYABLE.get(kind)
    if rule is None:
        return None
    table, allowed = rule
    what = "payment" if table == "payments" else "refund"
    row = conn.execute(f"SELECT state FROM {table} WHERE id = ?",  # noqa: S608  (a constant)
                       (subject_id,)).fetchone()
    if row is None:
        return f"its {what} {subject_id} is not in this daemon's records"
    state = str(row[0])
    if state in allowed:
        return None
    return (f"its {what} {subject_id} is {state}: the records already say how the money"
            f" ended, and sending it again could move money the {what} says did not move"
            f" (or move it twice); discard the job, and take a new {what} if one is due")


def annotate(conn: sqlite3.Connection, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs with ``retry_refused``: why the status page offers no retry (or ``None``)."""
    for job in jobs:
        job["retry_refused"] = retry_refusal(conn, job["kind"], job["subject_id"]) \
            if job["state"] == "dead" else None
    return jobs


__all__ = ["RETRYABLE", "annotate", "retry_refusal"]
