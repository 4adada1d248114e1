"""Payments and refunds as the API shows them, and the one way a payment answer is stored.
Used inside write transactions and on readers."""

from __future__ import annotations

import enum
import functools
import json
import sqlite3
from typing import Any

from edged.payments.states import REFUND_HOLDS_MONEY
from edged.store.answer import Answer, stored_answer
from edged.store.idempotency import IdemRecord

_HOLDING_SQL = ", ".join(f"'{s.value}'" for s in sorted(REFUND_HOLDS_MONEY))
_REFUNDED_SQL = ("SELECT coalesce(sum(amount), 0) FROM refunds WHERE payment_id = ?"  # noqa: S608
                 f" AND state IN ({_HOLDING_SQL})")  # the enum's own values, not input

_PAYMENT_FIELDS = ("id", "method", "state", "amount", "currency", "terminal_id", "reference",
                   "processor", "brand", "last4", "auth_code", "processor_ref", "raw_status",
                   "receipt", "failure", "order_id", "created_at", "updated_at", "finished_at",
                   "stored_at", "capture", "captured", "last_checked_at")
_REFUND_FIELDS = ("id", "payment_id", "amount", "currency", "reason", "state", "terminal_id",
                  "processor_ref", "failure", "created_at", "updated_at", "last_checked_at")


def refunded_total(conn: sqlite3.Connection, payment_id: str) -> int:
    """What is refunded or on its way back: the refunds that hold money."""
    row = conn.execute(_REFUNDED_SQL, (payment_id,)).fetchone()
    return int(row[0])


def refund_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {f: row[f] for f in _REFUND_FIELDS}


def payment_dict(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    out = {f: row[f] for f in _PAYMENT_FIELDS}
    # what the terminal said when it differs from the request (amount, currency, reference)
    figures = row["terminal_figures"]
    out["terminal_figures"] = json.loads(figures) if figures else None
    refunds = conn.execute("SELECT * FROM refunds WHERE payment_id = ? ORDER BY n",
                           (row["id"],)).fetchall()
    out["refunds"] = [refund_dict(r) for r in refunds]
    out["refunded"] = sum(r["amount"] for r in refunds if r["state"] in REFUND_HOLDS_MONEY)
    return out


_PAYMENT_COLUMNS = frozenset({*_PAYMENT_FIELDS, "token", "terminal_figures"})
_PAYMENT_DEFAULTS: dict[str, Any] = {"capture": "automatic"}  # as the table declares them
_SHOWN = frozenset(_PAYMENT_FIELDS)
_NEW_PAYMENT: dict[str, Any] = {f: _PAYMENT_DEFAULTS.get(f) for f in _PAYMENT_FIELDS}
"""A new payment's answer before its columns are filled in (in the read-back's order)."""


def insert_payment(conn: sqlite3.Connection, **columns: Any) -> dict[str, Any]:
    """Insert a payment row and return it as :func:`get_payment` would read it back in this
    transaction (the columns not given at their declared defaults, no refunds yet, no
    terminal figures), without reading it: a new payment's answer costs no read."""
    if not columns.keys() <= _PAYMENT_COLUMNS or "terminal_figures" in columns:
        unknown = set(columns) - _PAYMENT_COLUMNS
        raise ValueError(f"not a column a new payment is given: {sorted(unknown)}")
    out = _NEW_PAYMENT.copy()
    values = []
    for name, given in columns.items():
        value = given.value if isinstance(given, enum.Enum) else given
        values.append(value)
        if name in _SHOWN:
            out[name] = value
    conn.execute(_insert_sql(tuple(columns)), values)
    out["terminal_figures"] = None
    out["refunds"] = []
    out["refunded"] = 0
    return out


@functools.lru_cache(maxsize=32)
def _insert_sql(names: tuple[str, ...]) -> str:
    """The INSERT for these columns (checked against the table's: never input)."""
    return (f"INSERT INTO payments ({', '.join(names)})"  # noqa: S608
            f" VALUES ({', '.join('?' * len(names))})")


def payment_row(conn: sqlite3.Connection, payment_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM payments WHERE id = ?",
                                           (payment_id,)).fetchone()
    return row


def get_payment(conn: sqlite3.Connection, payment_id: str) -> dict[str, Any] | None:
    row = payment_row(conn, payment_id)
    return payment_dict(conn, row) if row is not None else None


def refund_row(conn: sqlite3.Connection, refund_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM refunds WHERE id = ?",
                                           (refund_id,)).fetchone()
    return row


def payment_answer(conn: sqlite3.Connection, idem: IdemRecord | None, status: int,
                   payment_id: str) -> Answer:
    """The payment as committed, saved under the request's key in the same transaction."""
    body = get_payment(conn, payment_id)
    assert body is not None
    return stored_answer(conn, idem, status, body)
