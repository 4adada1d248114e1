"""The parts of the fake Shopify that live in modules of their own, installed on every
:class:`~tests.fakes.shopify.FakeShopify`:

- ``shop.webhooks`` (:mod:`tests.fakes.shopify_webhook_sender`): subscriptions and signed
  deliveries;
- ``shop.pickups`` (:mod:`tests.fakes.shopify_pickups`): online orders with fulfillment
  orders (pick-up at two locations), the pick-up mutations;
- ``shop.admin`` (:mod:`tests.fakes.shopify_admin`): a merchant's changes (reprice, delete,
  archive, set a quantity) and ``deletionEvents``;
- ``shop.bulk`` (:mod:`tests.fakes.shopify_bulk_ops`): bulk operations served as JSONL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .shopify_admin import AdminChanges
from .shopify_bulk_ops import FakeBulk
from .shopify_pickups import FakePickups
from .shopify_webhook_sender import WebhookSender

if TYPE_CHECKING:
    from .shopify import FakeShopify


def install(shop: FakeShopify) -> None:
    shop.webhooks = WebhookSender(shop)  # type: ignore[attr-defined]
    shop.pickups = FakePickups(shop)  # type: ignore[attr-defined]
    shop.admin = AdminChanges(shop)  # type: ignore[attr-defined]
    shop.bulk = FakeBulk(shop)  # type: ignore[attr-defined]
