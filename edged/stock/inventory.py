"""The catalogue, local stock, sales and stock adjustments.

Local stock = the last quantity Shopify reported + the deltas it has not acknowledged yet
(docs/design.md, sync). A sale decrements stock once: one local delta per line, and upstream only
through the order (never again through an adjustment).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from edged.config import Config
from edged.errors import ApiError
from edged.events import EventBus
from edged.ids import new_id
from edged.payments.records import payment_row
from edged.payments.service import Answer
from edged.payments.states import HAND_OVER
from edged.stock import records
from edged.store import Database, audit, idempotency
from edged.store.idempotency import IdemRecord
from sync.core import contract, outbox
from sync.core.clock import Clock, utc_iso

MAX_DELTA = 1_000_000
MAX_QUANTITY = 100_000

# Shopify's inventory adjustment reasons (InventoryAdjustQuantitiesInput.reason).
REASONS = ("correction", "cycle_count_available", "damaged", "movement_created",
           "movement_updated", "movement_received", "movement_canceled", "other", "promotion",
           "quality_control", "received", "reservation_created", "reservation_deleted",
           "reservation_updated", "restock", "safety_stock", "shrinkage")
#: The reason of a stock count that names none.
COUNT_REASON = "cycle_count_available"


def variant_gid(value: str) -> str:
    return _gid("ProductVariant", value)


def inventory_item_gid(value: str) -> str:
    return _gid("InventoryItem", value)


def _gid(kind: str, value: str) -> str:
    value = value.strip()
    return f"gid://shopify/{kind}/{value}" if value.isdigit() else value


@dataclass(frozen=True, slots=True)
class ItemRef:
    """How a request names an item: exactly one of these is set."""

    sku: str | None = None
    barcode: str | None = None
    variant_id: str | None = None
    inventory_item_id: str | None = None

    def describe(self) -> str:
        for name in ("sku", "barcode", "variant_id", "inventory_item_id"):
            value = getattr(self, name)
            if value is not None:
                return f"{name} {value!r}"
        return "no identifier"


@dataclass(frozen=True, slots=True)
class OrderLine:
    item: ItemRef
    quantity: int
    price: int


@dataclass(frozen=True, slots=True)
class StockChange:
    item: ItemRef
    delta: int


@dataclass(frozen=True, slots=True)
class StockCount:
    item: ItemRef
    quantity: int
    """What is on the shelf: local stock becomes this."""


def find_item(conn: sqlite3.Connection, ref: ItemRef) -> sqlite3.Row | None:
    if ref.sku is not None:
        row = conn.execute("SELECT * FROM items WHERE sku = ?", (ref.sku,)).fetchone()
    elif ref.variant_id is not None:
        row = conn.execute("SELECT * FROM items WHERE variant_id = ?",
                           (variant_gid(ref.variant_id),)).fetchone()
    elif ref.inventory_item_id is not None:
        row = conn.execute("SELECT * FROM items WHERE inventory_item_id = ?",
                           (inventory_item_gid(ref.inventory_item_id),)).fetchone()
    elif ref.barcode is not None:
        row = conn.execute("SELECT * FROM items WHERE barcode = ? ORDER BY id LIMIT 1",
                           (ref.barcode,)).fetchone()
    else:
        row = None
    return row  # type: ignore[no-any-return]


class InventoryService:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, clock: Clock) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._clock = clock

    def _store_uri(self, kind: str, ident: str) -> str:
        return f"edged://{self._cfg.store.id}/{kind}/{ident}"

    def _require_item(self, conn: sqlite3.Connection, ref: ItemRef, where: str) -> sqlite3.Row:
        row = find_item(conn, ref)
        if row is None:
            raise ApiError("ERR-4001", f"{where}: no item with {ref.describe()} in the"
                           " catalogue", details={"field": where})
        if not row["active"]:
            raise ApiError("ERR-4014", f"{where}: item {ref.describe()} is no longer sold"
                           f" ({row['inactive_reason'] or 'inactive'}); its history is kept",
                           details={"field": where})
        if self._cfg.shopify is not None and not row["inventory_item_id"]:
            raise ApiError("ERR-4001", f"{where}: item {ref.describe()} has no Shopify"
                           " inventory item id, so its stock cannot be synced",
                           details={"field": where})
        return row

    async def item(self, ref: ItemRef) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = find_item(conn, ref)
            return records.item_dict(conn, row) if row is not None else None

        body = await self._db.read(read)
        if body is None:
            raise ApiError("ERR-4002", f"no item with {ref.describe()}")
        return body

    # -- sales ----------------------------------------------------------------------------

    async def create_order(self, reference: str, lines: list[OrderLine],
                           payment_ids: list[str], idem: IdemRecord, actor: str) -> Answer:
        order_id = new_id("ord")
        now = utc_iso(self._clock.now())

        def write(conn: sqlite3.Connection) -> Answer:
            if conn.execute("SELECT 1 FROM orders WHERE reference = ?", (reference,)).fetchone():
                raise ApiError("ERR-4008", f"an order with reference {reference!r} exists;"
                               " use a new reference for a new sale")
            items = [self._require_item(conn, ln.item, f"lines[{i}]")
                     for i, ln in enumerate(lines)]
            total = sum(ln.quantity * ln.price for ln in lines)
            payments = self._order_payments(conn, payment_ids)
            currencies = {p["currency"] for p in payments}
            if len(currencies) > 1:
                raise ApiError("ERR-4007", "the payments are in several currencies:"
                               f" {', '.join(sorted(currencies))}")
            currency = currencies.pop() if currencies else self._cfg.store.currency
            paid = sum(p["amount"] for p in payments)
            if paid != total:
                raise ApiError("ERR-4006", f"the lines add up to {total} {currency} but the"
                               f" payments to {paid}", details={"total": total, "paid": paid})
            conn.execute("INSERT INTO orders (id, reference, currency, total, created_at)"
                         " VALUES (?, ?, ?, ?, ?)", (order_id, reference, currency, total, now))
            for i, (ln, item) in enumerate(zip(lines, items, strict=True)):
                conn.execute("INSERT INTO order_lines (order_id, line_no, item_id, quantity,"
                             " price) VALUES (?, ?, ?, ?, ?)",
                             (order_id, i, item["id"], ln.quantity, ln.price))
                conn.execute("INSERT INTO stock_deltas (item_id, delta, source, source_id,"
                             " created_at) VALUES (?, ?, 'sale', ?, ?)",
                             (item["id"], -ln.quantity, order_id, now))
            for p in payments:
                conn.execute("UPDATE payments SET order_id = ? WHERE id = ?", (order_id, p["id"]))
            audit.append(conn, actor, "order.created", order_id,
                         {"reference": reference, "total": total, "currency": currency,
                          "payments": payment_ids})
            body = records.get_order(conn, order_id)
            assert body is not None
            if self._cfg.shopify is not None:
                outbox.enqueue(conn, "shopify", self._order_payload(body, items, payments), now)
            idempotency.save(conn, idem, 201, body)
            return Answer(201, body)

        answer = await self._db.write(write)
        self._bus.publish("order", answer.body)
        return answer

    def _order_payments(self, conn: sqlite3.Connection,
                        payment_ids: list[str]) -> list[sqlite3.Row]:
        if len(set(payment_ids)) != len(payment_ids):
            raise ApiError("ERR-1005", "payments: the same payment is named twice")
        rows = []
        for pid in payment_ids:
            row = payment_row(conn, pid)
            if row is None:
                raise ApiError("ERR-4003", f"payments: no payment {pid!r}")
            if row["state"] not in HAND_OVER:
                raise ApiError("ERR-4004", f"payments: payment {pid} is {row['state']}, not"
                               " approved")
            if row["order_id"] is not None:
                raise ApiError("ERR-4005", f"payments: payment {pid} already pays order"
                               f" {row['order_id']}")
            rows.append(row)
        return rows

    def _order_payload(self, order: dict[str, Any], items: list[sqlite3.Row],
                       payments: list[sqlite3.Row]) -> contract.OrderCreate:
        """Everything Shopify's orderCreate needs, fixed at the time of sale."""
        return contract.OrderCreate(
            order_id=order["id"], reference=order["reference"],
            currency=order["currency"], processed_at=order["created_at"],
            source_identifier=self._store_uri("orders", order["id"]),
            lines=tuple(contract.OrderLine(variant_id=item["variant_id"], sku=item["sku"],
                                           title=item["title"], quantity=ln["quantity"],
                                           price=ln["price"])
                        for ln, item in zip(order["lines"], items, strict=True)),
            transactions=tuple(contract.OrderTransaction(
                payment_id=p["id"], method=p["method"], gateway=p["processor"] or p["method"],
                amount=p["amount"], currency=p["currency"], auth_code=p["auth_code"],
                processed_at=p["finished_at"] or p["created_at"]) for p in payments),
        )

    # -- adjustments ----------------------------------------------------------------------

    async def adjust(self, reason: str, reference: str | None, changes: list[StockChange],
                     idem: IdemRecord, actor: str) -> Answer:
        adjustment_id = new_id("adj")
        now = utc_iso(self._clock.now())
        uri = self._store_uri("adjustments", adjustment_id)

        def write(conn: sqlite3.Connection) -> Answer:
            items = [self._require_item(conn, ch.item, f"changes[{i}]")
                     for i, ch in enumerate(changes)]
            conn.execute("INSERT INTO adjustments (id, reason, reference, created_at)"
                         " VALUES (?, ?, ?, ?)", (adjustment_id, reason, reference, now))
            result = []
            for ch, item in zip(changes, items, strict=True):
                cur = conn.execute("INSERT INTO stock_deltas (item_id, delta, source,"
                                   " source_id, created_at) VALUES (?, ?, 'adjustment', ?, ?)",
                                   (item["id"], ch.delta, adjustment_id, now))
                if self._cfg.shopify is not None:
                    assert cur.lastrowid is not None
                    outbox.enqueue(conn, "shopify", contract.InventoryAdjust(
                        adjustment_id=adjustment_id, delta_id=cur.lastrowid,
                        inventory_item_id=item["inventory_item_id"], delta=ch.delta,
                        reason=reason, reference_uri=uri), now)
                quantity, _, _ = records.local_stock(conn, item["id"])
                result.append({"sku": item["sku"], "inventory_item_id":
                               item["inventory_item_id"], "delta": ch.delta,
                               "quantity": quantity})
            audit.append(conn, actor, "inventory.adjusted", adjustment_id,
                         {"reason": reason, "reference": reference,
                          "changes": [{"sku": r["sku"], "delta": r["delta"]} for r in result]})
            body = {"id": adjustment_id, "reason": reason, "reference": reference,
                    "created_at": now, "changes": result}
            idempotency.save(conn, idem, 201, body)
            return Answer(201, body)

        answer = await self._db.write(write)
        self._bus.publish("inventory", answer.body)
        return answer

    # -- counts ---------------------------------------------------------------------------

    async def count(self, reason: str, reference: str | None, counts: list[StockCount],
                    idem: IdemRecord, actor: str) -> Answer:
        """A stock count: local stock becomes the counted quantity.

        Recorded as an adjustment whose delta is the difference from local stock, and sent
        to Shopify as ``inventorySetQuantities`` with that local stock as
        ``changeFromQuantity``: if Shopify holds another quantity by then (a sale online, a
        change made in the admin), the count is refused there (ERR-6011, dead, with an
        alert) instead of erasing that change.
        """
        count_id = new_id("cnt")
        now = utc_iso(self._clock.now())
        uri = self._store_uri("counts", count_id)

        def write(conn: sqlite3.Connection) -> Answer:
            items = [self._require_item(conn, c.item, f"changes[{i}]")
                     for i, c in enumerate(counts)]
            seen: set[int] = set()
            for i, item in enumerate(items):
                if item["id"] in seen:
                    raise ApiError("ERR-1005", f"body.changes[{i}]: the item is counted twice",
                                   details={"field": f"changes[{i}]"})
                seen.add(item["id"])
            conn.execute("INSERT INTO adjustments (id, reason, reference, created_at)"
                         " VALUES (?, ?, ?, ?)", (count_id, reason, reference, now))
            result = []
            for c, item in zip(counts, items, strict=True):
                before, _, _ = records.local_stock(conn, item["id"])
                delta = c.quantity - before
                cur = conn.execute("INSERT INTO stock_deltas (item_id, delta, source,"
                                   " source_id, created_at) VALUES (?, ?, 'adjustment', ?, ?)",
                                   (item["id"], delta, count_id, now))
                if self._cfg.shopify is not None:
                    assert cur.lastrowid is not None
                    outbox.enqueue(conn, "shopify", contract.InventorySet(
                        count_id=count_id, delta_id=cur.lastrowid,
                        inventory_item_id=item["inventory_item_id"], quantity=c.quantity,
                        last_known_quantity=before, reason=reason, reference_uri=uri), now)
                result.append({"sku": item["sku"], "inventory_item_id":
                               item["inventory_item_id"], "quantity": c.quantity,
                               "previous": before, "delta": delta})
            audit.append(conn, actor, "inventory.counted", count_id,
                         {"reason": reason, "reference": reference,
                          "changes": [{"sku": r["sku"], "quantity": r["quantity"],
                                       "delta": r["delta"]} for r in result]})
            body = {"id": count_id, "reason": reason, "reference": reference,
                    "created_at": now, "changes": result}
            idempotency.save(conn, idem, 201, body)
            return Answer(201, body)

        answer = await self._db.write(write)
        self._bus.publish("inventory", answer.body)
        return answer
