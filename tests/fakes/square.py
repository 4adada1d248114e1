"""A loopback fake of the Square API paths the daemon uses, in Square's wire format.

Start it and point the real SDK at it::

    from tests.fakes.square import FakeSquare
    async with FakeSquare() as fake, httpx.AsyncClient() as http:
        sq = AsyncSquare(token="sq-test", base_url=fake.base_url, httpx_client=http)
        r = await sq.payments.create(source_id="cnon:card-nonce-ok", idempotency_key="k1",
                                     amount_money={"amount": 1250, "currency": "EUR"},
                                     request_options={"max_retries": 0})

(Always pass ``request_options={"max_retries": 0}``: the SDK otherwise retries 408/409/429/5xx
twice by itself, honouring ``Retry-After``.)

Wire format: JSON bodies; answers ``{"payment": {...}}``, ``{"refund": {...}}``,
``{"checkout": {...}}``; errors ``{"errors": [{"category", "code", "detail", "field"}]}`` (the
SDK raises ``square.core.api_error.ApiError`` with ``status_code`` and ``errors``).
``Authorization: Bearer <token>`` is required (401 ``UNAUTHORIZED`` otherwise). Unknown
top-level body fields are refused (400 ``UNKNOWN_BODY_PARAMETER``).

Paths: ``POST /v2/payments`` — ``source_id``: ``cnon:card-nonce-ok`` (or any other ``cnon:``
nonce not listed in :data:`DECLINES`) → CARD payment, ``COMPLETED`` (``APPROVED`` with
``autocomplete: false``); ``cnon:card-nonce-declined`` → 400 ``PAYMENT_METHOD_ERROR`` /
``CARD_DECLINED`` with the ``FAILED`` payment in the body; ``CASH`` (needs
``cash_details.buyer_supplied_money`` ≥ total; ``change_back_money`` is computed) and
``EXTERNAL`` (needs ``external_details {type, source}``). ``GET /v2/payments/{id}``,
``POST /v2/payments/{id}/complete`` (APPROVED → COMPLETED; COMPLETED again: 200),
``POST /v2/payments/{id}/cancel`` (APPROVED → CANCELED; CANCELED again: 200; COMPLETED: 400),
``POST /v2/payments/cancel`` (cancel by idempotency key: voids an APPROVED payment; nothing
found: ``{}``), ``POST /v2/refunds`` (payment must be COMPLETED; over-refund → 400
``REFUND_AMOUNT_INVALID``; card refunds start ``PENDING`` and read back ``COMPLETED`` from
``GET /v2/refunds/{id}`` when ``settle_refunds_on_get`` (default), cash/external refunds are
``COMPLETED`` at once), ``GET /v2/refunds/{id}``, ``POST /v2/terminals/checkouts``,
``GET /v2/terminals/checkouts/{id}``, ``POST /v2/terminals/checkouts/{id}/cancel``,
``POST /v2/terminals/checkouts/search`` (``query.filter`` ``device_id``, ``status``,
``created_at``; newest first), ``POST /v2/terminals/actions`` (``PING`` only),
``GET /v2/terminals/actions/{id}``, ``GET /v2/devices``, ``GET /v2/devices/{id}``,
``GET /v2/devices/codes/{id}``, ``GET /v2/payments`` (``begin_time``/``end_time``/
``location_id``), ``GET /v2/refunds``.

The seller's currency: a Square account takes payments in its country's currency only
(``currency``, EUR unless told). A payment or a checkout in another is refused as Square
refuses it: 400 ``INVALID_VALUE``, "This merchant can only process payments in EUR, but
amount was provided in USD.", ``field`` the amount's ``currency`` (the answer Square's
developer forum shows for ``CreatePayment``). ``INVALID_VALUE`` is among the codes Square's
OpenAPI lists for ``CreateTerminalCheckout``; for ``CreatePayment`` it lists no such code of
its own, and the code rests on that forum answer (and on Square's ``ErrorCode`` enum, which
holds it). Nothing is made.

The contract: every request is checked against Square's published OpenAPI description
(``tests/fixtures/square/api.json``, through :mod:`tests.fakes.square_openapi`): a path or
method Square does not serve is answered 404 ``NOT_FOUND``, a body field or query parameter
the description does not have (or of another type, or ``readOnly``) 400 with Square's code
for it, and each is recorded in ``violations``; the fake's own answers are checked against
the response schemas too. A test fails at teardown when ``violations`` is not empty
(``tests/conftest.py``), so a call Square does not serve the way the code assumes fails in
CI rather than in a store.

Devices, as Square names them: ``add_device(device_id)`` pairs a Square Terminal whose
Terminal API id (``DeviceCode.device_id``, what ``DeviceCheckoutOptions.device_id`` takes) is
``device_id``; the Devices API knows it under a synthetic id ``device:<opaque>``
(``Device.id``), with the serial in ``attributes.manufacturers_id`` and the pairing in
``components[].application_details.device_code_id``. ``GET /v2/devices/{terminal
device_id}`` is therefore a 404 ``NOT_FOUND``, as on Square. ``set_device_status(device_id,
category)`` sets the Devices API's ``status.category`` (AVAILABLE / NEEDS_ATTENTION /
OFFLINE) and whether the Terminal is reachable: an OFFLINE Terminal does not answer a
``PING`` (it stays ``PENDING`` until its ``deadline_duration``, then ``CANCELED`` with
``TIMED_OUT``) and never shows a checkout (it stays ``PENDING`` until its deadline, then
``CANCELED`` ``TIMED_OUT``); a reachable one completes a ``PING`` at once. Deadlines run on
``clock``.

Terminal checkouts move only when a test says so: ``checkout_in_progress(id)``,
``checkout_complete(id)`` (creates the card payment, fills ``payment_ids``),
``checkout_declined(id)`` (stays ``IN_PROGRESS`` while the customer retries, as Square does),
``checkout_canceled(id, reason)`` (``BUYER_CANCELED``/``SELLER_CANCELED``/``TIMED_OUT``).
Cancel through the API: PENDING → CANCELED; IN_PROGRESS → CANCEL_REQUESTED (confirm with
``checkout_canceled``); COMPLETED → 400.

Idempotency: per endpoint, the same key with the same body answers the first answer again
(same object, same status, declines included); another body → 400 ``IDEMPOTENCY_KEY_REUSED``.
A lost answer (``faults.fail(fail_after_apply=True)``) is not stored: the retry gets the
object. Key lengths enforced: payments, refunds and cancel-by-key ≤ 45, checkouts ≤ 64.

Rate limit: a token bucket of ``rate`` requests a second (Square publishes none; default 20,
``None`` = off) on the injectable ``clock``; beyond it 429 ``RATE_LIMIT_ERROR`` /
``RATE_LIMITED`` with ``Retry-After`` (``retry_after`` seconds).

Retention of keys (Square publishes none): ``forget_keys()`` drops every stored key, as a
Square that forgot them would: the same request then executes again.

Inspection: ``payments``, ``refunds``, ``checkouts``, ``actions`` (id → wire dict),
``devices`` (by synthetic id), ``executions[key]``, ``replays[key]``, ``errors``,
``violations``, plus the common ``requests``, ``stats``, ``faults``.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .base import Clock, FakeServer, TokenBucket, canonical, json_response
from .square_openapi import Operation, square_api

JSON = dict[str, Any]

#: nonce → (error code, detail)
DECLINES: dict[str, tuple[str, str]] = {
    "cnon:card-nonce-declined": ("CARD_DECLINED", "Authorization error: 'CARD_DECLINED'"),
    "cnon:card-nonce-rejected-cvv": ("CVV_FAILURE", "Authorization error: 'CVV_FAILURE'"),
    "cnon:card-nonce-rejected-postalcode": ("ADDRESS_VERIFICATION_FAILURE",
                                            "Authorization error: 'ADDRESS_VERIFICATION_FAILURE'"),
    "cnon:card-nonce-rejected-expiration": ("INVALID_EXPIRATION",
                                            "Authorization error: 'INVALID_EXPIRATION'"),
    "cnon:card-nonce-insufficient-funds": ("INSUFFICIENT_FUNDS",
                                           "Authorization error: 'INSUFFICIENT_FUNDS'"),
    "cnon:card-nonce-already-used": ("CARD_TOKEN_USED", "Card nonce already used."),
}

_PAYMENT_FIELDS = frozenset({
    "source_id", "idempotency_key", "amount_money", "tip_money", "app_fee_money",
    "app_fee_allocations", "delay_duration", "delay_action", "autocomplete", "order_id",
    "customer_id", "location_id", "team_member_id", "reference_id", "verification_token",
    "accept_partial_authorization", "buyer_email_address", "buyer_phone_number",
    "billing_address", "shipping_address", "note", "statement_description_identifier",
    "cash_details", "external_details", "customer_details", "offline_payment_details",
})
_REFUND_FIELDS = frozenset({
    "idempotency_key", "amount_money", "app_fee_money", "app_fee_allocations", "payment_id",
    "destination_id", "unlinked", "location_id", "customer_id", "reason",
    "payment_version_token", "team_member_id", "cash_details", "external_details",
})
_EXTERNAL_TYPES = frozenset({
    "CHECK", "BANK_TRANSFER", "OTHER_GIFT_CARD", "CRYPTO", "SQUARE_CASH", "SOCIAL", "EXTERNAL",
    "EMONEY", "CARD", "STORED_BALANCE", "FOOD_VOUCHER", "OTHER",
})


class SquareError(Exception):
    """An error answer; ``executed=False`` for validation errors (not stored under the key)."""

    def __init__(self, status: int, category: str, code: str, detail: str, *,
                 field: str | None = None, extra: JSON | None = None,
                 executed: bool = False, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.category = category
        self.code = code
        self.detail = detail
        self.field = field
        self.extra = extra or {}
        self.executed = executed
        self.headers = headers or {}

    def body(self) -> JSON:
        err: JSON = {"category": self.category, "code": self.code, "detail": self.detail}
        if self.field is not None:
            err["field"] = self.field
        return {"errors": [err], **self.extra}


def _bad(code: str, detail: str, field: str | None = None, *, executed: bool = False,
         status: int = 400, category: str = "INVALID_REQUEST_ERROR") -> SquareError:
    return SquareError(status, category, code, detail, field=field, executed=executed)


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


_DURATION = re.compile(r"^P(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)$")


def duration_seconds(text: str) -> float:
    """An RFC 3339 / ISO 8601 duration (``PT40S``, ``PT5M``) in seconds."""
    match = _DURATION.match(text)
    if match is None or text == "PT":
        raise ValueError(text)
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


#: Every FakeSquare made, so that a test's teardown can check their violations.
INSTANCES: list[weakref.ref[FakeSquare]] = []


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: JSON


class FakeSquare(FakeServer):
    """Square's API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        location_id: str = "LFAKE00000001",
        currency: str = "EUR",
        rate: float | None = 20.0,
        burst: float | None = None,
        retry_after: float = 1.0,
        settle_refunds_on_get: bool = True,
        clock: Clock = time.monotonic,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """
        :param token: the accepted bearer token (None: any non-empty token).
        :param currency: the seller's currency, the only one its payments may be in.
        :param rate: requests a second before 429s (None: no limit).
        :param retry_after: seconds sent in ``Retry-After`` with 429s.
        :param settle_refunds_on_get: a PENDING card refund reads back COMPLETED.
        """
        super().__init__(clock=clock)
        self.token = token
        self.location_id = location_id
        self.currency = currency
        self.limiter = TokenBucket(rate, burst, clock) if rate else None
        self.retry_after = retry_after
        self.settle_refunds_on_get = settle_refunds_on_get
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.payments: dict[str, JSON] = {}
        self.refunds: dict[str, JSON] = {}
        self.checkouts: dict[str, JSON] = {}
        self.actions: dict[str, JSON] = {}
        self.devices: dict[str, JSON] = {}
        """The Devices API's view, by the synthetic ``Device.id`` (``device:…``)."""
        self.device_codes: dict[str, JSON] = {}
        self.terminals: dict[str, str] = {}
        """Terminal API ``device_id`` → its synthetic ``Device.id``."""
        self.reachable: dict[str, bool] = {}
        """Terminal API ``device_id`` → whether the Terminal answers (not OFFLINE)."""
        self.violations: list[str] = []
        """Requests Square does not serve as sent, and answers the fake shaped wrongly."""
        self._deadlines: dict[str, float] = {}
        self.payment_by_key: dict[str, str] = {}
        self.executions: Counter[str] = Counter()
        self.replays: Counter[str] = Counter()
        self.errors: list[JSON] = []
        self._idem: dict[tuple[str, str], _Stored] = {}
        self._seq = itertools.count(1)
        INSTANCES.append(weakref.ref(self))

    # -- ids ------------------------------------------------------------------------------

    def _id(self, prefix: str = "") -> str:
        return f"{prefix}FAKE{next(self._seq):018d}"

    # -- HTTP plumbing --------------------------------------------------------------------

    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v2/payments", self._h_payment_create)
        r.add_post("/v2/payments/cancel", self._h_payment_cancel_by_key)
        r.add_get("/v2/payments/{id}", self._h_payment_get)
        r.add_post("/v2/payments/{id}/complete", self._h_payment_complete)
        r.add_post("/v2/payments/{id}/cancel", self._h_payment_cancel)
        r.add_get("/v2/payments", self._h_payment_list)
        r.add_post("/v2/refunds", self._h_refund_create)
        r.add_get("/v2/refunds", self._h_refund_list)
        r.add_get("/v2/refunds/{id}", self._h_refund_get)
        r.add_get("/v2/devices", self._h_device_list)
        r.add_get("/v2/devices/codes/{id}", self._h_device_code_get)
        r.add_get("/v2/devices/{id}", self._h_device_get)
        r.add_post("/v2/terminals/checkouts", self._h_checkout_create)
        r.add_post("/v2/terminals/checkouts/search", self._h_checkout_search)
        r.add_get("/v2/terminals/checkouts/{id}", self._h_checkout_get)
        r.add_post("/v2/terminals/checkouts/{id}/cancel", self._h_checkout_cancel)
        r.add_post("/v2/terminals/actions", self._h_action_create)
        r.add_get("/v2/terminals/actions/{id}", self._h_action_get)

    def _middlewares(self) -> list[Any]:
        return [self._service_middleware]

    def _respond(self, status: int, body: JSON, headers: dict[str, str] | None = None
                 ) -> web.Response:
        if status >= 400:
            self.errors.extend(body.get("errors") or [])
        return json_response(body, status, headers)

    def _error(self, e: SquareError) -> web.Response:
        return self._respond(e.status, e.body(), e.headers)

    def fault_response(self, status: int) -> web.Response:
        code = {502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE",
                504: "GATEWAY_TIMEOUT"}.get(status, "INTERNAL_SERVER_ERROR")
        return self._error(SquareError(status, "API_ERROR", code,
                                       "An internal error has occurred, and the API was unable "
                                       "to service your request."))

    def throttled_response(self, retry_after: float | None) -> web.Response:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return self._error(SquareError(429, "RATE_LIMIT_ERROR", "RATE_LIMITED",
                                       "Rate limit exceeded.", headers=headers))

    @web.middleware
    async def _service_middleware(self, request: web.Request,
                                  handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if not token or (self.token is not None and token != self.token):
            return self._error(SquareError(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED",
                                           "This request could not be authorized."))
        if self.limiter is not None and not self.limiter.try_take():
            self.stats.throttled += 1
            return self.throttled_response(self.retry_after)
        refused, op = await self._contract(request)
        if refused is not None:
            return refused
        try:
            resp: web.StreamResponse = await handler(request)
        except SquareError as e:
            resp = self._error(e)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            self.violations.append(f"{request.method} {request.path}: the fake does not"
                                   " implement this operation of Square's")
            return self._error(_bad("NOT_FOUND", f"API endpoint for URL path "
                                    f"`{request.path}` and HTTP method `{request.method}` is "
                                    f"not found.", status=404))
        if op is not None and isinstance(resp, web.Response) and resp.body:
            try:
                answer = json.loads(bytes(resp.body))  # type: ignore[arg-type]
            except ValueError:
                answer = None
            for problem in square_api().check_answer(op, answer):
                self.violations.append(f"the fake's answer to {op.operation_id} is not"
                                       f" shaped as Square's: {problem}")
        return resp

    async def _contract(self, request: web.Request) -> tuple[web.Response | None,
                                                              Operation | None]:
        """Check the request against Square's published description (module docstring)."""
        api = square_api()
        op = api.operation(request.method, request.path)
        if op is None:
            self.violations.append(f"{request.method} {request.path}: Square serves no such"
                                   " path and method")
            return self._error(_bad("NOT_FOUND", f"API endpoint for URL path "
                                    f"`{request.path}` and HTTP method `{request.method}` is "
                                    f"not found.", status=404)), None
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{op.operation_id}: the body is not JSON")
                return self._error(_bad("EXPECTED_JSON_BODY",
                                        "The request body is not valid JSON.")), op
        problems = api.check_request(op, dict(request.query), body)
        if problems:
            for problem in problems:
                self.violations.append(f"{op.operation_id} ({request.method}"
                                       f" {request.path}): {problem}")
            first = problems[0]
            return self._error(_bad(first.code, first.message, first.field or None)), op
        return None, op

    def assert_no_violations(self) -> None:
        """Every request was one Square serves, every answer shaped as Square's."""
        if self.violations:
            raise AssertionError("the Square fake saw calls Square does not serve as sent"
                                 " (tests/fixtures/square/api.json):\n  "
                                 + "\n  ".join(self.violations))

    async def _body(self, request: web.Request, allowed: frozenset[str] | set[str]) -> JSON:
        raw = await request.read()
        if not raw:
            body: Any = {}
        else:
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise _bad("EXPECTED_JSON_BODY", "The request body is not valid JSON.") from e
        if not isinstance(body, dict):
            raise _bad("EXPECTED_OBJECT", "The request body must be a JSON object.")
        for k in body:
            if k not in allowed:
                raise _bad("UNKNOWN_BODY_PARAMETER",
                           f"The field named '{k}' is unrecognized (line 1, character 1)", k)
        return body

    @staticmethod
    def _key(body: JSON, max_len: int, field: str = "idempotency_key") -> str:
        key = body.get(field)
        if not isinstance(key, str) or key == "":
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", field)
        if len(key) > max_len:
            raise _bad("VALUE_TOO_LONG", f"Field must not be greater than {max_len} length",
                       field)
        return key

    @staticmethod
    def _money(body: JSON, field: str, *, required: bool = False, positive: bool = True
               ) -> JSON | None:
        m = body.get(field)
        if m is None:
            if required:
                raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", field)
            return None
        if not isinstance(m, dict) or not isinstance(m.get("amount"), int) \
                or not isinstance(m.get("currency"), str):
            raise _bad("INVALID_VALUE", "Money needs an integer amount and a currency", field)
        if positive and m["amount"] <= 0:
            raise _bad("VALUE_TOO_LOW", "Must be greater than 0", f"{field}.amount")
        return {"amount": m["amount"], "currency": m["currency"]}

    def _sellers(self, amount: JSON | None, field: str) -> JSON:
        """``amount`` (a Money already read), refused unless in the seller's currency."""
        assert amount is not None
        if amount["currency"] != self.currency:
            raise _bad("INVALID_VALUE", f"This merchant can only process payments in"
                       f" {self.currency}, but amount was provided in {amount['currency']}.",
                       f"{field}.currency")
        return amount

    def _idempotent(self, scope: str, key: str, body: JSON,
                    run: Callable[[], tuple[int, JSON]]) -> web.Response:
        fingerprint = canonical(body)
        stored = self._idem.get((scope, key))
        if stored is not None:
            if stored.fingerprint != fingerprint:
                return self._error(_bad("IDEMPOTENCY_KEY_REUSED", "The idempotency key can only "
                                        "be retried with the same request data.",
                                        "idempotency_key"))
            self.replays[key] += 1
            return self._respond(stored.status, stored.body)
        try:
            status, out = run()
            executed = True
        except SquareError as e:
            status, out, executed = e.status, e.body(), e.executed
        if executed:  # a lost answer is not stored either: the retry gets the object
            self.executions[key] += 1
            self._idem[(scope, key)] = _Stored(fingerprint, status, out)
        return self._respond(status, out)

    def saw_key(self, scope: str, key: str, body: JSON) -> None:
        """A request with ``body`` already ran under ``key`` at ``scope`` (``payments``,
        ``refunds``, ``checkouts``, ``actions``): another body under it is refused
        ``IDEMPOTENCY_KEY_REUSED``."""
        self._idem[(scope, key)] = _Stored(canonical(body), 200, {})

    def forget_keys(self) -> None:
        """Square forgot every idempotency key (it publishes no retention): the same
        request under the same key executes again."""
        self._idem.clear()

    # -- payments -------------------------------------------------------------------------

    def _payment(self, pid: str) -> JSON:
        p = self.payments.get(pid)
        if p is None:
            raise _bad("NOT_FOUND", f"Could not find payment with id: {pid}", status=404)
        return p

    def _touch(self, obj: JSON) -> None:
        obj["updated_at"] = _ts(self.now())
        if "version_token" in obj:
            obj["version_token"] = self._id("v")

    def _new_payment(self, body: JSON, amount: JSON, tip: JSON | None, *, source_type: str,
                     status: str, autocomplete: bool) -> JSON:
        now = _ts(self.now())
        pid = self._id()
        total = {"amount": amount["amount"] + (tip["amount"] if tip else 0),
                 "currency": amount["currency"]}
        p: JSON = {
            "id": pid, "created_at": now, "updated_at": now,
            "amount_money": amount, "total_money": total,
            "approved_money": total if status in ("APPROVED", "COMPLETED") else
            {"amount": 0, "currency": amount["currency"]},
            "status": status, "source_type": source_type,
            "location_id": body.get("location_id") or self.location_id,
            "order_id": body.get("order_id") or self._id("ORD"),
            "reference_id": body.get("reference_id"),
            "note": body.get("note"),
            "customer_id": body.get("customer_id"),
            "team_member_id": body.get("team_member_id"),
            "refund_ids": [],
            "receipt_number": pid[-4:],
            "receipt_url": f"https://squareup.com/receipt/preview/{pid}",
            "application_details": {"square_product": "ECOMMERCE_API",
                                    "application_id": "sandbox-sq0idb-fake"},
            "version_token": self._id("v"),
        }
        if tip:
            p["tip_money"] = tip
        if not autocomplete and status == "APPROVED":
            p["delay_duration"] = body.get("delay_duration") or "PT168H"
            p["delay_action"] = body.get("delay_action") or "CANCEL"
        return {k: v for k, v in p.items() if v is not None}

    async def _h_payment_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, _PAYMENT_FIELDS)
        key = self._key(body, 45)
        source = body.get("source_id")
        if not isinstance(source, str) or not source:
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", "source_id")
        amount = self._sellers(self._money(body, "amount_money", required=True),
                               "amount_money")
        tip = self._money(body, "tip_money", positive=False)
        autocomplete = body.get("autocomplete", True) is not False
        for f, n in (("reference_id", 40), ("note", 500)):
            if isinstance(body.get(f), str) and len(body[f]) > n:
                raise _bad("VALUE_TOO_LONG", f"Field must not be greater than {n} length", f)
        if source == "CASH":
            cash = body.get("cash_details")
            supplied = self._money(cash or {}, "buyer_supplied_money", required=True,
                                   positive=False) if isinstance(cash, dict) else None
            if supplied is None:
                raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set",
                           "cash_details.buyer_supplied_money")
        elif source == "EXTERNAL":
            ext = body.get("external_details")
            if not isinstance(ext, dict) or not ext.get("type") or not ext.get("source"):
                raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set",
                           "external_details.type" if not isinstance(ext, dict)
                           or not ext.get("type") else "external_details.source")
            if ext["type"] not in _EXTERNAL_TYPES:
                raise _bad("INVALID_ENUM_VALUE", f"`{ext['type']}` is not a valid enum value "
                           "for `external_details.type`.", "external_details.type")
        elif not source.startswith(("cnon:", "ccof:")):
            raise _bad("INVALID_VALUE", "Invalid source_id.", "source_id")

        def run() -> tuple[int, JSON]:
            total = amount["amount"] + (tip["amount"] if tip else 0)
            if source == "CASH":
                cash = body["cash_details"]
                supplied = cash["buyer_supplied_money"]
                if supplied["amount"] < total:
                    raise _bad("VALUE_TOO_LOW", "buyer_supplied_money must be at least the "
                               "total of the payment.", "cash_details.buyer_supplied_money")
                p = self._new_payment(body, amount, tip, source_type="CASH",
                                      status="COMPLETED" if autocomplete else "APPROVED",
                                      autocomplete=autocomplete)
                p["cash_details"] = {
                    "buyer_supplied_money": supplied,
                    "change_back_money": {"amount": supplied["amount"] - total,
                                          "currency": supplied["currency"]},
                }
            elif source == "EXTERNAL":
                p = self._new_payment(body, amount, tip, source_type="EXTERNAL",
                                      status="COMPLETED" if autocomplete else "APPROVED",
                                      autocomplete=autocomplete)
                p["external_details"] = dict(body["external_details"])
            else:
                decline = DECLINES.get(source)
                p = self._new_payment(body, amount, tip, source_type="CARD",
                                      status="FAILED" if decline else
                                      ("COMPLETED" if autocomplete else "APPROVED"),
                                      autocomplete=autocomplete)
                p["card_details"] = self._card_details(
                    "FAILED" if decline else ("CAPTURED" if autocomplete else "AUTHORIZED"),
                    entry_method="KEYED")
                if decline:
                    self.payments[p["id"]] = p
                    self.payment_by_key[key] = p["id"]
                    code, detail = decline
                    raise SquareError(400, "PAYMENT_METHOD_ERROR", code, detail,
                                      extra={"payment": p}, executed=True)
            self.payments[p["id"]] = p
            self.payment_by_key[key] = p["id"]
            return 200, {"payment": p}

        return self._idempotent("payments", key, body, run)

    @staticmethod
    def _card_details(status: str, *, entry_method: str) -> JSON:
        return {
            "status": status,
            "card": {"card_brand": "VISA", "last_4": "1111", "exp_month": 11, "exp_year": 2030,
                     "fingerprint": "sq-1-fake", "card_type": "CREDIT",
                     "prepaid_type": "NOT_PREPAID", "bin": "411111"},
            "entry_method": entry_method,
            "cvv_status": "CVV_ACCEPTED" if entry_method == "KEYED" else "CVV_NOT_CHECKED",
            "avs_status": "AVS_ACCEPTED" if entry_method == "KEYED" else "AVS_NOT_CHECKED",
            "statement_description": "SQ *EDGED TEST",
            "card_payment_timeline": {"authorized_at": None},
        }

    async def _h_payment_get(self, request: web.Request) -> web.Response:
        return self._respond(200, {"payment": self._payment(request.match_info["id"])})

    async def _h_payment_list(self, request: web.Request) -> web.Response:
        q = request.query
        found = [p for p in self.payments.values()
                 if (not q.get("begin_time") or p["created_at"] >= q["begin_time"])
                 and (not q.get("end_time") or p["created_at"] < q["end_time"])
                 and (not q.get("location_id") or p["location_id"] == q["location_id"])]
        ascending = q.get("sort_order") == "ASC"
        found.sort(key=lambda p: (p["created_at"], p["id"]), reverse=not ascending)
        start = int(q.get("cursor") or 0)
        limit = min(int(q.get("limit") or 100), 100)
        out: JSON = {"payments": found[start:start + limit]}
        if start + limit < len(found):
            out["cursor"] = str(start + limit)
        return self._respond(200, out)

    async def _h_payment_complete(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"version_token"})
        p = self._payment(request.match_info["id"])
        if body.get("version_token") and body["version_token"] != p["version_token"]:
            raise _bad("BAD_REQUEST",
                       "The version_token does not match the payment's.", "version_token")
        if p["status"] == "APPROVED":
            p["status"] = "COMPLETED"
            p.pop("delay_action", None)
            if "card_details" in p:
                p["card_details"]["status"] = "CAPTURED"
            self._touch(p)
        elif p["status"] != "COMPLETED":  # COMPLETED again: answered as done (unverified)
            raise _bad("BAD_REQUEST", f"Payment {p['id']} is {p['status']} and cannot be "
                       f"completed.")
        return self._respond(200, {"payment": p})

    def _void(self, p: JSON) -> None:
        if p["status"] == "APPROVED":
            p["status"] = "CANCELED"
            if "card_details" in p:
                p["card_details"]["status"] = "VOIDED"
            self._touch(p)
        elif p["status"] not in ("CANCELED", "FAILED"):
            raise _bad("BAD_REQUEST", f"Payment {p['id']} is {p['status']} and cannot be "
                       f"canceled.")

    async def _h_payment_cancel(self, request: web.Request) -> web.Response:
        await self._body(request, set())
        p = self._payment(request.match_info["id"])
        self._void(p)
        return self._respond(200, {"payment": p})

    async def _h_payment_cancel_by_key(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"idempotency_key"})
        key = self._key(body, 45)
        pid = self.payment_by_key.get(key)
        if pid is not None:
            self._void(self.payments[pid])
        return self._respond(200, {})

    # -- refunds --------------------------------------------------------------------------

    async def _h_refund_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, _REFUND_FIELDS)
        key = self._key(body, 45)
        amount = self._money(body, "amount_money", required=True)
        assert amount is not None
        pid = body.get("payment_id")
        if not isinstance(pid, str) or not pid:
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", "payment_id")
        if isinstance(body.get("reason"), str) and len(body["reason"]) > 192:
            raise _bad("VALUE_TOO_LONG", "Field must not be greater than 192 length", "reason")
        p = self.payments.get(pid)
        if p is None:
            raise _bad("NOT_FOUND", f"Could not find payment with id: {pid}", "payment_id",
                       status=404)

        def run() -> tuple[int, JSON]:
            if p["status"] == "APPROVED":
                raise _bad("REFUND_ERROR_PAYMENT_NEEDS_COMPLETION", "The payment must be "
                           "completed before it can be refunded.", "payment_id", executed=True)
            if p["status"] != "COMPLETED":
                raise _bad("PAYMENT_NOT_REFUNDABLE", f"Payment {pid} is {p['status']}.",
                           "payment_id", executed=True, category="REFUND_ERROR")
            if amount["currency"] != p["total_money"]["currency"]:
                raise _bad("CURRENCY_MISMATCH", "The refund currency must match the payment's.",
                           "amount_money.currency", executed=True)
            refunded = p.get("refunded_money", {}).get("amount", 0)
            if amount["amount"] > p["total_money"]["amount"] - refunded:
                raise _bad("REFUND_AMOUNT_INVALID", "The requested refund amount exceeds the "
                           "amount available to refund.", "amount_money.amount",
                           executed=True, category="REFUND_ERROR")
            now = _ts(self.now())
            card = p["source_type"] == "CARD"
            refund: JSON = {
                "id": f"{pid}_{self._id('R')}", "status": "PENDING" if card else "COMPLETED",
                "location_id": p["location_id"], "amount_money": amount, "payment_id": pid,
                "order_id": p.get("order_id"), "reason": body.get("reason"),
                "created_at": now, "updated_at": now,
                "destination_type": p["source_type"],
            }
            refund = {k: v for k, v in refund.items() if v is not None}
            self.refunds[refund["id"]] = refund
            p["refund_ids"].append(refund["id"])
            p["refunded_money"] = {"amount": refunded + amount["amount"],
                                   "currency": amount["currency"]}
            self._touch(p)
            return 200, {"refund": refund}

        return self._idempotent("refunds", key, body, run)

    async def _h_refund_list(self, request: web.Request) -> web.Response:
        q = request.query
        found = [r for r in self.refunds.values()
                 if (not q.get("begin_time") or r["created_at"] >= q["begin_time"])
                 and (not q.get("end_time") or r["created_at"] < q["end_time"])
                 and (not q.get("location_id") or r["location_id"] == q["location_id"])]
        found.sort(key=lambda r: (r["created_at"], r["id"]), reverse=q.get("sort_order") != "ASC")
        return self._respond(200, {"refunds": found[:100]})

    async def _h_refund_get(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        refund = self.refunds.get(rid)
        if refund is None:
            raise _bad("NOT_FOUND", f"Could not find refund with id: {rid}", status=404)
        if self.settle_refunds_on_get and refund["status"] == "PENDING":
            refund["status"] = "COMPLETED"
            self._touch(refund)
        return self._respond(200, {"refund": refund})

    def settle_refund(self, refund_id: str, status: str = "COMPLETED") -> None:
        """Move a refund to ``status`` (COMPLETED, REJECTED, FAILED)."""
        self.refunds[refund_id]["status"] = status
        self._touch(self.refunds[refund_id])

    # -- terminal checkouts ---------------------------------------------------------------

    def _checkout(self, cid: str) -> JSON:
        c = self.checkouts.get(cid)
        if c is None:
            raise _bad("NOT_FOUND", f"Could not find checkout with id: {cid}", status=404)
        self._expire(c)
        return c

    async def _h_checkout_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"idempotency_key", "checkout"})
        key = self._key(body, 64)
        co = body.get("checkout")
        if not isinstance(co, dict):
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", "checkout")
        amount = self._sellers(self._money(co, "amount_money", required=True),
                               "checkout.amount_money")
        device = co.get("device_options")
        if not isinstance(device, dict) or not device.get("device_id"):
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set",
                       "checkout.device_options.device_id")
        for f, n in (("reference_id", 40), ("note", 500)):
            if isinstance(co.get(f), str) and len(co[f]) > n:
                raise _bad("VALUE_TOO_LONG", f"Field must not be greater than {n} length",
                           f"checkout.{f}")

        def run() -> tuple[int, JSON]:
            now = _ts(self.now())
            checkout: JSON = {
                "id": self._id("ch"), "amount_money": amount,
                "reference_id": co.get("reference_id"), "note": co.get("note"),
                "order_id": co.get("order_id"),
                "payment_options": co.get("payment_options"),
                "device_options": {"skip_receipt_screen": False, "collect_signature": False,
                                   **device},
                "deadline_duration": co.get("deadline_duration") or "PT5M",
                "status": "PENDING", "created_at": now, "updated_at": now,
                "app_id": "sandbox-sq0idb-fake", "location_id": self.location_id,
                "payment_type": co.get("payment_type") or "CARD_PRESENT",
                "team_member_id": co.get("team_member_id"),
            }
            checkout = {k: v for k, v in checkout.items() if v is not None}
            self._deadline(checkout["id"], co.get("deadline_duration"))
            self.checkouts[checkout["id"]] = checkout
            return 200, {"checkout": checkout}

        return self._idempotent("checkouts", key, body, run)

    async def _h_checkout_search(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"query", "cursor", "limit"})
        query = body.get("query") or {}
        flt = query.get("filter") or {}
        found = []
        for c in self.checkouts.values():
            self._expire(c)
            if flt.get("device_id") and c["device_options"]["device_id"] != flt["device_id"]:
                continue
            if flt.get("status") and c["status"] != flt["status"]:
                continue
            span = flt.get("created_at") or {}
            if span.get("start_at") and c["created_at"] < span["start_at"]:
                continue
            if span.get("end_at") and c["created_at"] > span["end_at"]:
                continue
            found.append(c)
        ascending = (query.get("sort") or {}).get("sort_order") == "ASC"
        found.sort(key=lambda c: (c["created_at"], c["id"]), reverse=not ascending)
        start = int(body.get("cursor") or 0)
        limit = int(body.get("limit") or 100)
        page = found[start:start + limit]
        out: JSON = {"checkouts": page}
        if start + limit < len(found):
            out["cursor"] = str(start + limit)
        return self._respond(200, out)

    async def _h_checkout_get(self, request: web.Request) -> web.Response:
        return self._respond(200, {"checkout": self._checkout(request.match_info["id"])})

    async def _h_checkout_cancel(self, request: web.Request) -> web.Response:
        await self._body(request, set())
        c = self._checkout(request.match_info["id"])
        if c["status"] == "PENDING":
            c["status"] = "CANCELED"
            c["cancel_reason"] = "SELLER_CANCELED"
        elif c["status"] == "IN_PROGRESS":
            c["status"] = "CANCEL_REQUESTED"
        elif c["status"] == "COMPLETED":
            raise _bad("BAD_REQUEST", f"Checkout {c['id']} is COMPLETED and cannot be "
                       f"canceled.")
        self._touch(c)
        return self._respond(200, {"checkout": c})

    # -- devices (the Devices API's view of a paired Square Terminal) ---------------------

    def add_device(self, device_id: str, category: str = "AVAILABLE") -> str:
        """Pair a Square Terminal whose Terminal API id is ``device_id``; returns the
        Devices API's synthetic ``Device.id`` (``device:…``), which is another value."""
        code_id = f"DC{uuid.uuid4().hex[:12].upper()}"
        now = _ts(self.now())
        self.device_codes[code_id] = {
            "id": code_id, "name": f"Counter {device_id[-4:]}", "code": "EBCARJ",
            "device_id": device_id, "product_type": "TERMINAL_API",
            "location_id": self.location_id, "status": "PAIRED", "created_at": now,
            "status_changed_at": now, "paired_at": now,
        }
        synthetic = f"device:{uuid.uuid4().hex}"
        self.devices[synthetic] = {
            "id": synthetic,
            "attributes": {"type": "TERMINAL", "manufacturer": "Square", "model": "T2",
                           "name": f"Terminal {device_id[-4:]}", "manufacturers_id": device_id,
                           "updated_at": now, "version": "6.72", "merchant_token": "MLFAKE"},
            "components": [{"type": "APPLICATION", "application_details": {
                "application_type": "TERMINAL_API", "version": "6.72",
                "session_location": self.location_id, "device_code_id": code_id}}],
            "status": {"category": category},
        }
        self.terminals[device_id] = synthetic
        self.reachable[device_id] = category != "OFFLINE"
        return synthetic

    def set_device_status(self, device_id: str, category: str) -> None:
        """The Terminal (by its Terminal API id) is AVAILABLE, NEEDS_ATTENTION or OFFLINE:
        the Devices API says so, and an OFFLINE one answers nothing (no PING, no checkout)."""
        self.devices[self.terminals[device_id]]["status"] = {"category": category}
        self.reachable[device_id] = category != "OFFLINE"

    def device_checkouts(self, device_id: str) -> list[JSON]:
        """The device's checkouts, oldest first."""
        return [c for c in self.checkouts.values()
                if c["device_options"]["device_id"] == device_id]

    async def _h_device_get(self, request: web.Request) -> web.Response:
        did = request.match_info["id"]
        device = self.devices.get(did)
        if device is None:
            raise _bad("NOT_FOUND", f"Device with id `{did}` not found.", status=404)
        return self._respond(200, {"device": device})

    async def _h_device_list(self, request: web.Request) -> web.Response:
        return self._respond(200, {"devices": list(self.devices.values())})

    async def _h_device_code_get(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        code = self.device_codes.get(cid)
        if code is None:
            raise _bad("NOT_FOUND", f"Device code with id `{cid}` not found.", status=404)
        return self._respond(200, {"device_code": code})

    # -- deadlines ------------------------------------------------------------------------

    def _expire(self, obj: JSON) -> None:
        """A checkout or action still PENDING past its deadline is CANCELED (TIMED_OUT)."""
        due = self._deadlines.get(obj["id"])
        if obj["status"] == "PENDING" and due is not None and self.clock() >= due:
            obj["status"] = "CANCELED"
            obj["cancel_reason"] = "TIMED_OUT"
            self._touch(obj)

    def _deadline(self, oid: str, text: str | None, default: float = 300.0) -> None:
        try:
            seconds = duration_seconds(text) if text else default
        except ValueError:
            raise _bad("INVALID_VALUE", f"Invalid duration {text!r}.",
                       "deadline_duration") from None
        self._deadlines[oid] = self.clock() + seconds

    # -- terminal actions -----------------------------------------------------------------

    async def _h_action_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, {"idempotency_key", "action"})
        key = self._key(body, 64)
        action = body.get("action")
        if not isinstance(action, dict):
            raise _bad("MISSING_REQUIRED_PARAMETER", "Field must be set", "action")
        if action.get("type") != "PING":
            raise _bad("BAD_REQUEST", f"The fake serves PING actions only, not"
                       f" {action.get('type')!r}.", "action.type")
        device_id = action.get("device_id")
        if not isinstance(device_id, str) or device_id not in self.terminals:
            raise _bad("INVALID_VALUE", f"Unknown device_id {device_id!r}.",
                       "action.device_id")

        def run() -> tuple[int, JSON]:
            now = _ts(self.now())
            created: JSON = {
                "id": self._id("termapia:"), "device_id": device_id,
                "deadline_duration": action.get("deadline_duration") or "PT5M",
                "status": "PENDING", "created_at": now, "updated_at": now,
                "app_id": "sandbox-sq0idb-fake", "location_id": self.location_id,
                "type": "PING",
            }
            self._deadline(created["id"], action.get("deadline_duration"))
            self.actions[created["id"]] = created
            self._ping(created)
            return 200, {"action": created}

        return self._idempotent("actions", key, body, run)

    def _ping(self, action: JSON) -> None:
        """A reachable Terminal answers a PING at once."""
        if action["status"] == "PENDING" and self.reachable.get(action["device_id"]):
            action["status"] = "COMPLETED"
            action["device_metadata"] = {"battery_percentage": "87", "network_connection_type":
                                         "WIFI", "serial_number": action["device_id"],
                                         "location_id": self.location_id}
            self._touch(action)

    async def _h_action_get(self, request: web.Request) -> web.Response:
        aid = request.match_info["id"]
        action = self.actions.get(aid)
        if action is None:
            raise _bad("NOT_FOUND", f"Could not find action with id: {aid}", status=404)
        self._expire(action)
        self._ping(action)
        return self._respond(200, {"action": action})

    def checkout_in_progress(self, checkout_id: str) -> None:
        """The customer started paying on the device."""
        c = self.checkouts[checkout_id]
        assert c["status"] in ("PENDING", "IN_PROGRESS"), c["status"]
        c["status"] = "IN_PROGRESS"
        self._touch(c)

    def checkout_declined(self, checkout_id: str) -> None:
        """A card was declined: the checkout stays IN_PROGRESS while the customer retries."""
        self.checkout_in_progress(checkout_id)

    def checkout_complete(self, checkout_id: str) -> str:
        """The customer paid: creates the card payment; returns its id."""
        c = self.checkouts[checkout_id]
        assert c["status"] in ("PENDING", "IN_PROGRESS", "CANCEL_REQUESTED"), c["status"]
        autocomplete = (c.get("payment_options") or {}).get("autocomplete", True) is not False
        p = self._new_payment({"reference_id": c.get("reference_id"), "note": c.get("note"),
                               "order_id": c.get("order_id")},
                              c["amount_money"], None, source_type="CARD",
                              status="COMPLETED" if autocomplete else "APPROVED",
                              autocomplete=autocomplete)
        p["card_details"] = self._card_details("CAPTURED" if autocomplete else "AUTHORIZED",
                                               entry_method="EMV")
        p["terminal_checkout_id"] = checkout_id
        p["device_details"] = {"device_id": c["device_options"]["device_id"]}
        self.payments[p["id"]] = p
        c["status"] = "COMPLETED"
        c["payment_ids"] = [p["id"]]
        self._touch(c)
        return str(p["id"])

    def checkout_canceled(self, checkout_id: str, reason: str = "BUYER_CANCELED") -> None:
        """The checkout ends CANCELED (``BUYER_CANCELED``, ``SELLER_CANCELED``, ``TIMED_OUT``)."""
        c = self.checkouts[checkout_id]
        c["status"] = "CANCELED"
        c["cancel_reason"] = reason
        self._touch(c)


__all__ = ["DECLINES", "FakeSquare", "SquareError"]
