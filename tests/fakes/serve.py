"""Run the fakes of Shopify, Stripe and Square by hand, with a control endpoint for outages.

    python -m tests.fakes.serve --shopify-port 9100 --stripe-port 9200 --square-port 9300 \\
        [--control-port 9099] [--catalogue items.csv]

Serves the three fakes on 127.0.0.1 until Ctrl-C and prints their URLs, the ``edged.toml``
sections that point a daemon at them, and the control endpoint:

- ``POST /down`` / ``POST /up``: refuse connections (all state kept) / listen again and
  clear every fault; ``?service=shopify`` (or ``stripe``, ``square``) for one fake only.
- ``POST /fail?service=shopify&status=500&count=1&after_apply=1``: the next answers replaced
  by an error (``after_apply=1``: executed first, a lost answer).
- ``POST /throttle?service=shopify&count=5``: the next answers "throttled".
- ``GET /state``: per fake, up or down and request counts; Shopify's orders, adjustment
  groups, quantities per SKU, whether every idempotency key was applied once, its last 20
  queries with their requested and actual cost (Shopify's published rules) and how many
  were refused for their cost; Stripe's PaymentIntents and refunds; Square's payments and
  refunds.
- ``POST /reader/present?number=4242424242424242``: the customer taps a card on the Stripe
  reader (``4000000000000002`` declines); ``POST /reader/status?status=offline|online``;
  ``POST /reader/busy``: another integration's action occupies it (``?off=1`` frees it).
- ``POST /checkout/complete`` (or ``/in_progress``, ``/decline``, ``/cancel``) acts on the
  Square Terminal's latest open checkout (``?id=`` for another); ``POST
  /device/status?status=OFFLINE|AVAILABLE`` (an OFFLINE Terminal answers no PING and shows
  no checkout: both are CANCELED TIMED_OUT at their deadline).
- ``GET /state`` also lists the Square fake's ``violations``: calls Square does not serve
  as sent (checked against Square's published OpenAPI description).
- ``GET /catalogue.csv``: the seeded catalogue with the fake's own ids and current
  quantities, in the format of ``edged items import``.
- Shopify talking back (:mod:`tests.fakes.serve_shopify`): ``POST /pickup`` (an online
  order picked up here, and at the warehouse), ``/cancel``, ``/reprice``, ``/delete``,
  ``/available``, ``/forge``, ``/seed``; ``GET /pickups``, ``/webhooks``.

``--catalogue FILE`` seeds Shopify from a CSV with the columns of ``edged items import``
(``sku,barcode,title,price,quantity``; price in minor units; ``variant_id`` and
``inventory_item_id`` are ignored: the fake assigns its own, see ``/catalogue.csv``).
The fakes accept any Shopify token, any ``sk_test_`` Stripe key and any Square token.

A demonstration::

    curl -s localhost:9099/catalogue.csv > items.csv && edged items import items.csv
    curl -X POST localhost:9099/down      # the store's link is down: sell, adjust...
    curl -s localhost:9099/state          # nothing arrives; /v1/sync shows the queue
    curl -X POST localhost:9099/up        # the queue drains by itself, each change once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from sync.shopify_admin.gateway import decimal_to_minor, minor_to_decimal
from tests.fakes import serve_shopify
from tests.fakes.base import LOOPBACK, FakeServer
from tests.fakes.shopify import API_VERSION, FakeShopify, SeededVariant
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe

READER = "tmr_FakeCounter1"
DEVICE = "FAKE0TERMINAL01"
CATALOGUE_COLUMNS = ("sku", "barcode", "title", "price", "variant_id", "inventory_item_id",
                     "quantity")


class Fakes:
    """The three fakes, a seeded catalogue, and the control endpoint's handlers."""

    def __init__(self, shopify: FakeShopify, stripe: FakeStripe, square: FakeSquare,
                 reader: str = READER, device: str = DEVICE) -> None:
        self.shopify = shopify
        self.stripe = stripe
        self.square = square
        self.reader = stripe.add_reader(reader)
        self.device = device  # the Terminal API's device_id (the Devices API has another)
        square.add_device(device)
        self.catalogue: dict[str, tuple[SeededVariant, str | None, str]] = {}

    @property
    def by_name(self) -> dict[str, FakeServer]:
        return {"shopify": self.shopify, "stripe": self.stripe, "square": self.square}

    async def start(self, ports: Mapping[str, int]) -> None:
        for name, fake in self.by_name.items():
            fake._port = ports[name] or None  # the fakes listen on their ephemeral port
            await fake.start()

    async def stop(self) -> None:
        for fake in self.by_name.values():
            await fake.stop()

    def seed(self, path: Path) -> int:
        """Shopify's catalogue from an ``edged items import`` CSV; returns the row count."""
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for n, row in enumerate(rows, start=2):
            sku = (row.get("sku") or "").strip()
            if not sku:
                raise SystemExit(f"{path}: line {n}: sku is required")
            price = int((row.get("price") or "0").strip() or 0)
            qty = (row.get("quantity") or "").strip()
            title = (row.get("title") or "").strip() or sku
            barcode = (row.get("barcode") or "").strip() or None
            variant = self.shopify.seed_variant(
                sku, price=minor_to_decimal(price, self.shopify.currency), barcode=barcode,
                product_title=title, available=int(qty) if qty else 0)
            self.catalogue[sku] = (variant, barcode, title)
        return len(rows)

    # -- control endpoint ---------------------------------------------------------------

    def _targets(self, request: web.Request) -> list[FakeServer]:
        name = request.query.get("service")
        if name is None:
            return list(self.by_name.values())
        if name not in self.by_name:
            raise web.HTTPBadRequest(text=f"service must be one of {', '.join(self.by_name)}\n")
        return [self.by_name[name]]

    async def down(self, request: web.Request) -> web.Response:
        for fake in self._targets(request):
            await fake.faults.refuse()
        return web.json_response(self.state_dict())

    async def up(self, request: web.Request) -> web.Response:
        for fake in self._targets(request):
            await fake.faults.restore()
        return web.json_response(self.state_dict())

    async def fail(self, request: web.Request) -> web.Response:
        status = int(request.query.get("status", "500"))
        count = int(request.query["count"]) if "count" in request.query else None
        after = request.query.get("after_apply", "0") in ("1", "true", "yes")
        for fake in self._targets(request):
            fake.faults.fail(status, count, fail_after_apply=after)
        return web.json_response(self.state_dict())

    async def throttle(self, request: web.Request) -> web.Response:
        count = int(request.query["count"]) if "count" in request.query else None
        for fake in self._targets(request):
            fake.faults.throttle(count)
        return web.json_response(self.state_dict())

    # -- the card terminals: a Stripe reader and a Square Terminal ----------------------

    async def reader_present(self, request: web.Request) -> web.Response:
        number = request.query.get("number", "4242424242424242")
        try:
            reader = self.stripe.present_payment_method(self.reader, number)
        except Exception as exc:  # the fake's own refusal: nothing on the reader
            raise web.HTTPConflict(text=f"{exc}\n") from None
        return web.json_response(reader)

    async def reader_status(self, request: web.Request) -> web.Response:
        self.stripe.set_reader_status(self.reader, request.query.get("status", "online"))
        return web.json_response(self.stripe.readers[self.reader])

    async def reader_busy(self, request: web.Request) -> web.Response:
        if request.query.get("off") in ("1", "true", "yes"):
            self.stripe.readers[self.reader]["action"] = None
        else:
            self.stripe.occupy_reader(self.reader)
        return web.json_response(self.stripe.readers[self.reader])

    async def checkout(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        cid = request.query.get("id")
        if cid is None:
            live = [c for c in self.square.device_checkouts(self.device)
                    if c["status"] in ("PENDING", "IN_PROGRESS", "CANCEL_REQUESTED")]
            if not live:
                raise web.HTTPConflict(text="no open checkout on the Terminal\n")
            cid = str(live[-1]["id"])
        if action == "complete":
            self.square.checkout_complete(cid)
        elif action in ("in_progress", "decline"):
            self.square.checkout_declined(cid) if action == "decline" \
                else self.square.checkout_in_progress(cid)
        elif action == "cancel":
            self.square.checkout_canceled(cid, request.query.get("reason", "BUYER_CANCELED"))
        else:
            raise web.HTTPNotFound(text="complete, in_progress, decline or cancel\n")
        return web.json_response(self.square.checkouts[cid])

    async def device_status(self, request: web.Request) -> web.Response:
        self.square.set_device_status(self.device, request.query.get("status", "AVAILABLE"))
        return web.json_response(self.square.devices[self.square.terminals[self.device]])

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state_dict())

    async def catalogue_csv(self, request: web.Request) -> web.Response:
        return web.Response(text=self.catalogue_text(), content_type="text/csv")

    def catalogue_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CATALOGUE_COLUMNS)
        shop = self.shopify
        for sku, (v, barcode, title) in self.catalogue.items():
            price = decimal_to_minor(shop.variants[v.variant_id].price, shop.currency)
            writer.writerow([sku, barcode or "", title, price, v.variant_id,
                             v.inventory_item_id, shop.quantity(v.inventory_item_id)])
        return out.getvalue()

    def state_dict(self) -> dict[str, Any]:
        shop, stripe, square = self.shopify, self.stripe, self.square

        def common(fake: FakeServer) -> dict[str, Any]:
            return {"up": not fake.faults.refused, "url": fake.base_url,
                    "requests": fake.stats.requests, "throttled": fake.stats.throttled,
                    "faulted": fake.stats.faulted}

        return {
            "shopify": {
                **common(shop),
                "orders": len(shop.orders),
                "adjustment_groups": len(shop.adjustment_groups),
                "adjusted_changes": sum(len(g.input.get("changes") or ())
                                        for g in shop.adjustment_groups),
                "keys_applied_once": all(n == 1 for n in shop.applied_by_key.values()),
                "rejected_documents": len(shop.rejected),
                "bucket_available": round(shop.bucket.available, 1),
                "queries": [{"root_fields": c.root_fields,
                             "first": c.variables.get("first")
                             if isinstance(c.variables, dict) else None,
                             "requested_cost": c.requested_cost,
                             "actual_cost": c.actual_cost, "throttled": c.throttled}
                            for c in shop.calls if c.operation == "query"][-20:],
                "refused_for_cost": sum(r.code == "MAX_COST_EXCEEDED" for r in shop.rejected),
                "quantities": {sku: shop.quantity(v.inventory_item_id)
                               for sku, (v, _, _) in self.catalogue.items()},
            },
            "stripe": {**common(stripe), "payment_intents": len(stripe.payment_intents),
                       "refunds": len(stripe.refunds),
                       "intents": {i: {"status": pi["status"], "amount": pi["amount"],
                                       "amount_received": pi["amount_received"]}
                                   for i, pi in stripe.payment_intents.items()},
                       "reader": {"id": self.reader,
                                  "status": stripe.readers[self.reader]["status"],
                                  "action": stripe.readers[self.reader]["action"]}},
            "square": {**common(square), "payments": len(square.payments),
                       "refunds": len(square.refunds),
                       "checkouts": {c: v["status"] for c, v in square.checkouts.items()},
                       "pings": {a: v["status"] for a, v in square.actions.items()},
                       "device": square.devices[square.terminals[self.device]]["status"],
                       "violations": square.violations},
        }


def control_app(fakes: Fakes) -> web.Application:
    app = web.Application()
    app.router.add_post("/down", fakes.down)
    app.router.add_post("/up", fakes.up)
    app.router.add_post("/fail", fakes.fail)
    app.router.add_post("/throttle", fakes.throttle)
    app.router.add_get("/state", fakes.state)
    app.router.add_post("/reader/present", fakes.reader_present)
    app.router.add_post("/reader/status", fakes.reader_status)
    app.router.add_post("/reader/busy", fakes.reader_busy)
    app.router.add_post("/checkout/{action}", fakes.checkout)
    app.router.add_post("/device/status", fakes.device_status)
    app.router.add_get("/catalogue.csv", fakes.catalogue_csv)
    serve_shopify.add_routes(app, fakes)  # online orders, admin changes, webhooks
    return app


def banner(fakes: Fakes, control: str, seeded: int) -> str:
    shop, stripe, square = fakes.shopify, fakes.stripe, fakes.square
    return "\n".join([
        f"Shopify  {shop.graphql_url(API_VERSION)}"
        + (f"  ({seeded} variants seeded)" if seeded else ""),
        f"Stripe   {stripe.base_url}",
        f"Square   {square.base_url}",
        f"control  {control}   POST /down /up /fail /throttle [?service=shopify|stripe|square]"
        f", GET /state /catalogue.csv",
        "",
        "edged.toml:",
        "[shopify]",
        'shop = "fake.myshopify.com"',
        f'location_id = "{shop.default_location_id}"',
        f'api_version = "{API_VERSION}"',
        f'admin_url = "{shop.base_url}/admin/api"',
        "[stripe]",
        f'base_url = "{stripe.base_url}"',
        "[square]",
        f'base_url = "{square.base_url}"',
        f'location_id = "{square.location_id}"',
        "[[terminals]]",
        'id = "reader-1"',
        'kind = "stripe_reader"',
        f'reader_id = "{fakes.reader}"',
        "[[terminals]]",
        'id = "square-1"',
        'kind = "square_terminal"',
        f'device_id = "{fakes.device}"',
        "",
        f"customer: curl -X POST {control}/reader/present[?number=4000000000000002];"
        f" curl -X POST {control}/checkout/complete",
        "secrets (any value works): echo shpat_x | edged secret set shopify.token;"
        " echo sk_test_x | edged secret set stripe.key; echo sq_x | edged secret set"
        " square.token",
        f"outage: curl -X POST {control}/down ... curl -X POST {control}/up;"
        f" curl -s {control}/state",
        *serve_shopify.banner_lines(fakes, control),
        "Ctrl-C to stop.",
    ])


async def serve(args: argparse.Namespace) -> int:
    fakes = Fakes(FakeShopify(), FakeStripe(), FakeSquare())
    fakes.shopify.bulk.delay = args.bulk_delay  # type: ignore[attr-defined]
    seeded = fakes.seed(Path(args.catalogue)) if args.catalogue else 0
    runner = web.AppRunner(control_app(fakes), access_log=None)
    try:
        await fakes.start({"shopify": args.shopify_port, "stripe": args.stripe_port,
                           "square": args.square_port})
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, args.control_port)
        await site.start()
    except OSError as exc:
        await fakes.stop()
        await runner.cleanup()
        print(f"cannot listen: {exc}", file=sys.stderr)
        return 1
    port = runner.addresses[0][1]
    print(banner(fakes, f"http://{LOOPBACK}:{port}", seeded), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("\nstopping; last state:", json.dumps(fakes.state_dict(), indent=1), flush=True)
        await runner.cleanup()
        await fakes.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.serve",
        description="Serve the fakes of Shopify, Stripe and Square on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--shopify-port", type=int, default=9100, help="0: any free port")
    parser.add_argument("--stripe-port", type=int, default=9200)
    parser.add_argument("--square-port", type=int, default=9300)
    parser.add_argument("--control-port", type=int, default=9099)
    parser.add_argument("--catalogue", help="a CSV to seed Shopify with (edged items import)")
    parser.add_argument("--bulk-delay", type=float, default=0.5,
                        help="seconds a bulk operation runs before it completes")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
