'''A loopback fake of Shopify's GraphQL Admin API, checked against Shopify's real schema.

Start it::

    from tests.fakes.shopify import FakeShopify
    async with FakeShopify(restore_rate=100) as shop:          # schema built once per session
        loc = shop.default_location_id                          # "gid://shopify/Location/1001"
        v = shop.seed_variant(sku="SKU-1", price="12.50", available=7)
        url = shop.graphql_url("2026-10")    # {base_url}/admin/api/2026-10/graphql.json
        # POST {"query": ..., "variables": ...} with header X-Shopify-Access-Token: <any non-empty>

Every document is parsed and validated against ``admin.graphql`` (Shopify's published SDL) with
graphql-core, then executed by graphql-core over hand-written resolvers, so aliases, fragments,
variables and field selection behave as on Shopify. A field the fake does not implement is a
GraphQL error with ``extensions.code == "FAKE_NOT_IMPLEMENTED"`` (never a silent null).
``shop.rejected`` records every top-level error answered (syntax ``syntaxError``, schema
validation with graphql-ruby style codes such as ``undefinedField`` / ``argumentNotAccepted``
/ ``missingRequiredArguments``, ``INVALID_VARIABLE``, missing ``@idempotent``,
``MAX_COST_EXCEEDED``, ...), so a test can end with ``shop.assert_no_rejections()``. Requests
refused before execution are not charged (their ``extensions.cost`` shows 0).

Root fields implemented
-----------------------
Mutations (``userErrors { field message code }`` always present):

- ``inventoryAdjustQuantities(input:) @idempotent(key:)`` and
  ``inventorySetQuantities(input:) @idempotent(key:)``: from API version 2026-04 the directive
  is required (missing/empty key: top-level ``BAD_REQUEST``, nothing applied, key not used)
  and ``changeFromQuantity`` must be present on every change/quantity (``null`` skips the
  compare-and-swap; absent: top-level ``BAD_REQUEST``). Before 2026-01 the directive is
  refused as undefined. Same key + same arguments: the first payload is replayed (nothing
  applied again, ``shop.replays[key]`` counts it); same key + other arguments: userError
  ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``; a key in ``shop.idempotency_in_progress``:
  ``IDEMPOTENCY_CONCURRENT_REQUEST``. A payload with userErrors is stored and replayed too.
  More than 250 changes: top-level ``MAX_INPUT_SIZE_EXCEEDED``. All-or-nothing: any userError
  and nothing is applied. userError codes: CHANGE_FROM_QUANTITY_STALE,
  INVALID_INVENTORY_ITEM, INVALID_LOCATION, ITEM_NOT_STOCKED_AT_LOCATION, INVALID_REASON,
  INVALID_QUANTITY_NAME / INVALID_NAME, INVALID_AVAILABLE_DOCUMENT (ledgerDocumentUri with
  "available"), INVALID_QUANTITY_DOCUMENT (ledger missing for other names),
  INVALID_LEDGER_DOCUMENT / INVALID_REFERENCE_DOCUMENT (``gid://`` URIs),
  MAX_ONE_LEDGER_DOCUMENT, INVALID_QUANTITY_NEGATIVE, NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR.
  Adjusting/setting "available" also moves "on_hand"; the group's ``changes`` list both.
- ``orderCreate(order:, options:)``: no idempotency (``@idempotent`` on it is refused). Stores
  the order (lineItems, transactions, processedAt, sourceName, sourceIdentifier, tags, note,
  metafields, ...). ``options.inventoryBehaviour`` (default BYPASS) DECREMENT_IGNORING_POLICY /
  DECREMENT_OBEYING_POLICY take the line items' quantities off "available" at the location
  ``order.fulfillment.locationId``, else the first transaction's ``locationId``, else
  ``default_location_id`` (OBEYING refuses, userError INVENTORY_CLAIM_FAILED, when a DENY
  variant lacks stock). Optional development-store limit (``order_rate_limit=5``): beyond it,
  HTTP 429 with a top-level ``THROTTLED`` error and ``Retry-After: 60`` (shape *unverified*).

Queries (cursor pagination ``first/after/last/before/reverse``, at most 250 a page; ``query:``
search with ``field:value`` terms, quotes, ``-`` negation and ``>``/``<`` on dates and ids;
a filter Shopify does not know is ignored with a warning in ``extensions.search``, as Shopify
does; a filter Shopify knows but the fake does not implement is FAKE_NOT_IMPLEMENTED):

- ``orders(query:)`` filters ``source_identifier``, ``source_name``, ``tag``, ``tag_not``,
  ``name``, ``id``, ``sku``, ``test``, ``created_at``, ``updated_at``, ``processed_at``
  (exact, case-insensitive, trailing ``*`` for a prefix). ``order(id:)``.
- ``productVariants(query:)`` filters ``sku``, ``barcode``, ``product_id``, ``id``,
  ``title``, ``updated_at``, ``location_id``; ``productVariant(id:)``.
- ``products(query:)`` filters ``sku``, ``barcode``, ``title``, ``handle``, ``status``, ``id``,
  ``updated_at``; ``product(id:)`` with ``variants(first:)``.
- ``inventoryItems(query:)`` (``sku``, ``id``, ``updated_at``), ``inventoryItem(id:)``,
  ``location(id:)`` with ``inventoryLevels(first:)`` / ``inventoryLevel(inventoryItemId:)``,
  ``locations(first:)``, ``shop { id name currencyCode myshopifyDomain }``.

The query shapes the gateway should use (tested in tests/test_fakes.py)::

    query PullVariants($first: Int!, $after: String, $locationId: ID!) {
      productVariants(first: $first, after: $after) {
        pageInfo { hasNextPage endCursor }
        nodes {
          id sku barcode price title updatedAt
          product { id title }
          inventoryItem {
            id
            inventoryLevel(locationId: $locationId) {
              quantities(names: ["available", "on_hand"]) { name quantity }
            }
          }
        }
      }
    }

    query FindOrderByMarker($q: String!) {
      orders(first: 5, query: $q) {            # $q = "source_identifier:'edged-sale-42'"
        nodes { id name sourceIdentifier tags createdAt }
      }
    }

    query LevelsAtLocation($locationId: ID!, $first: Int!, $after: String) {
      location(id: $locationId) {
        inventoryLevels(first: $first, after: $after) {
          pageInfo { hasNextPage endCursor }
          nodes {
            item { id sku variant { id } }
            quantities(names: ["available"]) { name quantity }
          }
        }
      }
    }

Cost and throttling: a bucket of ``maximum_available`` (2000) points restoring at
``restore_rate`` points a second (100), on the injectable ``clock``. The requested cost of a
document is Shopify's published arithmetic, computed from the parsed document itself
(:mod:`tests.fakes.shopify_cost`: scalar/enum 0, object 1, connection 2 + ``first``/``last``
times the cost of one node with everything inside it, nested connections multiplied, a
mutation field 10); over 1000, or over the bucket's ``maximum_available`` when that is
smaller (a small bucket), is a top-level ``MAX_COST_EXCEEDED`` in Shopify's words, before
anything runs. The requested cost is taken before execution, and ``requested - actual``
(actual: the same rules over the nodes returned) is given back.
Every answer carries ``extensions.cost {requestedQueryCost, actualQueryCost, throttleStatus
{maximumAvailable, currentlyAvailable, restoreRate}}``. When the bucket lacks the cost:
``{"errors":[{"message":"Throttled","extensions":{"code":"THROTTLED"}}],"extensions":{"cost":...}}``
with HTTP ``throttled_status`` (200, or 429) and nothing executed.

Inspection: ``calls`` (every GraphQL request: version, kind, root fields, variables, costs,
throttled), ``rejected``, ``user_errors``, ``adjustment_groups``, ``applied_by_key`` (how many
times each idempotency key was *applied*: must stay ≤ 1), ``replays``, ``orders``,
``quantity(item, location, name)``, ``search_warnings``, plus the common ``requests``,
``stats`` and ``faults`` (see ``tests.fakes.base``). Seeding: ``add_location``,
``seed_variant``, ``stock_at``, ``set_quantity``.

Webhooks: ``webhook_hmac(secret, body)`` and ``webhook_headers(...)`` sign a raw body the
way Shopify does (base64 HMAC-SHA256).
'''

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    build_schema,
    execute_sync,
    parse,
    validate,
)
from graphql.error import GraphQLSyntaxError
from graphql.utilities import get_operation_ast, value_from_ast_untyped

from . import shopify_cost
from .base import Clock, FakeServer, canonical, json_response

# ------------------------------------------------------------------------------------------
# The schema
# ------------------------------------------------------------------------------------------

SCHEMA_ENV = "EDGED_SHOPIFY_SCHEMA"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA_PATH = REPO_ROOT / "tests" / "fixtures" / "shopify" / "admin.graphql"

#: A recent API version for tests (the fake accepts any ``YYYY-MM`` and ``unstable``).
API_VERSION = "2026-10"


class SchemaMissingError(FileNotFoundError):
    """Shopify's Admin schema is not where the tests look for it."""


def schema_path() -> Path:
    """``$EDGED_SHOPIFY_SCHEMA`` or the project's copy in ``tests/fixtures/shopify/``."""
    env = os.environ.get(SCHEMA_ENV)
    return Path(env) if env else DEFAULT_SCHEMA_PATH


@functools.cache
def _build(path: str) -> GraphQLSchema:
    p = Path(path)
    if not p.is_file():
        raise SchemaMissingError(
            f"Shopify Admin GraphQL schema not found at {p}. The Shopify fake validates every "
            f"document against Shopify's published SDL, kept in the repository at "
            f"tests/fixtures/shopify/admin.graphql ({REPO_ROOT}); set {SCHEMA_ENV} "
            f"to its path if it lives elsewhere."
        )
    # Shopify's SDL trips one of graphql-core's own schema rules: assume it valid.
    return build_schema(p.read_text(encoding="utf-8"), assume_valid=True)


def load_admin_schema() -> GraphQLSchema:
    """The Admin schema, built once per process (about two seconds the first time)."""
    return _build(str(schema_path()))


# ------------------------------------------------------------------------------------------
# Webhook signing
# ------------------------------------------------------------------------------------------


def webhook_hmac(secret: str | bytes, body: bytes) -> str:
    """``X-Shopify-Hmac-SHA256``: base64 of HMAC-SHA256(secret, raw body)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()


def webhook_headers(
    secret: str | bytes,
    topic: str,
    body: bytes,
    *,
    shop_domain: str = "edged-test.myshopify.com",
    api_version: str = API_VERSION,
    webhook_id: str | None = None,
    event_id: str | None = None,
    triggered_at: str | None = None,
) -> dict[str, str]:
    """The headers of a Shopify webhook delivery of ``body`` (signed with ``secret``)."""
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-SHA256": webhook_hmac(secret, body),
        "X-Shopify-Shop-Domain": shop_domain,
        "X-Shopify-API-Version": api_version,
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": triggered_at or _iso(datetime.now(UTC)),
    }


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------

#: Quantity states stored per level; "on_hand" is derived (all of these but "incoming").
STATES = ("available", "committed", "reserved", "damaged", "safety_stock", "quality_control",
          "incoming")
ON_HAND_PARTS = STATES[:-1]
ADJUSTABLE_NAMES = frozenset(
    {"available", "damaged", "incoming", "quality_control", "reserved", "safety_stock"}
)
SETTABLE_NAMES = frozenset({"available", "on_hand"})
REASONS = frozenset({
    "correction", "cycle_count_available", "damaged", "movement_created", "movement_updated",
    "movement_received", "movement_canceled", "other", "promotion", "quality_control",
    "received", "reservation_created", "reservation_deleted", "reservation_updated",
    "restock", "safety_stock", "shrinkage",
})
MAX_ARRAY = 250
MAX_QUANTITY = 1_000_000_000
MAX_QUERY_COST = 1000
MAX_PAGE = 250


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = datetime.fromisoformat(text[:10])
        except ValueError:
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def gid_number(gid: str) -> int:
    """The numeric part of ``gid://shopify/Type/123`` (0 when there is none)."""
    m = re.search(r"/(\d+)(?:\?.*)?$", gid)
    return int(m.group(1)) if m else 0


@dataclass
class Location:
    id: str
    name: str
    active: bool = True


@dataclass
class Product:
    id: str
    title: str
    handle: str
    status: str
    vendor: str
    product_type: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    variant_ids: list[str] = field(default_factory=list)


@dataclass
class Variant:
    id: str
    product_id: str
    inventory_item_id: str
    title: str
    sku: str | None
    barcode: str | None
    price: str
    inventory_policy: str
    position: int
    created_at: datetime
    updated_at: datetime
    compare_at_price: str | None = None


@dataclass
class InventoryItem:
    id: str
    variant_id: str
    sku: str | None
    tracked: bool
    created_at: datetime
    updated_at: datetime


@dataclass
class Level:
    item_id: str
    location_id: str
    states: dict[str, int]
    created_at: datetime
    updated_at: datetime

    def get(self, name: str) -> int:
        if name == "on_hand":
            return sum(self.states[n] for n in ON_HAND_PARTS)
        return self.states[name]


@dataclass
class SeededVariant:
    """What :meth:`FakeShopify.seed_variant` created."""

    product_id: str
    variant_id: str
    inventory_item_id: str
    sku: str | None


@dataclass(frozen=True)
class InventoryChange:
    name: str
    delta: int
    quantity_after_change: int
    item_id: str
    location_id: str
    ledger_document_uri: str | None


@dataclass
class AdjustmentGroup:
    """One applied inventory mutation (adjust or set)."""

    id: str
    mutation: str
    reason: str
    reference_document_uri: str | None
    created_at: datetime
    changes: list[InventoryChange]
    idempotency_key: str | None
    input: dict[str, Any]


@dataclass
class OrderLine:
    id: str
    quantity: int
    title: str
    sku: str | None
    variant_id: str | None
    unit_price: str | None
    currency: str | None
    raw: dict[str, Any]


@dataclass
class Order:
    id: str
    number: int
    name: str
    input: dict[str, Any]
    options: dict[str, Any]
    source_identifier: str | None
    source_name: str | None
    tags: list[str]
    note: str | None
    test: bool
    processed_at: datetime
    created_at: datetime
    created_mono: float
    currency: str
    lines: list[OrderLine]
    transactions: list[dict[str, Any]]
    metafields: list[dict[str, Any]]
    location_id: str | None
    inventory_behaviour: str
    #: (inventory item, location, delta to "available") applied by the order
    inventory_effects: list[tuple[str, str, int]]


@dataclass
class RejectedRequest:
    """A top-level error answered by the fake (the request failed as a whole or in part)."""

    code: str
    message: str
    query: str
    variables: Any
    version: str


@dataclass
class UserErrorRecord:
    mutation: str
    field: list[str] | None
    message: str
    code: str | None
    idempotency_key: str | None


@dataclass
class GraphQLCall:
    version: str
    operation: str  # "query" | "mutation" | "" (not parsed)
    root_fields: list[str]
    variables: Any
    requested_cost: int | None
    actual_cost: int | None
    throttled: bool
    http_status: int = 200


@dataclass
class _Stored:
    params: str
    payload: dict[str, Any]


class CostBucket:
    """Shopify's leaky bucket of query cost points, refilled by ``clock``."""

    def __init__(self, maximum: float, restore_rate: float, clock: Clock) -> None:
        self.maximum = float(maximum)
        self.restore_rate = float(restore_rate)
        self.clock = clock
        self._available = float(maximum)
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._available = min(self.maximum, self._available + (now - self._at) * self.restore_rate)
        self._at = now

    @property
    def available(self) -> float:
        self._refill()
        return self._available

    def set_available(self, points: float) -> None:
        self._refill()
        self._available = max(0.0, min(self.maximum, float(points)))

    def try_take(self, cost: float) -> bool:
        self._refill()
        if self._available >= cost:
            self._available -= cost
            return True
        return False

    def give_back(self, points: float) -> None:
        self._refill()
        self._available = min(self.maximum, self._available + max(0.0, points))

    def status(self) -> dict[str, Any]:
        return {
            "maximumAvailable": self.maximum,
            "currentlyAvailable": int(self.available),
            "restoreRate": self.restore_rate,
        }


# ------------------------------------------------------------------------------------------
# Execution helpers
# ------------------------------------------------------------------------------------------


class _Ctx:
    """Per-request execution context."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.nodes = 0  # nodes returned by connections (actual cost)
        self.http_status = 200
        self.headers: dict[str, str] = {}
        self.search: list[dict[str, Any]] = []


def _top(message: str, code: str, **extra: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, **extra})


def _not_implemented(what: str) -> GraphQLError:
    return _top(f"The edged Shopify fake does not implement {what}.", "FAKE_NOT_IMPLEMENTED")


def _field_resolver(source: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
    name = info.field_name
    if isinstance(source, Mapping):
        if name not in source:
            raise _not_implemented(f"{info.parent_type.name}.{name}")
        value = source[name]
    else:  # pragma: no cover - every node is a mapping
        value = getattr(source, name)
    if callable(value):
        return value(info, **args)
    return value


def _version_key(version: str) -> str:
    return "9999-99" if version == "unstable" else version


_VALIDATION_CODES: list[tuple[str, str]] = [
    ("Cannot query field", "undefinedField"),
    ("Unknown argument", "argumentNotAccepted"),
    ("is required, but it was not provided", "missingRequiredArguments"),
    ("Unknown type", "undefinedType"),
    ("Unknown directive", "undefinedDirective"),
    ("is never used", "variableNotUsed"),
    ("is not defined", "variableNotDefined"),
    ("used in position expecting", "variableMismatch"),
    ("must have a selection of subfields", "selectionMismatch"),
    ("must not have a selection", "selectionMismatch"),
    ("cannot represent", "argumentLiteralsIncompatible"),
    ("Expected value of type", "argumentLiteralsIncompatible"),
    ("Unknown fragment", "undefinedFragment"),
]


def _validation_code(message: str) -> str:
    for needle, code in _VALIDATION_CODES:
        if needle in message:
            return code
    return "GRAPHQL_VALIDATION_FAILED"


def estimate_cost(doc: Any, op: OperationDefinitionNode, variables: Mapping[str, Any]) -> int:
    """The requested cost of an operation, by Shopify's published rules
    (:mod:`tests.fakes.shopify_cost`)."""
    return shopify_cost.requested_cost(load_admin_schema(), doc, op, variables)


def _root_field_names(doc: Any, op: OperationDefinitionNode) -> list[str]:
    names: list[str] = []
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, FragmentDefinitionNode)}

    def walk(sel_set: SelectionSetNode) -> None:
        for sel in sel_set.selections:
            if isinstance(sel, FieldNode):
                names.append(sel.name.value)
            elif isinstance(sel, InlineFragmentNode):
                walk(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value in fragments:
                walk(fragments[sel.name.value].selection_set)

    walk(op.selection_set)
    return names


def _has_directive(doc: Any, name: str) -> bool:
    found = False

    def visit(node: Any) -> None:
        nonlocal found
        if found or node is None:
            return
        for d in getattr(node, "directives", None) or ():
            if d.name.value == name:
                found = True
                return
        sel_set = getattr(node, "selection_set", None)
        if sel_set is not None:
            for s in sel_set.selections:
                visit(s)

    for d in doc.definitions:
        visit(d)
    return found


# ------------------------------------------------------------------------------------------
# Search
# ------------------------------------------------------------------------------------------

_KNOWN_FILTERS: dict[str, frozenset[str]] = {
    "orders": frozenset(
        "default cart_token channel channel_id chargeback_status checkout_token "
        "confirmation_number created_at customer_id delivery_method discount_code email "
        "financial_status fraud_protection_level fulfillment_location_id fulfillment_status "
        "gateway id location_id name payment_id payment_provider_id po_number processed_at "
        "reference_location_id return_status risk_level sales_channel "
        "shipping_address_validation_result_summary sku source_identifier source_name status "
        "subtotal_line_items_quantity tag tag_not test updated_at".split()
    ),
    "productVariants": frozenset(
        "default barcode collection delivery_profile_id exclude_composite "
        "exclude_variants_with_components gift_card id inventory_quantity location_id managed "
        "managed_by product_id product_ids product_publication_status product_status "
        "product_type publishable_status published_status requires_components sku tag tag_not "
        "taxable title updated_at vendor".split()
    ),
    "products": frozenset(
        "default barcode bundles category_id combined_listing_role created_at "
        "delivery_profile_id error_feedback gift_card handle has_only_composites "
        "has_only_default_variant has_variant_with_components id inventory_total "
        "is_price_reduced out_of_stock_somewhere price product_configuration_owner "
        "product_publication_status product_type publication_ids publishable_status "
        "published_at published_status sku status tag tag_not title updated_at variant_id "
        "variant_title vendor".split()
    ),
    "inventoryItems": frozenset("default created_at id sku updated_at".split()),
    "inventoryLevels": frozenset("default created_at id inventory_item_id updated_at".split()),
}

# A filter: (object, comparator, value) -> bool
_Filter = Callable[[Any, str, str], bool]


def _match_text(actual: str | None, value: str) -> bool:
    if actual is None:
        return False
    a, v = actual.lower(), value.lower()
    if v.endswith("*"):
        return a.startswith(v[:-1])
    return a == v


def _match_any(actuals: Iterable[str | None], value: str) -> bool:
    return any(_match_text(a, value) for a in actuals)


def _compare(actual: Any, op: str, value: Any) -> bool:
    if actual is None or value is None:
        return False
    if op == ">":
        return bool(actual > value)
    if op == ">=":
        return bool(actual >= value)
    if op == "<":
        return bool(actual < value)
    if op == "<=":
        return bool(actual <= value)
    return bool(actual == value)


def _match_time(actual: datetime, op: str, value: str) -> bool:
    if value == "now":
        return _compare(actual, op, datetime.now(UTC))
    dt = _parse_iso(value)
    if dt is None:
        return False
    if op == "" and len(value) == 10:  # a day
        return actual.date() == dt.date()
    return _compare(actual, op or "=", dt)


def _match_id(gid: str, op: str, value: str) -> bool:
    try:
        n = int(value) if value.isdigit() else gid_number(value)
    except ValueError:  # pragma: no cover
        return False
    return _compare(gid_number(gid), op or "=", n)


# ------------------------------------------------------------------------------------------
# The fake
# ------------------------------------------------------------------------------------------


class FakeShopify(FakeServer):
    """Shopify's GraphQL Admin API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        access_token: str | None = None,
        maximum_available: float = 2000,
        restore_rate: float = 100,
        throttled_status: int = 200,
        order_rate_limit: int | None = None,
        order_search_delay: float = 0.0,
        clock: Clock = time.monotonic,
        now: Callable[[], datetime] | None = None,
        schema: GraphQLSchema | None = None,
        shop_name: str = "edged test shop",
        currency: str = "EUR",
    ) -> None:
        """
        :param access_token: the accepted ``X-Shopify-Access-Token`` (None: any non-empty).
        :param throttled_status: HTTP status of THROTTLED answers (200 or 429).
        :param order_rate_limit: new orders a minute (5 on development stores; None: off).
        :param order_search_delay: seconds before a new order is found by ``orders(query:)``.
        :param clock: monotonic seconds for the cost bucket and the order limit.
        :param now: wall clock for timestamps (default: real UTC time).
        """
        super().__init__(clock=clock)
        self.schema = schema if schema is not None else load_admin_schema()
        self.access_token = access_token
        self.bucket = CostBucket(maximum_available, restore_rate, clock)
        self.throttled_status = throttled_status
        self.order_rate_limit = order_rate_limit
        self.order_search_delay = order_search_delay
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.shop_name = shop_name
        self.currency = currency

        self._next = 1000
        self.locations: dict[str, Location] = {}
        self.products: dict[str, Product] = {}
        self.variants: dict[str, Variant] = {}
        self.items: dict[str, InventoryItem] = {}
        self.levels: dict[tuple[str, str], Level] = {}
        self.orders: list[Order] = []
        self._order_number = 1000

        self.calls: list[GraphQLCall] = []
        self.rejected: list[RejectedRequest] = []
        self.user_errors: list[UserErrorRecord] = []
        self.adjustment_groups: list[AdjustmentGroup] = []
        self.applied_by_key: Counter[str] = Counter()
        self.replays: Counter[str] = Counter()
        self.idempotency_in_progress: set[str] = set()
        self.search_warnings: list[dict[str, Any]] = []
        self._idempotency: dict[str, _Stored] = {}

        self.default_location_id = self.add_location("Shop")
        self._root = self._root_value()
        # hooks of the parts that live in modules of their own (tests/fakes/shopify_*.py)
        self._route_hooks: list[Callable[[web.Application], None]] = []
        self._view_hooks: dict[str, list[Callable[[Any], dict[str, Any]]]] = {}
        self._listeners: list[Callable[[str, Any], None]] = []
        from .shopify_extensions import install  # noqa: PLC0415  (they import this module)

        install(self)

    # -- ids, seeding, reading ------------------------------------------------------------

    def _gid(self, kind: str) -> str:
        self._next += 1
        return f"gid://shopify/{kind}/{self._next}"

    def add_location(self, name: str, *, active: bool = True) -> str:
        """Add a location; returns its id."""
        lid = self._gid("Location")
        self.locations[lid] = Location(lid, name, active)
        return lid

    def seed_variant(
        self,
        sku: str | None,
        *,
        price: str = "10.00",
        barcode: str | None = None,
        title: str = "Default Title",
        product_title: str | None = None,
        product_id: str | None = None,
        available: int | None = 0,
        location_id: str | None = None,
        inventory_policy: str = "DENY",
        tracked: bool = True,
    ) -> SeededVariant:
        """Create a variant (and its product unless ``product_id``) and its inventory item,
        stocked at ``location_id`` (default location) with ``available`` (None: not stocked).
        """
        now = self.now()
        if product_id is None:
            product_id = self._gid("Product")
            ptitle = product_title or (sku or "Product")
            handle = re.sub(r"[^a-z0-9]+", "-", ptitle.lower()).strip("-") or product_id
            self.products[product_id] = Product(
                product_id, ptitle, handle, "ACTIVE", "", "", [], now, now
            )
        product = self.products[product_id]
        vid = self._gid("ProductVariant")
        iid = self._gid("InventoryItem")
        self.variants[vid] = Variant(
            vid, product_id, iid, title, sku, barcode, price, inventory_policy,
            len(product.variant_ids) + 1, now, now,
        )
        product.variant_ids.append(vid)
        self.items[iid] = InventoryItem(iid, vid, sku, tracked, now, now)
        if available is not None:
            self.stock_at(iid, location_id or self.default_location_id, available=available)
        return SeededVariant(product_id, vid, iid, sku)

    def stock_at(self, item_id: str, location_id: str, **states: int) -> None:
        """Stock an item at a location (activate the level) with the given states."""
        if item_id not in self.items or location_id not in self.locations:
            raise KeyError((item_id, location_id))
        now = self.now()
        level = self.levels.get((item_id, location_id))
        if level is None:
            level = Level(item_id, location_id, dict.fromkeys(STATES, 0), now, now)
            self.levels[(item_id, location_id)] = level
        for name, qty in states.items():
            level.states[name] = qty
        level.updated_at = now

    def set_quantity(self, item_id: str, location_id: str | None = None,
                     name: str = "available", quantity: int = 0) -> None:
        """Change a quantity behind the daemon's back (as a merchant in the admin would)."""
        self.stock_at(item_id, location_id or self.default_location_id, **{name: quantity})

    def quantity(self, item_id: str, location_id: str | None = None,
                 name: str = "available") -> int:
        """The current quantity ``name`` ("available", "on_hand", ...) of a level."""
        return self.levels[(item_id, location_id or self.default_location_id)].get(name)

    def orders_with_source_identifier(self, source_identifier: str) -> list[Order]:
        return [o for o in self.orders if o.source_identifier == source_identifier]

    def assert_no_rejections(self) -> None:
        """Fail when any request got a top-level error (invalid document, variables, ...)."""
        if self.rejected:
            lines = "\n".join(f"- [{r.code}] {r.message}" for r in self.rejected)
            raise AssertionError(f"Shopify fake rejected {len(self.rejected)} request(s):\n{lines}")

    def graphql_url(self, version: str = API_VERSION) -> str:
        return f"{self.base_url}/admin/api/{version}/graphql.json"

    # -- HTTP -----------------------------------------------------------------------------

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_post("/admin/api/{version}/graphql.json", self._handle)
        for hook in self._route_hooks:
            hook(app)

    def extend_root(self, fields: dict[str, Any]) -> None:
        """Root fields served by an extension module."""
        self._root.update(fields)

    def extend_view(self, typename: str, extra: Callable[[Any], dict[str, Any]]) -> None:
        """More fields on a view (``"Order"``), computed from its record."""
        self._view_hooks.setdefault(typename, []).append(extra)

    def listen(self, listener: Callable[[str, Any], None]) -> None:
        """Called with ("inventory", AdjustmentGroup) and ("order", Order) when the daemon's
        mutations apply (an extension sends the webhooks Shopify would)."""
        self._listeners.append(listener)

    def _emit(self, kind: str, record: Any) -> None:
        for listener in self._listeners:
            listener(kind, record)

    def fault_response(self, status: int) -> web.Response:
        rid = str(uuid.uuid4())
        return json_response(
            {"errors": f"Internal error. Looks like something went wrong on our end.\n"
                       f"Request ID: {rid} (include this in support requests)."},
            status,
            headers={"X-Request-Id": rid},
        )

    def throttled_response(self, retry_after: float | None) -> web.Response:
        self.calls.append(GraphQLCall("", "", [], None, None, None, True, self.throttled_status))
        return self._throttled(None)

    def _throttled(self, requested: int | None) -> web.Response:
        body = {
            "errors": [{
                "message": "Throttled",
                "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                },
            }],
            "extensions": {"cost": self._cost(requested, None)},
        }
        return json_response(body, self.throttled_status)

    def _cost(self, requested: int | None, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": self.bucket.status(),
        }

    def _reject(self, code: str, message: str, query: str, variables: Any, version: str,
                *, status: int = 200, extra: dict[str, Any] | None = None,
                errors: list[dict[str, Any]] | None = None) -> web.Response:
        self.rejected.append(RejectedRequest(code, message, query, variables, version))
        body: dict[str, Any] = {
            "errors": errors
            or [{"message": message, "extensions": {"code": code, **(extra or {})}}],
            "extensions": {"cost": self._cost(0, 0)},
        }
        return json_response(body, status)

    async def _handle(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        if not re.fullmatch(r"\d{4}-(01|04|07|10)|unstable", version):
            return json_response({"errors": "Not Found"}, 404)
        token = request.headers.get("X-Shopify-Access-Token", "")
        if not token or (self.access_token is not None and token != self.access_token):
            return json_response(
                {"errors": "[API] Invalid API key or access token "
                           "(unrecognized login or wrong password)"},
                401,
            )
        try:
            payload = json.loads(await request.read() or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return json_response({"errors": {"query": "Required parameter missing or invalid"}},
                                 400)
        query: str = payload["query"]
        variables = payload.get("variables") or {}
        op_name = payload.get("operationName")
        call = GraphQLCall(version, "", [], variables, None, None, False)
        self.calls.append(call)

        try:
            doc = parse(query)
        except GraphQLSyntaxError as e:
            err = dict(e.formatted)
            err["extensions"] = {"code": "syntaxError"}
            return self._reject("syntaxError", e.message, query, variables, version,
                                errors=[err])
        if not isinstance(variables, dict):
            return self._reject("INVALID_VARIABLE", "Variables must be an object", query,
                                variables, version)
        errors = validate(self.schema, doc)
        if errors:
            formatted: list[dict[str, Any]] = []
            for verr in errors:
                f = dict(verr.formatted)
                f["extensions"] = {"code": _validation_code(verr.message)}
                formatted.append(f)
            return self._reject(formatted[0]["extensions"]["code"],
                                "; ".join(verr.message for verr in errors), query, variables,
                                version, errors=formatted)
        op = get_operation_ast(doc, op_name)
        if op is None:
            return self._reject("OPERATION_NOT_FOUND",
                                "An operation name is required" if op_name is None
                                else f'No operation named "{op_name}"',
                                query, variables, version)
        call.operation = op.operation.value
        call.root_fields = _root_field_names(doc, op)
        if _has_directive(doc, "idempotent") and _version_key(version) < "2026-01":
            return self._reject("undefinedDirective", "Directive 'idempotent' is not defined",
                                query, variables, version)
        if op.operation == OperationType.SUBSCRIPTION:
            return self._reject("BAD_REQUEST", "Subscriptions are not supported", query,
                                variables, version)

        requested = shopify_cost.requested_cost(self.schema, doc, op, variables)
        call.requested_cost = requested
        # a query may cost neither more than 1000 nor more than the bucket can ever hold
        max_cost = min(MAX_QUERY_COST, int(self.bucket.maximum))
        if requested > max_cost:
            msg = shopify_cost.max_cost_message(requested, max_cost)
            self.rejected.append(
                RejectedRequest("MAX_COST_EXCEEDED", msg, query, variables, version))
            return json_response({
                "errors": [{"message": msg, "extensions": {
                    "code": "MAX_COST_EXCEEDED", "cost": requested, "maxCost": max_cost,
                    "documentation": "https://shopify.dev/api/usage/limits#rate-limits"}}],
                "extensions": {"cost": self._cost(requested, None)},
            })
        if not self.bucket.try_take(requested):
            call.throttled = True
            call.http_status = self.throttled_status
            self.stats.throttled += 1
            return self._throttled(requested)

        ctx = _Ctx(version)
        result = execute_sync(
            self.schema, doc, root_value=self._root, context_value=ctx,
            variable_values=variables, operation_name=op_name,
            field_resolver=_field_resolver,
        )
        actual = min(requested, shopify_cost.actual_cost(self.schema, doc, op, variables,
                                                         result.data))
        self.bucket.give_back(requested - actual)
        call.actual_cost = actual

        body: dict[str, Any] = {}
        if result.errors:
            out: list[dict[str, Any]] = []
            variable_errors = result.data is None
            for xerr in result.errors:
                xf: dict[str, Any] = dict(xerr.formatted)
                ext: dict[str, Any] = dict(xf.get("extensions") or {})
                ext.setdefault("code", "INVALID_VARIABLE" if variable_errors
                               else "INTERNAL_SERVER_ERROR")
                xf["extensions"] = ext
                out.append(xf)
                self.rejected.append(
                    RejectedRequest(ext["code"], xerr.message, query, variables, version))
            body["errors"] = out
        if result.data is not None:
            body["data"] = result.data
        extensions: dict[str, Any] = {"cost": self._cost(requested, actual)}
        if ctx.search:
            extensions["search"] = ctx.search
        body["extensions"] = extensions
        call.http_status = ctx.http_status
        return json_response(body, ctx.http_status, headers=ctx.headers or None)

    # -- root ------------------------------------------------------------------------------

    def _root_value(self) -> dict[str, Any]:
        return {
            # queries
            "shop": lambda info: {
                "__typename": "Shop", "id": "gid://shopify/Shop/1", "name": self.shop_name,
                "currencyCode": self.currency, "myshopifyDomain": "edged-test.myshopify.com",
            },
            "orders": self._q_orders,
            "order": lambda info, id: self._view_by_id(self._order_by_id(id), self._v_order),
            "productVariants": self._q_variants,
            "productVariant": lambda info, id: self._view_by_id(self.variants.get(id),
                                                                 self._v_variant),
            "products": self._q_products,
            "product": lambda info, id: self._view_by_id(self.products.get(id), self._v_product),
            "inventoryItems": self._q_items,
            "inventoryItem": lambda info, id: self._view_by_id(self.items.get(id), self._v_item),
            "location": self._q_location,
            "locations": self._q_locations,
            # mutations
            "inventoryAdjustQuantities": self._m_adjust,
            "inventorySetQuantities": self._m_set,
            "orderCreate": self._m_order_create,
        }

    @staticmethod
    def _view_by_id(obj: Any, view: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
        return None if obj is None else view(obj)

    def _order_by_id(self, oid: str) -> Order | None:
        return next((o for o in self.orders if o.id == oid), None)

    # -- connections & search -------------------------------------------------------------

    @staticmethod
    def _cursor(key: int) -> str:
        return base64.b64encode(
            json.dumps({"last_id": key, "last_value": str(key)}).encode()).decode()

    @staticmethod
    def _cursor_key(cursor: str) -> int:
        try:
            return int(json.loads(base64.b64decode(cursor.encode()))["last_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise _top(f"Invalid cursor for current pagination: {cursor!r}",
                       "BAD_REQUEST") from e

    def _connection(
        self,
        info: GraphQLResolveInfo[Any],
        items: list[Any],
        key: Callable[[Any], int],
        view: Callable[[Any], dict[str, Any]],
        *,
        first: int | None = None,
        last: int | None = None,
        after: str | None = None,
        before: str | None = None,
        reverse: bool = False,
        **_ignored: Any,
    ) -> dict[str, Any]:
        bulk = getattr(info.context, "bulk", False)  # a bulk operation reads it all
        if bulk and first is None and last is None:
            first = len(items)
        if first is None and last is None:
            raise _top("you must provide one of first or last", "BAD_REQUEST")
        for n in (first, last):
            if n is not None and not 0 <= n <= MAX_PAGE and not bulk:
                raise _top(f"The page size must be between 0 and {MAX_PAGE}.", "BAD_REQUEST")
        ordered = sorted(items, key=key, reverse=reverse)
        keys = [key(x) for x in ordered]
        lo, hi = 0, len(ordered)
        if after is not None:
            k = self._cursor_key(after)
            lo = _position_after(keys, k, reverse)
        if before is not None:
            k = self._cursor_key(before)
            hi = next((i for i, kk in enumerate(keys) if kk == k), hi)
        window = ordered[lo:hi]
        has_next = has_prev = False
        if first is not None:
            has_next = len(window) > first
            window = window[:first]
            has_prev = lo > 0
        if last is not None:
            has_prev = len(window) > last
            window = window[len(window) - last:] if last else []
            has_next = has_next or hi < len(ordered)
        info.context.nodes += len(window)
        edges = [{"cursor": self._cursor(key(x)), "node": view(x)} for x in window]
        return {
            "edges": edges,
            "nodes": [e["node"] for e in edges],
            "pageInfo": {
                "hasNextPage": has_next,
                "hasPreviousPage": has_prev,
                "startCursor": edges[0]["cursor"] if edges else None,
                "endCursor": edges[-1]["cursor"] if edges else None,
            },
        }

    def _search(self, info: GraphQLResolveInfo[Any], root: str, query: str | None,
                items: list[Any], filters: dict[str, _Filter]) -> list[Any]:
        if not query:
            return items
        try:
            tokens = shlex.split(query)
        except ValueError as e:
            raise _top(f"Invalid search query: {e}", "BAD_REQUEST") from e
        warnings: list[dict[str, str]] = []
        preds: list[Callable[[Any], bool]] = []
        for tok in tokens:
            if tok == "AND":
                continue
            if tok == "OR":
                raise _not_implemented("OR in search queries")
            negate = tok.startswith("-")
            term = tok[1:] if negate else tok
            if ":" not in term:
                raise _not_implemented(f"free-text search terms ({term!r}) in {root}(query:)")
            name, value = term.split(":", 1)
            op = ""
            m = re.match(r"(>=|<=|>|<)(.*)", value)
            if m:
                op, value = m.group(1), m.group(2)
            if name not in _KNOWN_FILTERS[root]:
                warnings.append({"field": name, "message": "Invalid search field for this query."})
                continue
            fn = filters.get(name)
            if fn is None:
                raise _not_implemented(f"the search filter {name!r} of {root}(query:)")

            def pred(x: Any, fn: _Filter = fn, op: str = op, value: str = value,
                     negate: bool = negate) -> bool:
                return fn(x, op, value) != negate

            preds.append(pred)
        if warnings:
            entry = {"path": [root], "query": query, "warnings": warnings}
            info.context.search.append(entry)
            self.search_warnings.append(entry)
        return [x for x in items if all(p(x) for p in preds)]

    # -- queries --------------------------------------------------------------------------

    def _q_orders(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                  **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        horizon = self.clock() - self.order_search_delay
        visible = [o for o in self.orders if not query or o.created_mono <= horizon]
        filters: dict[str, _Filter] = {
            "source_identifier": lambda o, op, v: _match_text(o.source_identifier, v),
            "source_name": lambda o, op, v: _match_text(o.source_name, v),
            "tag": lambda o, op, v: _match_any(o.tags, v),
            "tag_not": lambda o, op, v: not _match_any(o.tags, v),
            "name": lambda o, op, v: _match_text(o.name, v) or _match_text(o.name, "#" + v),
            "id": lambda o, op, v: _match_id(o.id, op, v),
            "sku": lambda o, op, v: _match_any((ln.sku for ln in o.lines), v),
            "test": lambda o, op, v: o.test == (v.lower() == "true"),
            "created_at": lambda o, op, v: _match_time(o.created_at, op, v),
            "updated_at": lambda o, op, v: _match_time(o.created_at, op, v),
            "processed_at": lambda o, op, v: _match_time(o.processed_at, op, v),
        }
        found = self._search(info, "orders", query, visible, filters)
        return self._connection(info, found, lambda o: gid_number(o.id), self._v_order, **page)

    def _q_variants(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                    **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        filters: dict[str, _Filter] = {
            "sku": lambda v, op, x: _match_text(v.sku, x),
            "barcode": lambda v, op, x: _match_text(v.barcode, x),
            "product_id": lambda v, op, x: _match_id(v.product_id, op, x),
            "id": lambda v, op, x: _match_id(v.id, op, x),
            "title": lambda v, op, x: _match_text(v.title, x),
            "updated_at": lambda v, op, x: _match_time(v.updated_at, op, x),
            "location_id": lambda v, op, x: any(
                gid_number(loc) == gid_number(x) if not x.isdigit() else gid_number(loc) == int(x)
                for (item, loc) in self.levels if item == v.inventory_item_id),
        }
        found = self._search(info, "productVariants", query, list(self.variants.values()),
                             filters)
        return self._connection(info, found, lambda v: gid_number(v.id), self._v_variant, **page)

    def _q_products(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                    **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)

        def variants(p: Product) -> list[Variant]:
            return [self.variants[v] for v in p.variant_ids]

        filters: dict[str, _Filter] = {
            "sku": lambda p, op, x: _match_any((v.sku for v in variants(p)), x),
            "barcode": lambda p, op, x: _match_any((v.barcode for v in variants(p)), x),
            "title": lambda p, op, x: _match_text(p.title, x),
            "handle": lambda p, op, x: _match_text(p.handle, x),
            "status": lambda p, op, x: _match_any(x.split(","), p.status),
            "id": lambda p, op, x: _match_id(p.id, op, x),
            "updated_at": lambda p, op, x: _match_time(p.updated_at, op, x),
        }
        found = self._search(info, "products", query, list(self.products.values()), filters)
        return self._connection(info, found, lambda p: gid_number(p.id), self._v_product, **page)

    def _q_items(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                 **page: Any) -> dict[str, Any]:
        filters: dict[str, _Filter] = {
            "sku": lambda i, op, x: _match_text(i.sku, x),
            "id": lambda i, op, x: _match_id(i.id, op, x),
            "updated_at": lambda i, op, x: _match_time(i.updated_at, op, x),
        }
        found = self._search(info, "inventoryItems", query, list(self.items.values()), filters)
        return self._connection(info, found, lambda i: gid_number(i.id), self._v_item, **page)

    def _q_location(self, info: GraphQLResolveInfo[Any],
                    id: str | None = None) -> dict[str, Any] | None:
        loc = self.locations.get(id) if id is not None else self.locations[self.default_location_id]
        return None if loc is None else self._v_location(loc)

    def _q_locations(self, info: GraphQLResolveInfo[Any], query: str | None = None,
                     includeInactive: bool = False, includeLegacy: bool = False,
                     **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        if query:
            raise _not_implemented("locations(query:)")
        locs = [lo for lo in self.locations.values() if lo.active or includeInactive]
        return self._connection(info, locs, lambda lo: gid_number(lo.id), self._v_location,
                                **page)

    # -- views ----------------------------------------------------------------------------

    def _money_bag(self, amount: str | None, currency: str | None) -> dict[str, Any] | None:
        if amount is None:
            return None
        money = {"__typename": "MoneyV2", "amount": amount,
                 "currencyCode": currency or self.currency}
        return {"__typename": "MoneyBag", "shopMoney": money, "presentmentMoney": money}

    def _v_location(self, loc: Location) -> dict[str, Any]:
        def levels(info: GraphQLResolveInfo[Any], query: str | None = None,
                   **page: Any) -> dict[str, Any]:
            found = [lv for (_, lid), lv in self.levels.items() if lid == loc.id]
            found = self._search(info, "inventoryLevels", query, found, {
                "inventory_item_id": lambda lv, op, x: _match_id(lv.item_id, op, x),
                "updated_at": lambda lv, op, x: _match_time(lv.updated_at, op, x),
            })
            return self._connection(info, found, lambda lv: gid_number(lv.item_id),
                                    self._v_level, **page)

        def level(info: GraphQLResolveInfo[Any], inventoryItemId: str) -> dict[str, Any] | None:
            lv = self.levels.get((inventoryItemId, loc.id))
            return None if lv is None else self._v_level(lv)

        return {
            "__typename": "Location",
            "id": loc.id,
            "legacyResourceId": str(gid_number(loc.id)),
            "name": loc.name,
            "isActive": loc.active,
            "fulfillsOnlineOrders": True,
            "shipsInventory": True,
            "hasActiveInventory": any(lid == loc.id for (_, lid) in self.levels),
            "inventoryLevels": levels,
            "inventoryLevel": level,
        }

    def _v_level(self, lv: Level) -> dict[str, Any]:
        def quantities(info: GraphQLResolveInfo[Any], names: list[str]) -> list[dict[str, Any]]:
            out = []
            for n in names:
                if n != "on_hand" and n not in STATES:
                    raise _top(f"Invalid quantity name: {n!r}", "BAD_REQUEST")
                out.append({
                    "__typename": "InventoryQuantity",
                    "id": f"gid://shopify/InventoryQuantity/{gid_number(lv.item_id)}"
                          f"?inventory_location_id={gid_number(lv.location_id)}&name={n}",
                    "name": n,
                    "quantity": lv.get(n),
                    "updatedAt": _iso(lv.updated_at),
                })
            return out

        return {
            "__typename": "InventoryLevel",
            "id": f"gid://shopify/InventoryLevel/{gid_number(lv.location_id)}"
                  f"?inventory_item_id={gid_number(lv.item_id)}",
            "quantities": quantities,
            "item": lambda info: self._v_item(self.items[lv.item_id]),
            "location": lambda info: self._v_location(self.locations[lv.location_id]),
            "createdAt": _iso(lv.created_at),
            "updatedAt": _iso(lv.updated_at),
            "canDeactivate": True,
        }

    def _v_item(self, item: InventoryItem) -> dict[str, Any]:
        def level(info: GraphQLResolveInfo[Any], locationId: str) -> dict[str, Any] | None:
            lv = self.levels.get((item.id, locationId))
            return None if lv is None else self._v_level(lv)

        def levels(info: GraphQLResolveInfo[Any], query: str | None = None,
                   **page: Any) -> dict[str, Any]:
            if query:
                raise _not_implemented("InventoryItem.inventoryLevels(query:)")
            found = [lv for (iid, _), lv in self.levels.items() if iid == item.id]
            return self._connection(info, found, lambda lv: gid_number(lv.location_id),
                                    self._v_level, **page)

        return {
            "__typename": "InventoryItem",
            "id": item.id,
            "legacyResourceId": str(gid_number(item.id)),
            "sku": item.sku,
            "tracked": item.tracked,
            "requiresShipping": True,
            "createdAt": _iso(item.created_at),
            "updatedAt": _iso(item.updated_at),
            "variant": lambda info: self._v_variant(self.variants[item.variant_id]),
            "inventoryLevel": level,
            "inventoryLevels": levels,
        }

    def _v_variant(self, v: Variant) -> dict[str, Any]:
        def inventory_quantity(info: GraphQLResolveInfo[Any]) -> int:
            return sum(lv.get("available") for (iid, _), lv in self.levels.items()
                       if iid == v.inventory_item_id)

        return {
            "__typename": "ProductVariant",
            "id": v.id,
            "legacyResourceId": str(gid_number(v.id)),
            "title": v.title,
            "displayName": f"{self.products[v.product_id].title} - {v.title}",
            "sku": v.sku,
            "barcode": v.barcode,
            "price": v.price,
            "compareAtPrice": v.compare_at_price,
            "position": v.position,
            "inventoryPolicy": v.inventory_policy,
            "inventoryQuantity": inventory_quantity,
            "availableForSale": True,
            "taxable": True,
            "selectedOptions": [],
            "createdAt": _iso(v.created_at),
            "updatedAt": _iso(v.updated_at),
            "product": lambda info: self._v_product(self.products[v.product_id]),
            "inventoryItem": lambda info: self._v_item(self.items[v.inventory_item_id]),
        }

    def _v_product(self, p: Product) -> dict[str, Any]:
        def variants(info: GraphQLResolveInfo[Any], **page: Any) -> dict[str, Any]:
            page.pop("sortKey", None)
            vs = [self.variants[v] for v in p.variant_ids]
            return self._connection(info, vs, lambda v: v.position, self._v_variant, **page)

        def total_inventory(info: GraphQLResolveInfo[Any]) -> int:
            items = {self.variants[v].inventory_item_id for v in p.variant_ids}
            return sum(lv.get("available") for (iid, _), lv in self.levels.items() if iid in items)

        return {
            "__typename": "Product",
            "id": p.id,
            "legacyResourceId": str(gid_number(p.id)),
            "title": p.title,
            "handle": p.handle,
            "status": p.status,
            "vendor": p.vendor,
            "productType": p.product_type,
            "tags": p.tags,
            "createdAt": _iso(p.created_at),
            "updatedAt": _iso(p.updated_at),
            "totalInventory": total_inventory,
            "tracksInventory": True,
            "hasOnlyDefaultVariant": len(p.variant_ids) == 1,
            "variants": variants,
            "variantsCount": lambda info: {"__typename": "Count", "count": len(p.variant_ids),
                                           "precision": "EXACT"},
        }

    def _v_order(self, o: Order) -> dict[str, Any]:
        def line_view(ln: OrderLine) -> dict[str, Any]:
            variant = self.variants.get(ln.variant_id) if ln.variant_id else None
            total = None
            if ln.unit_price is not None:
                total = f"{float(ln.unit_price) * ln.quantity:.2f}"
            return {
                "__typename": "LineItem",
                "id": ln.id,
                "title": ln.title,
                "name": ln.title,
                "quantity": ln.quantity,
                "currentQuantity": ln.quantity,
                "sku": ln.sku,
                "variantTitle": variant.title if variant else None,
                "variant": (lambda info: self._v_variant(variant)) if variant else None,
                "product": (lambda info: self._v_product(self.products[variant.product_id]))
                if variant else None,
                "originalUnitPriceSet": self._money_bag(ln.unit_price, ln.currency),
                "originalTotalSet": self._money_bag(total, ln.currency),
                "requiresShipping": False,
                "taxable": bool(ln.raw.get("taxable", True)),
            }

        def line_items(info: GraphQLResolveInfo[Any], **page: Any) -> dict[str, Any]:
            return self._connection(info, o.lines, lambda ln: gid_number(ln.id), line_view,
                                    **page)

        def transactions(info: GraphQLResolveInfo[Any], first: int | None = None,
                         **_: Any) -> list[dict[str, Any]]:
            txs = o.transactions if first is None else o.transactions[:first]
            return [{
                "__typename": "OrderTransaction",
                "id": t["id"],
                "kind": t.get("kind", "SALE"),
                "status": t.get("status", "SUCCESS"),
                "gateway": t.get("gateway"),
                "authorizationCode": t.get("authorizationCode"),
                "processedAt": t.get("processedAt"),
                "test": bool(t.get("test", False)),
                "amountSet": self._money_bag(
                    str(t["amountSet"]["shopMoney"]["amount"]),
                    t["amountSet"]["shopMoney"]["currencyCode"]),
                "createdAt": _iso(o.created_at),
            } for t in txs]

        def metafield_view(m: dict[str, Any]) -> dict[str, Any]:
            return {"__typename": "Metafield", **m}

        def metafields(info: GraphQLResolveInfo[Any], namespace: str | None = None,
                       keys: list[str] | None = None, **page: Any) -> dict[str, Any]:
            found = [m for m in o.metafields
                     if (namespace is None or m["namespace"] == namespace)
                     and (keys is None or f"{m['namespace']}.{m['key']}" in keys)]
            return self._connection(info, found, lambda m: gid_number(m["id"]), metafield_view,
                                    **page)

        def metafield(info: GraphQLResolveInfo[Any], key: str,
                      namespace: str | None = None) -> dict[str, Any] | None:
            if namespace is None and "." in key:
                namespace, key = key.split(".", 1)
            m = next((m for m in o.metafields
                      if m["key"] == key and (namespace is None or m["namespace"] == namespace)),
                     None)
            return None if m is None else metafield_view(m)

        total = sum(float(ln.unit_price or 0) * ln.quantity for ln in o.lines)
        view = {
            "__typename": "Order",
            "id": o.id,
            "legacyResourceId": str(gid_number(o.id)),
            "name": o.name,
            "sourceIdentifier": o.source_identifier,
            "sourceName": o.source_name,
            "note": o.note,
            "tags": o.tags,
            "test": o.test,
            "currencyCode": o.currency,
            "presentmentCurrencyCode": o.currency,
            "processedAt": _iso(o.processed_at),
            "createdAt": _iso(o.created_at),
            "updatedAt": _iso(o.created_at),
            "displayFinancialStatus": "PAID" if o.transactions else "PENDING",
            "displayFulfillmentStatus": "FULFILLED"
            if o.input.get("fulfillmentStatus") == "FULFILLED" or o.input.get("fulfillment")
            else "UNFULFILLED",
            "totalPriceSet": self._money_bag(f"{total:.2f}", o.currency),
            "customAttributes": [
                {"__typename": "Attribute", **a} for a in o.input.get("customAttributes") or []
            ],
            "lineItems": line_items,
            "transactions": transactions,
            "metafields": metafields,
            "metafield": metafield,
        }
        for extra in self._view_hooks.get("Order", ()):
            view.update(extra(o))
        return view

    # -- mutations: idempotency -----------------------------------------------------------

    def _idempotency_key(self, info: GraphQLResolveInfo[Any], mutation: str) -> str | None:
        node = info.field_nodes[0]
        key: Any = None
        present = False
        for d in node.directives or ():
            if d.name.value == "idempotent":
                present = True
                for arg in d.arguments or ():
                    if arg.name.value == "key":
                        raw: Any = info.variable_values
                        variables: dict[str, Any] = getattr(raw, "coerced", raw)  # 3.3 / 3.2
                        key = value_from_ast_untyped(arg.value, variables)
        required = _version_key(info.context.version) >= "2026-04"
        if not present:
            if required:
                raise _top(f"The @idempotent directive is required on {mutation} from API "
                           f"version 2026-04.", "BAD_REQUEST")
            return None
        if not isinstance(key, str) or not key.strip():
            raise _top("The idempotency key of @idempotent must not be empty.", "BAD_REQUEST")
        return key

    def _idempotent(self, info: GraphQLResolveInfo[Any], mutation: str, key: str | None,
                    args: dict[str, Any],
                    run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key is None:
            payload = run()
            self._record_user_errors(mutation, key, payload)
            return payload
        params = canonical({"mutation": mutation, "arguments": args})
        stored = self._idempotency.get(key)
        if stored is not None:
            if stored.params != params:
                payload = {
                    "inventoryAdjustmentGroup": None,
                    "userErrors": [_user_error(
                        None, "The idempotency key was already used with other parameters.",
                        "IDEMPOTENCY_KEY_PARAMETER_MISMATCH")],
                }
                self._record_user_errors(mutation, key, payload)
                return payload
            self.replays[key] += 1
            return stored.payload
        if key in self.idempotency_in_progress:
            payload = {
                "inventoryAdjustmentGroup": None,
                "userErrors": [_user_error(
                    None, "A request with the same idempotency key is still in progress.",
                    "IDEMPOTENCY_CONCURRENT_REQUEST")],
            }
            self._record_user_errors(mutation, key, payload)
            return payload
        payload = run()
        self._idempotency[key] = _Stored(params, payload)
        self._record_user_errors(mutation, key, payload)
        return payload

    def _record_user_errors(self, mutation: str, key: str | None,
                            payload: dict[str, Any]) -> None:
        for ue in payload.get("userErrors") or ():
            self.user_errors.append(
                UserErrorRecord(mutation, ue["field"], ue["message"], ue["code"], key))

    # -- mutations: inventory -------------------------------------------------------------

    def _check_common(self, inp: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        if inp["reason"] not in REASONS:
            errors.append(_user_error(["input", "reason"],
                                      f"The quantity reason {inp['reason']!r} is invalid.",
                                      "INVALID_REASON"))
        ref = inp.get("referenceDocumentUri")
        if ref is not None and (ref.startswith("gid://") or ":" not in ref):
            errors.append(_user_error(["input", "referenceDocumentUri"],
                                      "The reference document URI isn't a valid URI or is a "
                                      "Shopify global ID.", "INVALID_REFERENCE_DOCUMENT"))

    def _level_for(self, item_id: str, location_id: str, path: list[str],
                   errors: list[dict[str, Any]]) -> Level | None:
        if item_id not in self.items:
            errors.append(_user_error([*path, "inventoryItemId"],
                                      "The specified inventory item could not be found.",
                                      "INVALID_INVENTORY_ITEM"))
            return None
        if location_id not in self.locations:
            errors.append(_user_error([*path, "locationId"],
                                      "The specified location could not be found.",
                                      "INVALID_LOCATION"))
            return None
        level = self.levels.get((item_id, location_id))
        if level is None:
            errors.append(_user_error([*path, "locationId"],
                                      "The specified inventory item is not stocked at the "
                                      "location.", "ITEM_NOT_STOCKED_AT_LOCATION"))
        return level

    def _check_array(self, items: list[Any], what: str) -> None:
        if len(items) > MAX_ARRAY:
            raise _top(f"The input array size of {len(items)} is greater than the maximum "
                       f"allowed of {MAX_ARRAY}.", "MAX_INPUT_SIZE_EXCEEDED",
                       problems=[{"path": ["input", what]}])

    def _check_change_from(self, info: GraphQLResolveInfo[Any], items: list[dict[str, Any]],
                           what: str) -> None:
        if _version_key(info.context.version) < "2026-04":
            return
        for i, c in enumerate(items):
            if "changeFromQuantity" not in c:
                raise _top(f"input.{what}.{i}.changeFromQuantity must be given from API "
                           f"version 2026-04 (null skips the compare-and-swap).",
                           "BAD_REQUEST", problems=[{"path": ["input", what, str(i),
                                                               "changeFromQuantity"]}])

    def _m_adjust(self, info: GraphQLResolveInfo[Any], input: dict[str, Any]) -> dict[str, Any]:
        key = self._idempotency_key(info, "inventoryAdjustQuantities")
        self._check_array(input["changes"], "changes")
        self._check_change_from(info, input["changes"], "changes")
        return self._idempotent(info, "inventoryAdjustQuantities", key, {"input": input},
                                lambda: self._adjust(input, key))

    def _adjust(self, inp: dict[str, Any], key: str | None) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        name = inp["name"]
        if name not in ADJUSTABLE_NAMES:
            errors.append(_user_error(["input", "name"], f"The quantity name {name!r} is "
                                      "invalid.", "INVALID_QUANTITY_NAME"))
        self._check_common(inp, errors)
        ledgers: set[str] = set()
        planned: dict[tuple[str, str], int] = {}  # running quantity of `name` per level
        steps: list[tuple[Level, int, str | None]] = []
        for i, c in enumerate(inp["changes"]):
            path = ["input", "changes", str(i)]
            level = self._level_for(c["inventoryItemId"], c["locationId"], path, errors)
            ledger = c.get("ledgerDocumentUri")
            if name == "available" and ledger is not None:
                errors.append(_user_error([*path, "ledgerDocumentUri"],
                                          "A ledger document URI is not allowed when adjusting "
                                          "available.", "INVALID_AVAILABLE_DOCUMENT"))
            elif name != "available" and ledger is None:
                errors.append(_user_error([*path, "ledgerDocumentUri"],
                                          "A ledger document URI is required except when "
                                          "adjusting available.", "INVALID_QUANTITY_DOCUMENT"))
            elif ledger is not None and (ledger.startswith("gid://") or ":" not in ledger):
                errors.append(_user_error([*path, "ledgerDocumentUri"],
                                          "The ledger document URI isn't a valid URI or is a "
                                          "Shopify global ID.", "INVALID_LEDGER_DOCUMENT"))
            if ledger is not None:
                ledgers.add(ledger)
            if level is None or name not in ADJUSTABLE_NAMES:
                continue
            lk = (level.item_id, level.location_id)
            current = planned.get(lk, level.get(name))
            cfq = c.get("changeFromQuantity")
            if cfq is not None and cfq != current:
                errors.append(_user_error([*path, "changeFromQuantity"],
                                          f"The quantity changed: changeFromQuantity is {cfq} "
                                          f"but the current quantity is {current}.",
                                          "CHANGE_FROM_QUANTITY_STALE"))
            after = current + c["delta"]
            if after > MAX_QUANTITY:
                errors.append(_user_error([*path, "delta"], "The quantity is too high.",
                                          "INVALID_QUANTITY_TOO_HIGH"))
            elif after < -MAX_QUANTITY:
                errors.append(_user_error([*path, "delta"], "The quantity is too low.",
                                          "INVALID_QUANTITY_TOO_LOW"))
            planned[lk] = after
            steps.append((level, c["delta"], ledger))
        if len(ledgers) > 1:
            errors.append(_user_error(["input", "changes"], "Only one ledger document is "
                                      "allowed per call.", "MAX_ONE_LEDGER_DOCUMENT"))
        if errors:
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        now = self.now()
        changes: list[InventoryChange] = []
        for level, delta, ledger in steps:
            level.states[name] += delta
            level.updated_at = now
            changes.append(InventoryChange(name, delta, level.get(name), level.item_id,
                                           level.location_id, ledger))
            if name in ON_HAND_PARTS:
                changes.append(InventoryChange("on_hand", delta, level.get("on_hand"),
                                               level.item_id, level.location_id, None))
        group = AdjustmentGroup(self._gid("InventoryAdjustmentGroup"),
                                "inventoryAdjustQuantities", inp["reason"],
                                inp.get("referenceDocumentUri"), now, changes, key, inp)
        return self._applied(group)

    def _applied(self, group: AdjustmentGroup) -> dict[str, Any]:
        self.adjustment_groups.append(group)
        if group.idempotency_key is not None:
            self.applied_by_key[group.idempotency_key] += 1
        self._emit("inventory", group)
        return {"inventoryAdjustmentGroup": self._v_group(group), "userErrors": []}

    def _m_set(self, info: GraphQLResolveInfo[Any], input: dict[str, Any]) -> dict[str, Any]:
        key = self._idempotency_key(info, "inventorySetQuantities")
        self._check_array(input["quantities"], "quantities")
        self._check_change_from(info, input["quantities"], "quantities")
        return self._idempotent(info, "inventorySetQuantities", key, {"input": input},
                                lambda: self._set(input, key))

    def _set(self, inp: dict[str, Any], key: str | None) -> dict[str, Any]:
        errors: list[dict[str, Any]] = []
        name = inp["name"]
        if name not in SETTABLE_NAMES:
            errors.append(_user_error(["input", "name"], f"The quantity name {name!r} is "
                                      "invalid.", "INVALID_NAME"))
        self._check_common(inp, errors)
        seen: set[tuple[str, str]] = set()
        steps: list[tuple[Level, int]] = []
        for i, q in enumerate(inp["quantities"]):
            path = ["input", "quantities", str(i)]
            pair = (q["inventoryItemId"], q["locationId"])
            if pair in seen:
                errors.append(_user_error(path, "The same inventory item and location appear "
                                          "twice.", "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR"))
                continue
            seen.add(pair)
            level = self._level_for(*pair, path, errors)
            if q["quantity"] < 0:
                errors.append(_user_error([*path, "quantity"], "The quantity can't be negative.",
                                          "INVALID_QUANTITY_NEGATIVE"))
            elif q["quantity"] > MAX_QUANTITY:
                errors.append(_user_error([*path, "quantity"], "The quantity is too high.",
                                          "INVALID_QUANTITY_TOO_HIGH"))
            if level is None or name not in SETTABLE_NAMES:
                continue
            current = level.get(name)
            cfq = q.get("changeFromQuantity")
            if cfq is not None and cfq != current:
                errors.append(_user_error([*path, "changeFromQuantity"],
                                          f"The quantity changed: changeFromQuantity is {cfq} "
                                          f"but the current quantity is {current}.",
                                          "CHANGE_FROM_QUANTITY_STALE"))
            steps.append((level, q["quantity"] - current))
        if errors:
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        now = self.now()
        changes: list[InventoryChange] = []
        other = "on_hand" if name == "available" else "available"
        for level, delta in steps:
            level.states["available"] += delta  # both names move "available" and "on_hand"
            level.updated_at = now
            changes.append(InventoryChange(name, delta, level.get(name), level.item_id,
                                           level.location_id, None))
            changes.append(InventoryChange(other, delta, level.get(other), level.item_id,
                                           level.location_id, None))
        group = AdjustmentGroup(self._gid("InventoryAdjustmentGroup"),
                                "inventorySetQuantities", inp["reason"],
                                inp.get("referenceDocumentUri"), now, changes, key, inp)
        return self._applied(group)

    def _v_group(self, g: AdjustmentGroup) -> dict[str, Any]:
        def change_view(c: InventoryChange) -> dict[str, Any]:
            return {
                "__typename": "InventoryChange",
                "name": c.name,
                "delta": c.delta,
                "quantityAfterChange": c.quantity_after_change,
                "ledgerDocumentUri": c.ledger_document_uri,
                "item": lambda info: self._v_item(self.items[c.item_id]),
                "location": lambda info: self._v_location(self.locations[c.location_id]),
            }

        def changes(info: GraphQLResolveInfo[Any], inventoryItemIds: list[str] | None = None,
                    locationIds: list[str] | None = None,
                    quantityNames: list[str] | None = None) -> list[dict[str, Any]]:
            return [change_view(c) for c in g.changes
                    if (inventoryItemIds is None or c.item_id in inventoryItemIds)
                    and (locationIds is None or c.location_id in locationIds)
                    and (quantityNames is None or c.name in quantityNames)]

        return {
            "__typename": "InventoryAdjustmentGroup",
            "id": g.id,
            "reason": g.reason,
            "referenceDocumentUri": g.reference_document_uri,
            "createdAt": _iso(g.created_at),
            "app": None,
            "staffMember": None,
            "changes": changes,
        }

    # -- mutations: orders ----------------------------------------------------------------

    def _m_order_create(self, info: GraphQLResolveInfo[Any], order: dict[str, Any],
                        options: dict[str, Any] | None = None) -> dict[str, Any]:
        if any(d.name.value == "idempotent" for d in info.field_nodes[0].directives or ()):
            raise _top("The @idempotent directive is not supported on orderCreate.",
                       "BAD_REQUEST")
        options = options or {}
        if self.order_rate_limit is not None:
            horizon = self.clock() - 60.0
            recent = sum(1 for o in self.orders if o.created_mono > horizon)
            if recent >= self.order_rate_limit:
                info.context.http_status = 429
                info.context.headers["Retry-After"] = "60"
                raise _top("Exceeded order API rate limit, please try again in a minute. "
                           "Upgrade to a paid account to remove this limit.", "THROTTLED")
        errors: list[dict[str, Any]] = []
        lines_in = order.get("lineItems") or []
        self._check_array(lines_in, "lineItems")
        if not lines_in:
            errors.append(_user_error(["order", "lineItems"], "Line items must be present.",
                                      "INVALID"))
        now = self.now()
        processed_at = now
        if order.get("processedAt") is not None:
            parsed = _parse_iso(str(order["processedAt"]))
            if parsed is None or parsed > now:
                errors.append(_user_error(["order", "processedAt"],
                                          "Processed at must not be in the future.",
                                          "PROCESSED_AT_INVALID"))
            else:
                processed_at = parsed
        lines: list[OrderLine] = []
        for i, li in enumerate(lines_in):
            path = ["order", "lineItems", str(i)]
            vid = li.get("variantId")
            variant = self.variants.get(vid) if vid else None
            if vid and variant is None:
                errors.append(_user_error([*path, "variantId"], "The variant does not exist.",
                                          "INVALID"))
                continue
            if li["quantity"] < 1:
                errors.append(_user_error([*path, "quantity"], "Quantity must be at least 1.",
                                          "INVALID"))
            price_set = li.get("priceSet")
            unit_price = (str(price_set["shopMoney"]["amount"]) if price_set
                          else (variant.price if variant else None))
            currency = (price_set["shopMoney"]["currencyCode"] if price_set
                        else order.get("currency") or self.currency)
            if variant is None and (not li.get("title") or price_set is None):
                errors.append(_user_error(path, "A custom line item needs a title and a "
                                          "priceSet.", "INVALID"))
            title = li.get("title") or (self.products[variant.product_id].title if variant
                                        else "")
            lines.append(OrderLine(self._gid("LineItem"), li["quantity"], title,
                                   li.get("sku") or (variant.sku if variant else None),
                                   vid, unit_price, currency, li))
        behaviour = options.get("inventoryBehaviour") or "BYPASS"
        location_id = None
        if order.get("fulfillment"):
            location_id = order["fulfillment"]["locationId"]
        elif order.get("transactions") and order["transactions"][0].get("locationId"):
            location_id = order["transactions"][0]["locationId"]
        effects: list[tuple[str, str, int]] = []
        if behaviour != "BYPASS":
            location_id = location_id or self.default_location_id
            if location_id not in self.locations:
                errors.append(_user_error(["order", "fulfillment", "locationId"],
                                          "The location does not exist.", "INVALID"))
            else:
                need: Counter[str] = Counter()
                for ln in lines:
                    if ln.variant_id:
                        need[self.variants[ln.variant_id].inventory_item_id] += ln.quantity
                for iid, qty in need.items():
                    level = self.levels.get((iid, location_id))
                    variant = self.variants[self.items[iid].variant_id]
                    if behaviour == "DECREMENT_OBEYING_POLICY" and variant.inventory_policy == \
                            "DENY" and (level is None or level.get("available") < qty):
                        errors.append(_user_error(["order", "lineItems"],
                                                  f"Not enough stock for {variant.sku or iid}.",
                                                  "INVENTORY_CLAIM_FAILED"))
                    elif level is not None and self.items[iid].tracked:
                        effects.append((iid, location_id, -qty))
        if errors:
            return {"order": None, "userErrors": errors}
        fulfilled = order.get("fulfillmentStatus") == "FULFILLED" or bool(order.get("fulfillment"))
        for iid, lid, delta in effects:
            level = self.levels[(iid, lid)]
            level.states["available"] += delta
            if not fulfilled:
                level.states["committed"] -= delta
            level.updated_at = now
        transactions = []
        for t in order.get("transactions") or []:
            transactions.append({"id": self._gid("OrderTransaction"), **t})
        metafields = []
        for m in order.get("metafields") or []:
            metafields.append({
                "id": self._gid("Metafield"), "namespace": m.get("namespace") or "$app",
                "key": m.get("key"), "value": m.get("value"), "type": m.get("type"),
                "createdAt": _iso(now), "updatedAt": _iso(now),
            })
        self._order_number += 1
        tags = order.get("tags") or []
        rec = Order(
            id=self._gid("Order"),
            number=self._order_number,
            name=order.get("name") or f"#{self._order_number}",
            input=order,
            options=options,
            source_identifier=order.get("sourceIdentifier"),
            source_name=order.get("sourceName"),
            tags=[t.strip() for tag in tags for t in tag.split(",") if t.strip()],
            note=order.get("note"),
            test=bool(order.get("test", False)),
            processed_at=processed_at,
            created_at=now,
            created_mono=self.clock(),
            currency=order.get("currency") or self.currency,
            lines=lines,
            transactions=transactions,
            metafields=metafields,
            location_id=location_id,
            inventory_behaviour=behaviour,
            inventory_effects=effects,
        )
        self.orders.append(rec)
        self._emit("order", rec)
        payload = {"order": self._v_order(rec), "userErrors": []}
        return payload


def _user_error(field_path: list[str] | None, message: str, code: str | None) -> dict[str, Any]:
    return {"__typename": "UserError", "field": field_path, "message": message, "code": code}


def _position_after(keys: list[int], k: int, reverse: bool) -> int:
    """Index of the first key after cursor key ``k`` (which may be gone) in sorted ``keys``."""
    for i, kk in enumerate(keys):
        if (kk < k) if reverse else (kk > k):
            return i
    return len(keys)


__all__ = [
    "API_VERSION",
    "SCHEMA_ENV",
    "AdjustmentGroup",
    "CostBucket",
    "FakeShopify",
    "GraphQLCall",
    "Order",
    "RejectedRequest",
    "SchemaMissingError",
    "SeededVariant",
    "UserErrorRecord",
    "estimate_cost",
    "load_admin_schema",
    "schema_path",
    "webhook_headers",
    "webhook_hmac",
]
