"""Shopify's GraphQL Admin API, the transport: one shop's endpoint, its cost bucket, errors.

Every request takes its estimated cost from the :class:`~sync.core.limiter.ShopifyCostBucket`
first and resets it from the answer's ``throttleStatus``. A ``THROTTLED`` answer (HTTP 200
or 429) → :class:`Throttled` with the bucket's wait (``Retry-After`` when longer; 1 s when
the bucket held the cost, as with the order-rate limit of development stores): nothing was
applied. No token → :class:`CredentialsRequired` telling the technician to run ``edged secret
set shopify.token``; HTTP 401/403 or ``ACCESS_DENIED`` → :class:`CredentialsRequired` naming
ERR-6006: credentials can be fixed while the rows wait. Connection refused, DNS failure or
connect timeout (nothing sent) → :class:`TransientError`; 5xx, timeout or a connection
dropped after sending → :class:`OutcomeUnknown` for a mutation (:class:`TransientError` for a
query, which changes nothing). ``MAX_COST_EXCEEDED`` → :class:`CostExceeded`.

Cost estimate: each caller passes what its document requests by Shopify's published rules
(a scalar or enum 0, an object 1, a connection 2 + ``first`` times the cost of one node with
everything inside it, a mutation field 10: ``orders(first: 5) { nodes { id … } }`` = 7, a
catalogue page ``sync.shopify_admin.pull.pull_cost``); Shopify's own number is learned from every
answer's ``requestedQueryCost``, per operation and estimate, and used when larger.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from sync.core.clock import Clock
from sync.core.errors import (
    CredentialsRequired,
    OutcomeUnknown,
    PermanentError,
    SyncError,
    Throttled,
    TransientError,
)
from sync.core.limiter import ShopifyCostBucket, ThrottleStatus, retry_after_seconds
from sync.core.proxy import ProxyLookup

logger = logging.getLogger(__name__)

#: The most one query may cost, whatever the bucket.
MAX_QUERY_COST = 1000
#: The wait after a THROTTLED answer when the bucket holds the cost and no Retry-After came.
MIN_THROTTLED_WAIT = 1.0
#: The first API version with ``@idempotent`` and ``changeFromQuantity``.
MIN_API_VERSION = "2026-01"

# ERR-6xxx codes (the daemon's catalogue in edged/errors.py; sync does not import edged).
ERR_REFUSED = "ERR-6004"
ERR_CREDENTIALS = "ERR-6006"
ERR_DOCUMENT_REJECTED = "ERR-6016"

TOKEN_HINT = "run `edged secret set shopify.token` (the value on standard input)"  # noqa: S105


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


def mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _error_code(err: Mapping[str, Any]) -> str | None:
    ext = mapping(err.get("extensions"))
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


def messages(errors: Iterable[Mapping[str, Any]]) -> str:
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
    detail = messages(errors)
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
    ext = mapping(body.get("extensions"))
    cost = mapping(ext.get("cost")) if ext is not None else None
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
        self.proxy = ProxyLookup()
        """The proxy of each Shopify origin (HTTPS_PROXY and friends, NO_PROXY)."""

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
        """POST one document; return its data or raise a ``sync.core.errors`` exception.

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
                                    headers=headers, timeout=timeout,
                                    proxy=self.proxy(self.settings.graphql_url)) as resp:
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
        body = mapping(parsed)
        if body is not None or status == 429:
            self._bucket_from(operation, costs, body, status, retry_after)
        if status >= 500:
            message = f"Shopify answered HTTP {status} to {operation}"
            if mutation:
                raise OutcomeUnknown(message)
            raise TransientError(message)
        if status in (400, 413, 414, 415, 422):
            detail = messages(_error_list(body)) if body is not None else raw[:200].decode(
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
        data = mapping(body.get("data"))
        if data is None:
            raise graphql_error(errors, operation=operation, mutation=mutation)
        if errors:
            logger.warning("shopify %s: field errors: %s", operation, messages(errors))
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
