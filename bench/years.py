"""A simulated year on the box (issue 21, point 2): does the file stay bounded?

The daemon's own services run in this process on a real SQLite file (the same writer
thread, group commit, ``synchronous=FULL``), on a manual clock that moves a simulated day
forward as fast as the box allows. Each day: ``--sales`` sales (a cash payment, then its
order of 1-3 lines, which decrements stock and queues a Shopify ``orderCreate``), a
delivery of stock (one adjustment of 50 items), Shopify's webhooks for the day (100,
processed), a catalogue pull (the reported quantities, so acknowledged changes stop
counting), syncs every simulated 10 minutes that drain the outbox through the real claim
and completion path (a gateway that applies everything, batched as Shopify's is), the
retention pass every simulated hour and the incremental vacuum every simulated hour, as the
daemon's supervised tasks do.

Printed: the database and WAL sizes every simulated month and at the end; the database's
growth per payment once retention had its say (target <= 1 KB); the largest WAL seen
(target <= 64 MB); bytes written per payment (``/proc/self/io``: ``wchar``, what SQLite
handed to ``write()``, and ``write_bytes``, what reached the block layer) beside SQLite's
own minimum for one row: single-row ``synchronous=FULL`` commits of a 200-byte row in a
bare WAL table, measured the same way on the same disk.

    .venv/bin/python bench/years.py [--days 365] [--sales 2000] [--concurrency 64] [--dir D]

``--days`` scales the run (a full year is 730,000 sales); the label says what ran.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edged.config import Config, ShopifyConfig, StoreConfig  # noqa: E402
from edged.events import EventBus  # noqa: E402
from edged.lanes.terminals import TerminalManager  # noqa: E402
from edged.payments.service import NewPayment, PaymentService  # noqa: E402
from edged.stock import catalog_import  # noqa: E402
from edged.stock.inventory import InventoryService, ItemRef, OrderLine, StockChange  # noqa: E402
from edged.store import Database  # noqa: E402
from edged.store.idempotency import IdemRecord  # noqa: E402
from edged.upkeep import retention
from edged.store import storage  # noqa: E402
from edged.upstream.sync_hooks import StoreHooks  # noqa: E402
from sync.core.clock import utc_iso  # noqa: E402
from sync.core.gateway import OutboxRow, WorkResult  # noqa: E402
from sync.core.outbox import OutboxStore  # noqa: E402
from sync.shopify_admin.inventory import plan_inventory  # noqa: E402
from tests.clock import ManualClock  # noqa: E402

SKUS = 500
PRICE = 450
TARGET_GROWTH = 1024
KEPT = ("payments", "orders", "order_lines", "audit", "refunds")  # never pruned (the law)
TARGET_WAL = 64 << 20
MB = 1 << 20


class AppliedShopify:
    """Batches like the Shopify gateway; everything it is handed is applied."""

    destination = "shopify"

    def batch_limit(self, kind: str) -> int:
        return 250 if kind.startswith("inventory.") else 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        if kind.startswith("inventory."):
            return plan_inventory(kind, rows, "gid://shopify/Location/1")
        return dict(rows[0].payload)

    async def send(self, work: Any) -> WorkResult:  # pragma: no cover - not called
        raise NotImplementedError

    async def close(self) -> None:
        return None


def io_counters() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def sqlite_minimum(folder: Path, rows: int = 2000) -> tuple[float, float]:
    """(wchar, write_bytes) per row of single-row FULL commits in a bare WAL table."""
    path = folder / "minimum.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    before = io_counters()
    blob = os.urandom(200)
    for _ in range(rows):
        conn.execute("INSERT INTO t (body) VALUES (?)", (blob,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = io_counters()
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return ((after["wchar"] - before["wchar"]) / rows,
            (after["write_bytes"] - before["write_bytes"]) / rows)


class Year:
    def __init__(self, folder: Path, sales: int, concurrency: int) -> None:
        self.folder = folder
        self.sales = sales
        self.concurrency = concurrency
        self.clock = ManualClock(datetime(2027, 1, 1, 6, 0, tzinfo=UTC))
        self.cfg = Config(store=StoreConfig(data_dir=str(folder)),
                          shopify=ShopifyConfig(shop="bench.myshopify.com",
                                                location_id="gid://shopify/Location/1"))
        self.db = Database(folder / "edged.db")
        self.bus = EventBus()
        self.rand = random.Random(21)
        self.payments = 0
        self.wal_peak = 0

    async def setup(self) -> None:
        await self.db.open()
        rows = [catalog_import.CatalogueRow(
            sku=f"SKU-{n:04d}", barcode=None, title=f"Item {n}", price=PRICE,
            variant_id=str(10_000 + n), inventory_item_id=f"gid://shopify/InventoryItem/{n}",
            quantity=1_000_000) for n in range(SKUS)]
        await self.db.write(lambda c: catalog_import.apply(c, rows, "bench"))
        terminals = TerminalManager(self.cfg.terminals, self.bus, self.clock)
        self.pay = PaymentService(self.cfg, self.db, self.bus, terminals, self.clock)
        self.inv = InventoryService(self.cfg, self.db, self.bus, self.clock)
        self.outbox = OutboxStore(self.db, self.clock, StoreHooks(self.clock))
        self.gateway = AppliedShopify()
        self.retention = retention.Retention(self.cfg, self.db, self.clock)
        self.orders = 0

    def _idem(self, path: str) -> IdemRecord:
        return IdemRecord("token:1", os.urandom(12).hex(), "POST", path, "h",
                          utc_iso(self.clock.now()))

    async def sale(self) -> None:
        lines = [OrderLine(ItemRef(sku=f"SKU-{self.rand.randrange(SKUS):04d}"),
                           self.rand.randint(1, 3), PRICE)
                 for _ in range(self.rand.randint(1, 3))]
        total = sum(ln.quantity * ln.price for ln in lines)
        paid = await self.pay.create(NewPayment(total, "EUR", "cash"),
                                     self._idem("/v1/payments"), "register")
        self.payments += 1
        self.orders += 1
        await self.inv.create_order(f"r-{self.orders}", lines, [paid.body["id"]],
                                    self._idem("/v1/orders"), "register")

    async def sync(self) -> None:
        while (work := await self.outbox.claim(self.gateway)) is not None:
            answers = {r.id: {"order_id": f"gid://shopify/Order/{r.id}"}
                       if r.kind == "order.create" else {} for r in work.rows}
            await self.outbox.complete(work, WorkResult(applied=answers))

    def sample_wal(self) -> None:
        self.wal_peak = max(self.wal_peak, storage.file_size(storage.wal_path(self.db.path)),
                            self.db.wal_peak_bytes)

    async def day(self) -> None:
        """One store day: sales spread over 12 hours with a sync every 10 minutes, the
        hourly retention pass and vacuum, a delivery, the webhooks, the evening pull."""
        per_slot = self.sales / 72  # 72 ten-minute slots from 08:00 to 20:00
        done = 0.0
        sem = asyncio.Semaphore(self.concurrency)

        async def one() -> None:
            async with sem:
                await self.sale()

        self.clock.advance(2 * 3600)  # 06:00 -> 08:00
        for slot in range(72):
            done += per_slot
            count = int(done) - int(done - per_slot)
            await asyncio.gather(*(one() for _ in range(count)))
            self.sample_wal()
            await self.sync()
            self.clock.advance(600)
            if slot % 6 == 5:
                await self.retention.run_pass()
                await self.db.write(lambda c: storage.vacuum_step(c, 4096))
                self.sample_wal()
            if slot == 12:  # the morning delivery: 50 items received
                changes = [StockChange(ItemRef(sku=f"SKU-{self.rand.randrange(SKUS):04d}"),
                                       24) for _ in range(50)]
                await self.inv.adjust("received", None, changes, self._idem("/v1/inv"), "r")
        now = utc_iso(self.clock.now())

        def webhooks_and_pull(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO webhook_inbox (source, delivery_id, topic, body, received_at,"
                " processed_at) VALUES ('shopify', ?, 'products/update', ?, ?, ?)",
                [(os.urandom(8).hex(), os.urandom(600), now, now) for _ in range(100)])
            conn.execute("UPDATE inventory_levels SET reported_at = ?", (now,))

        await self.db.write(webhooks_and_pull)
        await self.sync()
        self.clock.advance(10 * 3600)  # 20:00 -> 06:00


async def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="edged-years-"))
    folder.mkdir(parents=True, exist_ok=True)
    minimum = sqlite_minimum(folder)
    year = Year(folder, args.sales, args.concurrency)
    await year.setup()
    print(f"years bench: {args.days} simulated days x {args.sales} sales (1-3 lines each,"
          f" synced), data in {folder}")
    start_size = storage.file_size(year.db.path)
    io_start = io_counters()
    started = time.monotonic()
    # the file as it stands after retention had a full window (30 days of outbox, 90 of
    # stock changes): the growth per payment is measured over the days after that
    settled_at: tuple[int, int] | None = None
    print(f"{'day':>5} {'payments':>9} {'db MB':>8} {'wal MB':>7} {'free pages':>10}"
          f" {'days/s':>7} {'write() KB/payment':>19}")
    window = (io_start["wchar"], 0)  # write() per payment over the last 30 days
    for d in range(1, args.days + 1):
        await year.day()
        if d % 30 == 0 or d == args.days:
            size = storage.file_size(year.db.path)
            sizes = await year.db.read(lambda c: storage.sizes(c, year.db.path))
            wchar = io_counters()["wchar"]
            print(f"{d:>5} {year.payments:>9} {size / MB:>8.1f}"
                  f" {sizes.wal_bytes / MB:>7.1f} {sizes.free_pages:>10}"
                  f" {d / (time.monotonic() - started):>7.2f}"
                  f" {(wchar - window[0]) / max(1, year.payments - window[1]) / 1024:>19.1f}",
                  flush=True)
            window = (wchar, year.payments)
        if d == min(args.days // 2, 120) and settled_at is None:
            settled_at = (year.payments, storage.file_size(year.db.path))
    await year.db.write(lambda c: storage.vacuum_step(c, 1 << 20))
    io_end = io_counters()
    await year.db.close()  # the final checkpoint: the file holds everything
    end_size = storage.file_size(year.db.path)
    seconds = time.monotonic() - started
    conn = sqlite3.connect(year.db.path)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608
              for t in ("payments", "orders", "order_lines", "audit", "outbox",
                        "outbox_batches", "idempotency", "webhook_inbox", "stock_deltas")}
    try:  # where the kept bytes are (SQLite's dbstat: pages per table and index)
        per_table = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
                                 " ORDER BY 2 DESC").fetchall()
        kept = conn.execute(
            "SELECT m.tbl_name, sum(d.pgsize), group_concat(DISTINCT d.name) FROM dbstat d"
            " JOIN sqlite_master m ON m.name = d.name WHERE m.tbl_name IN (?, ?, ?, ?, ?)"
            " GROUP BY m.tbl_name ORDER BY 2 DESC", KEPT).fetchall()
    except sqlite3.Error:
        per_table, kept = [], []
    conn.close()
    print(f"ran {args.days} days in {seconds:.0f} s ({year.payments / seconds:.0f} sales/s)")
    print("rows at the end: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    growth = (end_size - start_size) / max(1, year.payments)
    print(f"database: {start_size / MB:.1f} MB -> {end_size / MB:.1f} MB;"
          f" growth per payment over the whole run: {growth:.0f} bytes")
    if settled_at is not None and year.payments > settled_at[0]:
        steady = (end_size - settled_at[1]) / (year.payments - settled_at[0])
        print(f"  once retention's windows are full (from day"
              f" {min(args.days // 2, 120)}): {steady:.0f} bytes per payment"
              f" (target <= {TARGET_GROWTH})" + ("" if steady <= TARGET_GROWTH else
                                                "  MISSED"))
    if per_table:
        print("bytes per payment by table and index at the end: " + ", ".join(
            f"{name} {size / max(1, year.payments):.0f}" for name, size in per_table[:14]))
    if kept:
        paid = max(1, year.payments)
        print(f"kept for good (tables with their indexes), per payment:"
              f" {sum(size for _, size, _ in kept) / paid:.0f} bytes = " + ", ".join(
                  f"{table} {size / paid:.0f} ({names.count(',') + 1} b-trees)"
                  for table, size, names in kept))
    print(f"largest WAL seen: {year.wal_peak / MB:.1f} MB (target <= {TARGET_WAL // MB} MB)"
          + ("" if year.wal_peak <= TARGET_WAL else "  MISSED"))
    wchar = (io_end["wchar"] - io_start["wchar"]) / max(1, year.payments)
    wbytes = (io_end["write_bytes"] - io_start["write_bytes"]) / max(1, year.payments)
    print(f"bytes written per payment (a sale: payment + order + sync + upkeep):"
          f" write() {wchar:.0f}, to the device {wbytes:.0f}")
    print(f"SQLite's own minimum, one 200-byte row per FULL commit:"
          f" write() {minimum[0]:.0f}, to the device {minimum[1]:.0f} per row"
          f" (ratio {wchar / minimum[0]:.2f} / "
          f"{(wbytes / minimum[1]) if minimum[1] else float('nan'):.2f})")
    if not args.dir and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sales", type=int, default=2000, help="sales a day")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="registers selling at once (their writes share commits)")
    parser.add_argument("--dir", help="work directory (kept)")
    parser.add_argument("--keep", action="store_true")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())


