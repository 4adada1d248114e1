"""One order in doubt never stalls the rest of Shopify's queue (issue 16 item 12).

A real daemon in-process on a manual clock, the Shopify fake (Shopify's schema, its cost
rules) on the same clock. Rests on two facts: ``orderCreate`` has no idempotency directive,
so after a lost answer the daemon looks its marker up before it creates the order again;
Shopify's order search may lag (the fake's ``order_search_delay``), so a miss is trusted
only ``order_search_settle`` (30 s) after the send whose answer was lost.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema

from tests.clock import ManualClock
from tests.fakes.shopify import FakeShopify
from tests.helpers import Api, running
from tests.test_sync_e2e import (
    adjust,
    admin_schema,  # noqa: F401  (the fixture)
    cash_sale,
    catalogue_csv,
    e2e_config,
    prepare,
    seed_shop,
    upstream_deltas,
)

pytestmark = pytest.mark.timeout(60)

SETTLE = 30.0  # ShopifySettings.order_search_settle


async def until(probe: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Real-time polling: the daemon works on its own; the clock does not move."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)


def order_row(api: Api) -> sqlite3.Row | None:
    conn = sqlite3.connect(api.daemon.db.path)
    conn.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM outbox WHERE kind = 'order.create'").fetchone()
        return row
    finally:
        conn.close()


def held(api: Api, clock: ManualClock) -> bool:
    """The order waits for the search to settle: due well after now."""
    row = order_row(api)
    return row is not None and row["state"] == "pending" and bool(row["outcome_unknown"]) \
        and (stamp(row["next_attempt_at"]) - clock.now()).total_seconds() > SETTLE / 2


async def worker_state(api: Api) -> str:
    _, body = await api.get("/v1/sync")
    return str(next(d for d in body["destinations"] if d["destination"] == "shopify")["worker"])


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_an_order_in_doubt_holds_only_itself_and_keeps_its_settle_time(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:  # noqa: F811
    clock = ManualClock()
    async with FakeShopify(schema=admin_schema, clock=clock.monotonic, now=clock.now,
                           order_search_delay=3600.0) as shop:
        stock = {"TEA-1": 40, "MUG-1": 10}
        variants = seed_shop(shop, stock)
        cfg = e2e_config(tmp_path / "data", shop)
        prepare(cfg, catalogue_csv(variants, stock))
        tea, mug = variants["TEA-1"].inventory_item_id, variants["MUG-1"].inventory_item_id
        async with running(cfg, clock) as api:
            shop.faults.fail(500, count=1)  # the orderCreate's answer is lost (not created)
            await cash_sale(api, {"TEA-1": 2})
            await until(lambda: order_row(api) is not None and order_row(api)["attempts"] == 1
                        and order_row(api)["outcome_unknown"], "the lost answer")
            sent_at = clock.now()
            clock.advance(2.5)  # its backoff: the lookup misses, and the order is held
            await until(lambda: held(api, clock), "the order held")
            # the rest of the queue goes on at once: no clock moves from here
            await adjust(api, "received", {"MUG-1": 5})
            await until(lambda: upstream_deltas(shop)[mug] == 5, "the adjustment at Shopify")
            assert await worker_state(api) != "backing_off"
            assert not shop.orders
            lost_at = stamp(order_row(api)["doubt_at"])
            assert lost_at == sent_at  # when the answer was lost, kept with the row
        # a clean restart: the settle time still counts from the lost answer
        clock.advance(5.0)
        async with running(cfg, clock) as api:
            row = order_row(api)
            assert row is not None and stamp(row["doubt_at"]) == lost_at
            await adjust(api, "received", {"MUG-1": 1})
            await until(lambda: upstream_deltas(shop)[mug] == 6, "an adjustment after restart")
            assert await worker_state(api) != "backing_off"
            elapsed = (clock.now() - lost_at).total_seconds()
            clock.advance(SETTLE - elapsed - 1.0)  # just before the settle time: no order
            await asyncio.sleep(0.3)
            assert not shop.orders
            clock.advance(1.5)
            await until(lambda: len(shop.orders) == 1, "the order, created once")
            await until(lambda: order_row(api)["state"] == "done", "the row done")
            assert upstream_deltas(shop)[tea] == 0  # the sale decrements through the order
            assert shop.quantity(tea) == 38
            shop.assert_no_rejections()
