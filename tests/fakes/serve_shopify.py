"""The control endpoint's Shopify-side actions, for trying the daemon by hand
(``python -m tests.fakes.serve``): what a customer and a merchant do in Shopify.

- ``POST /pickup?customer=Ada%20Lovelace&items=TEA:2,MUG:1[&elsewhere=TEA:3][&method=PICK_UP]``:
  an online order picked up at the shop's location (``elsewhere``: a second fulfillment
  order at the warehouse); its webhooks go to the subscriptions;
- ``POST /cancel?order=gid://shopify/Order/N``;
- ``POST /reprice?sku=TEA&price=4.95``, ``POST /delete?sku=TEA``,
  ``POST /available?sku=TEA&quantity=50``;
- ``POST /forge``: a delivery signed with the wrong secret, to every subscription;
- ``GET /pickups``: the fulfillment orders (status, prepared, fulfillments, notices sent);
- ``GET /webhooks``: the subscriptions and the deliveries (status, seconds);
- ``POST /seed?count=50000``: that many more variants (for a bulk pull).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from tests.fakes.serve import Fakes


def _items(fakes: Fakes, text: str) -> list[tuple[str, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        sku, _, qty = part.partition(":")
        entry = fakes.catalogue.get(sku)
        if entry is None:
            raise web.HTTPBadRequest(text=f"no SKU {sku!r} in the seeded catalogue\n")
        out.append((entry[0].variant_id, int(qty or "1")))
    return out


def add_routes(app: web.Application, fakes: Fakes) -> None:
    shop = fakes.shopify
    shop.webhooks.shop_domain = "fake.myshopify.com"  # the banner's [shopify] shop
    warehouse = shop.add_location("Warehouse")

    async def pickup(request: web.Request) -> web.Response:
        q = request.query
        method = q.get("method", "PICK_UP")
        parts = [(shop.default_location_id, method, _items(fakes, q.get("items", "")))]
        if q.get("elsewhere"):
            for variant, _ in _items(fakes, q["elsewhere"]):
                item = shop.variants[variant].inventory_item_id
                if (item, warehouse) not in shop.levels:
                    shop.stock_at(item, warehouse, available=100)
            parts.append((warehouse, method, _items(fakes, q["elsewhere"])))
        online = shop.pickups.create_order(q.get("customer", "Ada Lovelace"), parts)
        return web.json_response({"order": online.order.id, "name": online.order.name,
                                  "fulfillment_orders": online.fulfillment_order_ids})

    async def cancel(request: web.Request) -> web.Response:
        shop.pickups.cancel(request.query["order"])
        return web.json_response({"cancelled": request.query["order"]})

    def variant(request: web.Request) -> Any:
        entry = fakes.catalogue.get(request.query.get("sku", ""))
        if entry is None:
            raise web.HTTPBadRequest(text="sku= one of the seeded catalogue\n")
        return entry[0]

    async def reprice(request: web.Request) -> web.Response:
        shop.admin.reprice(variant(request).variant_id, request.query["price"])
        return web.json_response({"repriced": request.query["sku"]})

    async def delete(request: web.Request) -> web.Response:
        shop.admin.delete_product(variant(request).product_id)
        return web.json_response({"deleted": request.query["sku"]})

    async def available(request: web.Request) -> web.Response:
        shop.admin.set_available(variant(request).inventory_item_id,
                                 int(request.query["quantity"]))
        return web.json_response({"available": int(request.query["quantity"])})

    async def forge(request: web.Request) -> web.Response:
        sent = [shop.webhooks.forged(s.callback_url, "products/delete", {"id": 1})
                for s in shop.webhooks.subscriptions.values()
                if s.topic == "PRODUCTS_DELETE"]
        await shop.webhooks.drain()
        return web.json_response([{"status": d.status, "answer": d.answer} for d in sent])

    async def pickups(request: web.Request) -> web.Response:
        return web.json_response([{
            "id": fo.id, "order": fo.order_id, "location": fo.location_id,
            "method": fo.method_type, "status": fo.status, "prepared": fo.prepared,
            "notices": shop.pickups.notifications[fo.id],
            "fulfillments": len(fo.fulfillment_ids),
            "lines": [{"sku": ln.sku, "quantity": ln.quantity, "remaining": ln.remaining}
                      for ln in fo.lines]} for fo in shop.pickups.fulfillment_orders.values()])

    async def webhooks(request: web.Request) -> web.Response:
        return web.json_response({
            "subscriptions": [{"id": s.id, "topic": s.topic, "url": s.callback_url}
                              for s in shop.webhooks.subscriptions.values()],
            "deliveries": [{"topic": d.topic, "webhook_id": d.webhook_id,
                            "status": d.status, "seconds": d.seconds}
                           for d in shop.webhooks.deliveries[-200:]]})

    async def seed(request: web.Request) -> web.Response:
        count = int(request.query.get("count", "1000"))
        start = len(shop.variants)
        for n in range(count):
            shop.seed_variant(f"BULK-{start + n}", price="1.00", available=n % 50)
        return web.json_response({"variants": len(shop.variants)})

    app.router.add_post("/pickup", pickup)
    app.router.add_post("/cancel", cancel)
    app.router.add_post("/reprice", reprice)
    app.router.add_post("/delete", delete)
    app.router.add_post("/available", available)
    app.router.add_post("/forge", forge)
    app.router.add_get("/pickups", pickups)
    app.router.add_get("/webhooks", webhooks)
    app.router.add_post("/seed", seed)


def banner_lines(fakes: Fakes, control: str) -> list[str]:
    return [
        f"webhook secret (the fake app's): echo {fakes.shopify.webhooks.secret} | edged secret"
        " set shopify.webhook_secret",
        f"online orders: curl -X POST '{control}/pickup?customer=Ada%20Lovelace&items=SKU:2'"
        f" (&elsewhere=SKU:1 for a second location); GET {control}/pickups",
        f"admin: POST {control}/reprice?sku=&price=, /delete?sku=, /available?sku=&quantity=;"
        f" POST {control}/forge; GET {control}/webhooks",
    ]


__all__ = ["add_routes", "banner_lines"]
