"""Helpers of the tests of Shopify talking back: a daemon pointed at the fake, webhooks on
or off, and waits that poll with a bound (nothing here sleeps for timing)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from edged.config import Config, ShopifyConfig, SyncConfig
from edged.store import secrets
from sync.core.clock import SystemClock
from sync.core.money import decimal_to_minor
from tests.fakes.shopify import API_VERSION, FakeShopify, SeededVariant
from tests.helpers import Api, make_config, seed_catalogue

T = TypeVar("T")
TOKEN = "shpat_inbound"  # noqa: S105 - the fake takes any token
TOPICS = ("orders/create", "orders/updated", "orders/cancelled", "products/update",
          "products/delete", "inventory_levels/update",
          "fulfillment_orders/order_routing_complete", "bulk_operations/finish",
          "app/uninstalled")
WAIT = 20.0
#: Shopify's published restore rates are 100 / 200 / 1000 / 2000 points a second by plan
#: (shopify.dev, "Shopify API rate limits"): the daemon assumes a Plus shop's until the
#: fake's first answer, and reads again a level in doubt after 1 s rather than 15.
SHOPIFY_TIMERS: dict[str, Any] = {"assumed_restore_rate": 1000.0, "in_doubt_retry_seconds": 1.0}


async def until(probe: Callable[[], Awaitable[T | None]], what: str,
                timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 f" (last: {value!r})")
        await asyncio.sleep(0.02)


def inbound_config(data_dir: Path, shop: FakeShopify, *, poll: float = 3600.0,
                   catalogue: str = "bulk", **shopify: Any) -> Config:
    """A daemon on ``shop``; the catch-up poll every ``poll`` seconds of the daemon's clock
    (it also polls at start and when the link comes back)."""
    return replace(
        make_config(data_dir),
        shopify=ShopifyConfig(shop=shop.webhooks.shop_domain,
                              location_id=shop.default_location_id, api_version=API_VERSION,
                              admin_url=f"{shop.base_url}/admin/api",
                              poll_interval_seconds=poll, catalogue_pull=catalogue,
                              bulk_poll_seconds=0.2, **{**SHOPIFY_TIMERS, **shopify}),
        sync=SyncConfig(request_timeout=5.0, pull_interval_seconds=3600.0,
                        breaker_break_seconds=1.0, quick_retries=1,
                        retry_backoff_seconds=0.25))


def prepare(cfg: Config, shop: FakeShopify, variants: Iterable[SeededVariant] = (), *,
            webhook_secret: str | None = "") -> None:
    """The token, the webhook secret (the fake app's, unless given; None: none set) and a
    catalogue of ``variants`` as the fake has them."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    secrets.cli_set(cfg.data_dir, "shopify.token", io.StringIO(TOKEN + "\n"), env={})
    if webhook_secret is not None:
        secrets.cli_set(cfg.data_dir, "shopify.webhook_secret",
                        io.StringIO((webhook_secret or shop.webhooks.secret) + "\n"), env={})
    rows = ["sku,barcode,title,price,variant_id,inventory_item_id,quantity"]
    for v in variants:
        price = decimal_to_minor(shop.variants[v.variant_id].price, shop.currency)
        rows.append(f"{v.sku},,{v.sku},{price},{v.variant_id},{v.inventory_item_id},"
                    f"{shop.quantity(v.inventory_item_id)}")
    if len(rows) > 1:
        seed_catalogue(cfg.data_dir / "edged.db", "\n".join(rows) + "\n")


def subscribe(shop: FakeShopify, api: Api, topics: Iterable[str] = TOPICS) -> str:
    url = f"{api.base}/v1/webhooks/shopify"
    shop.webhooks.subscribe(url, list(topics))
    return url


async def inbox(api: Api, state: str | None = None) -> list[dict[str, Any]]:
    path = "/v1/shopify/inbox?limit=500" + (f"&state={state}" if state else "")
    status, body = await api.get(path, token=api.manager_token)
    assert status == 200, body
    return list(body["data"])


async def pickups(api: Api, which: str = "active") -> list[dict[str, Any]]:
    status, body = await api.get(f"/v1/pickups?status={which}")
    assert status == 200, body
    return list(body["data"])


async def item(api: Api, sku: str) -> dict[str, Any]:
    status, body = await api.get(f"/v1/items?sku={sku}")
    assert status == 200, body
    return dict(body)


async def settled(api: Api) -> bool:
    """Nothing pending in the inbox and nothing waiting for Shopify in the outbox."""
    status, body = await api.get("/v1/sync")
    assert status == 200, body
    shopify = body["shopify"]
    queue = next(d for d in body["destinations"] if d["destination"] == "shopify")
    return shopify["inbox"]["pending"] == 0 and not queue["pending"] and not queue["inflight"]


class OffsetClock(SystemClock):
    """The real clock, which a test can move forward at once (the webhook secret's hour of
    grace is judged against the time the CLI wrote, which is real)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)


__all__ = ["TOPICS", "OffsetClock", "inbound_config", "inbox", "item", "pickups", "prepare",
           "settled", "subscribe", "until"]
