"""Reading records as the API shows them. Used inside write transactions and on readers."""

from __future__ import annotations

import enum
import functools
import json
import sqlite3
from typing import Any

from edged.payments.states import REFUND_HOLDS_MONEY

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


def get_order(conn: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    lines = conn.execute(
        "SELECT l.line_no, l.quantity, l.price, i.sku, i.variant_id, i.title FROM order_lines l"
        " JOIN items i ON i.id = l.item_id WHERE l.order_id = ? ORDER BY l.line_no",
        (order_id,)).fetchall()
    payments = conn.execute("SELECT id FROM payments WHERE order_id = ? ORDER BY n",
                            (order_id,)).fetchall()
    return {
        "id": row["id"], "reference": row["reference"], "currency": row["currency"],
        "total": row["total"], "created_at": row["created_at"],
        "lines": [{"sku": ln["sku"], "variant_id": ln["variant_id"], "title": ln["title"],
                   "quantity": ln["quantity"], "price": ln["price"]} for ln in lines],
        "payments": [p["id"] for p in payments],
    }


def local_stock(conn: sqlite3.Connection, item_id: int) -> tuple[int, int, str | None]:
    """(local quantity, deltas not yet in a report, reported_at).

    Local stock = the last quantity Shopify reported + the deltas that report does not
    include yet: those Shopify has not acknowledged, and those it acknowledged after the
    report was read (the next pull includes them and replaces the first term).
    """
    level = conn.execute("SELECT reported_quantity, reported_at FROM inventory_levels"
                         " WHERE item_id = ?", (item_id,)).fetchone()
    reported_at = level["reported_at"] if level else None
    pending = conn.execute(
        "SELECT coalesce(sum(delta), 0) FROM stock_deltas WHERE item_id = ? AND"
        " (acknowledged = 0 OR (acknowledged = 1 AND acknowledged_at > coalesce(?, '')))",
        (item_id, reported_at)).fetchone()[0]
    reported = level["reported_quantity"] if level else 0
    return reported + pending, pending, reported_at


def item_dict(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    quantity, pending, reported_at = local_stock(conn, row["id"])
    return {
        "sku": row["sku"], "barcode": row["barcode"], "title": row["title"],
        "price": row["price"], "variant_id": row["variant_id"],
        "inventory_item_id": row["inventory_item_id"],
        "active": bool(row["active"]), "inactive_reason": row["inactive_reason"],
        "stock": {"quantity": quantity, "unsynced_delta": pending,
                  "reported": quantity - pending, "reported_at": reported_at},
    }


def items_in_doubt(conn: sqlite3.Connection, read_at: str) -> set[int]:
    """Items whose Shopify quantity, read at ``read_at``, may or may not include a delta.

    A delta acknowledged after the read, or sent but not acknowledged, may have been
    applied before the read or after it; a pull must not replace such an item's reported
    quantity (the next pull will), or local stock could count that delta twice.
    """
    acked_late = conn.execute(
        "SELECT DISTINCT item_id FROM stock_deltas WHERE acknowledged = 1"
        " AND acknowledged_at >= ?", (read_at,)).fetchall()
    in_flight = conn.execute(
        "SELECT DISTINCT d.item_id FROM outbox o JOIN stock_deltas d ON"
        " (o.kind = 'inventory.adjust' AND d.id = json_extract(o.payload, '$.delta_id'))"
        " OR (o.kind = 'order.create' AND d.source = 'sale' AND d.source_id = o.subject_id)"
        " WHERE o.destination = 'shopify' AND d.acknowledged = 0"
        " AND o.state IN ('pending', 'inflight', 'dead')"
        " AND (o.state = 'inflight' OR o.attempts > 0 OR o.outcome_unknown = 1"
        " OR o.batch_id IS NOT NULL)").fetchall()
    return {r[0] for r in acked_late} | {r[0] for r in in_flight}
