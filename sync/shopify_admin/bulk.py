"""A whole catalogue as one Shopify bulk operation: run, wait, download, read the JSONL.

``bulkOperationRunQuery`` starts the query on Shopify's side (a mutation: 10 points, however
large the catalogue); Shopify runs one bulk query at a time per shop and answers
``OPERATION_IN_PROGRESS`` to a second (:class:`BulkInProgress`, retried later). The daemon
then waits for the ``bulk_operations/finish`` webhook or reads ``currentBulkOperation``
(1 point) now and then; once ``COMPLETED`` its ``url`` serves the result, one JSON object a
line (a nested connection's nodes would come as lines of their own with ``__parentId``; the
catalogue query has one connection, so every line is a variant with its product and its
level inline). The file is downloaded without the Admin API token (the URL is signed).

The inner query cannot take variables, so the location is written into it (JSON-quoted).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from sync.core.errors import PermanentError, TransientError
from sync.shopify_admin.client import ShopifyClient, graphql_error, mapping
from sync.shopify_admin.pull import CatalogueEntry, catalogue_entry
from sync.shopify_admin.reads import ShopifyReads
from sync.shopify_admin.webhooks import normal_time

logger = logging.getLogger(__name__)

ERR_BULK_REFUSED = "ERR-6023"
RUN_COST = 10
CURRENT_COST = 1
SHOP_COST = 1
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELED", "EXPIRED"})
DOWNLOAD_CHUNK = 1 << 16

RUN_DOCUMENT = """mutation EdgedBulkRun($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status createdAt }
    userErrors { field message code }
  }
}"""

CURRENT_DOCUMENT = """query EdgedBulkCurrent {
  currentBulkOperation {
    id status errorCode createdAt completedAt objectCount url
  }
}"""

SHOP_DOCUMENT = """query EdgedShopCurrency { shop { currencyCode } }"""


def catalogue_query(location_id: str) -> str:
    """Every variant with its product and its level at ``location_id``."""
    location = json.dumps(location_id)
    return ("{ productVariants { edges { node {"
            " id sku barcode price title updatedAt"
            " product { id title status updatedAt }"
            f" inventoryItem {{ id inventoryLevel(locationId: {location}) {{"
            " updatedAt quantities(names: [\"available\", \"on_hand\"]) { name quantity } } }"
            " } } } }")


class BulkInProgress(TransientError):
    """Shopify runs another bulk query for this app and shop: try again once it ends."""


@dataclass(frozen=True, slots=True)
class BulkOperation:
    id: str
    status: str
    error_code: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    object_count: int = 0
    url: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True, slots=True)
class BulkVariant:
    """One line of the catalogue file."""

    entry: CatalogueEntry
    product_status: str
    product_updated_at: str | None
    product_title: str = ""


def _operation(node: Mapping[str, Any]) -> BulkOperation:
    count = node.get("objectCount")
    return BulkOperation(
        id=str(node["id"]), status=str(node.get("status") or "CREATED"),
        error_code=node.get("errorCode") if isinstance(node.get("errorCode"), str) else None,
        created_at=node.get("createdAt") if isinstance(node.get("createdAt"), str) else None,
        completed_at=node.get("completedAt") if isinstance(node.get("completedAt"),
                                                           str) else None,
        object_count=int(count) if isinstance(count, int | str) and str(count).isdigit()
        else 0,
        url=node.get("url") if isinstance(node.get("url"), str) else None)


def parse_catalogue(lines: Iterable[str | bytes], currency: str) -> Iterator[BulkVariant]:
    """The variants of a catalogue file; a line that cannot be read is skipped and logged."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            node = orjson.loads(raw)
        except ValueError:
            logger.warning("bulk catalogue: line %d is not JSON; skipped", number)
            continue
        if not isinstance(node, Mapping) or not isinstance(node.get("id"), str) \
                or "__parentId" in node:
            continue
        product = mapping(node.get("product")) or {}
        try:
            entry = catalogue_entry(node, currency)
        except ValueError as exc:
            logger.warning("bulk catalogue: variant %s skipped: %s", node.get("id"), exc)
            continue
        updated = product.get("updatedAt")
        yield BulkVariant(entry, str(product.get("status") or "ACTIVE"),
                          normal_time(updated) if isinstance(updated, str) else None,
                          str(product.get("title") or ""))


SessionFactory = Callable[[], aiohttp.ClientSession]


class BulkRunner:
    """Runs and follows the catalogue bulk query of one shop."""

    def __init__(self, reads: ShopifyReads,
                 session_factory: SessionFactory | None = None) -> None:
        self.reads = reads
        self._session_factory = session_factory

    @property
    def client(self) -> ShopifyClient:
        return self.reads.client

    async def currency(self) -> str:
        answer = await self.reads._query("EdgedShopCurrency", SHOP_DOCUMENT, {}, SHOP_COST)
        currency = (mapping(answer.data.get("shop")) or {}).get("currencyCode")
        if not isinstance(currency, str):
            raise TransientError("Shopify did not give the shop's currency")
        return currency

    async def current(self) -> BulkOperation | None:
        """The app's latest bulk query on this shop (``currentBulkOperation``)."""
        answer = await self.reads._query("EdgedBulkCurrent", CURRENT_DOCUMENT, {},
                                         CURRENT_COST)
        node = mapping(answer.data.get("currentBulkOperation"))
        return None if node is None or not isinstance(node.get("id"), str) \
            else _operation(node)

    async def start(self, query: str) -> BulkOperation:
        """Start ``query``; :class:`BulkInProgress` when another runs, PermanentError
        (ERR-6023) when Shopify refuses the query itself."""
        answer = await self.client.execute("EdgedBulkRun", RUN_DOCUMENT, {"query": query},
                                           cost=RUN_COST, mutation=True)
        payload = mapping(answer.data.get("bulkOperationRunQuery"))
        if payload is None:
            raise graphql_error(answer.field_errors("bulkOperationRunQuery")
                                or list(answer.errors), operation="EdgedBulkRun",
                                mutation=True)
        errors = [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]
        if any(e.get("code") == "OPERATION_IN_PROGRESS" for e in errors):
            raise BulkInProgress("Shopify is running another bulk query for this shop")
        node = mapping(payload.get("bulkOperation"))
        if errors or node is None or not isinstance(node.get("id"), str):
            detail = "; ".join(str(e.get("message")) for e in errors) or "no operation"
            raise PermanentError(f"Shopify refused the bulk query: {detail}", ERR_BULK_REFUSED)
        return _operation(node)

    async def download(self, url: str, dest: Path, max_bytes: int) -> int:
        """Fetch the result file to ``dest`` (replaced whole); its size in bytes."""
        tmp = dest.with_name(dest.name + ".part")
        own = self._session_factory is None
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=self.client.settings.connect_timeout,
            sock_read=self.client.settings.timeout)) if own else \
            self._session_factory()  # type: ignore[misc]
        size = 0
        try:
            async with session.get(url, proxy=self.client.proxy(url)) as resp:
                if resp.status != 200:
                    raise TransientError(f"the bulk result answered HTTP {resp.status}"
                                         " (it may have expired; a new pull will follow)")
                with tmp.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise PermanentError(f"the bulk result is larger than {max_bytes}"
                                                 " bytes", ERR_BULK_REFUSED)
                        fh.write(chunk)
            tmp.replace(dest)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"downloading the bulk result failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
            if own:
                await session.close()
        return size


__all__ = [
    "CURRENT_COST",
    "ERR_BULK_REFUSED",
    "RUN_COST",
    "BulkInProgress",
    "BulkOperation",
    "BulkRunner",
    "BulkVariant",
    "catalogue_query",
    "parse_catalogue",
]
