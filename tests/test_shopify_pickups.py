"""Online orders picked up in the store, through real HTTP with the schema-checked fake.

Published facts these rest on (shopify.dev, see tests/fakes/shopify_pickups.py): a
fulfillment order is assigned to one location with a delivery method (``PICK_UP``); an
order may have fulfillment orders at two locations; placing the order moves its quantities
from ``available`` to ``committed`` at each assigned location; fulfilling takes them out of
``committed`` (``on_hand`` down, ``available`` unchanged); neither pick-up mutation takes
``@idempotent``; preparing items already prepared is refused with
``NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema

from tests.clock import ManualClock
from tests.fakes.shopify import FakeShopify, SeededVariant, load_admin_schema
from tests.helpers import Api, running
from tests.shopify_inbound import (
    inbound_config,
    inbox,
    item,
    pickups,
    prepare,
    settled,
    subscribe,
    until,
)
from tests.test_status_page import browser  # noqa: F401  (the chromium fixture)

pytestmark = pytest.mark.timeout(60)

PAYMENT_WORDS = ("price", "amount", "total", "transaction", "gateway", "payment", "card")


@pytest.fixture(scope="module")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


@asynccontextmanager
async def store(tmp_path: Path, schema: GraphQLSchema, *, webhooks: bool = True,
                clock: ManualClock | None = None, **shopify: Any
                ) -> AsyncIterator[tuple[FakeShopify, Api, dict[str, SeededVariant], str]]:
    """A daemon on the fake with TEA (40) and MUG (10) here, TEA (100) at a warehouse."""
    async with FakeShopify(schema=schema) as shop:
        variants = {"TEA": shop.seed_variant("TEA", price="4.50", available=40),
                    "MUG": shop.seed_variant("MUG", price="12.00", available=10)}
        warehouse = shop.add_location("Warehouse")
        shop.stock_at(variants["TEA"].inventory_item_id, warehouse, available=100)
        cfg = inbound_config(tmp_path / "data", shop, catalogue="paged", **shopify)
        prepare(cfg, shop, variants.values())
        async with running(cfg, clock) as api:
            await until(lambda: _polled(api), "the first catch-up poll")
            if webhooks:
                subscribe(shop, api)
            yield shop, api, variants, warehouse
    shop.assert_no_rejections()


def _ahead() -> datetime:
    """The manual clock's start: a little after the catalogue's import (which the CLI
    stamps with the real time), as a real clock would be."""
    return datetime.now(UTC) + timedelta(seconds=30)


async def _polls(api: Api) -> int:
    status, body = await api.get("/v1/sync")
    assert status == 200, body
    return int(body["shopify"]["poll"]["polls"])


async def _polls_reach(api: Api, count: int) -> int | None:
    polls = await _polls(api)
    return polls if polls >= count else None


async def _polled(api: Api) -> bool:
    return await _polls(api) >= 1


def _payment_free(value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            assert not any(w in key.lower() for w in PAYMENT_WORDS), f"{where}.{key}"
            _payment_free(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            _payment_free(inner, f"{where}[{n}]")


async def _stock(api: Api, sku: str) -> int:
    return int((await item(api, sku))["stock"]["quantity"])


async def test_a_pickup_at_two_locations_shows_this_stores_part(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with store(tmp_path, admin_schema) as (shop, api, v, warehouse):
        here = shop.default_location_id
        online = shop.pickups.create_order("Ada Lovelace", [
            (here, "PICK_UP", [(v["TEA"].variant_id, 2), (v["MUG"].variant_id, 1)]),
            (warehouse, "PICK_UP", [(v["TEA"].variant_id, 3)])])
        (pickup,) = await until(lambda: pickups(api), "the pick-up to show")
        assert pickup["order_name"] == online.order.name
        assert pickup["customer_name"] == "Ada Lovelace"
        assert pickup["status"] == "open" and pickup["location_id"] == here
        assert [(ln["sku"], ln["quantity"]) for ln in pickup["lines"]] == [("TEA", 2),
                                                                           ("MUG", 1)]
        _payment_free(pickup)
        # the reservation here (not the warehouse's) reaches local stock
        await until(lambda: settled(api), "the inbox to settle")
        assert (await _stock(api, "TEA"), await _stock(api, "MUG")) == (38, 9)
        status, page = await api.get("/v1/status", token=api.manager_token)
        assert [p["id"] for p in page["pickups"]] == [pickup["id"]]
        _payment_free(page["pickups"])
        outcomes = " ".join(r["outcome"] or "" for r in await inbox(api))
        assert "not a pick-up at this store" in outcomes  # the warehouse's part


async def test_webhooks_off_a_pickup_shows_within_one_polling_interval(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """No webhook reaches the store: the catch-up poll finds the order at its next run,
    one interval of the daemon's clock after the last."""
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, webhooks=False, clock=clock,
                     poll=60.0) as (shop, api, v, _):
        polls = await _polls(api)
        shop.pickups.pickup_order("Grace Hopper", [(v["TEA"].variant_id, 1)])
        assert await pickups(api) == []  # nothing tells the daemon yet
        assert await _polls(api) == polls
        clock.advance(60.0)  # one polling interval
        (pickup,) = await until(lambda: pickups(api), "the poll to find the order")
        assert pickup["customer_name"] == "Grace Hopper"
        assert await until(lambda: _polls_reach(api, polls + 1), "the poll to end") \
            == polls + 1  # that one poll, no other
        rows = await inbox(api)
        assert {r["via"] for r in rows if r["topic"].startswith("poll:fulfillment")} == \
            {"poll"}
        assert not [r for r in rows if r["via"] == "webhook"]


async def test_a_quiet_catalogue_is_not_read_again_at_every_poll(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """The poll asks Shopify's product search for ``updated_at:>'…'``: once a poll has seen
    nothing new, the next asks only from shortly before the one before it (the overlap), so
    products nobody touched since the pull are not read again at every poll (a whole
    catalogue a poll, as a new user saw: 150 queries for 600 products)."""
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, webhooks=False, clock=clock,
                     poll=60.0) as (shop, api, _, _):
        seeded = datetime.now(UTC)  # every product was seeded before this
        polls = await _polls(api)
        for n in range(1, 4):
            clock.advance(60.0)
            await until(lambda n=n: _polls_reach(api, polls + n), "the next poll")
        asked = [json.loads(r.body)["variables"]["q"] for r in shop.requests
                 if b"EdgedPollProducts" in r.body]
        assert asked, "no product poll was sent"
        since = datetime.strptime(asked[-1], "updated_at:>'%Y-%m-%dT%H:%M:%SZ'") \
            .replace(tzinfo=UTC)
        assert since > seeded, (asked, seeded)


async def test_webhooks_on_a_pickup_shows_with_no_timer_running(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """The daemon's clock stands still (no poll can run): the webhook alone brings it."""
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, clock=clock, poll=60.0) as (shop, api, v, _):
        polls = await _polls(api)
        before = clock.monotonic()
        shop.pickups.pickup_order("Grace Hopper", [(v["MUG"].variant_id, 2)])
        (pickup,) = await until(lambda: pickups(api), "the webhook to bring the order",
                                timeout=5.0)
        assert clock.monotonic() == before  # 0 s of the daemon's time
        assert await _polls(api) == polls
        assert pickup["lines"][0]["quantity"] == 2
        await until(lambda: settled(api), "the inbox to settle")
        assert await _stock(api, "MUG") == 8


async def test_ready_and_handed_over_from_the_api_each_applied_once(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with store(tmp_path, admin_schema) as (shop, api, v, _):
        online = shop.pickups.pickup_order("Ada Lovelace", [(v["TEA"].variant_id, 2)])
        fo_id = online.fulfillment_order_ids[0]
        (pickup,) = await until(lambda: pickups(api), "the pick-up")
        pid = pickup["id"]
        await until(lambda: settled(api), "the inbox to settle")
        assert await _stock(api, "TEA") == 38

        status, ready = await api.post(f"/v1/pickups/{pid}/ready", {}, key="ready-1")
        assert status == 202 and ready["status"] == "ready", ready
        assert ready["sync"]["ready"] in ("pending", "inflight", "done")
        again = await api.post(f"/v1/pickups/{pid}/ready", {}, key="ready-1")
        assert again == (202, ready)  # the same key: the same answer
        status, body = await api.post(f"/v1/pickups/{pid}/ready", {})
        assert (status, body["error"]["code"]) == (409, "ERR-4012")
        await until(lambda: settled(api), "the ready to reach Shopify")
        assert shop.pickups.notifications[fo_id] == 1

        status, over = await api.post(f"/v1/pickups/{pid}/handed-over", {})
        assert status == 202 and over["status"] == "handed_over", over
        await until(lambda: settled(api), "the hand-over to reach Shopify")
        fo = shop.pickups.fulfillment_orders[fo_id]
        assert fo.status == "CLOSED" and len(fo.fulfillment_ids) == 1
        assert shop.pickups.applied[("fulfill", fo_id)] == 1
        tea = v["TEA"].inventory_item_id
        assert (shop.quantity(tea), shop.quantity(tea, name="on_hand")) == (38, 38)
        assert await _stock(api, "TEA") == 38  # what left was reserved already
        status, body = await api.post(f"/v1/pickups/{pid}/handed-over", {})
        assert (status, body["error"]["code"]) == (409, "ERR-4013")
        status, done = await api.get(f"/v1/pickups/{pid}")
        assert done["sync"] == {"ready": "done", "handed_over": "done"}
        assert await pickups(api) == []  # no longer to prepare
        assert [p["id"] for p in await pickups(api, "handed_over")] == [pid]
        status, body = await api.get("/v1/pickups/pu_nothing")
        assert (status, body["error"]["code"]) == (404, "ERR-4011")


async def test_lost_answers_never_notify_or_fulfil_twice(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """Shopify applies each mutation and its answer is lost (a 500 after applying): the
    daemon reads the fulfillment order back before it sends again."""
    async with store(tmp_path, admin_schema) as (shop, api, v, _):
        online = shop.pickups.pickup_order("Ada Lovelace", [(v["TEA"].variant_id, 1),
                                                            (v["MUG"].variant_id, 1)])
        fo_id = online.fulfillment_order_ids[0]
        (pickup,) = await until(lambda: pickups(api), "the pick-up")
        await until(lambda: settled(api), "the inbox to settle")
        shop.faults.fail(500, count=1, fail_after_apply=True)
        status, _ = await api.post(f"/v1/pickups/{pickup['id']}/ready", {})
        assert status == 202
        await until(lambda: settled(api), "the ready to settle")
        shop.faults.fail(500, count=1, fail_after_apply=True)
        status, _ = await api.post(f"/v1/pickups/{pickup['id']}/handed-over", {})
        assert status == 202
        await until(lambda: settled(api), "the hand-over to settle")
        assert [r.fault for r in shop.requests].count("fail_after_apply") == 2
        assert shop.pickups.notifications[fo_id] == 1
        assert shop.pickups.applied[("fulfill", fo_id)] == 1
        assert shop.pickups.fulfillment_orders[fo_id].status == "CLOSED"
        status, jobs = await api.get("/v1/sync/jobs?state=dead")
        assert jobs["data"] == []


async def test_a_cancelled_order_cancels_the_pickup_and_returns_the_stock(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with store(tmp_path, admin_schema) as (shop, api, v, _):
        online = shop.pickups.pickup_order("Ada Lovelace", [(v["TEA"].variant_id, 4)])
        (pickup,) = await until(lambda: pickups(api), "the pick-up")
        await until(lambda: settled(api), "the inbox to settle")
        assert await _stock(api, "TEA") == 36
        shop.pickups.cancel(online.order.id)
        await until(lambda: _status(api, pickup["id"], "cancelled"), "the cancellation")
        await until(lambda: settled(api), "the inbox to settle")
        assert await _stock(api, "TEA") == 40
        status, body = await api.post(f"/v1/pickups/{pickup['id']}/ready", {})
        assert (status, body["error"]["code"]) == (409, "ERR-4012")


async def _status(api: Api, pickup_id: str, status: str) -> bool:
    code, body = await api.get(f"/v1/pickups/{pickup_id}")
    return code == 200 and body["status"] == status


async def test_an_order_shipped_from_the_store_is_no_pickup_but_reserves_stock(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with store(tmp_path, admin_schema) as (shop, api, v, _):
        shop.pickups.create_order("Ada Lovelace", [
            (shop.default_location_id, "SHIPPING", [(v["MUG"].variant_id, 3)])])
        await until(lambda: _stock_is(api, "MUG", 7), "the reservation to reach the stock")
        assert await pickups(api, "all") == []


async def _stock_is(api: Api, sku: str, quantity: int) -> bool:
    return await _stock(api, sku) == quantity


async def test_when_the_link_comes_back_the_daemon_catches_up_at_once(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """Webhooks off, the poll an hour away: the order placed while the link was down shows
    as soon as the breaker closes again, long before the next scheduled poll."""
    clock = ManualClock(_ahead())
    async with store(tmp_path, admin_schema, webhooks=False, clock=clock,
                     poll=3600.0) as (shop, api, v, _):
        started = clock.monotonic()
        await shop.faults.refuse()
        # the store receives goods meanwhile; the sends fail and open the breaker
        status, _ = await api.post("/v1/inventory/adjustments", {
            "reason": "received", "changes": [{"sku": "TEA", "delta": 6}]})
        assert status == 201
        await until(lambda: _breaker_is(api, clock, "open"), "the breaker to open")
        shop.pickups.pickup_order("Grace Hopper", [(v["MUG"].variant_id, 1)])
        await shop.faults.restore()
        await until(lambda: _breaker_is(api, clock, "closed"), "the link to come back")
        (pickup,) = await until(lambda: pickups(api), "the catch-up poll")
        assert pickup["customer_name"] == "Grace Hopper"
        (row,) = [r for r in await inbox(api) if r["topic"] == "poll:fulfillment_orders"]
        assert row["via"] == "poll" and row["state"] == "done"
        assert clock.monotonic() - started < 3600.0  # not the scheduled poll


async def _breaker_is(api: Api, clock: ManualClock, state: str) -> bool:
    clock.advance(0.5)  # the breaker's break and the rows' backoff run on the clock
    status, body = await api.get("/v1/sync")
    shopify = next(d for d in body["destinations"] if d["destination"] == "shopify")
    return shopify["breaker"]["state"] == state


@pytest.mark.serial  # within a second in a real browser: kept apart from other tests
async def test_the_status_page_shows_pickups_live_without_payment_data(
        tmp_path: Path, admin_schema: GraphQLSchema, browser: object) -> None:
    """Playwright driving Debian's chromium (tests/test_status_page.py's fixture): a pick-up
    placed online shows on the manager's page within a second, with its lines and the
    customer's name and no amount; the inbox counts are there too."""
    from playwright.async_api import Browser, expect  # noqa: PLC0415

    assert isinstance(browser, Browser)
    async with store(tmp_path, admin_schema) as (shop, api, v, _):
        page = await browser.new_page()
        await page.goto(api.base + "/")
        await page.fill("#token", api.manager_token)
        await page.click("#signin-form button[type=submit]")
        await expect(page.locator("#live")).to_have_text("Live")
        await expect(page.locator("#pickups")).to_contain_text("No online order")
        shop.pickups.pickup_order("Ada Lovelace", [(v["TEA"].variant_id, 2),
                                                   (v["MUG"].variant_id, 1)])
        (pickup,) = await until(lambda: pickups(api), "the pick-up")
        card = page.locator(f"#pickup-{pickup['id']}")
        await expect(card).to_contain_text("Ada Lovelace", timeout=1000)
        await expect(card).to_contain_text("2 × TEA")
        await expect(card).to_contain_text("1 × MUG")
        text = await card.inner_text()
        assert "EUR" not in text and "4.50" not in text and "12.00" not in text
        await expect(page.locator("#inbox-counts")).to_contain_text("done")
        await page.close()
