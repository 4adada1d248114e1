"""Reading the catalogue and its orders as the API shows them: an order with its lines, an
item with its local stock, and the items whose Shopify figure a pull must not trust yet.
Used inside write transactions and on readers."""

from __future__ import annotations

import sqlite3
from typing import Any


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
