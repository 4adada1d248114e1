"""The HTTP plumbing every route shares: errors, Host check, auth, limits, bodies, keys.

A route is declared once as a :class:`Route` (method, path, body schema, answer, errors,
scope); :func:`bind` turns it into an aiohttp handler that reads and checks the body,
applies the Idempotency-Key rules and renders the service's :class:`Answer`. The OpenAPI
document is generated from the same declarations.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edged import jsoncodec
from edged.api import session as _session
from edged.api.schema import Obj, Schema
from edged.api.wire import (
    DRAINING,
    PRINCIPAL,
    SERVICES,
    ClientGone,
    error_response,
    json_response,
    read_raw,
)
from edged.config import is_loopback
from edged.errors import ApiError
from edged.lan.ratelimit import Verdict
from edged.lan.tokens import Principal, refusal
from edged.payments.cardnumbers import MAX_DEPTH, Problem, inspect, plain, text_has_pan
from edged.payments.service import Answer
from edged.services import Services
from edged.store import idempotency
from edged.store.database import StoreFull
from edged.store.idempotency import MAX_KEY_LENGTH, IdemRecord
from sync.core.clock import utc_iso

log = logging.getLogger(__name__)

# /v1 calls without a bearer token (the webhook is signed by Shopify instead)
PUBLIC_PATHS = frozenset({"/v1/pair", "/v1/webhooks/shopify"})
METRICS_PATH = "/metrics"
"""A bearer token of any scope (or the page's sign-in), unless the client is on this box or
``[api] metrics_public`` lets the LAN in."""


@dataclass(frozen=True, slots=True)
class Ctx:
    request: web.Request
    services: Services
    principal: Principal | None
    body: dict[str, Any]
    idem: IdemRecord | None

    @property
    def actor(self) -> str:
        return f"token:{self.principal.name}" if self.principal else "anonymous"

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        return int(self._query_number(name, default, low, high, int, "a whole number"))

    def query_float(self, name: str, default: float, low: float, high: float) -> float:
        return self._query_number(name, default, low, high, float, "a number of seconds")

    def _query_number(self, name: str, default: float, low: float, high: float,
                      parse: Callable[[str], float], what: str) -> float:
        raw = self.request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = parse(raw)
        except ValueError:
            raise ApiError("ERR-1013", f"query parameter {name} must be {what},"
                           f" not {raw!r}") from None
        if not low <= value <= high:
            raise ApiError("ERR-1013", f"query parameter {name} must be from {low} to {high}")
        return value


Handler = Callable[[Ctx], Awaitable[Answer | web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    response: Schema
    status: int = 200
    body: Obj | None = None
    errors: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    scope: str | None = "register"  # None: no token needed
    tag: str = "payments"
    media_type: str = "application/json"
    # Bodies whose handler does nothing before the one write that stores the answer: their
    # key is looked up in that write (idempotency.save replays a stored answer) instead of
    # in a read beforehand, which spares a trip to a reader thread.
    key_in_write: Callable[[dict[str, Any]], bool] | None = None
    idempotent: bool = True
    """False: a POST without Idempotency-Key whose answer is never stored (POST /v1/pair)."""
    raw_body: bool = False
    """True: the handler reads the request's body itself, unparsed (a signed webhook)."""


async def _read_body(request: web.Request, schema: Obj | None) -> tuple[dict[str, Any], Any]:
    """(validated body, the raw decoded JSON for hashing). The raw body is never logged."""
    raw = await read_raw(request)
    if not raw.strip():
        decoded: Any = {}
    else:
        ctype = request.content_type
        if ctype not in ("application/json", "application/octet-stream", "text/plain") \
                and not ctype.endswith("+json"):
            raise ApiError("ERR-1014", f"send the body as application/json, not {ctype}")
        try:
            decoded = jsoncodec.loads(raw)
        except RecursionError:
            raise ApiError("ERR-1017", f"the body is nested more than {MAX_DEPTH} levels"
                           " deep") from None
        except (ValueError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            col = getattr(exc, "colno", None)
            where = f" (line {line}, column {col})" if line else ""
            raise ApiError("ERR-1001", f"the body is not valid JSON{where}") from None
    if not isinstance(decoded, dict):
        raise ApiError("ERR-1002", "the body must be a JSON object such as {\"amount\": 1250}")
    problem = None if plain(raw) else inspect(decoded)
    if problem is Problem.TOO_DEEP:
        raise ApiError("ERR-1017", f"the body is nested more than {MAX_DEPTH} levels deep")
    if problem is Problem.SURROGATE:
        raise ApiError("ERR-1001", "the body is not valid Unicode: a string holds a lone"
                       " UTF-16 surrogate (such as \\ud800)")
    if problem is Problem.CARD_NUMBER:
        raise _card_number("the body")
    validated = schema.validate(decoded, "body") if schema is not None else {}
    return validated, decoded


def _card_number(where: str) -> ApiError:
    return ApiError("ERR-1010", f"{where} contains what looks like a card number; card"
                    " numbers must never be sent to the daemon, use the terminal or a"
                    " processor token")


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        raise ApiError("ERR-1008", "every POST needs an Idempotency-Key header: a unique value"
                       " per operation (for example a UUID), reused when retrying it")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise ApiError("ERR-1008", f"the Idempotency-Key must be 1 to {MAX_KEY_LENGTH}"
                       " printable ASCII characters")
    if text_has_pan(key):
        raise _card_number("the Idempotency-Key")
    return key


def bind(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        principal: Principal | None = request.get(PRINCIPAL)
        if (why := refusal(principal, route.scope, route.method)) is not None:
            raise ApiError("ERR-5003", why)
        if route.method != "POST" or route.raw_body:
            answer = await route.handler(Ctx(request, services, principal, {}, None))
            return _render(answer)
        body, decoded = await _read_body(request, route.body)
        if not route.idempotent:  # an answer that must not be stored (a token shown once)
            return _render(await route.handler(Ctx(request, services, principal, body, None)))
        key = _idempotency_key(request)
        scope = f"token:{principal.token_id}" if principal else "anonymous"
        record = IdemRecord(scope, key, "POST", request.path,
                            idempotency.body_hash("POST", request.path, decoded),
                            utc_iso(services.clock.now()))
        async with services.key_locks.hold(scope, key):
            if route.key_in_write is None or not route.key_in_write(body):
                stored = await services.db.read_inline(
                    lambda c: idempotency.lookup(c, scope, key))
                if stored is not None:
                    return _replay(services, record, stored)
            # refused before SQLite meets a full disk (edged.store.storage)
            if services.db.space_low:
                stored = await services.db.read_inline(
                    lambda c: idempotency.lookup(c, scope, key))
                if stored is not None:  # a retry of what was answered still gets its answer
                    return _replay(services, record, stored)
                raise ApiError("ERR-1040", "the disk holding the store is nearly full: nothing"
                               " was changed; retry with the same Idempotency-Key once a"
                               " technician made room", headers={"Retry-After": "60"})
            try:
                answer = await route.handler(Ctx(request, services, principal, body, record))
                if isinstance(answer, Answer) and not answer.stored:
                    await services.db.write(
                        lambda c: idempotency.save(c, record, answer.status, answer.body),
                        inline=True)
            except idempotency.Replayed as replayed:
                return _replay(services, record, replayed.stored)
            return _render(answer)

    return handle


def _replay(services: Services, record: IdemRecord,
            stored: idempotency.StoredAnswer) -> web.Response:
    if stored.body_hash != record.body_hash:
        raise ApiError("ERR-1009", "this Idempotency-Key was used for another"
                       f" request ({stored.path}); use a new key for a new operation")
    services.metrics.inc("edged_idempotent_replays_total",
                         "Requests answered from a stored answer")
    return json_response(stored.status, stored.body, {"Idempotent-Replayed": "true"})


def _render(answer: Answer | web.StreamResponse) -> web.StreamResponse:
    if isinstance(answer, Answer):
        return json_response(answer.status, answer.body)
    return answer


# -- the gate and the error answers (edged.api.middleware runs them) --------------------


def allowed_hosts(services: Services) -> frozenset[str]:
    api = services.cfg.api
    names = {"127.0.0.1", "localhost", "::1", api.host.lower()}
    host = socket.gethostname().lower()
    names |= {host, f"{host}.local"}
    names |= {h.lower() for h in api.allowed_hosts}
    return frozenset(names)


def _host_of(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def error_answer(request: web.Request, exc: Exception) -> tuple[int, web.StreamResponse]:
    """(status for the metrics, the answer) for what a request raised; re-raises the rest.

    Every refusal is the JSON error shape with its ERR code; a client that left before its
    body arrived counts as 499 (nginx's "client closed request": nothing done, nothing to
    answer); anything unexpected is logged with its traceback and answered ERR-1099.
    """
    if isinstance(exc, ApiError):
        if exc.status >= 500:
            log.warning("%s %s: %s %s", request.method, request.path, exc.code, exc.message)
        return exc.status, error_response(exc)
    if isinstance(exc, StoreFull):
        full = ApiError("ERR-1019", "the store cannot write: the disk is full; nothing was"
                        " changed, retry with the same Idempotency-Key once there is space",
                        headers={"Retry-After": "30"})
        return full.status, error_response(full)  # logged once by the store, not per request
    if isinstance(exc, ClientGone):
        log.debug("%s %s: the client left before its body arrived", request.method,
                  request.path)
        return 499, web.Response(status=400)
    if isinstance(exc, web.HTTPException):
        code = {404: "ERR-1011", 405: "ERR-1012", 413: "ERR-1007"}.get(exc.status)
        if code is None:
            raise exc
        method = method_label(request.method)
        message = {"ERR-1011": f"no route {request.path}; see /v1/openapi.json",
                   "ERR-1012": f"{method} is not allowed on {request.path}",
                   "ERR-1007": "the body is larger than the daemon accepts"}[code]
        headers = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return exc.status, error_response(ApiError(code, message, headers=headers))
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return 500, error_response(ApiError("ERR-1099", "internal error; nothing is lost, retry"
                                        " with the same Idempotency-Key"))


def count_request(services: Services, request: web.Request, status: int,
                  route: str) -> None:
    services.metrics.inc_labels("edged_http_requests_total", "HTTP requests answered",
                                (("method", method_label(request.method)), ("route", route),
                                 ("status", str(status))))


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                           "CONNECT", "TRACE"})


def method_label(method: str) -> str:
    """The method as a metric label or in a message: invented methods are one value."""
    return method if method in KNOWN_METHODS else "other"


async def admit(request: web.Request, services: Services) -> Verdict | None:
    """Draining, Host (DNS rebinding), bearer token and per-client limits.

    Raises the refusal; returns the rate-limit verdict whose headers go on the answer
    (``None`` for a request that needs no token or carries the session cookie).
    """
    if request.app[DRAINING][0]:
        raise ApiError("ERR-1016", "the daemon is shutting down; retry in a moment",
                       headers={"Retry-After": "5", "Connection": "close"})
    host = _host_of(request.headers.get("Host", ""))
    if host not in services.allowed_hosts:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if not (sock and host == str(sock[0]).lower()):
            raise ApiError("ERR-5004", "the Host header does not name this daemon; add the"
                           " name to [api].allowed_hosts if it is really this box")
    path = request.path
    if path == METRICS_PATH:
        if services.cfg.api.metrics_public or is_loopback(request.remote or ""):
            return None  # this box's own Prometheus, or a LAN one the setting lets in
    elif not path.startswith("/v1/") or path in PUBLIC_PATHS:
        return None
    authorization = request.headers.get("Authorization")
    if authorization is None and _session.cookie_name(services) in request.cookies:
        request[PRINCIPAL] = await _session.cookie_principal(request, services)
        return None
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _limit_anonymous(request, services)
        hint = (" (from another box GET /metrics needs one: `edged token create prometheus"
                " --scope monitor`, or [api] metrics_public = true)") \
            if path == METRICS_PATH else ""
        raise ApiError("ERR-5001", "send Authorization: Bearer <token>; create one with"
                       f" `edged token create NAME`{hint}",
                       headers={"WWW-Authenticate": "Bearer"})
    # a token is printable ASCII; anything else (bytes that were not UTF-8) is no token
    principal = await services.principal(token) if _plain(token) else None
    if principal is None:
        _limit_anonymous(request, services)
        raise ApiError("ERR-5002", "the token is unknown or revoked",
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    request[PRINCIPAL] = principal
    client = f"token:{principal.token_id}"
    verdict = services.limits.take(client)
    if verdict.allowed and request.method == "POST" and path == "/v1/payments":
        verdict = services.payment_limits.take(client)
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many requests; retry after {verdict.retry_after} s",
                       headers=verdict.headers())
    return verdict


def _plain(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _limit_anonymous(request: web.Request, services: Services) -> None:
    """Unauthenticated calls are limited per client address (a token guesser, a scanner)."""
    verdict = services.anonymous_limits.take(f"addr:{request.remote or 'unknown'}")
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many requests without a valid token; retry after"
                       f" {verdict.retry_after} s", headers=verdict.headers())
