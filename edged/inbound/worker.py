"""The inbox worker: processes what Shopify told the daemon, one row at a time, in order.

A row is processed in two steps: the state it speaks of is read from Shopify (a webhook
names what changed; the worker reads what it is now, so deliveries that come late or out of
order cannot undo a later change), then that state is applied and the row's outcome written
in one transaction. A poll row carries the state its poll read, so it needs no read the
first time. The state's version and digest (:mod:`edged.inbound.inbox`) decide whether it
is new, the same as one applied already (the row is a ``duplicate``: an event seen both
ways is processed once), or older (``ignored``).

What each topic does:

- ``orders/create|updated|cancelled``: the order's fulfillment orders are read; a pick-up at
  this store is listed, updated, cancelled or closed (:mod:`edged.inbound.pickups`). The store's own
  sales (``sourceName`` = the daemon's) are ignored.
- ``fulfillment_orders/order_routing_complete`` and the poll of fulfillment orders: the same,
  for one fulfillment order.
- ``products/update`` and the poll of products: the product's variants as the catalogue has
  them (:func:`edged.inbound.catalog_follow.apply_product`); a product Shopify no longer has is a
  deletion.
- ``products/delete`` and the poll of deletion events: the product's items inactive.
- ``inventory_levels/update``, the poll of levels and the daemon's own refreshes: the level
  at this location read again and applied without re-applying the store's queued changes;
  an item with a change in flight is read again later.
- ``bulk_operations/finish``: handed to the catalogue pull that waits for it.
- ``app/uninstalled``: kept (and shown as an alert): the token no longer works.

A read that fails for the link (breaker open, timeout, 5xx, throttled) leaves the row
pending for a later attempt, with a backoff; missing credentials wait without using an
attempt; a row that fails :data:`MAX_ATTEMPTS` times, or whose processing raises a defect,
ends ``failed`` with the error, and the worker goes on with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edged.events import EventBus
from edged.inbound import catalog_follow, inbox, pickups
from edged.inbound.catalog_follow import LevelOutcome
from edged.inbound.inbox import InboxRow, Seen
from edged.store import Database
from sync.core.breaker import BreakerState, CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.errors import BreakerOpen, CredentialsRequired, PermanentError, SyncError
from sync.core.quiet_log import RepeatFilter
from sync.shopify_admin import webhooks as wh
from sync.shopify_admin.reads import ShopifyReads
from sync.shopify_admin.states import Deletion, FulfillmentOrderState, LevelState, ProductState

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
BACKOFF_INITIAL = 2.0
BACKOFF_MAX = 300.0
IN_DOUBT_RETRY = 15.0
"""Seconds before an item whose change was in flight is read again."""
IN_DOUBT_ATTEMPTS = 20
IDLE_POLL = 30.0
CREDENTIALS_POLL = 30.0
ERR_APPLY = "ERR-6025"

Event = tuple[str, dict[str, Any]]
BulkNotice = Callable[[str, str | None], None]


@dataclass
class Outcome:
    """What processing a row decided: its end state, or a retry (``retry_in``)."""

    state: str
    text: str
    duplicate_of: int | None = None
    events: list[Event] = field(default_factory=list)
    retry_in: float | None = None


class InboxWorker:
    def __init__(self, reads: ShopifyReads, db: Database, bus: EventBus, clock: Clock,
                 breaker: CircuitBreaker, *, location_id: str, source_name: str = "edged",
                 bulk_notice: BulkNotice | None = None,
                 in_doubt_retry: float = IN_DOUBT_RETRY) -> None:
        self.reads = reads
        self._db = db
        self._bus = bus
        self._clock = clock
        self._breaker = breaker
        self._location = location_id
        self._source_name = source_name
        self._bulk_notice = bulk_notice
        self._in_doubt_retry = in_doubt_retry
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._quiet = RepeatFilter(log)
        self.processed = 0
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    def _later(self, seconds: float) -> str:
        return utc_iso(self._clock.now() + timedelta(seconds=seconds))

    async def _pause(self, seconds: float) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(max(seconds, 0.0)))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            self._wake.clear()

    async def run(self) -> None:
        """Process pending rows until stopped (a supervised task)."""
        while not self._stop.is_set():
            await self.step()

    async def step(self) -> bool:
        """Process the next due row; False when none was due (after waiting a little)."""
        # a read: this worker alone changes a row's state, so nothing else can take it
        row = await self._db.read(lambda c: inbox.claim(c, self._now()))
        if row is None:
            due = await self._db.read(inbox.next_due)
            wait = IDLE_POLL
            if due:
                then = datetime.fromisoformat(due)
                wait = min(IDLE_POLL, max(0.0, (then - self._clock.now()).total_seconds()))
            await self._pause(wait)
            return False
        snap = self._breaker.snapshot()
        if snap.state is BreakerState.OPEN:
            await self._pause(max(snap.retry_after, 0.05))
            return False
        await self._process(row)
        return True

    async def _process(self, row: InboxRow) -> None:
        try:
            outcome = await self.handle(row)
        except BreakerOpen as exc:
            await self._pause(max(exc.retry_after, 0.05))
            return
        except CredentialsRequired as exc:
            error = self.last_error = str(exc)
            self._quiet.log("credentials", logging.WARNING, "shopify inbox: %s", exc)
            await self._db.write(lambda c: inbox.retry_later(
                c, row.id, error, self._later(CREDENTIALS_POLL), counts=False))
            await self._pause(CREDENTIALS_POLL)
            return
        except PermanentError as exc:
            message = f"{ERR_APPLY}: {exc}"
            await self._db.write(lambda c: inbox.fail(c, row.id, message,
                                                              self._now()))
            log.error("shopify inbox #%d (%s) failed for good: %s", row.id, row.topic, exc)
            return
        except SyncError as exc:  # the link: later, with a backoff
            await self._later_or_give_up(row, str(exc) or type(exc).__name__)
            return
        except Exception as exc:  # a defect: this row fails, the worker goes on
            log.error("shopify inbox #%d (%s): processing failed", row.id, row.topic,
                      exc_info=exc)
            message = f"{ERR_APPLY}: {type(exc).__name__}: {exc}"
            await self._db.write(lambda c: inbox.fail(c, row.id, message,
                                                              self._now()))
            return
        self._quiet.clear("credentials", "shopify inbox: credentials accepted")
        self.processed += 1
        self.last_error = None
        for kind, data in outcome.events:
            self._bus.publish(kind, data)
        self._bus.publish("shopify", {"event": "inbox", "id": row.id, "topic": row.topic,
                                      "state": outcome.state})

    async def _later_or_give_up(self, row: InboxRow, error: str) -> None:
        self.last_error = error
        self._quiet.log("link", logging.WARNING, "shopify inbox #%d (%s): will retry: %s",
                        row.id, row.topic, error)
        if row.attempts + 1 >= MAX_ATTEMPTS:
            message = f"{ERR_APPLY}: gave up after {MAX_ATTEMPTS} attempts: {error}"
            await self._db.write(lambda c: inbox.fail(c, row.id, message,
                                                              self._now()))
            return
        wait = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** row.attempts)
        await self._db.write(lambda c: inbox.retry_later(c, row.id, error,
                                                                 self._later(wait)))

    # -- per topic ------------------------------------------------------------------------

    async def handle(self, row: InboxRow) -> Outcome:
        """Read what ``row`` speaks of and apply it; the outcome is committed with it."""
        topic, data = row.topic, row.data
        if topic in wh.ORDER_TOPICS:
            if self._source_name and data.get("source_name") == self._source_name:
                return await self._finish(row, Outcome(
                    "ignored", f"{data.get('name') or row.subject}: the store's own sale"))
            fos = await self.reads.order_fulfillment_orders(str(data["order_id"]))
            if fos is None:
                return await self._finish(row, Outcome("ignored", "Shopify has no such order"
                                                       " any more"))
            return await self._pickups(row, fos)
        if topic == wh.ROUTING_COMPLETE:
            fo = await self.reads.fulfillment_order(str(data["fulfillment_order_id"]))
            if fo is None:
                return await self._finish(row, Outcome("ignored", "Shopify has no such"
                                                       " fulfillment order any more"))
            return await self._pickups(row, [fo])
        if topic == inbox.POLL_PICKUPS:
            polled = FulfillmentOrderState.from_data(data)
            fresh = polled if row.attempts == 0 else await self.reads.fulfillment_order(
                polled.id)
            if fresh is None:
                return await self._finish(row, Outcome("ignored", "gone from Shopify"))
            return await self._pickups(row, [fresh])
        if topic in (wh.PRODUCTS_UPDATE, inbox.POLL_PRODUCTS):
            product_id = str(data.get("product_id") or data.get("id"))
            if topic == inbox.POLL_PRODUCTS and row.attempts == 0:
                product: ProductState | None = ProductState.from_data(data)
            else:
                product = await self.reads.product(product_id)
            if product is None:
                return await self._deletion(row, Deletion(product_id, self._now()))
            return await self._product(row, product)
        if topic in (wh.PRODUCTS_DELETE, inbox.POLL_DELETIONS):
            product_id = str(data.get("product_id"))
            when = str(data.get("occurred_at") or row.version or self._now())
            return await self._deletion(row, Deletion(product_id, when))
        if topic == wh.INVENTORY_LEVELS_UPDATE:
            if data.get("location_id") != self._location:
                return await self._finish(row, Outcome("ignored", f"another location"
                                                       f" ({data.get('location_id')})"))
            return await self._levels(row, [str(data["inventory_item_id"])])
        if topic == inbox.POLL_LEVELS:
            level = LevelState.from_data(data)
            if row.attempts == 0:
                return await self._apply_levels(row, [level])
            return await self._levels(row, [level.inventory_item_id])
        if topic == inbox.REFRESH_LEVELS:
            return await self._levels(row, [str(i) for i in data.get("items") or ()])
        if topic == wh.BULK_FINISH:
            if self._bulk_notice is not None:
                self._bulk_notice(str(data.get("bulk_operation_id")), data.get("status"))
            return await self._finish(row, Outcome(
                "done", f"bulk operation {str(data.get('status') or '').lower()}: handed to"
                " the catalogue pull"))
        if topic == wh.APP_UNINSTALLED:
            return await self._finish(row, Outcome(
                "done", "the app was uninstalled from the shop: its token no longer works;"
                " reinstall it and set the new token (edged secret set shopify.token)"))
        return await self._finish(row, Outcome("ignored", f"topic {topic} is not one edged"
                                               " follows"))

    async def _finish(self, row: InboxRow, outcome: Outcome,
                      apply: Callable[[sqlite3.Connection, str], None] | None = None
                      ) -> Outcome:
        now = self._now()

        def write(conn: sqlite3.Connection) -> None:
            if apply is not None:
                apply(conn, now)
            if outcome.retry_in is not None:
                inbox.retry_later(conn, row.id, outcome.text,
                                          self._later(outcome.retry_in), outcome=outcome.text)
            else:
                inbox.finish(conn, row.id, outcome.state, outcome.text, now,
                                     duplicate_of=outcome.duplicate_of)

        await self._db.write(write)
        return outcome

    # -- pick-ups -------------------------------------------------------------------------

    async def _pickups(self, row: InboxRow, fos: Sequence[FulfillmentOrderState]) -> Outcome:
        outcome = Outcome("done", "")

        def apply(conn: sqlite3.Connection, now: str) -> None:
            said, states = [], []
            for fo in fos:
                verdict, last = inbox.seen(conn, fo.id, fo.updated_at, fo.digest)
                if verdict is Seen.SAME and last is not None:
                    said.append(f"{fo.order_name or fo.id}: already applied by"
                                f" #{last.inbox_id}")
                    states.append(("duplicate", last.inbox_id))
                    continue
                if verdict is Seen.OLDER and last is not None:
                    said.append(f"{fo.order_name or fo.id}: older than the state applied by"
                                f" #{last.inbox_id}")
                    states.append(("ignored", last.inbox_id))
                    continue
                done = pickups.apply_fulfillment_order(conn, fo, self._location, now)
                said.append(done.outcome)
                states.append(("done" if done.changed else "ignored", None))
                if done.changed:
                    inbox.record(conn, fo.id, fo.updated_at, fo.digest, row.id, now)
                outcome.events.extend(done.events)
                if done.refresh:
                    pickups.refresh_levels(conn, done.refresh, f"pick-up {fo.order_name}",
                                           now)
            outcome.text = "; ".join(said) or "no fulfillment order"
            if any(s == "done" for s, _ in states):
                outcome.state = "done"
            elif states and all(s == "duplicate" for s, _ in states):
                outcome.state, outcome.duplicate_of = "duplicate", states[0][1]
            else:
                outcome.state = "ignored"
                outcome.duplicate_of = next((i for s, i in states if i is not None), None)

        return await self._finish(row, outcome, apply)

    # -- the catalogue --------------------------------------------------------------------

    async def _product(self, row: InboxRow, product: ProductState) -> Outcome:
        outcome = Outcome("done", "")

        def apply(conn: sqlite3.Connection, now: str) -> None:
            verdict, last = inbox.seen(conn, product.id, product.updated_at,
                                               product.digest)
            if verdict is not Seen.NEW and last is not None:
                outcome.state = "duplicate" if verdict is Seen.SAME else "ignored"
                outcome.duplicate_of = last.inbox_id
                outcome.text = (f"{product.title}: already applied by #{last.inbox_id}"
                                if verdict is Seen.SAME else
                                f"{product.title}: older than the state applied by"
                                f" #{last.inbox_id}")
                return
            outcome.text = catalog_follow.apply_product(conn, product, now)
            inbox.record(conn, product.id, product.updated_at, product.digest,
                                 row.id, now)
            outcome.events.append(("inventory", {"event": "catalogue", "product": product.id}))

        return await self._finish(row, outcome, apply)

    async def _deletion(self, row: InboxRow, deletion: Deletion) -> Outcome:
        outcome = Outcome("done", "")

        def apply(conn: sqlite3.Connection, now: str) -> None:
            last = inbox.applied(conn, deletion.product_id)
            if last is not None and last.digest == "deleted":
                outcome.state, outcome.duplicate_of = "duplicate", last.inbox_id
                outcome.text = f"the deletion was applied by #{last.inbox_id}"
                return
            outcome.text = catalog_follow.apply_deletion(conn, deletion.product_id,
                                                         deletion.occurred_at, now)
            version = max(deletion.occurred_at, last.version) if last else deletion.occurred_at
            inbox.record(conn, deletion.product_id, version, "deleted", row.id, now)
            outcome.events.append(("inventory", {"event": "catalogue",
                                                 "product": deletion.product_id}))

        return await self._finish(row, outcome, apply)

    # -- stock ----------------------------------------------------------------------------

    async def _levels(self, row: InboxRow, items: Sequence[str]) -> Outcome:
        read = await self.reads.levels(items)
        levels = [lv for lv in read.values() if lv is not None]
        missing = [item for item, lv in read.items() if lv is None]
        outcome = await self._apply_levels(row, levels, missing)
        return outcome

    async def _apply_levels(self, row: InboxRow, levels: Sequence[LevelState],
                            missing: Sequence[str] = ()) -> Outcome:
        outcome = Outcome("done", "")

        def apply(conn: sqlite3.Connection, now: str) -> None:
            said: list[str] = [f"{m}: not stocked at this location" for m in missing]
            fresh: list[LevelState] = []
            duplicates: list[int | None] = []
            for level in levels:
                version = level.updated_at or level.read_at
                verdict, last = inbox.seen(conn, level.subject, version, level.digest)
                if verdict is Seen.SAME and last is not None and row.via != "daemon":
                    duplicates.append(last.inbox_id)
                    said.append(f"{level.inventory_item_id}: already applied by"
                                f" #{last.inbox_id}")
                    continue
                fresh.append(level)
            results = catalog_follow.apply_levels(conn, fresh)
            doubtful = False
            for result in results:
                said.append(result.message)
                if result.outcome in (LevelOutcome.APPLIED, LevelOutcome.UNCHANGED):
                    lv = result.level
                    inbox.record(conn, lv.subject, lv.updated_at or lv.read_at,
                                         lv.digest, row.id, now)
                    if result.outcome is LevelOutcome.APPLIED:
                        outcome.events.append(("inventory", {
                            "event": "level", "inventory_item_id": lv.inventory_item_id,
                            "available": lv.available}))
                doubtful = doubtful or result.outcome is LevelOutcome.IN_DOUBT
            outcome.text = "; ".join(said) or "nothing to read"
            if doubtful and row.attempts + 1 < IN_DOUBT_ATTEMPTS:
                outcome.retry_in = self._in_doubt_retry
                outcome.text += f"; reading again in {self._in_doubt_retry:g} s"
            elif not results and duplicates and len(duplicates) == len(levels):
                outcome.state, outcome.duplicate_of = "duplicate", duplicates[0]
            elif results and all(r.outcome not in (LevelOutcome.APPLIED,
                                                   LevelOutcome.UNCHANGED) for r in results):
                outcome.state = "ignored"

        return await self._finish(row, outcome, apply)


__all__ = ["MAX_ATTEMPTS", "InboxWorker", "Outcome"]
