"""Bulk pull bench (issue 19): a whole catalogue of 50,000 variants, as one bulk operation
and page by page, against the fake Shopify, side by side in one run.

Both designs run the daemon's own code on a fresh SQLite file each (WAL, FULL, the store's
writer thread): the bulk pull is ``edged.inbound.catalog_bulk.BulkCatalogue.pull``
(``bulkOperationRunQuery``, ``currentBulkOperation`` until it completes, the JSONL download,
one transaction); the paged pull is ``sync.shopify_admin.pull.pull_catalogue`` (the
``productVariants`` pages of ``[shopify] catalogue_pull = "paged"``) applied with
``edged.stock.catalog_import.apply`` in one transaction, as ``sync_setup.pull_once`` does.

Printed for each: GraphQL calls, the points Shopify's cost rules ask for them
(``requestedQueryCost``, what the bucket must hold) and the points charged
(``actualQueryCost``), the time the points keep a standard-plan bucket busy (restore 100
points/s after its 2,000 points of head start: ``max(0, charged - 2000) / 100``), the wall
time of the pull against the fake on loopback (the fake's own work included: it runs the
query in this process), and the time to apply (the write transaction). Then a second bulk
pull of the unchanged catalogue (what a nightly pull costs when little changed).

The fake runs in the bench's process; what it built (Shopify's Admin schema, the seeded
catalogue) is frozen out of the garbage collector's way before the pulls, as the daemon
freezes what its start-up built, so that the collector's passes over the fake's objects do
not count as the daemon's apply. The points are the fake's, which prices each query by
Shopify's published cost rules (``tests/fakes/shopify_cost.py``: a page of 199 variants
requests 998 points).

    .venv/bin/python bench/bulk_pull.py [--variants 50000] [--per-product 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edged.events import EventBus  # noqa: E402
from edged.inbound.catalog_bulk import BulkCatalogue  # noqa: E402
from edged.stock import catalog_import  # noqa: E402
from edged.store import Database  # noqa: E402
from sync.core.clock import SystemClock, utc_iso  # noqa: E402
from sync.shopify_admin.bulk import BulkRunner  # noqa: E402
from sync.shopify_admin.client import ShopifyClient, ShopifySettings  # noqa: E402
from sync.shopify_admin.pull import PAGE_SIZE, pull_catalogue  # noqa: E402
from sync.shopify_admin.reads import ShopifyReads  # noqa: E402
from tests.fakes.shopify import API_VERSION, FakeShopify, GraphQLCall  # noqa: E402

RESTORE = 100.0
HEAD_START = 2000.0


@dataclass
class Figures:
    name: str
    calls: int
    requested: float
    charged: float
    wall: float
    apply: float
    extra: str = ""

    @property
    def bucket_seconds(self) -> float:
        return max(0.0, self.charged - HEAD_START) / RESTORE


def _points(calls: Sequence[GraphQLCall]) -> tuple[int, float, float]:
    return (len(calls), float(sum(c.requested_cost or 0 for c in calls)),
            float(sum(c.actual_cost or 0 for c in calls)))


def _client(shop: FakeShopify) -> ShopifyClient:
    settings = ShopifySettings(shop="bench.myshopify.com", api_version=API_VERSION,
                               location_id=shop.default_location_id,
                               admin_url=f"{shop.base_url}/admin/api", timeout=600.0)
    return ShopifyClient(settings, lambda: "shpat_bench", SystemClock())


async def bulk(shop: FakeShopify, directory: Path, name: str) -> Figures:
    db = Database(directory / "edged.db")
    await db.open()
    client = _client(shop)
    try:
        runner = BulkRunner(ShopifyReads(client, shop.default_location_id))
        catalogue = BulkCatalogue(runner, db, EventBus(), SystemClock(), data_dir=directory,
                                  full_pull_hours=24.0, poll_seconds=0.5)
        first = len(shop.calls)
        started = time.perf_counter()
        done = await catalogue.pull()
        wall = time.perf_counter() - started
        calls, requested, charged = _points(shop.calls[first:])
        ran = shop.bulk.operations[-1].run_seconds  # type: ignore[attr-defined]
        extra = (f"{done.variants:,} variants, {done.bytes / 1e6:.1f} MB JSONL; the fake ran"
                 f" the query in {ran:.1f} s of the wall (Shopify's side); download"
                 f" {done.download_seconds:.2f} s, parse {done.parse_seconds:.2f} s;"
                 f" items written {done.written:,}, quantities {done.levels:,}")
        return Figures(name, calls, requested, charged, wall, done.apply_seconds, extra)
    finally:
        await client.close()
        await db.close()


async def paged(shop: FakeShopify, directory: Path) -> Figures:
    db = Database(directory / "edged.db")
    await db.open()
    client = _client(shop)
    try:
        first = len(shop.calls)
        started = time.perf_counter()
        pulled = await pull_catalogue(client, shop.default_location_id)
        rows = [catalog_import.CatalogueRow(
            sku=e.sku, barcode=e.barcode, title=e.title, price=e.price,
            variant_id=e.variant_id, inventory_item_id=e.inventory_item_id,
            quantity=e.available, product_id=e.product_id) for e in pulled.entries if e.sku]
        stamp = utc_iso(pulled.pulled_at)
        applying = time.perf_counter()
        await db.write(lambda c: catalog_import.apply(c, rows, "shopify-pull",
                                                      reported_at=stamp))
        applied = time.perf_counter()
        calls, requested, charged = _points(shop.calls[first:])
        return Figures("paged", calls, requested, charged, applied - started,
                       applied - applying, f"{len(pulled):,} variants in {pulled.pages}"
                       f" pages of {PAGE_SIZE}")
    finally:
        await client.close()
        await db.close()


async def main(args: argparse.Namespace) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="edged-bulk-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        async with FakeShopify(maximum_available=1e9, restore_rate=1e9) as shop:
            shop.bulk.delay = 0.0  # type: ignore[attr-defined]
            seeding = time.perf_counter()
            product = None
            for n in range(args.variants):
                if n % args.per_product == 0:
                    product = None
                v = shop.seed_variant(f"SKU-{n:06d}", price=f"{1 + n % 97}.{n % 100:02d}",
                                      barcode=f"{4000000000000 + n}", available=n % 40,
                                      title=f"Size {n % args.per_product}",
                                      product_title=f"Product {n // args.per_product}",
                                      product_id=product)
                product = v.product_id
            print(f"seeded the fake with {len(shop.variants):,} variants in"
                  f" {len(shop.products):,} products ({time.perf_counter() - seeding:.1f} s)")
            # the fake (Shopify's whole Admin schema, 50,000 variants) shares this process:
            # out of the collector's way, as the daemon freezes what its start-up built, so
            # that its full collections do not land in the daemon's figures
            gc.collect()
            gc.freeze()
            results = [await bulk(shop, base / "bulk", "bulk (first)"),
                       await bulk(shop, base / "bulk", "bulk (again)"),
                       await paged(shop, base / "paged")]
        print()
        print(f"{'design':<14} {'calls':>6} {'requested':>11} {'charged':>10}"
              f" {'bucket @100/s':>14} {'wall':>8} {'apply':>8}")
        for r in results:
            print(f"{r.name:<14} {r.calls:>6} {r.requested:>11,.0f} {r.charged:>10,.0f}"
                  f" {r.bucket_seconds:>12,.0f} s {r.wall:>6.1f} s {r.apply:>6.2f} s")
        print()
        for r in results:
            print(f"{r.name}: {r.extra}")
        first, page = results[0], results[2]
        print()
        print(f"points charged, paged / bulk: {page.charged / max(first.charged, 1):,.0f}x;"
              f" requested {page.requested / max(first.requested, 1):,.0f}x")
        print(f"bucket time at a standard plan's 100 points/s: paged"
              f" {page.bucket_seconds / 60:.1f} min, bulk {first.bucket_seconds:.0f} s")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=50_000)
    parser.add_argument("--per-product", type=int, default=5)
    parser.add_argument("--dir", help="keep the databases here")
    sys.exit(asyncio.run(main(parser.parse_args())))
