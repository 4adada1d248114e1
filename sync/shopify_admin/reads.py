"""What the daemon reads back from Shopify when Shopify tells it something changed.

Webhooks are notifications: the worker reads the subject's current state here (a
fulfillment order, an order's fulfillment orders, a product, inventory levels), and the
catch-up poll reads the same states filtered on ``updated_at:>'…'``; each comes as a typed
value of :mod:`sync.shopify_admin.states`.

Each query is sized by Shopify's published cost rules (a scalar or enum field 0, an object
1, a connection 2 + ``first`` x the cost of one node with everything inside it; ``pageInfo``
counted as an object, an upper bound) and stays under the 1,000 points one query may ask.
The cost of each document is given beside it and passed as the bucket's estimate.

Every call goes through the destination's circuit breaker when one is given (a read that
fails counts like a send that fails: the link is down), and a ``THROTTLED`` answer is
waited out and sent again (:data:`THROTTLE_RETRIES` times).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sync.core.breaker import CircuitBreaker
from sync.core.clock import utc_iso
from sync.core.errors import Throttled, TransientError
from sync.core.guarded import through
from sync.shopify_admin.client import GraphQLAnswer, ShopifyClient, graphql_error, mapping
from sync.shopify_admin.states import (
    Deletion,
    FulfillmentOrderState,
    LevelState,
    Page,
    ProductState,
    as_object,
    as_text,
    as_time,
    fulfillment_order,
    level_state,
    variant_states,
)

logger = logging.getLogger(__name__)

THROTTLE_RETRIES = 5
#: How far back each catch-up poll reaches before its cursor: Shopify's search index may
#: show a change a little after its ``updated_at``; what is seen twice is ignored.
POLL_OVERLAP = timedelta(seconds=60)

T = TypeVar("T")

# -- documents ----------------------------------------------------------------------------

#: One pick-up as the daemon keeps it. Never an amount, a transaction or an address.
#: Cost of one node: the fulfillment order 1 + deliveryMethod 1 + assignedLocation 1 +
#: location 1 + order 1 + customer 1 + lineItems (2 + pageInfo 1 + 50 x 1) = 59.
PICKUP_FIELDS = """fragment EdgedPickup on FulfillmentOrder {
  id status updatedAt createdAt
  deliveryMethod { methodType }
  assignedLocation { location { id } }
  order { id name sourceName cancelledAt customer { displayName } }
  lineItems(first: 50) {
    pageInfo { hasNextPage }
    nodes { id sku productTitle variantTitle totalQuantity remainingQuantity inventoryItemId }
  }
}"""
PICKUP_NODE_COST = 59

#: 1 + 59 = 60.
FULFILLMENT_ORDER_DOCUMENT = """query EdgedFulfillmentOrder($id: ID!) {
  fulfillmentOrder(id: $id) { ...EdgedPickup }
}
""" + PICKUP_FIELDS
FULFILLMENT_ORDER_COST = 1 + PICKUP_NODE_COST

#: order 1 + fulfillmentOrders (2 + 10 x 59) = 593.
ORDER_PICKUPS_DOCUMENT = """query EdgedOrderPickups($id: ID!) {
  order(id: $id) {
    id
    fulfillmentOrders(first: 10) { nodes { ...EdgedPickup } }
  }
}
""" + PICKUP_FIELDS
ORDER_PICKUPS_COST = 1 + 2 + 10 * PICKUP_NODE_COST

POLL_PICKUPS_PAGE = 10
#: 2 + pageInfo 1 + 10 x 59 = 593.
POLL_PICKUPS_DOCUMENT = """query EdgedPollPickups($first: Int!, $after: String, $q: String!,
    $closed: Boolean!) {
  fulfillmentOrders(first: $first, after: $after, query: $q, includeClosed: $closed,
                    sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes { ...EdgedPickup }
  }
}
""" + PICKUP_FIELDS
POLL_PICKUPS_COST = 2 + 1 + POLL_PICKUPS_PAGE * PICKUP_NODE_COST

#: One product with up to 100 variants. Cost: product 1 + variants (2 + pageInfo 1 +
#: 100 x (variant 1 + inventoryItem 1)) = 204.
PRODUCT_FIELDS = """fragment EdgedProduct on Product {
  id title status updatedAt
  variants(first: 100) {
    pageInfo { hasNextPage endCursor }
    nodes { id sku barcode price title inventoryItem { id } }
  }
}"""
PRODUCT_NODE_COST = 204

#: shop 1 + product 204 = 205.
PRODUCT_DOCUMENT = """query EdgedProduct($id: ID!) {
  shop { currencyCode }
  product(id: $id) { ...EdgedProduct }
}
""" + PRODUCT_FIELDS
PRODUCT_COST = 1 + PRODUCT_NODE_COST

#: The variants of one product past its first 100: product 1 + variants (3 + 100 x 2) = 204.
PRODUCT_VARIANTS_DOCUMENT = """query EdgedProductVariants($id: ID!, $after: String) {
  product(id: $id) {
    id
    variants(first: 100, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes { id sku barcode price title inventoryItem { id } }
    }
  }
}"""
PRODUCT_VARIANTS_COST = 1 + 3 + 100 * 2

POLL_PRODUCTS_PAGE = 4
#: shop 1 + products (2 + pageInfo 1 + 4 x 204) = 820.
POLL_PRODUCTS_DOCUMENT = """query EdgedPollProducts($first: Int!, $after: String, $q: String!) {
  shop { currencyCode }
  products(first: $first, after: $after, query: $q, sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes { ...EdgedProduct }
  }
}
""" + PRODUCT_FIELDS
POLL_PRODUCTS_COST = 1 + 3 + POLL_PRODUCTS_PAGE * PRODUCT_NODE_COST

POLL_DELETIONS_PAGE = 250
#: ``deletionEvents`` (deprecated in favour of ``events``, still served, and the only
#: query that names a deleted product with a time): 2 + pageInfo 1 + 250 x 1 = 253.
POLL_DELETIONS_DOCUMENT = """query EdgedPollDeletions($first: Int!, $after: String,
    $q: String!) {
  deletionEvents(first: $first, after: $after, query: $q, subjectTypes: [PRODUCT]) {
    pageInfo { hasNextPage endCursor }
    nodes { subjectId subjectType occurredAt }
  }
}"""
POLL_DELETIONS_COST = 3 + POLL_DELETIONS_PAGE

POLL_LEVELS_PAGE = 250
#: location 1 + inventoryLevels (2 + pageInfo 1 + 250 x (level 1 + item 1 +
#: quantities 1)) = 754.
POLL_LEVELS_DOCUMENT = """query EdgedPollLevels($loc: ID!, $first: Int!, $after: String,
    $q: String!) {
  location(id: $loc) {
    inventoryLevels(first: $first, after: $after, query: $q) {
      pageInfo { hasNextPage endCursor }
      nodes {
        updatedAt
        item { id }
        quantities(names: ["available", "on_hand"]) { name quantity }
      }
    }
  }
}"""
POLL_LEVELS_COST = 1 + 3 + POLL_LEVELS_PAGE * 3

READ_LEVELS_CHUNK = 50
LEVEL_ALIAS_COST = 3
"""inventoryItem 1 + inventoryLevel 1 + quantities 1, per item read: 50 items = 150."""


def read_levels_document(count: int) -> str:
    """``count`` inventory items' levels at one location, one alias each."""
    params = ", ".join(f"$i{n}: ID!" for n in range(count))
    fields = "\n".join(
        f"  l{n}: inventoryItem(id: $i{n}) {{ id inventoryLevel(locationId: $loc) {{"
        f" updatedAt quantities(names: [\"available\", \"on_hand\"]) {{ name quantity }} }} }}"
        for n in range(count))
    return f"query EdgedReadLevels($loc: ID!, {params}) {{\n{fields}\n}}"


def since_filter(cursor: str | None) -> str:
    """``updated_at:>'…'`` a little before ``cursor`` (:data:`POLL_OVERLAP`)."""
    if cursor is None:
        return ""
    moment = datetime.fromisoformat(cursor) - POLL_OVERLAP
    return f"updated_at:>'{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}'"


# -- the reader ---------------------------------------------------------------------------


class ShopifyReads:
    """Reads of one shop through its client (cost bucket) and breaker."""

    def __init__(self, client: ShopifyClient, location_id: str,
                 breaker: CircuitBreaker | None = None) -> None:
        self.client = client
        self.location_id = location_id
        self.breaker = breaker

    def _read_at(self) -> str:
        return utc_iso(self.client.clock.now())

    async def _query(self, operation: str, document: str, variables: Mapping[str, Any],
                     cost: int) -> GraphQLAnswer:
        """Send one query, waiting out THROTTLED answers; through the breaker if any."""
        throttled = 0
        while True:
            try:
                call: Callable[[], Awaitable[GraphQLAnswer]] = lambda: self.client.execute(  # noqa: E731
                    operation, document, variables, cost=cost, mutation=False)
                if self.breaker is not None:
                    return await through(self.breaker, call)
                return await call()
            except Throttled as exc:
                throttled += 1
                if throttled > THROTTLE_RETRIES:
                    raise
                logger.info("shopify %s throttled; waiting %.3f s", operation, exc.wait)
                await self.client.clock.sleep(exc.wait)

    @staticmethod
    def _field(answer: GraphQLAnswer, name: str, operation: str) -> Any:
        if name not in answer.data:
            raise graphql_error(answer.field_errors(name) or list(answer.errors),
                                operation=operation, mutation=False)
        return answer.data[name]

    async def _currency(self, answer: GraphQLAnswer) -> str:
        currency = as_text(as_object(answer.data.get("shop")).get("currencyCode"))
        if currency is None:
            raise TransientError("Shopify did not give the shop's currency")
        return currency

    # -- fulfillment orders ---------------------------------------------------------------

    async def fulfillment_order(self, fo_id: str) -> FulfillmentOrderState | None:
        answer = await self._query("EdgedFulfillmentOrder", FULFILLMENT_ORDER_DOCUMENT,
                                   {"id": fo_id}, FULFILLMENT_ORDER_COST)
        node = self._field(answer, "fulfillmentOrder", "EdgedFulfillmentOrder")
        return fulfillment_order(node) if isinstance(node, Mapping) else None

    async def order_fulfillment_orders(self, order_id: str
                                       ) -> list[FulfillmentOrderState] | None:
        """The order's fulfillment orders; None when Shopify has no such order."""
        answer = await self._query("EdgedOrderPickups", ORDER_PICKUPS_DOCUMENT,
                                   {"id": order_id}, ORDER_PICKUPS_COST)
        order = self._field(answer, "order", "EdgedOrderPickups")
        if not isinstance(order, Mapping):
            return None
        nodes = as_object(order.get("fulfillmentOrders")).get("nodes") or ()
        return [fulfillment_order(as_object(n)) for n in nodes if as_text(as_object(n).get("id"))]

    async def poll_pickups(self, cursor: str | None, after: str | None
                           ) -> Page[FulfillmentOrderState]:
        """Fulfillment orders at this location changed since ``cursor`` (all open ones the
        first time, when there is no cursor yet)."""
        location = self.location_id.rsplit("/", 1)[-1]
        terms = [f"assigned_location_id:{location}"]
        if cursor is not None:
            terms.append(since_filter(cursor))
        variables = {"first": POLL_PICKUPS_PAGE, "after": after, "q": " ".join(terms),
                     "closed": cursor is not None}
        answer = await self._query("EdgedPollPickups", POLL_PICKUPS_DOCUMENT, variables,
                                   POLL_PICKUPS_COST)
        page = as_object(self._field(answer, "fulfillmentOrders", "EdgedPollPickups"))
        items = tuple(fulfillment_order(as_object(n)) for n in page.get("nodes") or ()
                      if as_text(as_object(n).get("id")))
        return self._page(page, items, [i.updated_at for i in items])

    @staticmethod
    def _page(page: Mapping[str, Any], items: tuple[T, ...],
              times: Sequence[str | None]) -> Page[T]:
        info = as_object(page.get("pageInfo"))
        cursor = as_text(info.get("endCursor"))
        newest = max((t for t in times if t), default=None)
        return Page(items, cursor, bool(info.get("hasNextPage")) and cursor is not None,
                    newest)

    # -- products -------------------------------------------------------------------------

    async def _product_state(self, node: Mapping[str, Any], currency: str) -> ProductState:
        title = as_text(node.get("title")) or ""
        connection = as_object(node.get("variants"))
        variants = variant_states(connection.get("nodes"), title, currency)
        info = as_object(connection.get("pageInfo"))
        after = as_text(info.get("endCursor"))
        while info.get("hasNextPage") and after is not None:  # more than 100 variants
            answer = await self._query("EdgedProductVariants", PRODUCT_VARIANTS_DOCUMENT,
                                       {"id": node["id"], "after": after},
                                       PRODUCT_VARIANTS_COST)
            more = as_object(as_object(self._field(answer, "product",
                                         "EdgedProductVariants")).get("variants"))
            variants += variant_states(more.get("nodes"), title, currency)
            info = as_object(more.get("pageInfo"))
            after = as_text(info.get("endCursor"))
        return ProductState(str(node["id"]), title, as_text(node.get("status")) or "ACTIVE",
                            as_time(node.get("updatedAt")) or "", currency, tuple(variants))

    async def product(self, product_id: str) -> ProductState | None:
        """The product now; None when Shopify no longer has it (deleted)."""
        answer = await self._query("EdgedProduct", PRODUCT_DOCUMENT, {"id": product_id},
                                   PRODUCT_COST)
        node = self._field(answer, "product", "EdgedProduct")
        if not isinstance(node, Mapping):
            return None
        return await self._product_state(node, await self._currency(answer))

    async def poll_products(self, cursor: str | None, after: str | None
                            ) -> Page[ProductState]:
        variables = {"first": POLL_PRODUCTS_PAGE, "after": after, "q": since_filter(cursor)}
        answer = await self._query("EdgedPollProducts", POLL_PRODUCTS_DOCUMENT, variables,
                                   POLL_PRODUCTS_COST)
        page = as_object(self._field(answer, "products", "EdgedPollProducts"))
        currency = await self._currency(answer)
        items = tuple([await self._product_state(as_object(n), currency)
                       for n in page.get("nodes") or () if as_text(as_object(n).get("id"))])
        return self._page(page, items, [i.updated_at for i in items])

    async def poll_deletions(self, cursor: str | None, after: str | None) -> Page[Deletion]:
        since = since_filter(cursor).replace("updated_at", "occurred_at")
        variables = {"first": POLL_DELETIONS_PAGE, "after": after, "q": since}
        answer = await self._query("EdgedPollDeletions", POLL_DELETIONS_DOCUMENT, variables,
                                   POLL_DELETIONS_COST)
        page = as_object(self._field(answer, "deletionEvents", "EdgedPollDeletions"))
        items = []
        for raw in page.get("nodes") or ():
            node = as_object(raw)
            subject, when = as_text(node.get("subjectId")), as_time(node.get("occurredAt"))
            if subject and when and node.get("subjectType") in (None, "PRODUCT"):
                items.append(Deletion(subject, when))
        return self._page(page, tuple(items), [d.occurred_at for d in items])

    # -- inventory levels -----------------------------------------------------------------

    async def poll_levels(self, cursor: str | None, after: str | None) -> Page[LevelState]:
        read_at = self._read_at()
        variables = {"loc": self.location_id, "first": POLL_LEVELS_PAGE, "after": after,
                     "q": since_filter(cursor)}
        answer = await self._query("EdgedPollLevels", POLL_LEVELS_DOCUMENT, variables,
                                   POLL_LEVELS_COST)
        location = self._field(answer, "location", "EdgedPollLevels")
        if not isinstance(location, Mapping):
            raise TransientError(f"Shopify does not know the location {self.location_id};"
                                 " check [shopify] location_id")
        page = as_object(location.get("inventoryLevels"))
        items = []
        for raw in page.get("nodes") or ():
            node = as_object(raw)
            item = as_text(as_object(node.get("item")).get("id"))
            if item:
                items.append(level_state(node, item, self.location_id, read_at))
        return self._page(page, tuple(items), [lv.updated_at for lv in items])

    async def levels(self, item_ids: Sequence[str]) -> dict[str, LevelState | None]:
        """The levels of ``item_ids`` at this location, read now (None: not stocked here,
        or no such item)."""
        out: dict[str, LevelState | None] = {}
        unique = list(dict.fromkeys(item_ids))
        for start in range(0, len(unique), READ_LEVELS_CHUNK):
            chunk = unique[start:start + READ_LEVELS_CHUNK]
            read_at = self._read_at()
            variables: dict[str, Any] = {"loc": self.location_id}
            variables.update({f"i{n}": item for n, item in enumerate(chunk)})
            answer = await self._query("EdgedReadLevels", read_levels_document(len(chunk)),
                                       variables, LEVEL_ALIAS_COST * len(chunk))
            for n, item in enumerate(chunk):
                node = mapping(answer.data.get(f"l{n}"))
                level = mapping(node.get("inventoryLevel")) if node is not None else None
                out[item] = None if level is None else level_state(level, item, self.location_id,
                                                              read_at)
        return out


__all__ = [
    "FULFILLMENT_ORDER_COST",
    "ORDER_PICKUPS_COST",
    "POLL_DELETIONS_COST",
    "POLL_LEVELS_COST",
    "POLL_OVERLAP",
    "POLL_PICKUPS_COST",
    "POLL_PRODUCTS_COST",
    "PRODUCT_COST",
    "ShopifyReads",
    "read_levels_document",
    "since_filter",
]
