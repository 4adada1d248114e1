"""The whole catalogue pulled as one Shopify bulk operation, applied in one transaction.

At start and every ``[shopify] full_pull_hours``: the clock is read (``pulled_at``: every
stock change Shopify acknowledged before it is in the file's quantities), the bulk query
runs (:mod:`sync.shopify_admin.bulk`), its id is kept in ``shopify_bulk_operations`` (a daemon
restarted meanwhile waits for the same operation instead of starting another: Shopify runs
one at a time per shop), the daemon waits for the ``bulk_operations/finish`` webhook or
reads ``currentBulkOperation`` (a quarter second after the start, then twice as long each
time, up to ``bulk_poll_seconds``), downloads the JSONL and applies it in one transaction:

- each variant with a SKU onto its item, as a pull does (only the items that differ are
  written), with its product; items of products not ``ACTIVE`` inactive, and items whose
  variant is not in the file at all inactive (deleted in Shopify; history kept);
- quantities as reported at ``pulled_at``, except for items with a change in flight or
  acknowledged since (:func:`edged.payments.records.items_in_doubt`) and items whose report is newer
  than ``pulled_at`` (a webhook or the poll read them later); an item whose figure did not
  change and that had no change acknowledged since its report is left as it is (the same
  local stock, no write);
- a product whose state an event applied after the file's (its ``updatedAt``) is left as the
  event made it;
- the catch-up poll's catalogue cursors go back to ``pulled_at``, so nothing changed during
  the operation is missed.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from edged.events import EventBus
from edged.inbound import inbox
from edged.inbound.poll import CATALOGUE_STREAMS, CURSORS
from edged.stock import catalog_import, records
from edged.store import Database
from sync.core.clock import Clock, utc_iso
from sync.core.errors import BreakerOpen, CredentialsRequired, SyncError, TransientError
from sync.core.quiet_log import RepeatFilter
from sync.shopify_admin.bulk import (
    BulkInProgress,
    BulkOperation,
    BulkRunner,
    BulkVariant,
    catalogue_query,
    parse_catalogue,
)
from sync.shopify_admin.states import ProductState, VariantState

log = logging.getLogger(__name__)

PURPOSE = "catalogue"
FILE_NAME = "shopify-catalogue.jsonl"
MAX_BYTES = 2 << 30
FIRST_WAIT = 0.25
RETRY_INITIAL = 30.0
RETRY_MAX = 1800.0


@dataclass(frozen=True, slots=True)
class BulkApplied:
    operation: str
    variants: int
    written: int
    inactive: int
    levels: int
    kept: int
    """Quantities not replaced (a change in flight, or a later read kept)."""
    bytes: int = 0
    download_seconds: float = 0.0
    parse_seconds: float = 0.0
    apply_seconds: float = 0.0
    """The one write transaction (what holds the store's writer)."""


def apply_bulk(conn: sqlite3.Connection, variants: Sequence[BulkVariant], pulled_at: str,
               now: str, *, complete: bool) -> tuple[int, int, int, int]:
    """(items written, made inactive, levels written, levels kept) in the caller's
    transaction. ``complete``: the file was read whole, so a variant absent from it is gone."""
    doubtful = records.items_in_doubt(conn, pulled_at)
    local = conn.execute("SELECT id, sku, barcode, title, price, variant_id, inventory_item_id,"
                         " product_id, active, inactive_reason FROM items").fetchall()
    by_variant = {r["variant_id"]: r for r in local if r["variant_id"]}
    by_item = {r["inventory_item_id"]: r for r in local if r["inventory_item_id"]}
    by_sku = {r["sku"]: r for r in local if r["sku"]}
    newer = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT subject, version, digest FROM shopify_versions"
        " WHERE subject LIKE 'gid://shopify/Product/%'")}
    changed: list[catalog_import.CatalogueRow] = []
    taken: list[BulkVariant] = []
    later: set[str] = set()
    for v in variants:
        e = v.entry
        applied = newer.get(e.product_id or "")
        if applied is not None and (applied[1] == "deleted" or v.product_updated_at is None
                                    or applied[0] > v.product_updated_at):
            later.add(e.product_id or "")
            continue  # an event applied a later state of this product
        if not e.sku:
            continue
        taken.append(v)
        item = by_variant.get(e.variant_id) or by_item.get(e.inventory_item_id or "") \
            or by_sku.get(e.sku)
        if item is None or (item["sku"], item["barcode"], item["title"], item["price"],
                            item["variant_id"], item["inventory_item_id"],
                            item["product_id"]) != (e.sku, e.barcode, e.title, e.price,
                                                    e.variant_id, e.inventory_item_id,
                                                    e.product_id):
            changed.append(catalog_import.CatalogueRow(
                sku=e.sku, barcode=e.barcode, title=e.title, price=e.price,
                variant_id=e.variant_id, inventory_item_id=e.inventory_item_id,
                quantity=None, product_id=e.product_id))
    if changed:
        catalog_import.apply(conn, changed, "shopify-pull")
    ids = dict(conn.execute("SELECT variant_id, id FROM items WHERE variant_id IS NOT NULL"))
    flags = {r["id"]: (r["active"], r["inactive_reason"]) for r in local}
    moves = []
    for v in taken:
        item_id = ids.get(v.entry.variant_id)
        if item_id is None:
            continue
        want = (1, None) if v.product_status == "ACTIVE" \
            else (0, f"product {v.product_status.lower()} in Shopify")
        if flags.get(item_id, (1, None)) != want:
            moves.append((*want, item_id))
    conn.executemany("UPDATE items SET active = ?, inactive_reason = ? WHERE id = ?", moves)
    inactive = 0
    if complete:
        present = {v.entry.variant_id for v in variants}
        gone = [(now, i) for variant, i in ids.items() if variant not in present]
        for start in range(0, len(gone), 500):
            chunk = gone[start:start + 500]
            inactive += conn.executemany(
                "UPDATE items SET active = 0, inactive_reason = 'not in Shopify''s"
                " catalogue (deleted)', updated_at = ? WHERE id = ? AND active = 1",
                chunk).rowcount
    reported = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT item_id, reported_quantity, reported_at FROM inventory_levels")}
    # items with a change acknowledged since their report: that report must move to
    # pulled_at (the figure read includes the change); for the others the same figure
    # under an older time means the same local stock, and is not written again
    since = {r[0] for r in conn.execute(
        "SELECT DISTINCT d.item_id FROM stock_deltas d JOIN inventory_levels l"
        " ON l.item_id = d.item_id WHERE d.acknowledged = 1"
        " AND d.acknowledged_at > l.reported_at")}
    writes, kept = [], 0
    for v in taken:
        e = v.entry
        item_id = ids.get(e.variant_id)
        if item_id is None or e.available is None:
            continue
        old = reported.get(item_id)
        if item_id in doubtful or (old is not None and old[1] > pulled_at):
            kept += 1
            continue
        if old is not None and old[0] == e.available and item_id not in since:
            continue
        writes.append((item_id, e.available, pulled_at))
    conn.executemany("INSERT INTO inventory_levels (item_id, reported_quantity, reported_at)"
                     " VALUES (?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET"
                     " reported_quantity = excluded.reported_quantity,"
                     " reported_at = excluded.reported_at", writes)
    for stream in CATALOGUE_STREAMS:
        inbox.pull_cursor_back(conn, CURSORS[stream], pulled_at, now)
    if complete:
        _record_products(conn, [v for v in variants if v.entry.product_id not in later
                                and (newer.get(v.entry.product_id or "") or ("",))[0]
                                != v.product_updated_at], now)
    return len(changed), inactive, len(writes), kept


def _record_products(conn: sqlite3.Connection, variants: Sequence[BulkVariant],
                     now: str) -> None:
    """Each product's state as the file has it is applied: the poll then finds it known
    (``variants``: those of the products whose version is not recorded yet)."""
    by_product: dict[str, list[BulkVariant]] = {}
    for v in variants:
        if v.entry.product_id and v.product_updated_at:
            by_product.setdefault(v.entry.product_id, []).append(v)
    rows = []
    for product_id, group in by_product.items():
        first = group[0]
        state = ProductState(product_id, first.product_title, first.product_status,
                             first.product_updated_at or "", first.entry.currency,
                             tuple(VariantState(v.entry.variant_id, v.entry.sku,
                                                v.entry.barcode, v.entry.title, v.entry.price,
                                                v.entry.inventory_item_id) for v in group))
        rows.append((product_id, state.updated_at, state.digest, now))
    conn.executemany("INSERT INTO shopify_versions (subject, version, digest, inbox_id,"
                     " applied_at) VALUES (?, ?, ?, NULL, ?) ON CONFLICT (subject) DO UPDATE"
                     " SET version = excluded.version, digest = excluded.digest,"
                     " inbox_id = NULL, applied_at = excluded.applied_at"
                     " WHERE excluded.version >= shopify_versions.version", rows)


class BulkCatalogue:
    """Runs the full catalogue pull on its schedule (a supervised task)."""

    def __init__(self, runner: BulkRunner, db: Database, bus: EventBus, clock: Clock, *,
                 data_dir: Path, full_pull_hours: float, poll_seconds: float) -> None:
        self.runner = runner
        self._db = db
        self._bus = bus
        self._clock = clock
        self._file = data_dir / FILE_NAME
        self._every = timedelta(hours=full_pull_hours)
        self._poll_seconds = poll_seconds
        self._finished = asyncio.Event()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._quiet = RepeatFilter(log)
        self.last: BulkApplied | None = None
        self.last_error: str | None = None

    def notice(self, operation: str, status: str | None) -> None:
        """The ``bulk_operations/finish`` webhook named ``operation``."""
        log.info("bulk operation %s finished (%s)", operation, status)
        self._finished.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._finished.set()

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    async def _sleep(self, seconds: float, *events: asyncio.Event) -> None:
        waits: set[asyncio.Future[object]] = {
            asyncio.ensure_future(self._clock.sleep(max(0.0, seconds)))}
        waits |= {asyncio.ensure_future(e.wait()) for e in (*events, self._stop)}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def due_in(self) -> float:
        """Seconds until the next full pull is due (0: now)."""
        def read(conn: sqlite3.Connection) -> tuple[str | None, bool]:
            last = conn.execute("SELECT max(applied_at) FROM shopify_bulk_operations WHERE"
                                " purpose = ?", (PURPOSE,)).fetchone()[0]
            open_op = conn.execute("SELECT 1 FROM shopify_bulk_operations WHERE purpose = ?"
                                   " AND applied_at IS NULL AND error IS NULL",
                                   (PURPOSE,)).fetchone()
            return last, open_op is not None

        last, waiting = await self._db.read(read)
        if waiting or last is None:
            return 0.0
        then = datetime.fromisoformat(last) + self._every
        return max(0.0, (then - self._clock.now()).total_seconds())

    async def run(self) -> None:
        retry = RETRY_INITIAL
        while not self._stop.is_set():
            wait = await self.due_in()
            if wait > 0:
                self._wake.clear()
                await self._sleep(wait, self._wake)
                continue
            try:
                await self.pull()
            except BreakerOpen as exc:
                await self._sleep(max(exc.retry_after, 0.05), self._wake)
                continue
            except (CredentialsRequired, BulkInProgress) as exc:
                self.last_error = str(exc)
                self._quiet.log("wait", logging.WARNING, "catalogue pull: %s", exc)
                await self._sleep(retry, self._wake)
                continue
            except SyncError as exc:
                self.last_error = str(exc)
                self._quiet.log("fail", logging.WARNING, "catalogue pull failed: %s", exc)
                self._wake.clear()
                await self._sleep(retry, self._wake)
                retry = min(RETRY_MAX, retry * 2)
                continue
            retry = RETRY_INITIAL
            self.last_error = None
            self._quiet.clear("fail", "catalogue pull works again")

    # -- one pull -------------------------------------------------------------------------

    async def pull(self) -> BulkApplied:
        """Run (or resume), wait for, download and apply the catalogue bulk operation."""
        def open_op(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute("SELECT id, started_at FROM shopify_bulk_operations WHERE"
                               " purpose = ? AND applied_at IS NULL AND error IS NULL"
                               " ORDER BY started_at DESC LIMIT 1", (PURPOSE,)).fetchone()
            return None if row is None else (row[0], row[1])

        resumed = await self._db.read(open_op)
        currency = await self.runner.currency()
        if resumed is not None:
            op_id, pulled_at = resumed
            log.info("catalogue pull: waiting for bulk operation %s started before", op_id)
        else:
            current = await self.runner.current()
            if current is not None and not current.finished:
                raise BulkInProgress(f"bulk operation {current.id} ({current.status}) runs;"
                                     " the catalogue pull waits for it to end")
            pulled_at = self._now()
            self._finished.clear()
            op = await self.runner.start(catalogue_query(self.runner.reads.location_id))
            op_id = op.id
            await self._db.write(lambda c: c.execute(
                "INSERT INTO shopify_bulk_operations (id, purpose, status, started_at)"
                " VALUES (?, ?, ?, ?)", (op.id, PURPOSE, op.status, pulled_at)))
            log.info("catalogue pull: bulk operation %s started", op.id)
        done = await self._wait(op_id)
        if done.status != "COMPLETED":
            error = f"bulk operation {done.id} {done.status.lower()}" + (
                f" ({done.error_code})" if done.error_code else "")
            await self._record(op_id, done.status, error=error)
            raise TransientError(error)
        return await self._apply(done, pulled_at, currency)

    async def _wait(self, op_id: str) -> BulkOperation:
        pause = FIRST_WAIT
        while True:
            op = await self.runner.current()
            if op is None or op.id != op_id:
                await self._record(op_id, "GONE", error="Shopify no longer shows it")
                raise TransientError(f"bulk operation {op_id} is no longer Shopify's current"
                                     " one; a new pull will follow")
            if op.finished:
                return op
            self._finished.clear()
            await self._sleep(pause, self._finished)
            pause = min(self._poll_seconds, pause * 2)

    async def _record(self, op_id: str, status: str, *, error: str | None = None) -> None:
        now = self._now()
        await self._db.write(lambda c: c.execute(
            "UPDATE shopify_bulk_operations SET status = ?, finished_at = ?, error = ?"
            " WHERE id = ?", (status, now, error, op_id)))

    async def _apply(self, op: BulkOperation, pulled_at: str, currency: str) -> BulkApplied:
        started = self._clock.monotonic()
        size = 0
        if op.url is not None:
            size = await self.runner.download(op.url, self._file, MAX_BYTES)
        downloaded = self._clock.monotonic()
        variants: list[BulkVariant] = []
        if op.url is not None:
            variants = await asyncio.to_thread(self._read, currency)
        parsed = self._clock.monotonic()
        complete = op.url is not None and len(variants) == op.object_count
        now = self._now()

        def write(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
            counts = apply_bulk(conn, variants, pulled_at, now, complete=complete)
            conn.execute("UPDATE shopify_bulk_operations SET status = ?, finished_at = ?,"
                         " objects = ?, bytes = ?, applied_at = ?, items = ? WHERE id = ?",
                         (op.status, now, op.object_count, size, now, len(variants), op.id))
            return counts

        written, inactive, levels, kept = await self._db.write(write)
        applied = self._clock.monotonic()
        self._file.unlink(missing_ok=True)
        result = BulkApplied(op.id, len(variants), written, inactive, levels, kept, size,
                             downloaded - started, parsed - downloaded, applied - parsed)
        self.last = result
        log.info("catalogue pull: %d variants from bulk operation %s (%d bytes); %d items"
                 " written, %d inactive, %d quantities, %d kept", len(variants), op.id, size,
                 written, inactive, levels, kept)
        self._bus.publish("sync", {"event": "pull", "destination": "shopify",
                                   "items": len(variants), "bulk": op.id})
        return result

    def _read(self, currency: str) -> list[BulkVariant]:
        with self._file.open("rb") as fh:
            return list(parse_catalogue(fh, currency))


__all__ = ["BulkApplied", "BulkCatalogue", "apply_bulk"]
