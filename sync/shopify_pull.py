"""Pull the catalogue and the stock at one location from Shopify.

One query shape, ``productVariants(first:, after:)`` with each variant's inventory level at the
location, page after page (250 a page), each page taking its cost from the gateway's cost
bucket, so a pull and the outbox worker share Shopify's budget. The shop's currency comes
with every page (``shop { currencyCode }``) to turn prices into minor units.

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

from sync.errors import Throttled, TransientError
from sync.gateway import Gateway
from sync.money import decimal_to_minor
from sync.shopify import ShopifyGateway
from sync.shopify_client import ShopifyClient, graphql_error

logger = logging.getLogger(__name__)

PAGE_SIZE = 250
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

    Raises ``sync.errors`` exceptions (a pull is a read: retry it later as a whole);
    a THROTTLED page is retried after the bucket's wait, up to :data:`THROTTLE_RETRIES`.
    """
    if not 1 <= page_size <= PAGE_SIZE:
        raise ValueError(f"page_size must be in 1..{PAGE_SIZE}, got {page_size}")
    client = _client(source)
    location = location_id or client.settings.location_id
    pulled_at = client.clock.now()
    entries: list[CatalogueEntry] = []
    after: str | None = None
    currency: str | None = None
    pages = 0
    while True:
        variables = {"first": page_size, "after": after, "locationId": location}
        throttled = 0
        while True:
            try:
                answer = await client.execute("EdgedPullVariants", PULL_DOCUMENT, variables,
                                              cost=1 + page_size, mutation=False)
                break
            except Throttled as exc:
                throttled += 1
                if throttled > THROTTLE_RETRIES:
                    raise
                logger.info("catalogue pull: page %d throttled, waiting %.3f s", pages + 1,
                            exc.wait)
                await client.clock.sleep(exc.wait)
        pages += 1
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


__all__ = ["PAGE_SIZE", "PULL_DOCUMENT", "CatalogueEntry", "CataloguePull", "catalogue_entry",
           "pull_catalogue"]
