"""Catch-up polling, always on: what changed in Shopify since the last poll, into the inbox.

A store box usually has no public address, and a webhook URL that works may still miss
deliveries for hours. So every ``[shopify] poll_interval_seconds``, and at once whenever the
link comes back (the breaker closing), the daemon reads what changed since its cursors:

- fulfillment orders assigned to this location (``assigned_location_id``), updated since
  the cursor (the first poll lists every open one);
- products updated since the cursor (``updated_at:>'…'``): repriced, renamed, archived;
- products deleted since the cursor (``deletionEvents``);
- inventory levels at this location updated since the cursor.

Each state read goes into the inbox as a ``poll`` row unless that very state was applied
already (a webhook told it first: the row that applied it counts it in ``seen_again``); the
worker processes poll rows like webhook rows, so a store that no webhook reaches ends in the
same state. A stream's cursor is Shopify's latest ``updatedAt`` seen, stored in the
database with the rows of the stream's last page, and no earlier than the poll's own start
less :data:`sync.shopify_admin.reads.POLL_OVERLAP` (a quiet stream's cursor still moves);
each poll reaches back ``POLL_OVERLAP`` before the cursor, and what it sees twice is dropped. The
catalogue streams start where the last full pull started (until there is one, from the
first poll's time).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edged.inbound import inbox
from edged.store import Database
from sync.core.clock import Clock, utc_iso
from sync.core.errors import BreakerOpen, CredentialsRequired, SyncError
from sync.core.quiet_log import RepeatFilter
from sync.shopify_admin.reads import POLL_OVERLAP, ShopifyReads
from sync.shopify_admin.states import (
    Deletion,
    FulfillmentOrderState,
    LevelState,
    Page,
    ProductState,
    to_data,
)

log = logging.getLogger(__name__)

CURSORS = {"pickups": "poll.fulfillment_orders", "products": "poll.products",
           "deletions": "poll.deletions", "levels": "poll.inventory_levels"}
CATALOGUE_STREAMS = ("products", "deletions", "levels")


@dataclass
class PollStatus:
    polls: int = 0
    last_poll_at: str | None = None
    last_error: str | None = None
    last_new: dict[str, int] = field(default_factory=dict)


def _later(moment: str | None, floor: str) -> str:
    """The later of two UTC times in ISO form (Shopify's and ours differ in their digits)."""
    if moment is None:
        return floor
    return moment if datetime.fromisoformat(moment) >= datetime.fromisoformat(floor) else floor


class CatchUpPoller:
    def __init__(self, reads: ShopifyReads, db: Database, clock: Clock, interval: float,
                 wake: Callable[[], None]) -> None:
        self.reads = reads
        self._db = db
        self._clock = clock
        self.interval = interval
        self._wake_worker = wake
        self._trigger = asyncio.Event()
        self._stop = asyncio.Event()
        self._quiet = RepeatFilter(log)
        self.status = PollStatus()
        self.first_attempt = asyncio.Event()
        """Set once the start-up poll has ended, well or not."""

    def trigger(self) -> None:
        """Poll now (the link came back)."""
        self._trigger.set()

    def stop(self) -> None:
        self._stop.set()
        self._trigger.set()

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    async def _wait(self, seconds: float) -> None:
        if self._trigger.is_set():
            self._trigger.clear()
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        trigger = asyncio.ensure_future(self._trigger.wait())
        try:
            await asyncio.wait({sleeper, trigger}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            trigger.cancel()
            self._trigger.clear()

    async def run(self) -> None:
        """Poll now, then every interval and on every trigger, until stopped."""
        while not self._stop.is_set():
            wait = self.interval
            try:
                await self.poll_once()
            except BreakerOpen as exc:  # the link is down: the breaker's probe is ours
                wait = min(self.interval, max(exc.retry_after, 0.05))
                self.status.last_error = str(exc)
            except CredentialsRequired as exc:
                self.status.last_error = str(exc)
                self._quiet.log("credentials", logging.WARNING, "catch-up poll: %s", exc)
            except SyncError as exc:
                self.status.last_error = str(exc) or type(exc).__name__
                self._quiet.log("poll", logging.WARNING, "catch-up poll failed: %s", exc)
            else:
                self._quiet.clear("poll", "catch-up poll works again")
                self._quiet.clear("credentials", "catch-up poll: credentials accepted")
            finally:
                self.first_attempt.set()
            await self._wait(wait)

    async def poll_once(self) -> dict[str, int]:
        """One poll of every stream; new inbox rows per stream."""
        new: dict[str, int] = {}
        new["pickups"] = await self._stream("pickups", self.reads.poll_pickups,
                                            self._pickup_rows)
        new["products"] = await self._stream("products", self.reads.poll_products,
                                             self._product_rows)
        new["deletions"] = await self._stream("deletions", self.reads.poll_deletions,
                                              self._deletion_rows)
        new["levels"] = await self._stream("levels", self.reads.poll_levels,
                                           self._level_rows)
        self.status.polls += 1
        self.status.last_poll_at = self._now()
        self.status.last_error = None
        self.status.last_new = new
        if any(new.values()):
            log.info("catch-up poll: %s", ", ".join(f"{n} {k}" for k, n in new.items() if n))
        return new

    async def _stream(self, name: str,
                      read: Callable[[str | None, str | None], Awaitable[Page[Any]]],
                      rows: Callable[[sqlite3.Connection, Sequence[Any], str], int]) -> int:
        key = CURSORS[name]
        start = await self._db.read(lambda c: inbox.cursor(c, key))
        if start is None and name in CATALOGUE_STREAMS:
            # the base state comes from the full pull; from now on, what changes
            now = self._now()
            await self._db.write(lambda c: inbox.set_cursor(c, key, now, now))
            return 0
        total, after, newest = 0, None, start
        # Nothing newer than the cursor seen: it still moves up to this poll's start, less
        # the overlap, on the box's clock (so a clock up to POLL_OVERLAP ahead of Shopify's
        # loses nothing); else a quiet catalogue would be read whole at every poll.
        floor = utc_iso(self._clock.now() - POLL_OVERLAP)
        # a stream is read to its end: its cursor moves only then (the pages of a search
        # are not in the order of updatedAt), and each page's rows are committed as it comes
        while not self._stop.is_set():
            page = await read(start, after)
            if page.newest is not None and (newest is None or page.newest > newest):
                newest = page.newest
            last = not page.has_next
            moved = _later(newest, floor)

            def write(conn: sqlite3.Connection, items: Sequence[Any] = page.items,
                      last: bool = last, moved: str = moved) -> int:
                now = self._now()
                count = rows(conn, items, now)
                if last:
                    inbox.set_cursor(conn, key, moved, now)
                return count

            total += await self._db.write(write)
            if last:
                break
            after = page.end_cursor
        if total:
            self._wake_worker()
        return total

    # -- what each stream stores ----------------------------------------------------------

    def _pickup_rows(self, conn: sqlite3.Connection, items: Sequence[FulfillmentOrderState],
                     now: str) -> int:
        count = 0
        for fo in items:
            tracked = conn.execute("SELECT 1 FROM pickups WHERE fulfillment_order_id = ?",
                                   (fo.id,)).fetchone()
            if not fo.is_pickup_at(self.reads.location_id) and tracked is None:
                continue
            if inbox.observe(conn, topic=inbox.POLL_PICKUPS, subject=fo.id,
                                     version=fo.updated_at, digest=fo.digest,
                                     data=to_data(fo), now=now) is not None:
                count += 1
        return count

    @staticmethod
    def _product_rows(conn: sqlite3.Connection, items: Sequence[ProductState],
                      now: str) -> int:
        count = 0
        for product in items:
            if inbox.observe(conn, topic=inbox.POLL_PRODUCTS,
                                     subject=product.id, version=product.updated_at,
                                     digest=product.digest, data=to_data(product),
                                     now=now) is not None:
                count += 1
        return count

    @staticmethod
    def _deletion_rows(conn: sqlite3.Connection, items: Sequence[Deletion], now: str) -> int:
        count = 0
        for gone in items:
            known = conn.execute("SELECT 1 FROM items WHERE product_id = ? LIMIT 1",
                                 (gone.product_id,)).fetchone()
            if known is None:
                continue
            if inbox.observe(conn, topic=inbox.POLL_DELETIONS,
                                     subject=gone.product_id, version=gone.occurred_at,
                                     digest="deleted", data=to_data(gone),
                                     now=now) is not None:
                count += 1
        return count

    @staticmethod
    def _level_rows(conn: sqlite3.Connection, items: Sequence[LevelState], now: str) -> int:
        count = 0
        for level in items:
            known = conn.execute("SELECT 1 FROM items WHERE inventory_item_id = ?",
                                 (level.inventory_item_id,)).fetchone()
            if known is None:
                continue
            if inbox.observe(conn, topic=inbox.POLL_LEVELS,
                                     subject=level.subject,
                                     version=level.updated_at or level.read_at,
                                     digest=level.digest, data=to_data(level),
                                     now=now) is not None:
                count += 1
        return count


__all__ = ["CURSORS", "CatchUpPoller", "PollStatus"]
