"""``edged items import FILE``: seed the catalogue from CSV or JSON until the pull exists.

Columns (CSV header, or JSON keys of a list of objects):
``sku,barcode,title,price,variant_id,inventory_item_id,quantity``; price in minor units;
ids as Shopify GIDs (``gid://shopify/ProductVariant/1``) or bare numbers. ``quantity`` sets
the reported stock (the first term of local stock), like a pull from Shopify would.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edged.errors import EdgedError
from edged.stock import records
from edged.stock.inventory import inventory_item_gid, variant_gid
from edged.store import audit
from sync.core.clock import utc_iso

COLUMNS = ("sku", "barcode", "title", "price", "variant_id", "inventory_item_id", "quantity")


class ImportFileError(EdgedError):
    """The catalogue file cannot be imported; the message names the row and column."""


@dataclass(frozen=True, slots=True)
class CatalogueRow:
    sku: str
    barcode: str | None
    title: str
    price: int | None
    variant_id: str | None
    inventory_item_id: str | None
    quantity: int | None
    product_id: str | None = None
    """Shopify's product (a pull knows it): a deleted product's items become inactive."""


def _int(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool | float):
        raise ImportFileError(f"{where}: must be a whole number, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ImportFileError(f"{where}: must be a whole number, got {value!r}") from None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse(path: Path) -> list[CatalogueRow]:
    raw = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise ImportFileError(f"{path}: must be a JSON list of objects")
        entries: list[dict[str, Any]] = data
    else:
        reader = csv.DictReader(io.StringIO(raw))
        missing = [c for c in ("sku",) if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportFileError(f"{path}: the header must name {', '.join(COLUMNS)}")
        entries = list(reader)
    rows = []
    for n, entry in enumerate(entries, start=1 if path.suffix.lower() == ".json" else 2):
        where = f"{path}: {'item' if path.suffix.lower() == '.json' else 'line'} {n}"
        unknown = sorted(set(entry) - set(COLUMNS))
        if unknown:
            raise ImportFileError(f"{where}: unknown column {unknown[0]!r}")
        sku = _text(entry.get("sku"))
        if sku is None:
            raise ImportFileError(f"{where}: sku is required")
        price = _int(entry.get("price"), f"{where}: price")
        if price is not None and price < 0:
            raise ImportFileError(f"{where}: price must not be negative")
        variant = _text(entry.get("variant_id"))
        inv = _text(entry.get("inventory_item_id"))
        rows.append(CatalogueRow(
            sku=sku, barcode=_text(entry.get("barcode")), title=_text(entry.get("title")) or "",
            price=price, variant_id=variant_gid(variant) if variant else None,
            inventory_item_id=inventory_item_gid(inv) if inv else None,
            quantity=_int(entry.get("quantity"), f"{where}: quantity")))
    return rows


def _local_item(conn: sqlite3.Connection, row: CatalogueRow) -> int | None:
    """The local item ``row`` describes: the one holding its Shopify ids (they never change;
    a SKU may be renamed), else the one with its SKU."""
    for column, value in (("variant_id", row.variant_id),
                          ("inventory_item_id", row.inventory_item_id), ("sku", row.sku)):
        if value is not None:
            found = conn.execute(f"SELECT id FROM items WHERE {column} = ?",  # noqa: S608
                                 (value,)).fetchone()
            if found is not None:
                return int(found[0])
    return None


def _upsert(conn: sqlite3.Connection, row: CatalogueRow, now: str) -> int:
    """Write ``row`` onto its local item (by Shopify ids first) and return the item's id.

    What ``row`` claims (its SKU, its ids) it takes from any other local item: a SKU renamed
    or swapped in Shopify moves with the variant, the item left without one keeps its
    history (sales, stock changes) under its ids.
    """
    item_id = _local_item(conn, row)
    if item_id is None:
        cur = conn.execute("INSERT INTO items (sku, barcode, title, price, variant_id,"
                           " inventory_item_id, updated_at, product_id) VALUES (?, ?, ?, ?, ?,"
                           " ?, ?, ?)",
                           (row.sku, row.barcode, row.title, row.price, row.variant_id,
                            row.inventory_item_id, now, row.product_id))
        assert cur.lastrowid is not None
        return cur.lastrowid
    for column, value in (("sku", row.sku), ("variant_id", row.variant_id),
                          ("inventory_item_id", row.inventory_item_id)):
        if value is not None:
            conn.execute(f"UPDATE items SET {column} = NULL, updated_at = ?"  # noqa: S608
                         f" WHERE {column} = ? AND id != ?", (now, value, item_id))
    conn.execute("UPDATE items SET sku = ?, barcode = ?, title = ?, price = ?, variant_id = ?,"
                 " inventory_item_id = ?, updated_at = ?, product_id = coalesce(?, product_id)"
                 " WHERE id = ?",
                 (row.sku, row.barcode, row.title, row.price, row.variant_id,
                  row.inventory_item_id, now, row.product_id, item_id))
    return item_id


def _reported_later(conn: sqlite3.Connection, item_id: int, reported_at: str) -> bool:
    row = conn.execute("SELECT reported_at FROM inventory_levels WHERE item_id = ?",
                       (item_id,)).fetchone()
    return row is not None and row[0] > reported_at


def apply(conn: sqlite3.Connection, rows: list[CatalogueRow], source: str,
          reported_at: str | None = None) -> int:
    """Upsert each row onto its local item (by Shopify ids, else by SKU) in the caller's
    transaction; return how many rows were written.

    ``reported_at`` is when the quantities were read (a pull's start); deltas acknowledged
    after it still count on top of them.
    """
    now = utc_iso(datetime.now(UTC))
    reported = reported_at or now
    doubtful = records.items_in_doubt(conn, reported_at) if reported_at else set()
    for row in rows:
        item_id = _upsert(conn, row, now)
        if row.quantity is not None:
            if item_id in doubtful:
                continue  # a change in flight: keep the older report until the next pull
            if reported_at is not None and _reported_later(conn, item_id, reported_at):
                continue  # a read made after this one (a webhook's, the poll's) is kept
            conn.execute(
                "INSERT INTO inventory_levels (item_id, reported_quantity, reported_at)"
                " VALUES (?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET"
                " reported_quantity = excluded.reported_quantity,"
                " reported_at = excluded.reported_at", (item_id, row.quantity, reported))
    if source != "shopify-pull":  # a pull is not a change made in the store
        audit.append(conn, "cli", "catalogue.imported", source, {"rows": len(rows)})
    return len(rows)
