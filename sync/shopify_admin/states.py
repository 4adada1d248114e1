"""What the daemon reads of Shopify, as typed values: fulfillment orders (pick-ups),
products with their variants, inventory levels, deletions; and how each is read from an
Admin API answer.

Every state carries its Shopify ``updatedAt`` (the version the inbox compares) and a digest
of what the daemon applies from it; :func:`to_data` and each class's ``from_data`` carry a
state through the inbox (a poll row keeps the state its poll read).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sync.core.money import decimal_to_minor
from sync.shopify_admin.webhooks import normal_time, state_digest

logger = logging.getLogger(__name__)

DEFAULT_VARIANT_TITLE = "Default Title"

T = TypeVar("T")

# -- states -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PickupLine:
    line_item_id: str
    sku: str | None
    title: str
    quantity: int
    remaining: int
    inventory_item_id: str | None


@dataclass(frozen=True, slots=True)
class FulfillmentOrderState:
    """A fulfillment order as Shopify shows it now."""

    id: str
    status: str
    updated_at: str
    created_at: str | None
    method_type: str | None
    location_id: str | None
    order_id: str | None
    order_name: str | None
    order_source: str | None
    order_cancelled: bool
    customer_name: str | None
    lines: tuple[PickupLine, ...]

    def is_pickup_at(self, location_id: str) -> bool:
        return self.method_type == "PICK_UP" and self.location_id == location_id

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> FulfillmentOrderState:
        """The state from :func:`to_data`'s JSON (as the inbox keeps a poll's reading)."""
        fields = dict(data)
        fields["lines"] = tuple(PickupLine(**ln) for ln in fields.get("lines") or ())
        return cls(**fields)

    @property
    def digest(self) -> str:
        return state_digest([self.status, self.method_type, self.location_id,
                             self.order_cancelled, self.customer_name,
                             [(ln.line_item_id, ln.quantity, ln.remaining)
                              for ln in self.lines]])


@dataclass(frozen=True, slots=True)
class VariantState:
    variant_id: str
    sku: str | None
    barcode: str | None
    title: str
    price: int
    inventory_item_id: str | None


@dataclass(frozen=True, slots=True)
class ProductState:
    """A product and all its variants (prices in minor units of ``currency``)."""

    id: str
    title: str
    status: str
    updated_at: str
    currency: str
    variants: tuple[VariantState, ...]

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ProductState:
        fields = dict(data)
        fields["variants"] = tuple(VariantState(**v) for v in fields.get("variants") or ())
        return cls(**fields)

    @property
    def digest(self) -> str:
        """The state applied (the variants in id order: a poll and a bulk file list them
        in different orders)."""
        return state_digest([self.title, self.status, self.currency,
                             sorted((v.variant_id, v.sku, v.barcode, v.title, v.price,
                                     v.inventory_item_id) for v in self.variants)])


@dataclass(frozen=True, slots=True)
class LevelState:
    """An item's quantities at a location, read at ``read_at`` (the daemon's clock, taken
    before the request: every change acknowledged before it is included)."""

    inventory_item_id: str
    location_id: str
    available: int | None
    on_hand: int | None
    updated_at: str | None
    read_at: str

    @property
    def subject(self) -> str:
        return f"{self.inventory_item_id}@{self.location_id}"

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> LevelState:
        return cls(**data)

    @property
    def digest(self) -> str:
        return state_digest([self.available])


@dataclass(frozen=True, slots=True)
class Deletion:
    product_id: str
    occurred_at: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a catch-up poll; ``newest``: the latest ``updatedAt`` on it."""

    items: tuple[T, ...]
    end_cursor: str | None
    has_next: bool
    newest: str | None


def to_data(state: FulfillmentOrderState | ProductState | LevelState | Deletion
            ) -> dict[str, Any]:
    """A state as JSON-able data (its class's ``from_data`` reads it back)."""
    return dataclasses.asdict(state)


# -- parsing ------------------------------------------------------------------------------


def as_object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_time(value: Any) -> str | None:
    text = as_text(value)
    return normal_time(text) if text else None


def fulfillment_order(node: Mapping[str, Any]) -> FulfillmentOrderState:
    order = as_object(node.get("order"))
    lines = []
    for raw in as_object(node.get("lineItems")).get("nodes") or ():
        ln = as_object(raw)
        if not as_text(ln.get("id")):
            continue
        product, variant = as_text(ln.get("productTitle")) or "", as_text(ln.get("variantTitle"))
        title = f"{product} - {variant}" if variant and variant != DEFAULT_VARIANT_TITLE \
            else product
        lines.append(PickupLine(str(ln["id"]), as_text(ln.get("sku")), title,
                                as_int(ln.get("totalQuantity")),
                                as_int(ln.get("remainingQuantity")),
                                as_text(ln.get("inventoryItemId"))))
    return FulfillmentOrderState(
        id=str(node["id"]), status=as_text(node.get("status")) or "OPEN",
        updated_at=as_time(node.get("updatedAt")) or "", created_at=as_time(node.get("createdAt")),
        method_type=as_text(as_object(node.get("deliveryMethod")).get("methodType")),
        location_id=as_text(as_object(as_object(node.get("assignedLocation")).get("location")).get("id")),
        order_id=as_text(order.get("id")), order_name=as_text(order.get("name")),
        order_source=as_text(order.get("sourceName")),
        order_cancelled=order.get("cancelledAt") is not None,
        customer_name=as_text(as_object(order.get("customer")).get("displayName")),
        lines=tuple(lines))


def _variant(node: Mapping[str, Any], product_title: str, currency: str) -> VariantState:
    variant_title = as_text(node.get("title"))
    title = product_title
    if variant_title and variant_title != DEFAULT_VARIANT_TITLE:
        title = f"{product_title} - {variant_title}" if product_title else variant_title
    return VariantState(str(node["id"]), as_text(node.get("sku")), as_text(node.get("barcode")),
                        title, decimal_to_minor(str(node.get("price") or "0"), currency),
                        as_text(as_object(node.get("inventoryItem")).get("id")))


def variant_states(nodes: Any, product_title: str, currency: str) -> list[VariantState]:
    out = []
    for raw in nodes or ():
        node = as_object(raw)
        if not as_text(node.get("id")):
            continue
        try:
            out.append(_variant(node, product_title, currency))
        except ValueError as exc:
            logger.warning("shopify: variant %s skipped: %s", node.get("id"), exc)
    return out


def level_state(node: Mapping[str, Any], item_id: str, location_id: str,
           read_at: str) -> LevelState:
    quantities = {str(as_object(q).get("name")): as_object(q).get("quantity")
                  for q in node.get("quantities") or ()}
    available, on_hand = quantities.get("available"), quantities.get("on_hand")
    return LevelState(item_id, location_id,
                      available if isinstance(available, int) else None,
                      on_hand if isinstance(on_hand, int) else None,
                      as_time(node.get("updatedAt")), read_at)


__all__ = [
    "DEFAULT_VARIANT_TITLE",
    "Deletion",
    "FulfillmentOrderState",
    "LevelState",
    "Page",
    "PickupLine",
    "ProductState",
    "VariantState",
    "as_object",
    "as_text",
    "as_time",
    "fulfillment_order",
    "level_state",
    "to_data",
    "variant_states",
]
