"""Pull the catalogue and the stock at one location from Shopify.

One query shape, ``productVariants(first:, after:)`` with each variant's inventory level at the
location, page after page, each page taking its cost from the gateway's cost bucket, so a
pull and the outbox worker share Shopify's budget. The shop's currency comes with every page
(``shop { currencyCode }``) to turn prices into minor units.

Page size, from Shopify's published cost rules (a scalar or enum field 0, an object 1, a
connection 2 + ``first`` times the cost of one node with everything selected inside it; one
query may not request more than 1000, or Shopify refuses it before it runs with
``MAX_COST_EXCEEDED``). :data:`PULL_DOCUMENT` requests::

    shop { currencyCode }                              1  (an object)
    productVariants(first: n) { pageInfo, nodes }      2 + n x 5, one node being
      the variant 1, product 1, inventoryItem 1,
      inventoryLevel 1, quantities 1 (scalars 0)

so :func:`pull_cost` ``(n) = 3 + 5 n``, and :data:`PAGE_SIZE` is the largest ``n`` that fits
under 1000: 199 (998 points). 250 a page would request 1253 and be refused every time. A
shop whose bucket holds less than 1000 (``maximumAvailable``) gets pages that fit its
bucket. The bucket is charged that figure; should Shopify still refuse a page for its cost,
the page is asked again at half the size.

``pulled_at`` is read on the clock *before* the first page is requested: every change
Shopify acknowledged before that moment is included in the quantities returned; a change
acknowledged after it may or may not be. The daemon uses it to decide which acknowledged
deltas a pull already contains. A pull changes nothing upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync.core.errors import PermanentError, Throttled, TransientError
from sync.core.gateway import Gateway
from sync.core.money import decimal_to_minor
from sync.shopify_admin.client import MAX_QUERY_COST, CostExceeded, ShopifyClient, graphql_error
from sync.shopify_admin.gateway import ShopifyGateway

logger = logging.getLogger(__name__)

#: Shopify's published cost of what one page asks besides its variants: ``shop`` (an
#: object, 1) and the ``productVariants`` connection (2).
PAGE_OVERHEAD_COST = 1 + 2
#: The cost of one variant node of :data:`PULL_DOCUMENT`: the variant, its product, its
#: inventory item, the item's inventory level and its quantities (objects, 1 each; scalars 0).
VARIANT_NODE_COST = 5
#: Throttled pages are retried (after the bucket's wait) this many times in a row.
THROTTLE_RETRIES = 5
DEFAULT_VARIANT_TITLE = "Default Title"

PULL_DOCUMENT = """query EdgedPullVariants($first: Int!, $after: String, $locationId: ID!) {
  shop { currencyCode }
  productVariants(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id sku barcode price title
      product { id title }
      inventoryItem {
        id
        inventoryLevel(locationId: $locationId) {
          quantities(names: ["available", "on_hand"]) { name quantity }
        }
      }
    }
  }
}"""


def pull_cost(page_size: int) -> int:
    """What Shopify requests for one page of :data:`PULL_DOCUMENT` (module docstring)."""
    return PAGE_OVERHEAD_COST + page_size * VARIANT_NODE_COST


def page_size_for(limit: float) -> int:
    """The largest page whose requested cost fits under ``limit`` points (and 1000)."""
    usable = min(limit, MAX_QUERY_COST) - PAGE_OVERHEAD_COST
    return max(1, int(usable // VARIANT_NODE_COST))


#: The largest page whose requested cost fits under Shopify's 1000 a query (199: 998).
PAGE_SIZE = page_size_for(MAX_QUERY_COST)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One variant as Shopify has it; ``price`` in minor units of ``currency``.

    ``available`` / ``on_hand`` are the quantities at the pulled location, ``None`` when the
    item is not stocked there. ``title`` is the product's title, followed by the variant's
    when the product has real variants (``"Green tea - 100 g"``).
    """

    sku: str | None
    barcode: str | None
    title: str
    price: int
    currency: str
    variant_id: str
    inventory_item_id: str | None
    available: int | None
    on_hand: int | None = None
    product_id: str | None = None
    variant_title: str | None = None


@dataclass(frozen=True, slots=True)
class CataloguePull:
    """A whole pull: the entries, and ``pulled_at`` (read before the first page)."""

    entries: tuple[CatalogueEntry, ...]
    pulled_at: datetime
    location_id: str
    currency: str | None
    pages: int

    def __iter__(self) -> Iterator[CatalogueEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _client(source: ShopifyClient | ShopifyGateway | Gateway) -> ShopifyClient:
    if isinstance(source, ShopifyClient):
        return source
    if isinstance(source, ShopifyGateway):
        return source.client
    raise TypeError(f"pull_catalogue needs the Shopify gateway or client, not "
                    f"{type(source).__name__}")


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _entry(node: Mapping[str, Any], currency: str) -> CatalogueEntry:
    product = _obj(node.get("product"))
    item = _obj(node.get("inventoryItem"))
    raw_level = item.get("inventoryLevel")
    level = raw_level if isinstance(raw_level, Mapping) else None
    quantities: dict[str, int] = {}
    if level is not None:
        for q in level.get("quantities") or ():
            if isinstance(q, Mapping) and isinstance(q.get("quantity"), int):
                quantities[str(q.get("name"))] = q["quantity"]
    product_title = _text(product.get("title")) or ""
    variant_title = _text(node.get("title"))
    title = product_title
    if variant_title and variant_title != DEFAULT_VARIANT_TITLE:
        title = f"{product_title} - {variant_title}" if product_title else variant_title
    return CatalogueEntry(
        sku=_text(node.get("sku")),
        barcode=_text(node.get("barcode")),
        title=title,
        price=decimal_to_minor(str(node.get("price") or "0"), currency),
        currency=currency,
        variant_id=str(node["id"]),
        inventory_item_id=_text(item.get("id")),
        available=quantities.get("available") if level is not None else None,
        on_hand=quantities.get("on_hand") if level is not None else None,
        product_id=_text(product.get("id")),
        variant_title=variant_title,
    )


async def pull_catalogue(source: ShopifyClient | ShopifyGateway | Gateway,
                         location_id: str | None = None, *,
                         page_size: int = PAGE_SIZE) -> CataloguePull:
    """Every variant of the shop with its stock at ``location_id`` (default: the gateway's).

    Raises ``sync.core.errors`` exceptions (a pull is a read: retry it later as a whole);
    a THROTTLED page is retried after the bucket's wait, up to :data:`THROTTLE_RETRIES`;
    a page refused for its cost is asked again at half the size.
    """
    if not 1 <= page_size <= PAGE_SIZE:
        raise ValueError(f"page_size must be in 1..{PAGE_SIZE} (Shopify's 1000 points a"
                         f" query, {VARIANT_NODE_COST} a variant), got {page_size}")
    client = _client(source)
    location = location_id or client.settings.location_id
    pulled_at = client.clock.now()
    entries: list[CatalogueEntry] = []
    after: str | None = None
    currency: str | None = None
    pages = 0
    while True:
        throttled = 0
        while True:
            size = min(page_size, page_size_for(client.bucket.snapshot().maximum_available))
            variables = {"first": size, "after": after, "locationId": location}
            try:
                answer = await client.execute("EdgedPullVariants", PULL_DOCUMENT, variables,
                                              cost=pull_cost(size), mutation=False)
                break
            except PermanentError as exc:
                if not (isinstance(exc, CostExceeded) or exc.code == "MAX_COST_EXCEEDED") \
                        or size == 1:
                    raise
                page_size = max(1, size // 2)
                logger.warning("catalogue pull: Shopify refused the cost of a page (%s);"
                               " asking %d variants a page", exc, page_size)
            except Throttled as exc:
                throttled += 1
                if throttled > THROTTLE_RETRIES:
                    raise
                logger.info("catalogue pull: page %d throttled, waiting %.3f s", pages + 1,
                            exc.wait)
                await client.clock.sleep(exc.wait)
        pages += 1
        logger.debug("catalogue pull: page %d asked %d variants, Shopify requested %s points"
                     " (%s actual)", pages, size, answer.requested_cost, answer.actual_cost)
        shop = answer.data.get("shop")
        page = answer.data.get("productVariants")
        if not isinstance(page, Mapping):
            raise graphql_error(answer.field_errors("productVariants") or list(answer.errors),
                                operation="EdgedPullVariants", mutation=False)
        if isinstance(shop, Mapping) and isinstance(shop.get("currencyCode"), str):
            currency = shop["currencyCode"]
        if currency is None:
            raise TransientError("Shopify did not give the shop's currency with the catalogue")
        for node in page.get("nodes") or ():
            if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
                continue
            try:
                entries.append(_entry(node, currency))
            except ValueError as exc:
                logger.warning("catalogue pull: variant %s skipped: %s", node.get("id"), exc)
        info = _obj(page.get("pageInfo"))
        cursor = info.get("endCursor")
        if not info.get("hasNextPage") or not isinstance(cursor, str):
            break
        after = cursor
    logger.info("catalogue pull: %d variants in %d page(s) at %s", len(entries), pages,
                location)
    return CataloguePull(tuple(entries), pulled_at, location, currency, pages)


catalogue_entry = _entry
"""One variant node (``productVariants`` page or bulk line) as a :class:`CatalogueEntry`."""


__all__ = ["PAGE_SIZE", "PULL_DOCUMENT", "VARIANT_NODE_COST", "CatalogueEntry", "CataloguePull",
           "catalogue_entry", "page_size_for", "pull_catalogue", "pull_cost"]
