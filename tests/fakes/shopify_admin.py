"""Changes a merchant makes in the fake Shopify's admin, with the webhooks Shopify sends.

Published facts it rests on (shopify.dev: products/update, products/delete,
inventory_levels/update webhook payloads, ``deletionEvents``, ``ProductStatus``):

- repricing a variant changes the variant's and the product's ``updatedAt`` and sends
  ``products/update`` with the product and its variants;
- deleting a product removes it with its variants and inventory items; Shopify keeps a
  deletion event (``deletionEvents(subjectTypes: [PRODUCT], query: "occurred_at:>…")``,
  deprecated for ``events`` but served) and sends ``products/delete`` ``{"id": N}``;
- archiving sets ``status: ARCHIVED`` (``products/update``);
- a quantity changed in the admin changes the level's ``updatedAt`` and sends
  ``inventory_levels/update``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from graphql import GraphQLResolveInfo

from . import shopify as base
from .shopify import _iso, _match_id, _match_time, gid_number
from .shopify_webhook_sender import rest_time

if TYPE_CHECKING:
    from .shopify import FakeShopify

base._KNOWN_FILTERS["deletionEvents"] = frozenset("default id occurred_at".split())


@dataclass
class DeletionEvent:
    n: int
    subject_id: str
    subject_type: str
    occurred_at: datetime


class AdminChanges:
    def __init__(self, shop: FakeShopify) -> None:
        self.shop = shop
        self.deletions: list[DeletionEvent] = []
        shop.extend_root({"deletionEvents": self._q_deletions})

    def _touch_product(self, product_id: str) -> None:
        now = self.shop.now()
        self.shop.products[product_id].updated_at = now

    def product_payload(self, product_id: str) -> dict[str, Any]:
        shop = self.shop
        p = shop.products[product_id]
        return {"id": gid_number(p.id), "admin_graphql_api_id": p.id, "title": p.title,
                "status": p.status.lower(), "updated_at": rest_time(p.updated_at),
                "variants": [{"id": gid_number(v.id), "admin_graphql_api_id": v.id,
                              "sku": v.sku, "price": v.price, "barcode": v.barcode,
                              "inventory_item_id": gid_number(v.inventory_item_id),
                              "updated_at": rest_time(v.updated_at)}
                             for v in (shop.variants[i] for i in p.variant_ids)]}

    def reprice(self, variant_id: str, price: str) -> None:
        shop = self.shop
        variant = shop.variants[variant_id]
        variant.price = price
        variant.updated_at = shop.now()
        self._touch_product(variant.product_id)
        shop.webhooks.emit("products/update", self.product_payload(variant.product_id))

    def set_status(self, product_id: str, status: str) -> None:
        self.shop.products[product_id].status = status
        self._touch_product(product_id)
        self.shop.webhooks.emit("products/update", self.product_payload(product_id))

    def delete_product(self, product_id: str) -> None:
        shop = self.shop
        product = shop.products.pop(product_id)
        for vid in product.variant_ids:
            variant = shop.variants.pop(vid)
            shop.items.pop(variant.inventory_item_id, None)
            for key in [k for k in shop.levels if k[0] == variant.inventory_item_id]:
                del shop.levels[key]
        self.deletions.append(DeletionEvent(len(self.deletions) + 1, product_id, "PRODUCT",
                                            shop.now()))
        shop.webhooks.emit("products/delete", {"id": gid_number(product_id)})

    def set_available(self, item_id: str, quantity: int,
                      location_id: str | None = None) -> None:
        shop = self.shop
        location = location_id or shop.default_location_id
        shop.set_quantity(item_id, location, quantity=quantity)
        shop.webhooks.emit("inventory_levels/update",
                           shop.webhooks.level_payload(item_id, location))

    def _q_deletions(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                     subjectTypes: list[str] | None = None, **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        found = [d for d in self.deletions
                 if subjectTypes is None or d.subject_type in subjectTypes]
        found = self.shop._search(info, "deletionEvents", query, found, {
            "id": lambda d, op, x: _match_id(d.subject_id, op, x),
            "occurred_at": lambda d, op, x: _match_time(d.occurred_at, op, x),
        })
        return self.shop._connection(info, found, lambda d: d.n, lambda d: {
            "__typename": "DeletionEvent", "subjectId": d.subject_id,
            "subjectType": d.subject_type, "occurredAt": _iso(d.occurred_at)}, **page)


__all__ = ["AdminChanges", "DeletionEvent"]
