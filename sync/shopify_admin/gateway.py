"""Shopify's GraphQL Admin API: the ``shopify`` destination of the outbox engine.

The gateway hands each work to the module of its job:

- ``inventory.adjust``, ``inventory.set``: stock changes and counts, batched
  (:mod:`sync.shopify_admin.inventory`);
- ``order.create``: a sale, never batched and never created twice
  (:mod:`sync.shopify_admin.orders`);
- ``pickup.ready``, ``pickup.handover``: a pick-up marked ready or handed over, each once
  (:mod:`sync.shopify_admin.pickup`);

both over one shop's endpoint and cost bucket (:mod:`sync.shopify_admin.client`). The catalogue
pull (:mod:`sync.shopify_admin.pull`) uses the same client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sync.core.clock import Clock
from sync.core.contract import OutboxKind
from sync.core.errors import PermanentError
from sync.core.gateway import OutboxRow, Work, WorkResult
from sync.core.limiter import ShopifyCostBucket
from sync.core.money import (
    CURRENCY_EXPONENTS,
    currency_exponent,
    decimal_to_minor,
    minor_to_decimal,
)
from sync.shopify_admin.client import (
    ERR_REFUSED,
    GraphQLAnswer,
    SessionFactory,
    ShopifyClient,
    ShopifySettings,
    graphql_error,
)
from sync.shopify_admin.inventory import (
    BATCH_FORMAT,
    INVENTORY_ADJUST,
    INVENTORY_KINDS,
    INVENTORY_SET,
    MAX_BATCH,
    MUTATIONS_PER_CALL,
    InventorySender,
    inventory_document,
    plan_inventory,
    user_error_code,
)
from sync.shopify_admin.orders import OrderSender, build_order, order_search_query
from sync.shopify_admin.pickup import PICKUP_KINDS, PickupSender

DESTINATION = "shopify"
ORDER_CREATE = OutboxKind.ORDER_CREATE


class ShopifyGateway:
    """The ``shopify`` destination (implements ``sync.core.gateway.Gateway``)."""

    destination = DESTINATION

    def __init__(self, settings: ShopifySettings, token_provider: Callable[[], str | None],
                 clock: Clock, *, session_factory: SessionFactory | None = None,
                 cost_bucket: ShopifyCostBucket | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.client = ShopifyClient(settings, token_provider, clock,
                                    session_factory=session_factory, cost_bucket=cost_bucket)
        self.inventory = InventorySender(self.client, settings.location_id)
        self.orders = OrderSender(self.client, settings, clock)
        self.pickups = PickupSender(self.client)

    @property
    def bucket(self) -> ShopifyCostBucket:
        return self.client.bucket

    def batch_limit(self, kind: str) -> int:
        return MAX_BATCH if kind in INVENTORY_KINDS else 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        if kind in INVENTORY_KINDS:
            return plan_inventory(kind, rows, self.settings.location_id)
        if len(rows) == 1:
            return dict(rows[0].payload)
        raise ValueError(f"shopify: {kind!r} is never batched")

    async def send(self, work: Work) -> WorkResult:
        if work.kind in INVENTORY_KINDS:
            return await self.inventory.send(work)
        if work.kind == ORDER_CREATE:
            return await self.orders.send(work)
        if work.kind in PICKUP_KINDS:
            return await self.pickups.send(work)
        raise PermanentError(f"the shopify gateway does not handle {work.kind!r} rows",
                             ERR_REFUSED)

    async def find_order(self, source_identifier: str) -> Mapping[str, Any] | None:
        """The order carrying the edged marker, or None (Shopify's search may lag)."""
        return await self.orders.find_order(source_identifier)

    async def close(self) -> None:
        await self.client.close()


__all__ = [
    "BATCH_FORMAT",
    "CURRENCY_EXPONENTS",
    "DESTINATION",
    "INVENTORY_ADJUST",
    "INVENTORY_SET",
    "MAX_BATCH",
    "MUTATIONS_PER_CALL",
    "ORDER_CREATE",
    "GraphQLAnswer",
    "ShopifyClient",
    "ShopifyGateway",
    "ShopifySettings",
    "build_order",
    "currency_exponent",
    "decimal_to_minor",
    "graphql_error",
    "inventory_document",
    "minor_to_decimal",
    "order_search_query",
    "plan_inventory",
    "user_error_code",
]
