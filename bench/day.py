"""A store day with every upstream down, then the link back (issue 21, point 6).

A real daemon (``bench/day_daemon.py``: ``edged run`` on a wall clock this bench moves a
simulated hour forward after each twenty-fourth of the day's load, so the queue's ages are
a day's) takes, while Shopify and Stripe both refuse every connection:

- ``--sales`` sales (20,000): a cash payment, then its order of one line;
- ``--changes`` stock changes (60,000) in adjustments of 250 (a delivery per lane);
- ``--tokens`` token payments forwarded to Stripe (100 of 15.00 EUR: within ``[offline]``
  caps, so accepted as ``stored``).

Then both upstreams come back, with Shopify Plus limits (restore 1,000 points/s, bucket
20,000), and the daemon drains by itself. Printed:

- the drain time (first request Shopify receives after its return to its last answer)
  against the theoretical minimum, (points charged - the bucket's head start) / restore
  rate (target <= 1.15), and the throttled answers (target 0);
- exactly once: orders, quantities, adjustment keys, Stripe PaymentIntents;
- the daemon's RSS and database size at the start, at the end of the outage and after the
  drain; the oldest queued change's age as ``/v1/status`` (the status page's one read)
  showed it at the end of the outage.

    .venv/bin/python bench/day.py [--sales 20000] [--changes 60000] [--tokens 100]
                                  [--clients 16] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.drain import TimedShopify, catalogue_csv, new_token  # noqa: E402
from edged.store import secrets  # noqa: E402
from tests.daemon_process import UNLIMITED_API, DaemonProcess  # noqa: E402
from tests.fakes.shopify import API_VERSION  # noqa: E402
from tests.fakes.stripe import FakeStripe  # noqa: E402
from tests.helpers import new_key, seed_catalogue  # noqa: E402

RESTORE_RATE = 1000.0  # Shopify Plus
BUCKET = 20_000.0
TARGET_RATIO = 1.15
PRICE = 450
TOKEN_AMOUNT = 1500
START_STOCK = 1_000_000
HOURS = 24
MB = 1 << 20


def write_config(path: Path, shop: TimedShopify, stripe: FakeStripe, tokens: int) -> None:
    api = "".join(f"{k} = {v!r}\n" for k, v in UNLIMITED_API.items())
    path.write_text(
        f"[api]\n{api}"
        f'[shopify]\nshop = "day.myshopify.com"\nlocation_id = "{shop.default_location_id}"\n'
        f'api_version = "{API_VERSION}"\nadmin_url = "{shop.base_url}/admin/api"\n'
        f'[stripe]\nbase_url = "{stripe.base_url}"\n'
        "[offline]\nenabled = true\nmax_payment = 20000\n"
        f"max_stored_total = {max(200_000, TOKEN_AMOUNT * tokens * 2)}\n"
        "max_age_hours = 36\nforward_wait_seconds = 2.0\n"
        '[log]\nlevel = "WARNING"\n', encoding="utf-8")


def rss(daemon: DaemonProcess) -> float:
    return daemon.rss_bytes() / MB


def db_mb(data: Path) -> float:
    return sum(p.stat().st_size for p in data.glob("edged.db*") if p.is_file()) / MB


async def post(session: aiohttp.ClientSession, path: str, body: Any, ok: tuple[int, ...]
               = (201,)) -> Any:
    async with session.post(path, json=body,
                            headers={"Idempotency-Key": new_key()}) as resp:
        data = await resp.json()
        if resp.status not in ok:
            raise RuntimeError(f"{path}: {resp.status} {data}")
        return data


async def queue(api: aiohttp.ClientSession, path: str = "/v1/sync",
                ) -> tuple[int, dict[str, Any]]:
    """Rows waiting plus token payments stored. Polled on ``/v1/sync`` (what a technician
    watches); ``/v1/status`` (the page's one read, with today's takings over every sale of
    the day) is read once, at the end of the outage: polled every 0.25 s it cost the daemon
    a quarter of its CPU during the drain."""
    async with api.get(path) as resp:
        body = await resp.json()
    sync = body["sync"] if path == "/v1/status" else body
    waiting = sum(d["pending"] + d["inflight"] for d in sync["destinations"])
    stored = sum(s["count"] for s in sync["offline"]["stored"])
    return waiting + stored, body


async def run(args: argparse.Namespace) -> int:
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="edged-day-"))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    offset = workdir / "clock-offset"
    offset.write_text(str(-HOURS * 3600))
    skus = [f"SKU-{n:04d}" for n in range(250)]
    print(f"store day: {args.sales} sales, {args.changes} stock changes in adjustments of"
          f" 250, {args.tokens} token payments, every upstream down for {HOURS} simulated"
          " hours")
    async with TimedShopify(restore_rate=RESTORE_RATE, maximum_available=BUCKET,
                            order_rate_limit=None) as shop, FakeStripe(rate=None) as stripe:
        variants = {s: shop.seed_variant(s, price="4.50", available=START_STOCK) for s in skus}
        write_config(workdir / "edged.toml", shop, stripe, args.tokens)
        secrets.cli_set(data, "shopify.token", io.StringIO("shpat_day\n"), env={})
        secrets.cli_set(data, "stripe.key", io.StringIO("sk_test_day\n"), env={})
        seed_catalogue(data / "edged.db", catalogue_csv(variants))
        token = new_token(data)
        await shop.faults.refuse()
        await stripe.faults.refuse()
        daemon = DaemonProcess(data, config=workdir / "edged.toml",
                               wrapper=(sys.executable, str(ROOT / "bench" / "day_daemon.py"),
                                        str(offset)), ready_timeout=60)
        await asyncio.to_thread(daemon.start)
        expected: Counter[str] = Counter()
        failures: list[str] = []
        try:
            figures = {"start": (rss(daemon), db_mb(data))}
            headers = {"Authorization": f"Bearer {token}"}
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(daemon.base_url, headers=headers,
                                             timeout=timeout) as api:
                started = time.monotonic()
                for hour in range(HOURS):
                    jobs: list[Any] = []
                    lo, hi = args.sales * hour // HOURS, args.sales * (hour + 1) // HOURS
                    for n in range(lo, hi):
                        sku = skus[n % len(skus)]
                        expected[sku] -= 1

                        async def sale(sku: str = sku, n: int = n) -> None:
                            pay = await post(api, "/v1/payments", {
                                "amount": PRICE, "currency": "EUR", "method": "cash"})
                            await post(api, "/v1/orders", {
                                "reference": f"day-{n}", "payments": [pay["id"]],
                                "lines": [{"sku": sku, "quantity": 1, "price": PRICE}]})

                        jobs.append(sale)
                    clo, chi = args.changes * hour // HOURS, args.changes * (hour + 1) // HOURS
                    for start in range(clo, chi, 250):
                        changes = {skus[(start + i) % len(skus)]: 1 + (start + i) % 5
                                   for i in range(min(250, chi - start))}
                        expected.update(changes)

                        async def adjust(changes: dict[str, int] = changes) -> None:
                            await post(api, "/v1/inventory/adjustments", {
                                "reason": "received", "changes": [
                                    {"sku": s, "delta": d} for s, d in changes.items()]})

                        jobs.append(adjust)
                    for _ in range(args.tokens * hour // HOURS,
                                   args.tokens * (hour + 1) // HOURS):
                        async def pay_token() -> None:
                            body = await post(api, "/v1/payments", {
                                "amount": TOKEN_AMOUNT, "currency": "EUR", "method": "token",
                                "token": "pm_card_visa", "processor": "stripe"},
                                ok=(201, 202))
                            if body.get("state") not in ("stored", "pending"):
                                raise RuntimeError(f"token payment {body.get('state')}")

                        jobs.append(pay_token)
                    queue_jobs = iter(jobs)

                    async def client() -> None:
                        for job in queue_jobs:
                            try:
                                await job()
                            except Exception as exc:  # counted; the run fails
                                failures.append(str(exc))

                    await asyncio.gather(*(client() for _ in range(args.clients)))
                    offset.write_text(str(-(HOURS - hour - 1) * 3600))  # an hour later
                    await asyncio.sleep(0.3)  # the daemon reads its clock file every 0.2 s
                load_seconds = time.monotonic() - started
                if failures:
                    print(f"load: {len(failures)} requests failed, first: {failures[0]}")
                    return 1
                waiting, status = await queue(api, "/v1/status")
                figures["end of outage"] = (rss(daemon), db_mb(data))
                shopify = next(d for d in status["sync"]["destinations"]
                               if d["destination"] == "shopify")
                oldest = shopify["oldest_pending_age_seconds"] or 0.0
                stored = status["sync"]["offline"]["stored"]
                print(f"outage: the day's load took {load_seconds:.0f} s of real time;"
                      f" {waiting} changes and payments waiting")
                print(f"  status page at the end of the outage: Shopify's oldest queued change"
                      f" {oldest / 3600:.1f} hours old ({shopify['pending']} pending, breaker"
                      f" {(shopify['breaker'] or {}).get('state')});"
                      f" stored token payments: {stored}")
                calls_before, stamps_before = len(shop.calls), len(shop.stamps)
                throttled_before = shop.stats.throttled
                head_start = shop.bucket.available
                restored = time.monotonic()
                await shop.faults.restore()
                await stripe.faults.restore()
                while (await queue(api))[0]:
                    await asyncio.sleep(0.25)
                emptied = time.monotonic()
                figures["after the drain"] = (rss(daemon), db_mb(data))
        finally:
            await asyncio.to_thread(daemon.terminate)
            (workdir / "daemon.log").write_text(daemon.stderr_text(), encoding="utf-8")
            await asyncio.to_thread(daemon.close)

        stamps = shop.stamps[stamps_before:]
        drain = max(e for _, e in stamps) - min(s for s, _ in stamps)
        answered = [c for c in shop.calls[calls_before:] if not c.throttled and c.actual_cost]
        total_cost = sum(float(c.actual_cost or 0) for c in answered)
        minimum = max(0.0, total_cost - head_start) / RESTORE_RATE
        ratio = drain / minimum if minimum else float("inf")
        throttled = shop.stats.throttled - throttled_before
        wrong = [s for s in skus
                 if shop.quantity(variants[s].inventory_item_id) != START_STOCK + expected[s]]
        markers = Counter(o.source_identifier for o in shop.orders)
        charged = [pi for pi in stripe.payment_intents.values()
                   if pi.get("status") == "succeeded"]
        exact = (len(shop.orders) == args.sales and set(markers.values()) <= {1}
                 and set(shop.applied_by_key.values()) <= {1} and not wrong
                 and not shop.rejected and len(charged) == args.tokens)

    print(f"drain (first request -> last answer at Shopify): {drain:.1f} s; restore -> every"
          f" queue empty on /v1/status: {emptied - restored:.1f} s")
    print(f"theoretical minimum: ({total_cost:.0f} pts - {head_start:.0f} head start) /"
          f" {RESTORE_RATE:.0f} pts/s = {minimum:.1f} s; ratio {ratio:.3f} (target <="
          f" {TARGET_RATIO})" + ("" if ratio <= TARGET_RATIO else "  MISSED"))
    print(f"throttled answers: {throttled} (target 0)" + ("" if throttled == 0 else "  MISSED"))
    print(f"exactly once: {'yes' if exact else 'NO'} ({len(shop.orders)} orders for"
          f" {args.sales} sales, {len(shop.applied_by_key)} adjustment keys applied"
          f" {sorted(set(shop.applied_by_key.values()))} time(s), {len(wrong)} wrong"
          f" quantities, {len(charged)} token payments charged of {args.tokens})")
    for when, (mem, size) in figures.items():
        print(f"  {when:>16}: daemon RSS {mem:.1f} MB, database {size:.1f} MB")
    if args.dir:
        print(f"data kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if exact else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sales", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=60_000)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--dir", help="work directory (kept)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
