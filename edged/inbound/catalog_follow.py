"""The catalogue follows the admin: products repriced, renamed, deleted; stock read back.

Each function runs in the caller's transaction (the inbox row's outcome is written in the
same one) and returns what it did, in words for the inbox.

- A product's state (:func:`apply_product`) updates its variants' items as a pull would
  (price, title, SKU, barcode; new variants become items); its items are inactive while the
  product is not ``ACTIVE``, and an item whose variant left the product is inactive too.
- A deleted product (:func:`apply_deletion`) leaves its items inactive: they keep their
  sales and stock history, and a sale of one is refused with ERR-4014.
- A level read (:func:`apply_levels`) replaces an item's reported quantity (the first term of
  local stock) with Shopify's ``available`` as read at ``read_at``, never the deltas Shopify
  has not acknowledged (the second term). A delta acknowledged after the read, or in flight,
  may or may not be in that number: such an item keeps its older report (``IN_DOUBT``) and
  is read again later. A read older than the report kept is not applied.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edged.stock import catalog_import, records

if TYPE_CHECKING:
    from sync.shopify_admin.states import LevelState, ProductState

INACTIVE_STATUSES = {"ARCHIVED": "archived in Shopify", "DRAFT": "a draft in Shopify"}


def _money(amount: int | None) -> str:
    return "no price" if amount is None else str(amount)


def apply_product(conn: sqlite3.Connection, product: ProductState, now: str) -> str:
    """Write ``product``'s variants onto the local catalogue; what changed, in words."""
    ids = [v.variant_id for v in product.variants]
    marks = ", ".join("?" * len(ids)) or "''"
    before = {r["variant_id"]: r for r in conn.execute(
        f"SELECT variant_id, price, active, title FROM items WHERE variant_id IN ({marks})",  # noqa: S608
        ids).fetchall()}
    rows = [catalog_import.CatalogueRow(sku=v.sku, barcode=v.barcode, title=v.title,
                                        price=v.price, variant_id=v.variant_id,
                                        inventory_item_id=v.inventory_item_id, quantity=None,
                                        product_id=product.id)
            for v in product.variants if v.sku]
    if rows:
        catalog_import.apply(conn, rows, "shopify-pull")
    reason = INACTIVE_STATUSES.get(product.status)
    conn.executemany("UPDATE items SET active = ?, inactive_reason = ? WHERE variant_id = ?",
                     [(0 if reason else 1, f"product {reason}" if reason else None,
                       v.variant_id) for v in product.variants])
    gone = conn.execute(
        f"UPDATE items SET active = 0, inactive_reason = 'variant deleted in Shopify',"  # noqa: S608
        f" updated_at = ? WHERE product_id = ? AND active = 1 AND variant_id NOT IN ({marks})",
        (now, product.id, *ids)).rowcount
    said: list[str] = []
    for v in product.variants:
        old = before.get(v.variant_id)
        if old is None:
            if v.sku:
                said.append(f"{v.sku} new")
        elif old["price"] != v.price:
            said.append(f"{v.sku or v.variant_id} repriced {_money(old['price'])} ->"
                        f" {v.price} ({product.currency} minor units)")
        if old is not None and bool(old["active"]) == bool(reason):
            said.append(f"{v.sku or v.variant_id} {'inactive: ' + reason if reason else 'active'}")
    if gone:
        said.append(f"{gone} item(s) whose variant left the product inactive")
    skipped = sum(1 for v in product.variants if not v.sku)
    if skipped:
        said.append(f"{skipped} variant(s) without SKU not kept")
    return f"{product.title}: " + ("; ".join(said) if said else "nothing changed locally")


def apply_deletion(conn: sqlite3.Connection, product_id: str, when: str, now: str) -> str:
    """The product is gone from Shopify: its items stay, inactive."""
    n = conn.execute("UPDATE items SET active = 0, inactive_reason = ?, updated_at = ?"
                     " WHERE product_id = ? AND active = 1",
                     (f"product deleted in Shopify ({when})", now, product_id)).rowcount
    if n:
        return f"{n} item(s) of the deleted product inactive; their history is kept"
    known = conn.execute("SELECT count(*) FROM items WHERE product_id = ?",
                         (product_id,)).fetchone()[0]
    return "its items were inactive already" if known else "no local item of this product"


class LevelOutcome(enum.Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    IN_DOUBT = "in_doubt"
    OLDER = "older"
    UNKNOWN_ITEM = "unknown_item"
    NOT_STOCKED = "not_stocked"


@dataclass(frozen=True, slots=True)
class LevelResult:
    level: LevelState
    outcome: LevelOutcome
    message: str


def apply_levels(conn: sqlite3.Connection, levels: Sequence[LevelState]) -> list[LevelResult]:
    """Apply level reads (see the module docstring), in the caller's transaction."""
    doubt: dict[str, set[int]] = {}
    out: list[LevelResult] = []
    for level in levels:
        row = conn.execute("SELECT id, sku FROM items WHERE inventory_item_id = ?",
                           (level.inventory_item_id,)).fetchone()
        if row is None:
            out.append(LevelResult(level, LevelOutcome.UNKNOWN_ITEM,
                                   f"{level.inventory_item_id} is not in the local catalogue"))
            continue
        item_id, sku = row[0], row[1] or level.inventory_item_id
        if level.available is None:
            out.append(LevelResult(level, LevelOutcome.NOT_STOCKED,
                                   f"{sku}: not stocked at this location"))
            continue
        kept = conn.execute("SELECT reported_quantity, reported_at FROM inventory_levels"
                            " WHERE item_id = ?", (item_id,)).fetchone()
        if kept is not None and kept[1] > level.read_at:
            out.append(LevelResult(level, LevelOutcome.OLDER,
                                   f"{sku}: a later read ({kept[1]}) is kept"))
            continue
        if level.read_at not in doubt:
            doubt[level.read_at] = records.items_in_doubt(conn, level.read_at)
        if item_id in doubt[level.read_at]:
            out.append(LevelResult(level, LevelOutcome.IN_DOUBT,
                                   f"{sku}: a stock change of the store is on its way to"
                                   " Shopify; Shopify's quantity may or may not include it"))
            continue
        conn.execute("INSERT INTO inventory_levels (item_id, reported_quantity, reported_at)"
                     " VALUES (?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET"
                     " reported_quantity = excluded.reported_quantity,"
                     " reported_at = excluded.reported_at",
                     (item_id, level.available, level.read_at))
        quantity, pending, _ = records.local_stock(conn, item_id)
        before = kept[0] if kept is not None else None
        verb = LevelOutcome.UNCHANGED if before == level.available else LevelOutcome.APPLIED
        out.append(LevelResult(level, verb, f"{sku}: Shopify {before} -> {level.available}"
                               f" available, local {quantity} ({pending:+d} not in Shopify's"
                               " figure yet)" if pending else
                               f"{sku}: Shopify {before} -> {level.available} available,"
                               f" local {quantity}"))
    return out


def active_skus(conn: sqlite3.Connection, item_ids: Iterable[str]) -> list[str]:
    """The SKUs of the local items with these inventory item ids (for messages)."""
    found = []
    for item in item_ids:
        row = conn.execute("SELECT sku FROM items WHERE inventory_item_id = ?",
                           (item,)).fetchone()
        if row is not None and row[0]:
            found.append(str(row[0]))
    return found


__all__ = ["LevelOutcome", "LevelResult", "active_skus", "apply_deletion", "apply_levels",
           "apply_product"]
