"""Online orders picked up at this store: what Shopify assigned here, ready, handed over.

A pick-up is one Shopify fulfillment order whose delivery method is ``PICK_UP`` and whose
assigned location is this store's ``[shopify] location_id``. It is kept with its lines and
the customer's name, never an amount, a transaction or an address. Its ``status``:

- ``open``: to prepare; ``ready``: the register marked it ready (Shopify tells the
  customer); ``handed_over``: the customer took it;
- ``cancelled``: the order or the fulfillment order was cancelled in Shopify; ``closed``:
  Shopify closed it without this store (fulfilled in the admin, moved to another location).

Marking ready or handed over is one transaction: the status, the outbox row that carries it
to Shopify (``pickup.ready``, ``pickup.handover``: each applied once, see
:mod:`sync.shopify_admin.pickup`), the audit entry and the stored answer of the request.

Stock: the pick-up's quantities were taken off ``available`` at this location by Shopify
when the order was placed (its reservation), so local stock learns them by reading the
levels again (a ``daemon`` inbox row, added when a pick-up first shows); the hand-over
changes ``on_hand`` and ``committed`` at Shopify, not ``available``, so local stock does not
move then. ``docs/design.md`` explains the reconciliation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edged.errors import ApiError
from edged.events import EventBus
from edged.ids import new_id
from edged.inbound import inbox
from edged.store import Database, audit, idempotency
from edged.store.answer import Answer
from edged.store.idempotency import IdemRecord
from sync.core import contract, outbox
from sync.core.clock import Clock, utc_iso

if TYPE_CHECKING:
    from sync.shopify_admin.states import FulfillmentOrderState

Event = tuple[str, dict[str, Any]]

ACTIVE = ("open", "ready")
LISTS = {"active": ACTIVE, "open": ("open",), "ready": ("ready",),
         "handed_over": ("handed_over",), "cancelled": ("cancelled",), "closed": ("closed",),
         "all": ("open", "ready", "handed_over", "cancelled", "closed")}
_FIELDS = ("id", "fulfillment_order_id", "order_id", "order_name", "customer_name",
           "location_id", "status", "shopify_status", "ordered_at", "created_at",
           "updated_at", "ready_at", "handed_over_at")


# -- reading ------------------------------------------------------------------------------


def _sync_state(conn: sqlite3.Connection, kind: str, pickup_id: str) -> str | None:
    row = conn.execute("SELECT state FROM outbox WHERE kind = ? AND subject_id = ?"
                       " ORDER BY id DESC LIMIT 1", (kind, pickup_id)).fetchone()
    return None if row is None else str(row[0])


def pickup_dict(conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    out = {f: row[f] for f in _FIELDS}
    lines = conn.execute("SELECT * FROM pickup_lines WHERE pickup_id = ? ORDER BY rowid",
                         (row["id"],)).fetchall()
    out["lines"] = []
    for ln in lines:
        item = conn.execute("SELECT sku FROM items WHERE inventory_item_id = ?",
                            (ln["inventory_item_id"],)).fetchone() \
            if ln["inventory_item_id"] else None
        out["lines"].append({"line_item_id": ln["line_item_id"], "sku": ln["sku"],
                             "title": ln["title"], "quantity": ln["quantity"],
                             "remaining": ln["remaining"],
                             "inventory_item_id": ln["inventory_item_id"],
                             "local_sku": item[0] if item else None})
    out["sync"] = {"ready": _sync_state(conn, contract.OutboxKind.PICKUP_READY, row["id"]),
                   "handed_over": _sync_state(conn, contract.OutboxKind.PICKUP_HANDOVER,
                                              row["id"])}
    return out


def list_pickups(conn: sqlite3.Connection, statuses: Iterable[str],
                 limit: int) -> list[dict[str, Any]]:
    wanted = tuple(statuses)
    marks = ", ".join("?" * len(wanted))
    rows = conn.execute(f"SELECT * FROM pickups WHERE status IN ({marks})"  # noqa: S608
                        " ORDER BY n DESC LIMIT ?", (*wanted, limit)).fetchall()
    return [pickup_dict(conn, r) for r in rows]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    out = dict.fromkeys(LISTS["all"], 0)
    for status, n in conn.execute("SELECT status, count(*) FROM pickups GROUP BY status"):
        out[status] = n
    return out


# -- what Shopify says --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one fulfillment order did."""

    outcome: str
    changed: bool
    events: tuple[Event, ...] = ()
    refresh: tuple[str, ...] = ()
    """Inventory items whose level at this location to read again."""


def _status(current: str, fo: FulfillmentOrderState, ours: bool) -> str:
    if current == "handed_over":
        return current
    if fo.status == "CANCELLED" or fo.order_cancelled:
        return "cancelled"
    if not ours or fo.status == "CLOSED":
        return "closed"
    return current


def _write_lines(conn: sqlite3.Connection, pickup_id: str, fo: FulfillmentOrderState) -> None:
    for ln in fo.lines:
        conn.execute("INSERT INTO pickup_lines (pickup_id, line_item_id, sku, title, quantity,"
                     " remaining, inventory_item_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                     " ON CONFLICT (pickup_id, line_item_id) DO UPDATE SET"
                     " quantity = excluded.quantity, remaining = excluded.remaining,"
                     " sku = excluded.sku, title = excluded.title",
                     (pickup_id, ln.line_item_id, ln.sku, ln.title, ln.quantity, ln.remaining,
                      ln.inventory_item_id))


def apply_fulfillment_order(conn: sqlite3.Connection, fo: FulfillmentOrderState,
                            location_id: str, now: str) -> Applied:
    """Record ``fo`` as Shopify shows it now, in the caller's transaction."""
    ours = fo.is_pickup_at(location_id)
    row = conn.execute("SELECT * FROM pickups WHERE fulfillment_order_id = ?",
                       (fo.id,)).fetchone()
    name = fo.order_name or fo.id
    if row is None:
        if not ours:
            return Applied(f"{name}: not a pick-up at this store ({fo.method_type or 'no'}"
                           f" delivery at {fo.location_id or 'no location'})", False)
        if fo.status in ("CLOSED", "CANCELLED") or fo.order_cancelled:
            return Applied(f"{name}: a pick-up already {fo.status.lower()}; not listed",
                           False)
        pickup_id = new_id("pu")
        conn.execute(
            "INSERT INTO pickups (id, fulfillment_order_id, order_id, order_name,"
            " customer_name, location_id, status, shopify_status, shopify_updated_at,"
            " ordered_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?,"
            " ?, ?)", (pickup_id, fo.id, fo.order_id, fo.order_name, fo.customer_name,
                       location_id, fo.status, fo.updated_at, fo.created_at, now, now))
        _write_lines(conn, pickup_id, fo)
        items = sum(ln.quantity for ln in fo.lines)
        return Applied(f"new pick-up {name} for {fo.customer_name or 'a customer'}:"
                       f" {items} item(s)", True,
                       (("pickup", {"id": pickup_id, "status": "open", "event": "new"}),),
                       tuple(ln.inventory_item_id for ln in fo.lines if ln.inventory_item_id))
    status = _status(row["status"], fo, ours)
    conn.execute("UPDATE pickups SET status = ?, shopify_status = ?, shopify_updated_at = ?,"
                 " customer_name = coalesce(?, customer_name), updated_at = ? WHERE id = ?",
                 (status, fo.status, fo.updated_at, fo.customer_name, now, row["id"]))
    _write_lines(conn, row["id"], fo)
    if status == row["status"]:
        return Applied(f"pick-up {name}: {status} (Shopify: {fo.status.lower()})", True,
                       (("pickup", {"id": row["id"], "status": status}),))
    why = {"cancelled": "cancelled in Shopify", "closed": "closed in Shopify"
           if ours else "moved away from this store"}.get(status, status)
    if status in ("cancelled", "closed"):
        audit.append(conn, "shopify", f"pickup.{status}", row["id"],
                     {"fulfillment_order_id": fo.id, "shopify_status": fo.status})
    refresh = tuple(ln.inventory_item_id for ln in fo.lines if ln.inventory_item_id)
    return Applied(f"pick-up {name}: {row['status']} -> {status} ({why})", True,
                   (("pickup", {"id": row["id"], "status": status}),), refresh)


def refresh_levels(conn: sqlite3.Connection, items: Iterable[str], why: str,
                   now: str) -> int | None:
    """Queue a read of these items' levels (a ``daemon`` inbox row); None if none."""
    wanted = sorted(set(items))
    if not wanted:
        return None
    return inbox.add_daemon_row(conn, inbox.REFRESH_LEVELS, None,
                                        {"items": wanted, "why": why}, now,
                                        f"levels:{new_id('rf')}")


def synced(conn: sqlite3.Connection, kind: str, pickup_id: str, now: str) -> list[Event]:
    """The outbox carried a ready or a hand-over to Shopify (in its transaction)."""
    column = "ready_synced_at" if kind == contract.OutboxKind.PICKUP_READY \
        else "handed_over_synced_at"
    conn.execute(f"UPDATE pickups SET {column} = ?, updated_at = ? WHERE id = ?",  # noqa: S608
                 (now, now, pickup_id))
    return [("pickup", {"id": pickup_id, "event": "synced", "kind": kind})]


# -- what the register does ---------------------------------------------------------------


class PickupService:
    def __init__(self, db: Database, bus: EventBus, clock: Clock, shopify: bool) -> None:
        self._db = db
        self._bus = bus
        self._clock = clock
        self._shopify = shopify

    async def list(self, which: str, limit: int) -> list[dict[str, Any]]:
        statuses = LISTS[which]
        return await self._db.read(lambda c: list_pickups(c, statuses, limit))

    async def get(self, pickup_id: str) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT * FROM pickups WHERE id = ?", (pickup_id,)).fetchone()
            return None if row is None else pickup_dict(conn, row)

        found = await self._db.read(read)
        if found is None:
            raise ApiError("ERR-4011", f"no pick-up {pickup_id[:60]!r}")
        return found

    async def ready(self, pickup_id: str, idem: IdemRecord, actor: str) -> Answer:
        return await self._move(pickup_id, "ready", idem, actor)

    async def hand_over(self, pickup_id: str, idem: IdemRecord, actor: str) -> Answer:
        return await self._move(pickup_id, "handed_over", idem, actor)

    async def _move(self, pickup_id: str, target: str, idem: IdemRecord,
                    actor: str) -> Answer:
        now = utc_iso(self._clock.now())

        def write(conn: sqlite3.Connection) -> Answer:
            row = conn.execute("SELECT * FROM pickups WHERE id = ?", (pickup_id,)).fetchone()
            if row is None:
                raise ApiError("ERR-4011", f"no pick-up {pickup_id[:60]!r}")
            status = row["status"]
            if target == "ready":
                if status != "open":
                    raise ApiError("ERR-4012", f"pick-up {pickup_id} is {status}: only an"
                                   " open pick-up can be marked ready")
                payload: contract.Payload = contract.PickupReady(
                    pickup_id=pickup_id, fulfillment_order_id=row["fulfillment_order_id"])
                conn.execute("UPDATE pickups SET status = 'ready', ready_at = ?,"
                             " updated_at = ? WHERE id = ?", (now, now, pickup_id))
            else:
                if status not in ACTIVE:
                    raise ApiError("ERR-4013", f"pick-up {pickup_id} is {status}: only an"
                                   " open or ready pick-up can be handed over")
                lines = conn.execute("SELECT line_item_id, remaining FROM pickup_lines"
                                     " WHERE pickup_id = ? AND remaining > 0 ORDER BY rowid",
                                     (pickup_id,)).fetchall()
                if not lines:
                    raise ApiError("ERR-4013", f"pick-up {pickup_id} has nothing left to hand"
                                   " over")
                payload = contract.PickupHandover(
                    pickup_id=pickup_id, fulfillment_order_id=row["fulfillment_order_id"],
                    lines=tuple(contract.PickupLineQuantity(line_item_id=ln[0],
                                                            quantity=ln[1]) for ln in lines))
                conn.execute("UPDATE pickups SET status = 'handed_over', handed_over_at = ?,"
                             " updated_at = ? WHERE id = ?", (now, now, pickup_id))
            if self._shopify:
                outbox.enqueue(conn, "shopify", payload, now)
            audit.append(conn, actor, f"pickup.{target}", pickup_id,
                         {"fulfillment_order_id": row["fulfillment_order_id"],
                          "order_name": row["order_name"]})
            fresh = conn.execute("SELECT * FROM pickups WHERE id = ?", (pickup_id,)).fetchone()
            body = pickup_dict(conn, fresh)
            idempotency.save(conn, idem, 202, body)
            return Answer(202, body)

        answer = await self._db.write(write)
        self._bus.publish("pickup", {"id": pickup_id, "status": target})
        self._bus.publish("sync", {"event": "queued", "destination": "shopify"})
        return answer


__all__ = ["ACTIVE", "LISTS", "Applied", "PickupService", "apply_fulfillment_order",
           "counts", "list_pickups", "pickup_dict", "refresh_levels", "synced"]
