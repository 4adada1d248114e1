"""Shopify's GraphQL Admin API: the ``shopify`` destination of the outbox engine.

Kinds (outbox rows written by the daemon):

- ``inventory.adjust``: stock deltas, batched (up to 250 rows a batch) into
  ``inventoryAdjustQuantities`` with ``@idempotent(key:)``, name ``available`` and
  ``changeFromQuantity: null`` on every change. Shopify takes one ``reason`` and one
  ``referenceDocumentUri`` per mutation, and the rows of a batch come from several edged
  records (each with its own reason and URI). So a batch's rows are grouped by
  (reason, reference URI); each group is one *aliased* mutation field (``m0``, ``m1``, ...)
  with its own key ``f"{batch key}-{index}"``, and up to :data:`MUTATIONS_PER_CALL` of them
  go in one document. The grouping, the inputs and the indexes are fixed by
  :meth:`ShopifyGateway.batch_payload` (stored by the engine before the first send), so every
  retry sends identical variables under identical keys and Shopify replays what it applied.
- ``inventory.set``: stock counts, batched the same way into ``inventorySetQuantities`` with
  ``changeFromQuantity`` = the row's ``last_known_quantity``; a ``CHANGE_FROM_QUANTITY_STALE``
  answer puts that row in ``WorkResult.conflict`` (ERR-6011), never resent blindly.
- ``order.create``: a sale, never batched, as ``orderCreate`` (which has no idempotency
  directive). The order carries the edged marker (``sourceIdentifier``, a metafield, the note);
  before any resend (``work.attempt > 0`` or ``work.outcome_unknown``) the gateway looks the
  marker up and, when found, reports the existing order instead of creating a second one.

Outcomes of a mutation field (each alias is all-or-nothing on Shopify's side):

- applied: every row of the alias in ``applied`` (``{"group_id", "quantity_after"}``);
- userErrors naming a row (``field == ["input", "changes", "3", ...]``): that row in ``dead``
  (``conflict`` for a stale compare-and-swap), the alias's other rows in ``retry_apart`` (they
  were not applied); userErrors on the alias's shared input (reason, reference URI, name):
  every row of the alias is at fault; userErrors naming nothing: ``retry_apart`` +
  ``send_alone``, or ``dead`` when the alias holds a single row;
- ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``: ``retry_apart`` (a new batch gets a new key); for a
  row sent alone under its own key it can only recur, so ``dead`` (ERR-6013);
- ``IDEMPOTENCY_CONCURRENT_REQUEST``, a field error of the "internal" kind: the whole work is
  raised again (TransientError / OutcomeUnknown); the retry replays the applied aliases.

Transport (:class:`ShopifyClient`): every request takes its estimated cost from the
:class:`~sync.limiter.ShopifyCostBucket` first and resets it from the answer's
``throttleStatus``. A ``THROTTLED`` answer (HTTP 200 or 429) → :class:`Throttled` with the
bucket's wait (``Retry-After`` when longer; 1 s when the bucket held the cost, as with the
order-rate limit of development stores): nothing was applied. No token → a
:class:`TransientError` telling the technician to run ``edged secret set shopify.token``; HTTP
401/403 or ``ACCESS_DENIED`` → :class:`TransientError` naming ERR-6006: credentials can be
fixed while the rows wait, so they are not killed (the engine's attempt limit still applies).
Connection refused, DNS failure or connect timeout (nothing sent) → :class:`TransientError`;
5xx, timeout or a connection dropped after sending → :class:`OutcomeUnknown` for a mutation
(:class:`TransientError` for a query, which changes nothing).

Cost estimate (deliberately simple; Shopify's own number is learned from every answer's
``requestedQueryCost``, per operation and estimate, and used when larger): a mutation field
costs 10; a query costs 1 + the ``first:`` sizes of its connections, multiplied through
nesting (``orders(first: 5)`` = 6, a catalogue page of 250 = 251).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sync.clock import Clock
from sync.contract import (
    ContractError,
    InventoryAdjust,
    InventorySet,
    OrderCreate,
    OutboxKind,
    decode,
)
from sync.errors import (
    CredentialsRequired,
    OutcomeUnknown,
    PermanentError,
    SyncError,
    Throttled,
    TransientError,
)
from sync.gateway import OutboxRow, PartialWork, RowFailure, Work, WorkResult
from sync.limiter import ShopifyCostBucket, ThrottleStatus, retry_after_seconds
from sync.money import (
    CURRENCY_EXPONENTS,
    currency_exponent,
    decimal_to_minor,
    minor_to_decimal,
)

logger = logging.getLogger(__name__)

DESTINATION = "shopify"
INVENTORY_ADJUST = OutboxKind.INVENTORY_ADJUST
INVENTORY_SET = OutboxKind.INVENTORY_SET
ORDER_CREATE = OutboxKind.ORDER_CREATE

#: Shopify's array inputs hold at most 250 items: the most rows one batch may carry.
MAX_BATCH = 250
#: Aliased mutation fields in one document at most (10 points each: 250 of the 1000 a query
#: may cost); fewer when the shop's bucket is smaller (see ``_aliases_per_call``).
MUTATIONS_PER_CALL = 25
MUTATION_COST = 10
#: The most one query may cost, whatever the bucket.
MAX_QUERY_COST = 1000
#: The wait after a THROTTLED answer when the bucket holds the cost and no Retry-After came.
MIN_THROTTLED_WAIT = 1.0
#: Marks a stored batch payload built by :meth:`ShopifyGateway.batch_payload`.
BATCH_FORMAT = "edged.shopify.inventory/1"
#: The first API version with ``@idempotent`` and ``changeFromQuantity``.
MIN_API_VERSION = "2026-01"

# ERR-6xxx codes (the daemon's catalogue in edged/errors.py; sync does not import edged).
ERR_REFUSED = "ERR-6004"
ERR_CREDENTIALS = "ERR-6006"
ERR_USER_ERROR = "ERR-6010"
ERR_STALE = "ERR-6011"
ERR_UNKNOWN_ITEM = "ERR-6012"
ERR_KEY_MISMATCH = "ERR-6013"
ERR_DOCUMENT_FIELD = "ERR-6014"
ERR_ORDER_REFUSED = "ERR-6015"
ERR_DOCUMENT_REJECTED = "ERR-6016"

TOKEN_HINT = "run `edged secret set shopify.token` (the value on standard input)"  # noqa: S105



def _money(amount: int, currency: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": minor_to_decimal(amount, currency),
                          "currencyCode": currency.upper()}}


# -- settings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShopifySettings:
    """Where and how to reach one shop.

    ``admin_url`` overrides ``https://{shop}/admin/api`` (test doubles); requests go to
    ``{admin_url}/{api_version}/graphql.json``. ``timeout`` bounds one HTTP request (connect
    included), ``connect_timeout`` the connection (failing it means nothing was sent).
    ``order_search_settle``: how long after an ``orderCreate`` whose outcome is unknown a
    marker lookup that finds nothing is not yet trusted (Shopify's order search lags).
    """

    shop: str
    api_version: str
    location_id: str
    admin_url: str | None = None
    timeout: float = 15.0
    connect_timeout: float = 5.0
    order_search_settle: float = 30.0
    source_name: str = "edged"
    order_tag: str = "edged"

    def __post_init__(self) -> None:
        if not self.shop and not self.admin_url:
            raise ValueError("shopify: shop (or admin_url) is required")
        if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])|unstable", self.api_version):
            raise ValueError(f"shopify: api_version must look like 2026-10, got "
                             f"{self.api_version!r}")
        if self.api_version != "unstable" and self.api_version < MIN_API_VERSION:
            raise ValueError(f"shopify: api_version {self.api_version} is older than "
                             f"{MIN_API_VERSION}, the first with @idempotent and "
                             "changeFromQuantity")
        if not self.location_id:
            raise ValueError("shopify: location_id is required")
        if not self.timeout > 0 or not self.connect_timeout > 0:
            raise ValueError("shopify: timeouts must be positive")
        if self.order_search_settle < 0:
            raise ValueError("shopify: order_search_settle must not be negative")

    @property
    def graphql_url(self) -> str:
        base = (self.admin_url or f"https://{self.shop}/admin/api").rstrip("/")
        return f"{base}/{self.api_version}/graphql.json"


# -- transport -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphQLAnswer:
    """A GraphQL answer that carries data (field errors, if any, in ``errors``)."""

    data: Mapping[str, Any]
    errors: tuple[Mapping[str, Any], ...] = ()
    requested_cost: float | None = None
    actual_cost: float | None = None

    def field_errors(self, alias: str) -> list[Mapping[str, Any]]:
        """The errors whose ``path`` starts at the root field ``alias``."""
        found = []
        for err in self.errors:
            path = err.get("path")
            if isinstance(path, list) and path and path[0] == alias:
                found.append(err)
        return found


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _error_code(err: Mapping[str, Any]) -> str | None:
    ext = _mapping(err.get("extensions"))
    code = ext.get("code") if ext is not None else None
    return code if isinstance(code, str) else None


def _error_list(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``errors`` as a list of objects (Shopify also answers a string or an object)."""
    errors = body.get("errors")
    if errors is None:
        return []
    if isinstance(errors, list):
        return [e if isinstance(e, Mapping) else {"message": str(e)} for e in errors]
    if isinstance(errors, Mapping):
        return [{"message": json.dumps(errors, sort_keys=True)}]
    return [{"message": str(errors)}]


def _messages(errors: Iterable[Mapping[str, Any]]) -> str:
    parts = []
    for err in errors:
        code = _error_code(err)
        message = str(err.get("message", "")).strip() or "(no message)"
        parts.append(f"[{code}] {message}" if code else message)
    return "; ".join(parts)[:500] or "(no detail)"


_AUTH_CODES = frozenset({"ACCESS_DENIED", "UNAUTHORIZED", "FORBIDDEN"})
_UNKNOWN_CODES = frozenset({"INTERNAL_SERVER_ERROR", "TIMEOUT", "SERVICE_UNAVAILABLE"})
_LATER_CODES = frozenset({"IDEMPOTENCY_CONCURRENT_REQUEST", "SHOP_INACTIVE", "LOCKED"})


class CostExceeded(PermanentError):
    """Shopify refused a request for its cost (``MAX_COST_EXCEEDED``): nothing was applied;
    the same aliases go again in smaller requests."""


def graphql_error(errors: Sequence[Mapping[str, Any]], *, operation: str,
                  mutation: bool) -> SyncError:
    """The exception for GraphQL errors that stopped ``operation`` (or one of its fields).

    Access refused → TransientError (ERR-6006); Shopify's internal errors → OutcomeUnknown
    for a mutation, TransientError for a query; a concurrent request under the same key →
    TransientError; anything else (validation, cost, input size, ...) → PermanentError
    ERR-6016: the document itself is wrong and sending it again cannot help.
    """
    codes = {_error_code(e) for e in errors}
    detail = _messages(errors)
    if codes & _AUTH_CODES:
        return CredentialsRequired(f"{ERR_CREDENTIALS}: Shopify refused access for {operation}: "
                              f"{detail}; check the app's access scopes, or {TOKEN_HINT}")
    if codes & _UNKNOWN_CODES or not errors:
        message = f"Shopify failed inside {operation}: {detail or 'no data and no error'}"
        return OutcomeUnknown(message) if mutation else TransientError(message)
    if codes & _LATER_CODES:
        return TransientError(f"Shopify asks to retry {operation} later: {detail}")
    if "MAX_COST_EXCEEDED" in codes:
        return CostExceeded(f"Shopify refused the cost of {operation}: {detail}",
                            ERR_DOCUMENT_REJECTED)
    return PermanentError(f"Shopify rejected the {operation} document: {detail}",
                          ERR_DOCUMENT_REJECTED)


def _throttled(body: Mapping[str, Any]) -> bool:
    return any(_error_code(e) == "THROTTLED" for e in _error_list(body))


def _cost_field(body: Mapping[str, Any], name: str) -> float | None:
    ext = _mapping(body.get("extensions"))
    cost = _mapping(ext.get("cost")) if ext is not None else None
    value = cost.get(name) if cost is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


SessionFactory = Callable[[], aiohttp.ClientSession]


class ShopifyClient:
    """One shop's GraphQL endpoint: token, cost bucket, HTTP, error mapping."""

    def __init__(self, settings: ShopifySettings, token_provider: Callable[[], str | None],
                 clock: Clock, *, session_factory: SessionFactory | None = None,
                 cost_bucket: ShopifyCostBucket | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.bucket = cost_bucket if cost_bucket is not None else ShopifyCostBucket(clock)
        self._token_provider = token_provider
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._learned: dict[tuple[str, float], float] = {}

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                    total=self.settings.timeout, connect=self.settings.connect_timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def estimate(self, operation: str, base: float) -> float:
        """``base``, or Shopify's own requested cost of this operation when it was higher."""
        return max(base, self._learned.get((operation, base), 0.0))

    async def execute(self, operation: str, query: str, variables: Mapping[str, Any], *,
                      cost: float, mutation: bool) -> GraphQLAnswer:
        """POST one document; return its data or raise a ``sync.errors`` exception.

        ``cost`` is the estimate taken from the bucket before sending. Field errors
        alongside data are returned in ``GraphQLAnswer.errors`` for the caller to judge.
        """
        token = self._token_provider()
        if not token:
            raise CredentialsRequired(f"{ERR_CREDENTIALS}: no Shopify access token is configured; "
                                 f"{TOKEN_HINT}. The rows wait until it is set")
        estimate = self.estimate(operation, cost)
        await self.bucket.acquire(estimate)
        body_bytes = json.dumps({"query": query, "variables": dict(variables),
                                 "operationName": operation},
                                separators=(",", ":")).encode()
        headers = {"X-Shopify-Access-Token": token, "Content-Type": "application/json",
                   "Accept": "application/json"}
        session = self._session_now()
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout,
                                        connect=self.settings.connect_timeout)
        logger.debug("shopify %s: sending (estimated cost %g)", operation, estimate)
        try:
            async with session.post(self.settings.graphql_url, data=body_bytes,
                                    headers=headers, timeout=timeout) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await resp.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                aiohttp.InvalidURL) as exc:
            # the connection was never made: nothing was sent
            raise TransientError(f"Shopify unreachable for {operation}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            message = (f"no answer from Shopify to {operation} "
                       f"({type(exc).__name__}: {exc or 'timeout'})")
            if mutation:
                raise OutcomeUnknown(message) from exc
            raise TransientError(message) from exc
        return self._answer(operation, (cost, estimate), mutation, status, retry_after, raw)

    def _answer(self, operation: str, costs: tuple[float, float], mutation: bool, status: int,
                retry_after: str | None, raw: bytes) -> GraphQLAnswer:
        if status in (401, 403):
            raise CredentialsRequired(f"{ERR_CREDENTIALS}: Shopify refused the access token "
                                 f"(HTTP {status}) for {operation}; check the app's access "
                                 f"scopes, or {TOKEN_HINT}")
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        body = _mapping(parsed)
        if body is not None or status == 429:
            self._bucket_from(operation, costs, body, status, retry_after)
        if status >= 500:
            message = f"Shopify answered HTTP {status} to {operation}"
            if mutation:
                raise OutcomeUnknown(message)
            raise TransientError(message)
        if status in (400, 413, 414, 415, 422):
            detail = _messages(_error_list(body)) if body is not None else raw[:200].decode(
                "utf-8", "replace")
            raise PermanentError(f"Shopify refused the {operation} request (HTTP {status}): "
                                 f"{detail}", ERR_DOCUMENT_REJECTED)
        if status != 200:
            # 402 (shop frozen), 404 (shop or version unknown), 423 (shop locked), ...:
            # a configuration or account matter, fixed without touching the rows
            raise TransientError(f"Shopify answered HTTP {status} to {operation}; check the "
                                 f"shop domain, the API version and the shop's status")
        if body is None:
            message = f"Shopify answered {operation} with no readable JSON"
            if mutation:
                raise OutcomeUnknown(message)
            raise TransientError(message)
        errors = _error_list(body)
        data = _mapping(body.get("data"))
        if data is None:
            raise graphql_error(errors, operation=operation, mutation=mutation)
        if errors:
            logger.warning("shopify %s: field errors: %s", operation, _messages(errors))
        return GraphQLAnswer(data, tuple(errors), _cost_field(body, "requestedQueryCost"),
                             _cost_field(body, "actualQueryCost"))

    def _bucket_from(self, operation: str, costs: tuple[float, float],
                     body: Mapping[str, Any] | None, status: int,
                     retry_after: str | None) -> None:
        """Reset the bucket from the answer; raise :class:`Throttled` on a THROTTLED one.

        ``costs``: the caller's base estimate (the key of what is learned) and the cost
        actually taken from the bucket.
        """
        base, estimate = costs
        throttle: ThrottleStatus | None = None
        requested: float | None = None
        if body is not None:
            try:
                throttle = ThrottleStatus.from_response(body)
            except ValueError as exc:
                logger.warning("shopify %s: unreadable throttleStatus: %s", operation, exc)
            requested = _cost_field(body, "requestedQueryCost")
            if requested is not None and requested > 0:
                self._learned[(operation, base)] = requested
        if status == 429 or (body is not None and _throttled(body)):
            wait = self.bucket.on_throttled(requested or estimate, throttle)
            header_wait = retry_after_seconds(retry_after, self.clock.now())
            if header_wait is not None:
                wait = max(wait, header_wait)
            elif wait <= 0.0:
                # refused although the bucket holds the cost: not a matter of cost (an
                # order-rate limit, say); do not hammer
                wait = MIN_THROTTLED_WAIT
            raise Throttled(wait, f"Shopify throttled {operation} (HTTP {status}); "
                                  "nothing was applied")
        if throttle is not None:
            self.bucket.update(throttle)


# -- inventory: batch planning -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InventoryKind:
    mutation: str
    input_type: str
    list_field: str
    operation: str


_INVENTORY_KINDS: Mapping[str, _InventoryKind] = {
    INVENTORY_ADJUST: _InventoryKind("inventoryAdjustQuantities",
                                     "InventoryAdjustQuantitiesInput", "changes",
                                     "EdgedInventoryAdjust"),
    INVENTORY_SET: _InventoryKind("inventorySetQuantities", "InventorySetQuantitiesInput",
                                  "quantities", "EdgedInventorySet"),
}

_GROUP_SELECTION = """{
    inventoryAdjustmentGroup {
      id
      changes(quantityNames: ["available"]) { name delta quantityAfterChange item { id } }
    }
    userErrors { field message code }
  }"""


def _inventory_entry(kind: str, stored: Mapping[str, Any],
                     location_id: str) -> tuple[str, str | None, str, dict[str, Any]]:
    """(reason, reference URI, item id, the change/quantity input) of one row."""
    payload = decode(kind, stored)
    assert isinstance(payload, InventoryAdjust | InventorySet)
    item = payload.inventory_item_id
    if not item or not payload.reason:
        raise ContractError("inventory_item_id and reason must not be empty")
    location = payload.location_id or location_id
    change: dict[str, Any] = {"inventoryItemId": item, "locationId": location}
    if isinstance(payload, InventoryAdjust):
        change.update(delta=payload.delta, changeFromQuantity=None)
    else:
        change.update(quantity=payload.quantity,
                      changeFromQuantity=payload.last_known_quantity)
    return payload.reason, payload.reference_uri, item, change


def plan_inventory(kind: str, rows: Sequence[OutboxRow], location_id: str) -> dict[str, Any]:
    """The fixed variables of an inventory batch (see the module docstring).

    ``{"format", "kind", "calls": [[{"index", "rows", "input"}, ...], ...], "invalid":
    [{"row", "message"}]}``: each entry of a call is one aliased mutation field. Rows whose
    payload is unusable are listed in ``invalid`` (they die with ERR-6004) instead of
    raising, since this runs inside the engine's claim.
    """
    spec = _INVENTORY_KINDS[kind]
    invalid: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    open_groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for row in rows:
        try:
            reason, reference, item, change = _inventory_entry(kind, row.payload, location_id)
        except ContractError as exc:
            invalid.append({"row": row.id, "message": exc.message})
            continue
        key = (reason, reference)
        group = open_groups.get(key)
        if kind == INVENTORY_SET and (group is not (groups[-1] if groups else None)
                                      or (group is not None and item in group["items"])):
            # counts keep their order and never name an item twice in one mutation
            group = None
        if group is None or len(group["rows"]) >= MAX_BATCH:
            inp: dict[str, Any] = {"name": "available", "reason": reason, spec.list_field: []}
            if reference is not None:
                inp["referenceDocumentUri"] = reference
            group = {"rows": [], "items": set(), "input": inp}
            groups.append(group)
            open_groups[key] = group
        group["rows"].append(row.id)
        group["items"].add(item)
        group["input"][spec.list_field].append(change)
    entries = [{"index": i, "rows": g["rows"], "input": g["input"]}
               for i, g in enumerate(groups)]
    calls = [entries[i:i + MUTATIONS_PER_CALL]
             for i in range(0, len(entries), MUTATIONS_PER_CALL)]
    return {"format": BATCH_FORMAT, "kind": kind, "calls": calls, "invalid": invalid}


def inventory_document(kind: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """One document with an aliased, idempotent mutation field per entry."""
    spec = _INVENTORY_KINDS[kind]
    params = ", ".join(f"$in{e['index']}: {spec.input_type}!, $k{e['index']}: String!"
                       for e in entries)
    fields = "\n".join(f"  m{e['index']}: {spec.mutation}(input: $in{e['index']}) "
                       f"@idempotent(key: $k{e['index']}) {_GROUP_SELECTION}"
                       for e in entries)
    return f"mutation {spec.operation}({params}) {{\n{fields}\n}}"


# -- inventory: outcomes -----------------------------------------------------------------

_STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
_UNKNOWN_ITEM_CODES = frozenset({"INVALID_INVENTORY_ITEM", "INVALID_LOCATION",
                                 "ITEM_NOT_STOCKED_AT_LOCATION", "NON_MUTABLE_INVENTORY_ITEM"})
_DOCUMENT_CODES = frozenset({"INVALID_REASON", "INVALID_REFERENCE_DOCUMENT",
                             "INVALID_LEDGER_DOCUMENT", "INVALID_AVAILABLE_DOCUMENT",
                             "INVALID_QUANTITY_DOCUMENT", "MAX_ONE_LEDGER_DOCUMENT",
                             "INTERNAL_LEDGER_DOCUMENT"})


def user_error_code(code: str | None) -> str:
    """The ERR-601x code of an inventory userError code."""
    if code in _STALE_CODES:
        return ERR_STALE
    if code in _UNKNOWN_ITEM_CODES:
        return ERR_UNKNOWN_ITEM
    if code == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH":
        return ERR_KEY_MISMATCH
    if code in _DOCUMENT_CODES:
        return ERR_DOCUMENT_FIELD
    return ERR_USER_ERROR


def _failure(err: Mapping[str, Any]) -> RowFailure:
    code = err.get("code")
    code = code if isinstance(code, str) else None
    field_path = err.get("field")
    where = ".".join(str(p) for p in field_path) if isinstance(field_path, list) else ""
    message = str(err.get("message") or "refused")
    detail = f"{code or 'userError'}{' at ' + where if where else ''}: {message}"
    return RowFailure(user_error_code(code), f"Shopify: {detail}")


@dataclass
class _Outcome:
    applied: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    dead: dict[int, RowFailure] = field(default_factory=dict)
    conflict: dict[int, RowFailure] = field(default_factory=dict)
    retry_apart: list[int] = field(default_factory=list)
    send_alone: list[int] = field(default_factory=list)

    def settled(self) -> bool:
        return bool(self.applied or self.dead or self.conflict or self.retry_apart)

    def fail(self, row_id: int, failure: RowFailure) -> None:
        if failure.code == ERR_STALE:
            self.conflict[row_id] = failure
        else:
            self.dead[row_id] = failure

    def result(self) -> WorkResult:
        return WorkResult(applied=self.applied, dead=self.dead, conflict=self.conflict,
                          retry_apart=tuple(self.retry_apart),
                          send_alone=tuple(self.send_alone))


def _applied_rows(entry: Mapping[str, Any], spec: _InventoryKind,
                  group: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Row id → ``{"group_id", "quantity_after"?}`` for an applied alias.

    ``quantity_after`` is Shopify's ``quantityAfterChange`` of the row's item; when an item
    appears more than once and Shopify lists fewer changes than rows, only the item's last
    row gets the final quantity (the others' intermediate quantities are not known).
    """
    group_id = group.get("id")
    changes = group.get("changes") if isinstance(group.get("changes"), list) else []
    by_item: dict[str, list[Any]] = defaultdict(list)
    for change in changes or ():
        if not isinstance(change, Mapping) or change.get("name", "available") != "available":
            continue
        item = _mapping(change.get("item"))
        if item is not None and isinstance(item.get("id"), str):
            by_item[item["id"]].append(change.get("quantityAfterChange"))
    inputs = entry["input"][spec.list_field]
    rows_of_item: dict[str, list[int]] = defaultdict(list)
    for row_id, change_input in zip(entry["rows"], inputs, strict=True):
        rows_of_item[change_input["inventoryItemId"]].append(row_id)
    out: dict[int, dict[str, Any]] = {}
    for item_id, row_ids in rows_of_item.items():
        after = by_item.get(item_id, [])
        for pos, row_id in enumerate(row_ids):
            answer: dict[str, Any] = {"group_id": group_id}
            if len(after) == len(row_ids):
                quantity = after[pos]
            elif after and pos == len(row_ids) - 1:
                quantity = after[-1]
            else:
                quantity = None
            if isinstance(quantity, int) and not isinstance(quantity, bool):
                answer["quantity_after"] = quantity
            out[row_id] = answer
    return out


def _alias_variables(key: str, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each alias's input and its own key, ``{batch key}-{index}``, whatever the request."""
    variables: dict[str, Any] = {}
    for e in entries:
        variables[f"in{e['index']}"] = e["input"]
        variables[f"k{e['index']}"] = f"{key}-{e['index']}"
    return variables


def _cost_exceeded(exc: PermanentError) -> bool:
    """Shopify's MAX_COST_EXCEEDED (or the local bucket's): the request, not its rows."""
    return isinstance(exc, CostExceeded) or exc.code == "MAX_COST_EXCEEDED"


def _kill_aliases(out: _Outcome, entries: Sequence[Mapping[str, Any]], live: set[int],
                  exc: PermanentError) -> None:
    for e in entries:
        for row_id in e["rows"]:
            if row_id in live:
                out.dead[row_id] = RowFailure(
                    exc.code if exc.code and exc.code.startswith("ERR-")
                    else ERR_DOCUMENT_REJECTED, exc.message)


def _judge_answer(out: _Outcome, entry: Mapping[str, Any], spec: _InventoryKind,
                  answer: GraphQLAnswer, live: set[int], *, own_key: bool) -> None:
    """The outcome of one alias in ``answer`` (or raise for the whole work)."""
    alias = f"m{entry['index']}"
    payload = _mapping(answer.data.get(alias))
    if payload is None:
        error = graphql_error(answer.field_errors(alias) or list(answer.errors),
                              operation=spec.operation, mutation=True)
        if not isinstance(error, PermanentError):
            raise error
        _kill_aliases(out, [entry], live, error)
        return
    _judge_alias(out, entry, spec, payload, live, own_key=own_key)


def _judge_alias(out: _Outcome, entry: Mapping[str, Any], spec: _InventoryKind,
                 payload: Mapping[str, Any], live: set[int], *, own_key: bool) -> None:
    """Record the outcome of one alias (or raise for the whole work)."""
    rows: list[int] = list(entry["rows"])
    mine = [r for r in rows if r in live]
    user_errors = [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]
    group = _mapping(payload.get("inventoryAdjustmentGroup"))
    if not user_errors and group is not None:
        for row_id, answer in _applied_rows(entry, spec, group).items():
            if row_id in live:
                out.applied[row_id] = answer
        return
    if not user_errors:
        raise OutcomeUnknown(f"Shopify answered {spec.mutation} with neither a group nor "
                             "userErrors")
    codes = {e.get("code") for e in user_errors}
    if "IDEMPOTENCY_CONCURRENT_REQUEST" in codes:
        raise TransientError(f"Shopify is still running {spec.mutation} under this "
                             "idempotency key; retrying later")
    if "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" in codes:
        mismatch = next(e for e in user_errors
                        if e.get("code") == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH")
        if own_key:  # a row sent alone under its own key: a new attempt can only recur
            for row_id in mine:
                out.fail(row_id, _failure(mismatch))
        else:
            out.retry_apart.extend(mine)
        logger.error("shopify %s: idempotency key used with other variables (rows %s)",
                     spec.mutation, rows)
        return
    culprits: dict[int, RowFailure] = {}
    unidentified: list[Mapping[str, Any]] = []
    for err in user_errors:
        path = err.get("field")
        path = [str(p) for p in path] if isinstance(path, list) else []
        if len(path) >= 3 and path[1] == spec.list_field and path[2].isdigit() \
                and int(path[2]) < len(rows):
            culprits.setdefault(rows[int(path[2])], _failure(err))
        elif len(path) >= 2 and path[1] != spec.list_field:
            # the alias's shared input (reason, reference URI, name): every row carries it
            for row_id in rows:
                culprits.setdefault(row_id, _failure(err))
        else:
            unidentified.append(err)
    if not culprits and len(rows) == 1:
        culprits[rows[0]] = _failure(unidentified[0])
        unidentified = []
    for row_id in mine:
        if row_id in culprits:
            out.fail(row_id, culprits[row_id])
        else:
            out.retry_apart.append(row_id)
            if unidentified:
                out.send_alone.append(row_id)
    logger.warning("shopify %s refused %d row(s): %s", spec.mutation, len(rows),
                   _messages({"message": f"{e.get('code')} {e.get('field')}: "
                              f"{e.get('message')}"} for e in user_errors))


# -- orders ------------------------------------------------------------------------------

ORDER_CREATE_DOCUMENT = """mutation EdgedOrderCreate($order: OrderCreateOrderInput!,
    $options: OrderCreateOptionsInput) {
  orderCreate(order: $order, options: $options) {
    order { id name sourceIdentifier }
    userErrors { field message code }
  }
}"""

FIND_ORDER_DOCUMENT = """query EdgedFindOrder($q: String!) {
  orders(first: 5, query: $q) {
    nodes { id name sourceIdentifier tags createdAt }
  }
}"""
FIND_ORDER_COST = 1 + 5

_ORDER_LATER_CODES = frozenset({"PROCESSED_AT_INVALID", "SHOP_DORMANT"})


def order_search_query(source_identifier: str) -> str:
    """Shopify's search syntax for an exact ``source_identifier`` (quoted, escaped)."""
    escaped = source_identifier.replace("\\", "\\\\").replace('"', '\\"')
    return f'source_identifier:"{escaped}"'


def build_order(stored: Mapping[str, Any], settings: ShopifySettings) -> dict[str, Any]:
    """``orderCreate``'s variables for an ``order.create`` row; ``ContractError`` if unusable.

    Prices and amounts are minor units in the payload and decimal strings for Shopify.
    The sale is fulfilled at the store's location (the goods left with the customer), so
    ``DECREMENT_IGNORING_POLICY`` takes its stock off that location, never another one.
    """
    payload = OrderCreate.from_json(stored)
    currency = payload.currency.upper()
    source_identifier, processed_at = payload.source_identifier, payload.processed_at
    reference = payload.reference
    currency_exponent(currency)
    if not payload.lines:
        raise ContractError("an order needs at least one line")
    lines: list[dict[str, Any]] = []
    for i, line in enumerate(payload.lines):
        item: dict[str, Any] = {"quantity": line.quantity,
                                "priceSet": _money(line.price, currency)}
        if line.variant_id:
            item["variantId"] = line.variant_id
        else:  # an item Shopify does not know: a custom line
            if not line.title:
                raise ContractError(f"lines[{i}] has neither a variant_id nor a title")
            item["title"] = line.title
            if line.sku:
                item["sku"] = line.sku
            item["requiresShipping"] = False
        lines.append(item)
    transactions: list[dict[str, Any]] = []
    for txn in payload.transactions:
        entry: dict[str, Any] = {
            "kind": "SALE", "status": "SUCCESS",
            "gateway": txn.gateway or txn.method or "manual",
            "amountSet": _money(txn.amount, txn.currency or currency),
            "processedAt": txn.processed_at or processed_at,
            "locationId": settings.location_id,
        }
        if txn.auth_code:
            entry["authorizationCode"] = txn.auth_code
        transactions.append(entry)
    note = f"edged sale {reference} ({source_identifier})" if reference else \
        f"edged sale ({source_identifier})"
    order: dict[str, Any] = {
        "currency": currency,
        "processedAt": processed_at,
        "sourceName": settings.source_name,
        "sourceIdentifier": source_identifier,
        "tags": [settings.order_tag],
        "note": note,
        "metafields": [{"namespace": "edged", "key": "source_identifier",
                        "type": "single_line_text_field", "value": source_identifier}],
        "lineItems": lines,
        "transactions": transactions,
        "fulfillment": {"locationId": settings.location_id, "notifyCustomer": False},
    }
    options = {"inventoryBehaviour": "DECREMENT_IGNORING_POLICY", "sendReceipt": False,
               "sendFulfillmentReceipt": False}
    return {"order": order, "options": options}


# -- the gateway ---------------------------------------------------------------------------


class ShopifyGateway:
    """The ``shopify`` destination (implements ``sync.gateway.Gateway``)."""

    destination = DESTINATION

    def __init__(self, settings: ShopifySettings, token_provider: Callable[[], str | None],
                 clock: Clock, *, session_factory: SessionFactory | None = None,
                 cost_bucket: ShopifyCostBucket | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.client = ShopifyClient(settings, token_provider, clock,
                                    session_factory=session_factory, cost_bucket=cost_bucket)
        self._started = clock.monotonic()
        self._alias_cap = MUTATIONS_PER_CALL  # lowered when Shopify refuses a request's cost
        # idempotency key of an order.create → when a send of it last went without answer
        self._orders_in_doubt: dict[str, float] = {}

    @property
    def bucket(self) -> ShopifyCostBucket:
        return self.client.bucket

    # -- Gateway ----------------------------------------------------------------------

    def batch_limit(self, kind: str) -> int:
        return MAX_BATCH if kind in _INVENTORY_KINDS else 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        if kind in _INVENTORY_KINDS:
            return plan_inventory(kind, rows, self.settings.location_id)
        if len(rows) == 1:
            return dict(rows[0].payload)
        raise ValueError(f"shopify: {kind!r} is never batched")

    async def send(self, work: Work) -> WorkResult:
        if work.kind in _INVENTORY_KINDS:
            return await self._send_inventory(work)
        if work.kind == ORDER_CREATE:
            return await self._send_order(work)
        raise PermanentError(f"the shopify gateway does not handle {work.kind!r} rows",
                             ERR_REFUSED)

    async def close(self) -> None:
        await self.client.close()

    # -- inventory ----------------------------------------------------------------------

    async def _send_inventory(self, work: Work) -> WorkResult:
        spec = _INVENTORY_KINDS[work.kind]
        own_key = work.payload.get("format") != BATCH_FORMAT
        plan: Mapping[str, Any] = (plan_inventory(work.kind, work.rows,
                                                  self.settings.location_id)
                                   if own_key else work.payload)
        live = {r.id for r in work.rows}
        out = _Outcome()
        planned: set[int] = set()
        for bad in plan.get("invalid") or ():
            planned.add(bad["row"])
            if bad["row"] in live:
                out.dead[bad["row"]] = RowFailure(ERR_REFUSED, f"unusable outbox row: "
                                                                f"{bad['message']}")
        # The stored plan fixes each alias's input and key, not which request carries it:
        # aliases go in requests that never cost more than the bucket can hold.
        entries = []
        for call in plan["calls"]:
            for entry in call:
                planned.update(entry["rows"])
            entries += [e for e in call if live.intersection(e["rows"])]
        try:
            while entries:
                chunk = entries[:self._aliases_per_call()]
                try:
                    answer = await self.client.execute(
                        spec.operation, inventory_document(work.kind, chunk),
                        _alias_variables(work.idempotency_key, chunk),
                        cost=MUTATION_COST * len(chunk), mutation=True)
                except PermanentError as exc:
                    if _cost_exceeded(exc) and len(chunk) > 1:
                        self._alias_cap = len(chunk) // 2  # and the bucket learned its size
                        logger.warning("shopify %s: %d aliases cost more than Shopify takes"
                                       " in one request; sending fewer", spec.mutation,
                                       len(chunk))
                        continue
                    _kill_aliases(out, chunk, live, exc)  # this request only: go on
                    entries = entries[len(chunk):]
                    continue
                entries = entries[len(chunk):]
                for e in chunk:
                    _judge_answer(out, e, spec, answer, live, own_key=own_key)
        except SyncError as exc:
            if out.settled():  # earlier requests settled rows: they stay settled
                raise PartialWork(out.result(), exc) from exc
            raise
        for row_id in sorted(live - planned):
            logger.error("shopify %s: row %d is not in its batch's stored variables; "
                         "retrying it apart", work.kind, row_id)
            out.retry_apart.append(row_id)
        result = out.result()
        logger.info("shopify %s: %d applied, %d dead, %d conflict, %d to retry apart",
                    work.kind, len(result.applied), len(result.dead), len(result.conflict),
                    len(result.retry_apart))
        return result

    def _aliases_per_call(self) -> int:
        """How many aliased mutations one request may carry: their cost within both the
        single-query limit and the bucket's ``maximumAvailable``."""
        most = min(MAX_QUERY_COST, self.client.bucket.snapshot().maximum_available)
        fits = int(most // MUTATION_COST)
        return max(1, min(MUTATIONS_PER_CALL, self._alias_cap, fits))

    # -- orders -------------------------------------------------------------------------

    async def find_order(self, source_identifier: str) -> Mapping[str, Any] | None:
        """The order carrying the edged marker, or None (Shopify's search may lag)."""
        answer = await self.client.execute(
            "EdgedFindOrder", FIND_ORDER_DOCUMENT,
            {"q": order_search_query(source_identifier)}, cost=FIND_ORDER_COST,
            mutation=False)
        orders = _mapping(answer.data.get("orders"))
        if orders is None:
            raise graphql_error(answer.field_errors("orders") or list(answer.errors),
                                operation="EdgedFindOrder", mutation=False)
        nodes = [n for n in orders.get("nodes") or ()
                 if isinstance(n, Mapping) and n.get("sourceIdentifier") == source_identifier]
        if not nodes:
            return None
        if len(nodes) > 1:
            logger.error("shopify: %d orders carry the marker %s: %s", len(nodes),
                         source_identifier, [n.get("name") for n in nodes])
        return min(nodes, key=lambda n: _gid_number(str(n.get("id"))))

    async def _send_order(self, work: Work) -> WorkResult:
        row = work.rows[0]
        try:
            variables = build_order(work.payload, self.settings)
        except ValueError as exc:  # an amount in a currency Shopify's money cannot carry
            raise ContractError(f"unusable order.create row: {exc}") from exc
        marker: str = variables["order"]["sourceIdentifier"]
        key = work.idempotency_key
        if work.attempt > 0 or work.outcome_unknown:
            found = await self.find_order(marker)
            if found is not None:
                self._orders_in_doubt.pop(key, None)
                logger.info("shopify: order %s for %s already exists; not creating it again",
                            found.get("name"), marker)
                return WorkResult(applied={row.id: {"order_id": found.get("id"),
                                                    "name": found.get("name"),
                                                    "reconciled": True}})
            if work.outcome_unknown:
                since = self._orders_in_doubt.get(key, self._started)
                left = since + self.settings.order_search_settle - self.clock.monotonic()
                if left > 0:
                    raise Throttled(left, f"order {marker} not found yet after an answer was "
                                          "lost; Shopify's order search may lag, so waiting "
                                          "before creating it again")
        self._orders_in_doubt[key] = self.clock.monotonic()
        try:
            answer = await self.client.execute("EdgedOrderCreate", ORDER_CREATE_DOCUMENT,
                                               variables, cost=MUTATION_COST, mutation=True)
        except (TransientError, PermanentError):
            self._orders_in_doubt.pop(key, None)  # refused or never sent: nothing created
            raise
        payload = _mapping(answer.data.get("orderCreate"))
        if payload is None:
            error = graphql_error(answer.field_errors("orderCreate") or list(answer.errors),
                                  operation="EdgedOrderCreate", mutation=True)
            if not isinstance(error, OutcomeUnknown):
                self._orders_in_doubt.pop(key, None)
            raise error
        self._orders_in_doubt.pop(key, None)
        order = _mapping(payload.get("order"))
        user_errors = [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]
        if order is not None and isinstance(order.get("id"), str):
            if user_errors:
                logger.warning("shopify: order %s created with userErrors: %s",
                               order.get("name"), user_errors)
            return WorkResult(applied={row.id: {"order_id": order["id"],
                                                "name": order.get("name")}})
        detail = "; ".join(f"{e.get('code')} at {e.get('field')}: {e.get('message')}"
                           for e in user_errors) or "no order and no userErrors"
        codes = {e.get("code") for e in user_errors}
        if codes and codes <= _ORDER_LATER_CODES:
            # processedAt "in the future" (the store's clock ahead of Shopify's) or a dormant
            # shop: nothing was created, and the same order may go through later
            raise TransientError(f"{ERR_ORDER_REFUSED}: Shopify refused the order for now: "
                                 f"{detail}")
        return WorkResult(dead={row.id: RowFailure(ERR_ORDER_REFUSED,
                                                   f"Shopify refused the order: {detail}")})


def _gid_number(gid: str) -> int:
    match = re.search(r"/(\d+)(?:\?.*)?$", gid)
    return int(match.group(1)) if match else 0


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
