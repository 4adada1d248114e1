"""The fake Shopify's online orders with fulfillment orders, picked up in a store.

Published facts it rests on (shopify.dev: FulfillmentOrder, DeliveryMethod,
fulfillmentOrderLineItemsPreparedForPickup, fulfillmentCreate, the inventory states, and the
Admin schema in tests/fixtures/shopify/):

- an order's line items are grouped into fulfillment orders, each assigned to one location
  (``assignedLocation { location }``) with a delivery method (``deliveryMethod { methodType:
  PICK_UP | SHIPPING | ... }``); one order may have fulfillment orders at two locations;
- placing the order reserves its quantities at each assigned location: ``available`` goes
  down and ``committed`` up (``on_hand`` unchanged); fulfilling takes them out of
  ``committed`` (``on_hand`` goes down, ``available`` does not move); cancelling puts what was
  not fulfilled back into ``available``;
- ``fulfillmentOrders(query:)`` filters ``assigned_location_id``, ``status``, ``updated_at``,
  ``id`` and leaves out closed and cancelled ones unless ``includeClosed: true``;
- ``fulfillmentOrderLineItemsPreparedForPickup(input: {lineItemsByFulfillmentOrder:
  [{fulfillmentOrderId}]})`` marks a pick-up fulfillment order's items ready and notifies the
  customer; its userError codes are ``FULFILLMENT_ORDER_INVALID``,
  ``NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER`` and ``UNABLE_TO_PREPARE_QUANTITY``. The fake
  answers ``NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER`` to a second preparation of the same
  items (what the code's name says; the fulfillment order's status is left as it was: what
  Shopify shows after a preparation is *unverified*, so the daemon must not rely on it);
- ``fulfillmentCreate(fulfillment: {lineItemsByFulfillmentOrder: [{fulfillmentOrderId,
  fulfillmentOrderLineItems: [{id, quantity}]}], notifyCustomer})``: quantities at most what
  remains (else a userError, nothing applied); a fulfillment order with nothing left is
  ``CLOSED``; a closed or cancelled one cannot be fulfilled;
- neither mutation takes ``@idempotent`` (Shopify lists the mutations that do): the fake
  refuses the directive on them, as on ``orderCreate``.

Inspection: ``fulfillment_orders``, ``notifications[fo_id]`` (ready-for-pickup notices sent to
the customer), ``fulfillments``, ``applied[("prepare"|"fulfill", fo_id)]`` counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from graphql import GraphQLResolveInfo

from . import shopify as base
from .shopify import Order, OrderLine, _iso, _match_id, _match_time, _top, gid_number

if TYPE_CHECKING:
    from .shopify import FakeShopify

base._KNOWN_FILTERS["fulfillmentOrders"] = frozenset(
    "default assigned_location_id id status updated_at".split())
ENDED = ("CLOSED", "CANCELLED")


@dataclass
class FOLine:
    id: str
    variant_id: str
    inventory_item_id: str
    sku: str | None
    product_title: str
    variant_title: str | None
    quantity: int
    remaining: int
    order_line_id: str


@dataclass
class FulfillmentOrder:
    id: str
    order_id: str
    location_id: str
    method_type: str
    status: str
    lines: list[FOLine]
    created_at: datetime
    updated_at: datetime
    prepared: bool = False
    fulfillment_ids: list[str] = field(default_factory=list)


@dataclass
class Fulfillment:
    id: str
    fulfillment_order_id: str
    location_id: str
    status: str
    created_at: datetime
    lines: list[tuple[str, int]]


@dataclass
class OnlineOrder:
    order: Order
    customer: str | None
    fulfillment_order_ids: list[str]
    cancelled_at: datetime | None = None
    updated_at: datetime | None = None


class FakePickups:
    def __init__(self, shop: FakeShopify) -> None:
        self.shop = shop
        self.fulfillment_orders: dict[str, FulfillmentOrder] = {}
        self.fulfillments: dict[str, Fulfillment] = {}
        self.online: dict[str, OnlineOrder] = {}
        self.notifications: Counter[str] = Counter()
        self.applied: Counter[tuple[str, str]] = Counter()
        shop.extend_root({
            "fulfillmentOrder": lambda info, id: self._view_by_id(id),
            "fulfillmentOrders": self._q_fulfillment_orders,
            "fulfillmentOrderLineItemsPreparedForPickup": self._m_prepared,
            "fulfillmentCreate": self._m_fulfill,
        })
        shop.extend_view("Order", self._order_extra)

    # -- seeding ---------------------------------------------------------------------------

    def create_order(self, customer: str | None,
                     assignments: Sequence[tuple[str, str, Sequence[tuple[str, int]]]],
                     *, source_name: str = "web") -> OnlineOrder:
        """An online order; ``assignments``: (location id, method type, [(variant id,
        quantity)]) per fulfillment order. Reserves the stock and sends the webhooks."""
        shop = self.shop
        now = shop.now()
        shop._order_number += 1
        lines: list[OrderLine] = []
        fos: list[FulfillmentOrder] = []
        reserved: set[tuple[str, str]] = set()
        for location, method, wanted in assignments:
            fo_lines = []
            for variant_id, qty in wanted:
                variant = shop.variants[variant_id]
                product = shop.products[variant.product_id]
                line = OrderLine(shop._gid("LineItem"), qty, product.title, variant.sku,
                                 variant_id, variant.price, shop.currency, {})
                lines.append(line)
                fo_lines.append(FOLine(shop._gid("FulfillmentOrderLineItem"), variant_id,
                                       variant.inventory_item_id, variant.sku, product.title,
                                       variant.title, qty, qty, line.id))
                level = shop.levels.get((variant.inventory_item_id, location))
                if level is not None:  # the order reserves it at the assigned location
                    level.states["available"] -= qty
                    level.states["committed"] += qty
                    level.updated_at = now
                    reserved.add((variant.inventory_item_id, location))
            fos.append(FulfillmentOrder(shop._gid("FulfillmentOrder"), "", location, method,
                                        "OPEN", fo_lines, now, now))
        order = Order(id=shop._gid("Order"), number=shop._order_number,
                      name=f"#{shop._order_number}", input={}, options={},
                      source_identifier=None, source_name=source_name, tags=[], note=None,
                      test=False, processed_at=now, created_at=now, created_mono=shop.clock(),
                      currency=shop.currency, lines=lines, transactions=[{
                          "id": shop._gid("OrderTransaction"), "kind": "SALE",
                          "status": "SUCCESS", "gateway": "shopify_payments",
                          "amountSet": {"shopMoney": {"amount": "1.00",
                                                      "currencyCode": shop.currency}}}],
                      metafields=[], location_id=None,
                      inventory_behaviour="DECREMENT_OBEYING_POLICY", inventory_effects=[])
        shop.orders.append(order)
        for fo in fos:
            fo.order_id = order.id
            self.fulfillment_orders[fo.id] = fo
        online = OnlineOrder(order, customer, [fo.id for fo in fos], updated_at=now)
        self.online[order.id] = online
        hooks = shop.webhooks
        hooks.emit("orders/create", hooks.order_payload(order, customer=customer))
        for item, location in sorted(reserved):
            hooks.emit("inventory_levels/update", hooks.level_payload(item, location))
        for fo in fos:
            hooks.emit("fulfillment_orders/order_routing_complete",
                       {"fulfillment_order": {"id": fo.id, "status": "open"}})
        return online

    def pickup_order(self, customer: str, variants: Sequence[tuple[str, int]],
                     location_id: str | None = None) -> OnlineOrder:
        """A one-location pick-up order (the fake's default location unless given)."""
        return self.create_order(customer, [(location_id or self.shop.default_location_id,
                                             "PICK_UP", variants)])

    def cancel(self, order_id: str) -> None:
        """The order is cancelled in the admin: its open fulfillment orders too, and what
        they had not fulfilled goes back to available."""
        shop = self.shop
        now = shop.now()
        online = self.online[order_id]
        online.cancelled_at = online.updated_at = now
        touched: set[tuple[str, str]] = set()
        for fo_id in online.fulfillment_order_ids:
            fo = self.fulfillment_orders[fo_id]
            if fo.status in ENDED:
                continue
            for ln in fo.lines:
                level = shop.levels.get((ln.inventory_item_id, fo.location_id))
                if level is not None and ln.remaining:
                    level.states["available"] += ln.remaining
                    level.states["committed"] -= ln.remaining
                    level.updated_at = now
                    touched.add((ln.inventory_item_id, fo.location_id))
            fo.status, fo.updated_at = "CANCELLED", now
        hooks = shop.webhooks
        payload = hooks.order_payload(online.order, customer=online.customer,
                                      cancelled_at=now, updated_at=now)
        hooks.emit("orders/cancelled", payload)
        hooks.emit("orders/updated", payload)
        for item, location in sorted(touched):
            hooks.emit("inventory_levels/update", hooks.level_payload(item, location))

    # -- views -----------------------------------------------------------------------------

    def _view_by_id(self, fo_id: str) -> dict[str, Any] | None:
        fo = self.fulfillment_orders.get(fo_id)
        return None if fo is None else self._view(fo)

    def _view(self, fo: FulfillmentOrder) -> dict[str, Any]:
        shop = self.shop
        order = next(o for o in shop.orders if o.id == fo.order_id)
        location = shop.locations[fo.location_id]

        def line_view(ln: FOLine) -> dict[str, Any]:
            variant = shop.variants.get(ln.variant_id)
            return {"__typename": "FulfillmentOrderLineItem", "id": ln.id, "sku": ln.sku,
                    "productTitle": ln.product_title, "variantTitle": ln.variant_title,
                    "totalQuantity": ln.quantity, "remainingQuantity": ln.remaining,
                    "inventoryItemId": ln.inventory_item_id, "requiresShipping": False,
                    "variant": (lambda info: shop._v_variant(variant)) if variant else None}

        def lines(info: GraphQLResolveInfo[Any], **page: Any) -> dict[str, Any]:
            return shop._connection(info, fo.lines, lambda ln: gid_number(ln.id), line_view,
                                    **page)

        def fulfillments(info: GraphQLResolveInfo[Any], **page: Any) -> dict[str, Any]:
            found = [self.fulfillments[f] for f in fo.fulfillment_ids]
            return shop._connection(info, found, lambda f: gid_number(f.id),
                                    self._fulfillment_view, **page)

        return {
            "__typename": "FulfillmentOrder", "id": fo.id, "status": fo.status,
            "requestStatus": "UNSUBMITTED", "createdAt": _iso(fo.created_at),
            "updatedAt": _iso(fo.updated_at), "orderId": order.id, "orderName": order.name,
            "orderProcessedAt": _iso(order.processed_at),
            "deliveryMethod": {"__typename": "DeliveryMethod",
                               "id": f"gid://shopify/DeliveryMethod/{gid_number(fo.id)}",
                               "methodType": fo.method_type, "presentedName": None},
            "assignedLocation": {"__typename": "FulfillmentOrderAssignedLocation",
                                 "name": location.name, "countryCode": "DE",
                                 "location": lambda info: shop._v_location(location)},
            "order": lambda info: shop._v_order(order),
            "lineItems": lines,
            "fulfillments": fulfillments,
        }

    def _fulfillment_view(self, f: Fulfillment) -> dict[str, Any]:
        return {"__typename": "Fulfillment", "id": f.id, "status": f.status,
                "name": f"#{gid_number(f.id)}", "createdAt": _iso(f.created_at),
                "updatedAt": _iso(f.created_at), "totalQuantity": sum(q for _, q in f.lines),
                "location": lambda info: self.shop._v_location(
                    self.shop.locations[f.location_id])}

    def _order_extra(self, order: Order) -> dict[str, Any]:
        online = self.online.get(order.id)
        customer = online.customer if online is not None else None

        def fulfillment_orders(info: GraphQLResolveInfo[Any], displayable: bool = False,
                               **page: Any) -> dict[str, Any]:
            page.pop("query", None)
            found = [self.fulfillment_orders[f] for f in
                     (online.fulfillment_order_ids if online is not None else ())]
            return self.shop._connection(info, found, lambda f: gid_number(f.id), self._view,
                                         **page)

        extra: dict[str, Any] = {
            "customer": {"__typename": "Customer", "displayName": customer}
            if customer else None,
            "cancelledAt": _iso(online.cancelled_at)
            if online is not None and online.cancelled_at else None,
            "fulfillmentOrders": fulfillment_orders,
        }
        if online is not None and online.updated_at is not None:
            extra["updatedAt"] = _iso(online.updated_at)
        return extra

    def _q_fulfillment_orders(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                              includeClosed: bool = False, **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        items = [fo for fo in self.fulfillment_orders.values()
                 if includeClosed or fo.status not in ENDED]
        found = self.shop._search(info, "fulfillmentOrders", query, items, {
            "assigned_location_id": lambda f, op, x: _match_id(f.location_id, op, x),
            "id": lambda f, op, x: _match_id(f.id, op, x),
            "status": lambda f, op, x: f.status.lower() == x.lower(),
            "updated_at": lambda f, op, x: _match_time(f.updated_at, op, x),
        })
        return self.shop._connection(info, found, lambda f: gid_number(f.id), self._view,
                                     **page)

    # -- mutations -------------------------------------------------------------------------

    @staticmethod
    def _no_idempotent(info: GraphQLResolveInfo[Any], mutation: str) -> None:
        if any(d.name.value == "idempotent" for d in info.field_nodes[0].directives or ()):
            raise _top(f"The @idempotent directive is not supported on {mutation}.",
                       "BAD_REQUEST")

    def _m_prepared(self, info: GraphQLResolveInfo[Any],
                    input: dict[str, Any]) -> dict[str, Any]:
        self._no_idempotent(info, "fulfillmentOrderLineItemsPreparedForPickup")
        errors, ready = [], []
        for i, entry in enumerate(input["lineItemsByFulfillmentOrder"]):
            path = ["input", "lineItemsByFulfillmentOrder", str(i), "fulfillmentOrderId"]
            fo = self.fulfillment_orders.get(entry["fulfillmentOrderId"])
            if fo is None or fo.method_type != "PICK_UP" or fo.status in ENDED:
                errors.append(_error(path, "The fulfillment order is invalid.",
                                     "FULFILLMENT_ORDER_INVALID"))
            elif fo.prepared or not any(ln.remaining for ln in fo.lines):
                errors.append(_error(path, "No line items to prepare for this fulfillment"
                                     " order.", "NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER"))
            else:
                ready.append(fo)
        if errors:  # all or nothing
            return {"userErrors": errors}
        now = self.shop.now()
        for fo in ready:
            fo.prepared, fo.updated_at = True, now
            self.notifications[fo.id] += 1
            self.applied[("prepare", fo.id)] += 1
            self.shop.webhooks.emit("fulfillment_orders/line_items_prepared_for_pickup",
                                    {"fulfillment_order": {"id": fo.id, "status":
                                                           fo.status.lower()}})
        return {"userErrors": []}

    def _m_fulfill(self, info: GraphQLResolveInfo[Any], fulfillment: dict[str, Any],
                   message: str | None = None) -> dict[str, Any]:
        self._no_idempotent(info, "fulfillmentCreate")
        shop = self.shop
        plan: list[tuple[FulfillmentOrder, list[tuple[FOLine, int]]]] = []
        for i, entry in enumerate(fulfillment["lineItemsByFulfillmentOrder"]):
            fo = self.fulfillment_orders.get(entry["fulfillmentOrderId"])
            path = ["fulfillment", "lineItemsByFulfillmentOrder", str(i)]
            if fo is None:
                return _refused(path, "Fulfillment order does not exist.")
            if fo.status in ENDED:
                return _refused(path, f"Fulfillment order {gid_number(fo.id)} has an"
                                f" unfulfillable status= {fo.status.lower()}.")
            wanted = entry.get("fulfillmentOrderLineItems")
            take: list[tuple[FOLine, int]] = []
            if wanted is None:
                take = [(ln, ln.remaining) for ln in fo.lines if ln.remaining]
            else:
                by_id = {ln.id: ln for ln in fo.lines}
                for item in wanted:
                    ln = by_id.get(item["id"])
                    if ln is None:
                        return _refused(path, "Invalid fulfillment order line item id.")
                    if not 0 < item["quantity"] <= ln.remaining:
                        return _refused(path, "Invalid fulfillment order line item quantity"
                                        " requested.")
                    take.append((ln, item["quantity"]))
            plan.append((fo, take))
        now = shop.now()
        fulfillment_id = shop._gid("Fulfillment")
        lines_done: list[tuple[str, int]] = []
        for fo, take in plan:
            for ln, qty in take:
                ln.remaining -= qty
                lines_done.append((ln.id, qty))
                level = shop.levels.get((ln.inventory_item_id, fo.location_id))
                if level is not None:  # out of committed: on_hand goes down, available not
                    level.states["committed"] -= qty
                    level.updated_at = now
            fo.status = "IN_PROGRESS" if any(ln.remaining for ln in fo.lines) else "CLOSED"
            fo.updated_at = now
            fo.fulfillment_ids.append(fulfillment_id)
            self.applied[("fulfill", fo.id)] += 1
        record = Fulfillment(fulfillment_id, plan[0][0].id, plan[0][0].location_id,
                             "SUCCESS", now, lines_done)
        self.fulfillments[fulfillment_id] = record
        return {"fulfillment": self._fulfillment_view(record), "userErrors": []}


def _error(path: list[str], message: str, code: str) -> dict[str, Any]:
    return {"__typename": "FulfillmentOrderLineItemsPreparedForPickupUserError",
            "field": path, "message": message, "code": code}


def _refused(path: list[str], message: str) -> dict[str, Any]:
    return {"fulfillment": None,
            "userErrors": [{"__typename": "UserError", "field": path, "message": message}]}


__all__ = ["FOLine", "FakePickups", "Fulfillment", "FulfillmentOrder", "OnlineOrder"]
