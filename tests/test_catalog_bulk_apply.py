"""The bulk catalogue's apply on a real SQLite file: what it replaces and what it keeps.

Local stock = Shopify's figure as read at a time + the store's changes not in that figure
(docs/design.md, sync). A figure read at ``pulled_at`` includes every change acknowledged before it;
a change in flight may or may not be in it; a later read wins.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edged.inbound.catalog_bulk import apply_bulk
from edged.stock import catalog_import, records
from edged.store.database import open_sync
from sync.shopify_admin.bulk import BulkVariant
from sync.shopify_admin.pull import CatalogueEntry

T0 = "2026-12-01T10:00:00.000Z"
ACKED = "2026-12-01T10:05:00.000Z"
PULLED = "2026-12-01T10:10:00.000Z"
LATER = "2026-12-01T10:15:00.000Z"


def _variant(n: int, available: int, status: str = "ACTIVE") -> BulkVariant:
    entry = CatalogueEntry(sku=f"S-{n}", barcode=None, title=f"Item {n}", price=100 * n,
                           currency="EUR", variant_id=f"gid://shopify/ProductVariant/{n}",
                           inventory_item_id=f"gid://shopify/InventoryItem/{n}",
                           available=available, product_id=f"gid://shopify/Product/{n}")
    return BulkVariant(entry, status, T0, f"Item {n}")


def _conn(tmp_path: Path) -> sqlite3.Connection:
    conn = open_sync(tmp_path / "edged.db")
    conn.execute("BEGIN IMMEDIATE")
    rows = [catalog_import.CatalogueRow(sku=f"S-{n}", barcode=None, title=f"Item {n}",
                                        price=100 * n,
                                        variant_id=f"gid://shopify/ProductVariant/{n}",
                                        inventory_item_id=f"gid://shopify/InventoryItem/{n}",
                                        quantity=10) for n in range(1, 7)]
    catalog_import.apply(conn, rows, "test", reported_at=T0)
    conn.execute("COMMIT")
    return conn


def _delta(conn: sqlite3.Connection, n: int, delta: int, acked_at: str | None) -> None:
    item = conn.execute("SELECT id FROM items WHERE sku = ?", (f"S-{n}",)).fetchone()[0]
    conn.execute("INSERT INTO stock_deltas (item_id, delta, source, source_id, acknowledged,"
                 " acknowledged_at, created_at) VALUES (?, ?, 'adjustment', ?, ?, ?, ?)",
                 (item, delta, f"adj-{n}", 1 if acked_at else 0, acked_at, T0))
    if acked_at is None:  # in flight: its outbox row leased
        conn.execute("INSERT INTO outbox (destination, kind, subject_id, idempotency_key,"
                     " payload, state, created_at, updated_at) VALUES ('shopify',"
                     " 'inventory.adjust', ?, ?, ?, 'inflight', ?, ?)",
                     (f"adj-{n}", f"key-{n}", f'{{"delta_id": {conn.execute("SELECT max(id) FROM stock_deltas").fetchone()[0]}}}',
                      T0, T0))


def _stock(conn: sqlite3.Connection, n: int) -> tuple[int, int, str | None]:
    item = conn.execute("SELECT id FROM items WHERE sku = ?", (f"S-{n}",)).fetchone()[0]
    return records.local_stock(conn, item)


def test_what_the_file_replaces_and_what_it_keeps(tmp_path: Path) -> None:
    conn = _conn(tmp_path)
    conn.execute("BEGIN IMMEDIATE")
    _delta(conn, 2, +5, ACKED)  # acknowledged before the pull: Shopify's 15 includes it
    _delta(conn, 3, +5, None)  # in flight: Shopify's figure may or may not include it
    item4 = conn.execute("SELECT id FROM items WHERE sku = 'S-4'").fetchone()[0]
    conn.execute("UPDATE inventory_levels SET reported_quantity = 8, reported_at = ?"
                 " WHERE item_id = ?", (LATER, item4))  # a webhook read after the pull
    variants = [_variant(1, 10), _variant(2, 15), _variant(3, 12), _variant(4, 9),
                _variant(5, 7), _variant(6, 10, status="ARCHIVED")]
    written, inactive, levels, kept = apply_bulk(conn, variants, PULLED, LATER,
                                                 complete=True)
    conn.execute("COMMIT")
    assert _stock(conn, 1) == (10, 0, T0)  # the same figure, nothing since: not rewritten
    assert _stock(conn, 2)[:2] == (15, 0)  # the +5 is in Shopify's 15, counted once
    assert _stock(conn, 3) == (15, 5, T0)  # kept: 10 + 5 in flight, not 12 + 5
    assert _stock(conn, 4) == (8, 0, LATER)  # the later read wins
    assert _stock(conn, 5) == (7, 0, PULLED)
    assert (levels, kept) == (2, 2)  # S-2 and S-5 written; S-3 and S-4 kept
    assert written == 6  # every item gained its product
    assert inactive == 0
    archived = conn.execute("SELECT active, inactive_reason FROM items WHERE sku = 'S-6'"
                            ).fetchone()
    assert tuple(archived) == (0, "product archived in Shopify")
    conn.execute("BEGIN IMMEDIATE")  # the same file again: nothing to write
    assert apply_bulk(conn, variants, PULLED, LATER, complete=True) == (0, 0, 0, 2)
    conn.execute("COMMIT")
    conn.close()
