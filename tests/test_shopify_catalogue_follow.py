"""The catalogue follows the admin, by webhook and by the catch-up poll, through real HTTP.

Published facts these rest on (shopify.dev; tests/fakes/shopify_admin.py): a repriced
variant changes the product's ``updatedAt`` and sends ``products/update``; a deleted product
sends ``products/delete`` ``{"id"}`` and leaves a deletion event; ``inventory_levels/update``
carries ``available`` at one location; ``updated_at:>'…'`` filters ``products``,
``inventoryLevels`` and ``fulfillmentOrders``; ``occurred_at`` filters ``deletionEvents``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from graphql import GraphQLSchema

from tests.clock import ManualClock
from tests.fakes.shopify import FakeShopify, SeededVariant, load_admin_schema
from tests.helpers import Api, running
from tests.shopify_inbound import (
    inbound_config,
    inbox,
    item,
    prepare,
    settled,
    subscribe,
    until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


class HoldingShopify(FakeShopify):
    """Holds the requests that carry ``marker`` (before they run) until released."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker: bytes | None = None
        self.held = 0
        self.release = asyncio.Event()

    def _middlewares(self) -> list[Any]:
        return [self._hold]

    @web.middleware
    async def _hold(self, request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> web.StreamResponse:
        if self.marker is not None and self.marker in await request.read():
            self.held += 1
            await self.release.wait()
        return await handler(request)


@asynccontextmanager
async def store(tmp_path: Path, schema: GraphQLSchema, *, webhooks: bool = True,
                clock: ManualClock | None = None, shop_class: type[FakeShopify] = FakeShopify,
                **shopify: Any
                ) -> AsyncIterator[tuple[FakeShopify, Api, dict[str, SeededVariant]]]:
    async with shop_class(schema=schema) as shop:
        variants = {"TEA": shop.seed_variant("TEA", price="4.50", available=40),
                    "MUG": shop.seed_variant("MUG", price="12.00", available=10)}
        cfg = inbound_config(tmp_path / "data", shop, **shopify)
        prepare(cfg, shop, variants.values())
        async with running(cfg, clock) as api:
            await until(lambda: _ready(api, clock), "the first pull and poll")
            if webhooks:
                subscribe(shop, api)
            yield shop, api, variants
    shop.assert_no_rejections()


async def _sync(api: Api) -> dict[str, Any]:
    status, body = await api.get("/v1/sync")
    assert status == 200, body
    return dict(body["shopify"])


async def _ready(api: Api, clock: ManualClock | None) -> bool:
    if clock is not None:
        clock.advance(0.25)  # the bulk pull reads the operation's status on the clock
    shopify = await _sync(api)
    return shopify["poll"]["polls"] >= 1 and (shopify["catalogue"] or {}).get("applied_at") \
        is not None


async def _price_is(api: Api, sku: str, price: int) -> bool:
    return (await item(api, sku))["price"] == price


async def _stock(api: Api, sku: str) -> int:
    return int((await item(api, sku))["stock"]["quantity"])


def _ahead() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=30)


async def test_a_repriced_variant_changes_the_local_price_by_the_poll_alone(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, webhooks=False, clock=clock,
                     poll=60.0) as (shop, api, v):
        shop.admin.reprice(v["TEA"].variant_id, "4.95")
        clock.advance(60.0)
        await until(lambda: _price_is(api, "TEA", 495), "the poll to bring the price")
        polls = [c for c in shop.calls if "products" in c.root_fields]
        assert polls and all("updated_at:>'" in c.variables["q"] for c in polls), \
            "the catch-up poll reads only what changed since its cursor"
        (row,) = [r for r in await inbox(api) if r["topic"] == "poll:products"]
        assert row["via"] == "poll" and "repriced 450 -> 495" in row["outcome"]


async def test_a_deleted_product_leaves_its_items_inactive_with_their_history(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with store(tmp_path, admin_schema) as (shop, api, v):
        status, pay = await api.post("/v1/payments", {"amount": 450, "currency": "EUR",
                                                      "method": "cash"})
        status, sold = await api.post("/v1/orders", {
            "reference": "before-the-delete", "payments": [pay["id"]],
            "lines": [{"sku": "TEA", "quantity": 1, "price": 450}]})
        assert status == 201, sold
        await until(lambda: settled(api), "the sale to reach Shopify")
        shop.admin.delete_product(v["TEA"].product_id)
        await until(lambda: _inactive(api, "TEA"), "the item to be inactive")
        tea = await item(api, "TEA")
        assert tea["inactive_reason"].startswith("product deleted in Shopify")
        status, pay = await api.post("/v1/payments", {"amount": 450, "currency": "EUR",
                                                      "method": "cash"})
        status, body = await api.post("/v1/orders", {
            "reference": "after-the-delete", "payments": [pay["id"]],
            "lines": [{"sku": "TEA", "quantity": 1, "price": 450}]})
        assert (status, body["error"]["code"]) == (409, "ERR-4014"), body
        status, body = await api.post("/v1/inventory/adjustments", {
            "reason": "damaged", "changes": [{"sku": "TEA", "delta": -1}]})
        assert (status, body["error"]["code"]) == (409, "ERR-4014"), body
        assert api.count("order_lines l JOIN items i ON i.id = l.item_id",
                         "i.sku = 'TEA'") == 1  # the earlier sale keeps its item
        assert (await item(api, "MUG"))["active"] is True


async def _inactive(api: Api, sku: str) -> bool:
    return (await item(api, sku))["active"] is False


async def test_a_deletion_reaches_a_store_no_webhook_reaches(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, webhooks=False, clock=clock,
                     poll=60.0) as (shop, api, v):
        shop.admin.delete_product(v["MUG"].product_id)
        clock.advance(60.0)
        await until(lambda: _inactive(api, "MUG"), "the poll to bring the deletion")
        (row,) = [r for r in await inbox(api) if r["topic"] == "poll:deletions"]
        assert row["state"] == "done" and "inactive" in row["outcome"]


async def test_a_level_update_never_counts_the_stores_own_change_twice(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """The register receives 5 TEA; the merchant sets 50 in the admin while that change is
    on its way to Shopify: local stock keeps Shopify's figure plus the store's change, the
    change counted once (55), whatever order the answers come in."""
    async with store(tmp_path, admin_schema, shop_class=HoldingShopify) as (shop, api, v):
        assert isinstance(shop, HoldingShopify)
        tea = v["TEA"].inventory_item_id
        shop.marker = b"inventoryAdjustQuantities("  # the store's change: in flight
        status, _ = await api.post("/v1/inventory/adjustments", {
            "reason": "received", "changes": [{"sku": "TEA", "delta": 5}]})
        assert status == 201
        await until(lambda: _held(shop), "the change to be in flight")
        assert await _stock(api, "TEA") == 45
        shop.admin.set_available(tea, 50)  # the admin's change: a webhook
        await until(lambda: _level_kept(api), "the level update to be judged")
        assert await _stock(api, "TEA") == 45  # may or may not include the +5: kept
        shop.marker = None
        shop.release.set()  # Shopify applies the +5: 55, and says so by webhook
        await until(lambda: _stock_is(api, "TEA", 55), "Shopify's 55 to reach the store")
        await until(lambda: settled(api), "everything to settle")
        assert shop.quantity(tea) == 55
        assert await _stock(api, "TEA") == 55
        stock = (await item(api, "TEA"))["stock"]
        assert (stock["reported"], stock["unsynced_delta"]) == (55, 0)


async def _held(shop: HoldingShopify) -> bool:
    return shop.held >= 1


async def _level_kept(api: Api) -> bool:
    return any(r["topic"] == "inventory_levels/update" and r["outcome"]
               and "on its way to Shopify" in r["outcome"] for r in await inbox(api))


async def _stock_is(api: Api, sku: str, quantity: int) -> bool:
    return await _stock(api, sku) == quantity


async def test_a_change_seen_both_ways_is_processed_once(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, clock=clock, poll=60.0) as (shop, api, v):
        # the webhook first, then the poll sees the same state
        shop.admin.reprice(v["TEA"].variant_id, "4.80")
        await shop.webhooks.drain()
        await until(lambda: _price_is(api, "TEA", 480), "the webhook's price")
        clock.advance(60.0)
        await until(lambda: _polls_reach(api, 2), "the next poll")
        rows = [r for r in await inbox(api) if r["subject"] == v["TEA"].product_id]
        assert [(r["via"], r["state"], r["seen_again"]) for r in rows] == \
            [("webhook", "done", 1)], rows
        # the poll first (the webhook is late), then the webhook comes
        shop.webhooks.paused = True
        shop.admin.reprice(v["MUG"].variant_id, "11.50")
        clock.advance(60.0)
        await until(lambda: _price_is(api, "MUG", 1150), "the poll's price")
        late = shop.webhooks.resume()
        await shop.webhooks.drain()
        await until(lambda: settled(api), "the late delivery to be processed")
        rows = [r for r in await inbox(api) if r["subject"] == v["MUG"].product_id]
        assert sorted((r["via"], r["state"]) for r in rows) == \
            [("poll", "done"), ("webhook", "duplicate")], rows
        poll_row = next(r for r in rows if r["via"] == "poll")
        assert next(r for r in rows if r["via"] == "webhook")["duplicate_of"] == \
            poll_row["id"]
        assert late and late[0].status == 200


async def _polls_reach(api: Api, count: int) -> bool:
    return int((await _sync(api))["poll"]["polls"]) >= count
