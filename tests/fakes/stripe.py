"""A loopback fake of the Stripe API paths the daemon uses, in Stripe's wire format.

Start it and point the real SDK at it::

    from tests.fakes.stripe import FakeStripe
    async with FakeStripe() as fake:
        http = stripe.AIOHTTPClient()
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.base_url},
                                     http_client=http)
        pi = await client.v1.payment_intents.create_async(
            {"amount": 1250, "currency": "eur", "confirm": True,
             "payment_method": "pm_card_visa", "metadata": {"edged_id": "sale-1"}},
            options={"idempotency_key": "sale-1-pay"})
        await http.close_async()

Wire format: form-encoded bodies and query strings (``metadata[k]=v``, ``list[0]=x``), JSON
answers with ``object``/``id``/``created``/``livemode``, a ``Request-Id`` header, errors as
``{"error": {"type", "code", "message", "param", "decline_code", ...}}``. Unknown parameters are
refused (400 ``parameter_unknown``), as Stripe does, so a typo fails in the tests.

Paths: ``POST /v1/payment_intents`` (``confirm=true`` + ``payment_method`` charges at once),
``GET /v1/payment_intents`` (list), ``GET /v1/payment_intents/search?query=``
(``metadata['k']:'v'``,
``status:``, ``currency:``, ``customer:``, ``amount``/``created`` with ``:``/``>``/``<``; ``AND``
or ``OR``), ``GET /v1/payment_intents/{id}``, ``POST .../{id}/confirm``, ``.../{id}/capture``,
``.../{id}/cancel``, ``POST /v1/refunds``, ``GET /v1/refunds/{id}``, ``GET /v1/refunds``
(``payment_intent=``, ``charge=``), ``GET /v1/terminal/readers/{id}``,
``POST /v1/terminal/readers/{id}/process_payment_intent``, ``.../cancel_action`` and
``POST /v1/test_helpers/terminal/readers/{id}/present_payment_method``.

Payment method types: from API version 2026-09-30 (the SDK 16.1 pins ``2026-10-28.endive``
and sends it as ``Stripe-Version``) ``payment_method_types`` is no longer writable: the fake
answers 400 ``payment_method_types_no_longer_supported``, as Stripe does; send
``allowed_payment_method_types=["card_present"]`` for Terminal. The answer still carries the
read-only ``payment_method_types``.

Test payment methods: any ``pm_card_*`` succeeds except the declines of :data:`DECLINES`
(``pm_card_chargeDeclined`` → 402 ``card_error``/``card_declined``/``generic_decline``,
``pm_card_chargeDeclinedInsufficientFunds``, ``...LostCard``, ``...StolenCard``,
``...ExpiredCard`` (code ``expired_card``), ``...IncorrectCvc``, ``...ProcessingError``).
A decline leaves the PaymentIntent in ``requires_payment_method`` with ``last_payment_error``
(it exists and is found by search), and the 402 body carries it, as on Stripe.
Terminal test cards for ``present_payment_method``: ``card_present[number]`` 4242424242424242
(default, success), 4000000000000002 (declined), 4000000000009995 (insufficient funds).
The charge of a reader payment carries ``payment_method_details.card_present`` (``brand``,
``last4``, ``authorization_code``, ``receipt``); ``expand[]=latest_charge`` (and
``data.latest_charge`` in search) gives the charge object instead of its id; a reader read
with ``expand[]=action.process_payment_intent.payment_intent.latest_charge`` carries the
PaymentIntent and its charge inside the action.

Readers: ``add_reader``, ``set_reader_status(id, "offline")``, ``occupy_reader(id)`` (another
action in progress), ``present_payment_method(id, number)``. ``process_payment_intent`` on an
offline reader is refused 400 ``terminal_reader_offline``, on a busy one 400
``terminal_reader_busy`` (Stripe's codes); ``cancel_action`` without an action in progress:
400 ``terminal_reader_invalid_state``.

Idempotency (POST only; the SDK sends a key on every POST): the first answer of a key is
stored once execution started — successes, declines, state errors, and the 5xx of a lost
answer (``faults.fail(500, fail_after_apply=True)``) — and replayed (``Idempotent-Replayed:
true``); validation errors (400 before execution) are not stored. The same key with another
path or body: 400 ``idempotency_error`` with ``Stripe-Should-Retry: false``. Keys over 255
characters are refused.

Rate limit: a token bucket of ``rate`` requests a second (25, test mode; ``None`` = off) on the
injectable ``clock``: beyond it, 429 ``{"error": {"type": "invalid_request_error", "code":
"rate_limit", "message": "Request rate limit exceeded..."}}`` (what Stripe actually sends; the
SDK raises ``RateLimitError`` on any 429), with ``Retry-After`` only if
``rate_limit_retry_after`` is set (Stripe does not promise one).

Eventual consistency: ``search_delay`` seconds (``clock``) before a new PaymentIntent shows in
search results (Stripe documents up to a minute; default 0).

Inspection: ``payment_intents``, ``charges``, ``refunds``, ``readers`` (id → wire dict),
``executions[key]`` (times a key's request was executed: stays 1), ``replays[key]``,
``errors`` (every error answered), plus the common ``requests``, ``stats``, ``faults``.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from .base import LOST_ANSWER_KEY, Clock, FakeServer, TokenBucket, canonical, json_response

JSON = dict[str, Any]

#: payment method → (code, decline_code, message)
DECLINES: dict[str, tuple[str, str | None, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_visa_chargeDeclined": ("card_declined", "generic_decline",
                                    "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "pm_card_chargeDeclinedLostCard": ("card_declined", "lost_card", "Your card was declined."),
    "pm_card_chargeDeclinedStolenCard": ("card_declined", "stolen_card",
                                         "Your card was declined."),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card",
                                          "Your card has expired."),
    "pm_card_chargeDeclinedIncorrectCvc": ("incorrect_cvc", "incorrect_cvc",
                                           "Your card's security code is incorrect."),
    "pm_card_chargeDeclinedProcessingError": (
        "processing_error", "processing_error",
        "An error occurred while processing your card. Try again in a little bit."),
}

#: Terminal test card numbers → (code, decline_code, message); absent: approved.
TERMINAL_DECLINES: dict[str, tuple[str, str | None, str]] = {
    "4000000000000002": ("card_declined", "generic_decline", "Your card was declined."),
    "4000000000009995": ("card_declined", "insufficient_funds",
                         "Your card has insufficient funds."),
}

#: The API version from which ``payment_method_types`` is no longer writable (the SDK 16.1
#: pins 2026-10-28.endive); use ``allowed_payment_method_types``.
PMT_REMOVED_IN = "2026-09-30"
DEFAULT_API_VERSION = "2026-10-28.endive"

_PI_CREATE_PARAMS = frozenset({
    "amount", "currency", "confirm", "capture_method", "payment_method", "payment_method_types",
    "allowed_payment_method_types",
    "metadata", "description", "customer", "receipt_email", "statement_descriptor",
    "statement_descriptor_suffix", "expand", "setup_future_usage", "off_session", "return_url",
    "error_on_requires_action", "confirmation_method", "automatic_payment_methods",
    "payment_method_options", "on_behalf_of", "transfer_data", "transfer_group",
    "application_fee_amount", "shipping", "use_stripe_sdk", "mandate_data",
    "payment_method_data", "payment_method_configuration", "excluded_payment_method_types",
    "radar_options",
})
#: Stripe's minimum charge amounts (docs.stripe.com/currencies, "Minimum and maximum charge
#: amounts"), in minor units, for the currencies the tests use; a PaymentIntent below it is
#: refused at its create with ``amount_too_small`` (param ``amount``). The maximum is
#: 99999999 minor units (``amount_too_large``).
MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "chf": 50, "cad": 50, "aud": 50,
                  "jpy": 50, "sek": 300, "nok": 300, "dkk": 250, "pln": 200}
MAXIMUM_CHARGE = 99_999_999
_CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation",
               "requires_action", "processing")


class StripeError(Exception):
    """An error answer; ``executed=False`` for validation errors (not stored under the key)."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: JSON | None = None,
        executed: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        self.executed = executed
        self.headers = headers or {}

    def body(self) -> JSON:
        err: JSON = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = self.param
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        err.update(self.extra)
        return {"error": err}


def _invalid(message: str, *, param: str | None = None, code: str | None = None,
             executed: bool = False, status: int = 400) -> StripeError:
    return StripeError(status, "invalid_request_error", message, code=code, param=param,
                       executed=executed)


def _missing(kind: str, oid: str, param: str) -> StripeError:
    return StripeError(404, "invalid_request_error", f"No such {kind}: '{oid}'",
                       code="resource_missing", param=param, executed=False)


def decode_form(pairs: list[tuple[str, str]]) -> JSON:
    """Stripe's form encoding (``a[b][0][c]=v``, ``a[]=v``) to nested dicts and lists."""
    root: JSON = {}
    for raw_key, value in pairs:
        m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", raw_key)
        if m is None:
            raise _invalid(f"Invalid parameter name: {raw_key}", param=raw_key,
                           code="parameter_invalid")
        keys = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        cur: Any = root
        for i, name in enumerate(keys):
            k = name or str(len(cur))  # "a[]": append
            if i == len(keys) - 1:
                cur[k] = value
            else:
                nxt = cur.get(k)
                if not isinstance(nxt, dict):
                    nxt = {}
                    cur[k] = nxt
                cur = nxt

    def listify(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: listify(v) for k, v in node.items()}
            if node and all(k.isdigit() for k in node):
                return [node[k] for k in sorted(node, key=int)]
        return node

    out = listify(root)
    assert isinstance(out, dict)
    return out


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: JSON
    request_id: str


class FakeStripe(FakeServer):
    """Stripe's API on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        rate: float | None = 25.0,
        burst: float | None = None,
        rate_limit_retry_after: float | None = None,
        search_delay: float = 0.0,
        clock: Clock = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        :param api_key: the accepted secret key (None: any ``sk_test_``/``rk_test_`` key).
        :param rate: requests a second before 429s (None: no limit); ``burst`` defaults to it.
        :param search_delay: seconds (``clock``) before a new PaymentIntent is searchable.
        :param now: wall clock for ``created`` timestamps (seconds since the epoch).
        """
        super().__init__(clock=clock)
        self.api_key = api_key
        self.limiter = TokenBucket(rate, burst, clock) if rate else None
        self.rate_limit_retry_after = rate_limit_retry_after
        self.search_delay = search_delay
        self.now = now
        self.payment_intents: dict[str, JSON] = {}
        self.charges: dict[str, JSON] = {}
        self.refunds: dict[str, JSON] = {}
        self.readers: dict[str, JSON] = {}
        self.executions: Counter[str] = Counter()
        self.replays: Counter[str] = Counter()
        self.errors: list[JSON] = []
        self._idem: dict[str, _Stored] = {}
        self._seq = itertools.count(1)
        self._visible_at: dict[str, float] = {}
        self._process_refusals: dict[str, tuple[str, bool, Callable[[], object] | None]] = {}

    # -- helpers for tests ----------------------------------------------------------------

    def add_reader(self, reader_id: str | None = None, *, label: str = "Counter",
                   status: str = "online") -> str:
        """Register a Terminal reader (``status`` "online" or "offline"); returns its id."""
        rid = reader_id or self._id("tmr")
        self.readers[rid] = {
            "id": rid, "object": "terminal.reader", "action": None,
            "device_sw_version": "2.42.0", "device_type": "bbpos_wisepos_e",
            "ip_address": "192.0.2.10", "label": label, "last_seen_at": int(self.now() * 1000),
            "livemode": False, "location": "tml_fake", "metadata": {},
            "serial_number": f"WSC5{next(self._seq):011d}", "status": status,
        }
        return rid

    def set_reader_status(self, reader_id: str, status: str) -> None:
        """The reader goes ``offline`` (unplugged, no network) or comes back ``online``."""
        self.readers[reader_id]["status"] = status

    def occupy_reader(self, reader_id: str, payment_intent: str = "pi_someone_else") -> None:
        """Another integration's action is in progress on the reader (it is busy)."""
        self.readers[reader_id]["action"] = {
            "type": "process_payment_intent", "status": "in_progress", "failure_code": None,
            "failure_message": None, "api_error": None,
            "process_payment_intent": {"payment_intent": payment_intent,
                                       "process_config": None}}

    def refuse_next_process(self, reader_id: str, code: str = "terminal_reader_timeout", *,
                            took: bool, then: Callable[[], object] | None = None) -> None:
        """The reader's next ``process_payment_intent`` is answered 400 ``code`` (a reader
        that did not answer Stripe in time; the code's name is *unverified*). ``took``:
        the reader got the action all the same (it is in progress); ``then`` runs right
        after (the customer taps at once, say)."""
        self._process_refusals[reader_id] = (code, took, then)

    def reader_intent(self, reader_id: str) -> str | None:
        """The PaymentIntent the reader's action is processing, if any."""
        action = self.readers[reader_id]["action"]
        return str(action["process_payment_intent"]["payment_intent"]) if action else None

    def present_payment_method(self, reader_id: str, card_number: str = "4242424242424242") -> JSON:
        """What the test helper endpoint does: the customer taps ``card_number``."""
        return self._present(reader_id, {"card_present": {"number": card_number}})

    def find_by_metadata(self, key: str, value: str) -> list[JSON]:
        return [pi for pi in self.payment_intents.values() if pi["metadata"].get(key) == value]

    # -- HTTP plumbing --------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_Fake{next(self._seq):020d}"

    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/payment_intents", self._h_pi_create)
        r.add_get("/v1/payment_intents", self._h_pi_list)
        r.add_get("/v1/payment_intents/search", self._h_pi_search)
        r.add_get("/v1/payment_intents/{id}", self._h_pi_get)
        r.add_post("/v1/payment_intents/{id}/confirm", self._h_pi_confirm)
        r.add_post("/v1/payment_intents/{id}/capture", self._h_pi_capture)
        r.add_post("/v1/payment_intents/{id}/cancel", self._h_pi_cancel)
        r.add_post("/v1/refunds", self._h_refund_create)
        r.add_get("/v1/refunds", self._h_refund_list)
        r.add_get("/v1/refunds/{id}", self._h_refund_get)
        r.add_get("/v1/terminal/readers/{id}", self._h_reader_get)
        r.add_post("/v1/terminal/readers/{id}/process_payment_intent", self._h_reader_process)
        r.add_post("/v1/terminal/readers/{id}/cancel_action", self._h_reader_cancel)
        r.add_post("/v1/test_helpers/terminal/readers/{id}/present_payment_method",
                   self._h_reader_present)

    def _middlewares(self) -> list[Any]:
        return [self._service_middleware]

    def _respond(self, status: int, body: JSON, headers: dict[str, str] | None = None,
                 request_id: str | None = None) -> web.Response:
        h = {"Request-Id": request_id or self._id("req")}
        h.update(headers or {})
        if status >= 400:
            self.errors.append(body.get("error", body))
        return json_response(body, status, h)

    def _error(self, e: StripeError) -> web.Response:
        return self._respond(e.status, e.body(), e.headers)

    def fault_response(self, status: int) -> web.Response:
        return self._respond(status, self._fault_body())

    @staticmethod
    def _fault_body() -> JSON:
        return {"error": {"type": "api_error", "message": "An unknown error occurred"}}

    def throttled_response(self, retry_after: float | None) -> web.Response:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
        return self._error(StripeError(
            429, "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.", code="rate_limit", headers=headers))

    @web.middleware
    async def _service_middleware(self, request: web.Request,
                                  handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else ""
        ok = key == self.api_key if self.api_key is not None else (
            key.startswith(("sk_test_", "rk_test_")) and len(key) > 8)
        if not ok:
            return self._error(StripeError(
                401, "invalid_request_error",
                f"Invalid API Key provided: {key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}"
                if key else "You did not provide an API key.",
                executed=False))
        if self.limiter is not None and not self.limiter.try_take():
            self.stats.throttled += 1
            return self.throttled_response(self.rate_limit_retry_after)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except StripeError as e:
            return self._error(e)
        except web.HTTPNotFound:
            return self._error(StripeError(
                404, "invalid_request_error",
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                f"https://stripe.com/docs or we can help at https://support.stripe.com/."))
        except web.HTTPMethodNotAllowed:
            return self._error(StripeError(
                404, "invalid_request_error",
                f"Unrecognized request URL ({request.method}: {request.path})."))

    async def _params(self, request: web.Request) -> JSON:
        if request.method == "GET":
            text = request.query_string
        else:
            ctype = request.headers.get("Content-Type", "")
            if ctype and not ctype.startswith("application/x-www-form-urlencoded"):
                raise _invalid(f"Invalid request: unsupported Content-Type {ctype}. If error "
                               "persists and you need assistance, please contact "
                               "support@stripe.com.")
            text = (await request.read()).decode()
        return decode_form(parse_qsl(text, keep_blank_values=True))

    async def _idempotent(self, request: web.Request, params: JSON,
                          run: Callable[[], tuple[int, JSON]]) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            try:
                status, body = run()
            except StripeError as e:
                return self._error(e)
            return self._respond(status, body)
        if len(key) > 255:
            return self._error(_invalid("The Idempotency-Key header must be 255 characters or "
                                        "fewer.", code="idempotency_key_too_long"))
        fingerprint = canonical([request.method, request.path, params])
        stored = self._idem.get(key)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                return self._error(StripeError(
                    400, "idempotency_error",
                    f"Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    f"meant to execute a different request.",
                    headers={"Stripe-Should-Retry": "false"}))
            self.replays[key] += 1
            return self._respond(stored.status, stored.body,
                                 {"Idempotent-Replayed": "true",
                                  "Original-Request": stored.request_id})
        headers: dict[str, str] = {}
        try:
            status, body = run()
            executed = True
        except StripeError as e:
            status, body, executed, headers = e.status, e.body(), e.executed, e.headers
        if executed:
            self.executions[key] += 1
            if request.get(LOST_ANSWER_KEY) is not None:  # the answer will be lost: store it
                status, body = int(request[LOST_ANSWER_KEY]), self._fault_body()
            request_id = self._id("req")
            self._idem[key] = _Stored(fingerprint, status, body, request_id)
            return self._respond(status, body, headers, request_id)
        return self._respond(status, body, headers)

    # -- parameter parsing ----------------------------------------------------------------

    @staticmethod
    def _check_known(params: JSON, allowed: frozenset[str] | set[str]) -> None:
        for k in params:
            if k not in allowed:
                raise _invalid(f"Received unknown parameter: {k}", param=k,
                               code="parameter_unknown")

    @staticmethod
    def _int(params: JSON, name: str, *, required: bool = False,
             minimum: int | None = None) -> int | None:
        raw = params.get(name)
        if raw is None:
            if required:
                raise _invalid(f"Missing required param: {name}.", param=name,
                               code="parameter_missing")
            return None
        if not isinstance(raw, str) or not re.fullmatch(r"-?\d+", raw):
            raise _invalid(f"Invalid integer: {raw}", param=name,
                           code="parameter_invalid_integer")
        value = int(raw)
        if minimum is not None and value < minimum:
            raise _invalid(f"This value must be greater than or equal to {minimum}.",
                           param=name, code="parameter_invalid_integer")
        return value

    @staticmethod
    def _bool(params: JSON, name: str) -> bool:
        raw = params.get(name)
        if raw is None:
            return False
        if raw not in ("true", "false"):
            raise _invalid(f"Invalid boolean: {raw}", param=name, code="parameter_invalid_boolean")
        return bool(raw == "true")

    @staticmethod
    def _str(params: JSON, name: str, *, required: bool = False,
             choices: tuple[str, ...] | None = None) -> str | None:
        raw = params.get(name)
        if raw is None or raw == "":
            if required:
                raise _invalid(f"Missing required param: {name}.", param=name,
                               code="parameter_missing")
            return None
        if not isinstance(raw, str):
            raise _invalid(f"Invalid string: {raw!r}", param=name, code="parameter_invalid")
        if choices is not None and raw not in choices:
            raise _invalid(f"Invalid {name}: must be one of {', '.join(choices)}", param=name,
                           code="parameter_invalid")
        return raw

    @staticmethod
    def _metadata(params: JSON) -> dict[str, str]:
        raw = params.get("metadata")
        if raw is None or raw == "":
            return {}
        if not isinstance(raw, dict):
            raise _invalid("Invalid object", param="metadata", code="parameter_invalid")
        if len(raw) > 50:
            raise _invalid("Metadata can have up to 50 keys.", param="metadata")
        out: dict[str, str] = {}
        for k, v in raw.items():
            if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
                raise _invalid(f"Invalid metadata entry {k!r}: keys up to 40 characters, "
                               "values up to 500.", param=f"metadata[{k}]")
            if v != "":
                out[k] = v
        return out

    def _pi(self, pid: str) -> JSON:
        pi = self.payment_intents.get(pid)
        if pi is None:
            raise _missing("payment_intent", pid, "intent")
        return pi

    def _page(self, items: list[JSON], params: JSON, url: str) -> JSON:
        limit = self._int(params, "limit", minimum=1) or 10
        limit = min(limit, 100)
        items = sorted(items, key=lambda o: (o["created"], o["id"]), reverse=True)
        after, before = params.get("starting_after"), params.get("ending_before")
        ids = [o["id"] for o in items]
        if after:
            if after not in ids:
                raise _missing("object", after, "starting_after")
            items = items[ids.index(after) + 1:]
        elif before:
            if before not in ids:
                raise _missing("object", before, "ending_before")
            items = items[:ids.index(before)][-limit:]
        return {"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                "url": url}

    # -- PaymentIntents -------------------------------------------------------------------

    async def _h_pi_create(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, _PI_CREATE_PARAMS)
        amount = self._int(params, "amount", required=True, minimum=1)
        currency = self._str(params, "currency", required=True)
        assert amount is not None and currency is not None
        minimum = MINIMUM_CHARGE.get(currency.lower(), 50)
        if amount < minimum:
            raise _invalid(f"Amount must be at least {minimum} {currency.lower()} in minor"
                           " units (Stripe's minimum charge amount).", param="amount",
                           code="amount_too_small")
        if amount > MAXIMUM_CHARGE:
            raise _invalid(f"Amount must be no more than {MAXIMUM_CHARGE} {currency.lower()}"
                           " in minor units.", param="amount", code="amount_too_large")
        confirm = self._bool(params, "confirm")
        capture_method = self._str(params, "capture_method",
                                   choices=("automatic", "automatic_async", "manual"))
        allowed, types = self._payment_method_types(request, params)
        pm = self._str(params, "payment_method")
        metadata = self._metadata(params)
        if confirm and pm is None:
            raise _invalid("You cannot confirm this PaymentIntent because it's missing a payment "
                           "method. To confirm the PaymentIntent, provide a payment_method.",
                           param="payment_method", code="parameter_missing")
        if pm is not None:
            self._check_payment_method(pm, types)

        def run() -> tuple[int, JSON]:
            pid = self._id("pi")
            pi: JSON = {
                "id": pid, "object": "payment_intent", "amount": amount,
                "amount_capturable": 0, "amount_details": {"tip": {}}, "amount_received": 0,
                "application": None, "application_fee_amount": None,
                "allowed_payment_method_types": allowed,
                "automatic_payment_methods": None, "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": capture_method or "automatic_async",
                "client_secret": f"{pid}_secret_fake", "confirmation_method": "automatic",
                "created": int(self.now()), "currency": currency.lower(),
                "customer": params.get("customer"), "description": params.get("description"),
                "last_payment_error": None, "latest_charge": None, "livemode": False,
                "metadata": metadata, "next_action": None, "on_behalf_of": None,
                "payment_method": pm, "payment_method_options": {},
                "payment_method_types": types, "processing": None,
                "receipt_email": params.get("receipt_email"), "review": None,
                "setup_future_usage": None, "shipping": None, "source": None,
                "statement_descriptor": params.get("statement_descriptor"),
                "statement_descriptor_suffix": params.get("statement_descriptor_suffix"),
                "status": "requires_confirmation" if pm else "requires_payment_method",
                "transfer_data": None, "transfer_group": None,
            }
            self.payment_intents[pid] = pi
            self._visible_at[pid] = self.clock() + self.search_delay
            if confirm:
                assert pm is not None
                self._confirm(pi, pm)
            return 200, pi

        return await self._idempotent(request, params, run)

    def _payment_method_types(self, request: web.Request,
                              params: JSON) -> tuple[list[str] | None, list[str]]:
        """(allowed_payment_method_types, the resulting payment_method_types)."""
        version = request.headers.get("Stripe-Version") or DEFAULT_API_VERSION
        legacy = params.get("payment_method_types")
        allowed = params.get("allowed_payment_method_types")
        if legacy is not None and version[:10] >= PMT_REMOVED_IN:
            raise _invalid(f"payment_method_types is no longer supported on API version "
                           f"{version}: use allowed_payment_method_types (or "
                           f"excluded_payment_method_types).", param="payment_method_types",
                           code="payment_method_types_no_longer_supported")
        if allowed is not None and any(params.get(k) is not None for k in (
                "payment_method_types", "excluded_payment_method_types",
                "automatic_payment_methods", "payment_method_configuration")):
            raise _invalid("allowed_payment_method_types cannot be used with "
                           "payment_method_types, excluded_payment_method_types, "
                           "automatic_payment_methods or payment_method_configuration.",
                           param="allowed_payment_method_types", code="parameter_invalid")
        for name, value in (("payment_method_types", legacy),
                            ("allowed_payment_method_types", allowed)):
            if value is not None and (not isinstance(value, list) or not value
                                      or not all(isinstance(t, str) for t in value)):
                raise _invalid("Invalid array", param=name, code="parameter_invalid")
        return allowed, list(allowed or legacy or ["card"])

    def _check_payment_method(self, pm: str, types: list[str]) -> None:
        if not pm.startswith("pm_card_"):
            raise _invalid(f"No such PaymentMethod: '{pm}'", param="payment_method",
                           code="resource_missing")
        if "card" not in types:
            raise _invalid("The provided PaymentMethod has type card, which is not in the "
                           f"payment_method_types of this PaymentIntent ({', '.join(types)}).",
                           param="payment_method", code="payment_intent_invalid_parameter")

    def _new_charge(self, pi: JSON, pm: str, *, status: str, captured: bool,
                    card_present: bool = False, number: str = "4242424242424242") -> JSON:
        ch: JSON = {
            "id": self._id("ch"), "object": "charge", "amount": pi["amount"],
            "amount_captured": pi["amount"] if captured else 0, "amount_refunded": 0,
            "captured": captured, "created": int(self.now()), "currency": pi["currency"],
            "livemode": False, "metadata": dict(pi["metadata"]), "paid": status == "succeeded",
            "payment_intent": pi["id"], "payment_method": pm, "refunded": False,
            "status": status,
            "payment_method_details": {"type": "card_present" if card_present else "card"},
        }
        if card_present:  # what a reader reports: never the number, its last four digits
            ch["payment_method_details"]["card_present"] = {
                "brand": _brand(number), "last4": number[-4:], "exp_month": 12,
                "exp_year": 2030, "funding": "credit", "country": "US",
                "network": _brand(number), "read_method": "contactless_emv",
                "authorization_code": f"{next(self._seq) % 1000000:06d}"
                if status == "succeeded" else None,
                "receipt": {"application_preferred_name": _brand(number).upper(),
                            "dedicated_file_name": "A0000000031010",
                            "authorization_response_code": "3030" if status == "succeeded"
                            else "3035"},
            }
        self.charges[ch["id"]] = ch
        pi["latest_charge"] = ch["id"]
        return ch

    def _confirm(self, pi: JSON, pm: str, *, card_present: bool = False,
                 decline: tuple[str, str | None, str] | None = None,
                 number: str = "4242424242424242") -> None:
        """Charge ``pi`` with ``pm``; raises the 402 of a decline (PI stays usable)."""
        pi["payment_method"] = pm
        decline = decline or DECLINES.get(pm)
        if decline is not None:
            code, decline_code, message = decline
            ch = self._new_charge(pi, pm, status="failed", captured=False,
                                  card_present=card_present, number=number)
            pm_obj = {"id": pm, "object": "payment_method",
                      "type": "card_present" if card_present else "card"}
            pi["status"] = "requires_payment_method"
            pi["last_payment_error"] = {
                "type": "card_error", "code": code, "decline_code": decline_code,
                "message": message, "charge": ch["id"], "payment_method": pm_obj,
            }
            raise StripeError(402, "card_error", message, code=code, decline_code=decline_code,
                              extra={"charge": ch["id"], "payment_intent": dict(pi),
                                     "payment_method": pm_obj})
        pi["last_payment_error"] = None
        if pi["capture_method"] == "manual":
            self._new_charge(pi, pm, status="succeeded", captured=False,
                             card_present=card_present, number=number)
            pi["status"] = "requires_capture"
            pi["amount_capturable"] = pi["amount"]
        else:
            self._new_charge(pi, pm, status="succeeded", captured=True,
                             card_present=card_present, number=number)
            pi["status"] = "succeeded"
            pi["amount_received"] = pi["amount"]

    async def _h_pi_get(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"expand", "client_secret"})
        return self._respond(200, self._expanded(self._pi(request.match_info["id"]),
                                                 params, ""))

    def _expanded(self, pi: JSON, params: JSON, prefix: str) -> JSON:
        """``expand[]=latest_charge`` (``data.latest_charge`` in lists): the charge object."""
        expand = params.get("expand") or []
        if isinstance(expand, str):
            expand = [expand]
        if f"{prefix}latest_charge" in expand and pi.get("latest_charge"):
            return {**pi, "latest_charge": self.charges[pi["latest_charge"]]}
        return pi

    async def _h_pi_list(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"limit", "starting_after", "ending_before", "customer",
                                   "created", "expand"})
        items = list(self.payment_intents.values())
        if params.get("customer"):
            items = [pi for pi in items if pi["customer"] == params["customer"]]
        created = params.get("created")
        if isinstance(created, dict):
            for op, raw in created.items():
                bound = int(raw)
                items = [pi for pi in items if {
                    "gt": pi["created"] > bound, "gte": pi["created"] >= bound,
                    "lt": pi["created"] < bound, "lte": pi["created"] <= bound,
                }.get(op, True)]
        elif isinstance(created, str):
            items = [pi for pi in items if pi["created"] == int(created)]
        return self._respond(200, self._page(items, params, "/v1/payment_intents"))

    async def _h_pi_search(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"query", "limit", "page", "expand"})
        query = self._str(params, "query", required=True)
        assert query is not None
        pred = _search_predicate(query)
        limit = min(self._int(params, "limit", minimum=1) or 10, 100)
        now = self.clock()
        found = [pi for pi in self.payment_intents.values()
                 if self._visible_at.get(pi["id"], 0.0) <= now and pred(pi)]
        found.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
        page = int(params.get("page") or 0)
        chunk = [self._expanded(pi, params, "data.") for pi in found[page:page + limit]]
        has_more = len(found) > page + limit
        return self._respond(200, {
            "object": "search_result", "data": chunk, "has_more": has_more,
            "next_page": str(page + limit) if has_more else None,
            "url": "/v1/payment_intents/search",
        })

    async def _h_pi_confirm(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"payment_method", "capture_method", "return_url", "expand",
                                   "off_session", "error_on_requires_action", "mandate_data",
                                   "payment_method_options", "receipt_email", "use_stripe_sdk",
                                   "setup_future_usage", "shipping", "payment_method_data",
                                   "radar_options"})
        pi = self._pi(request.match_info["id"])

        def run() -> tuple[int, JSON]:
            if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
                raise _invalid(f"You cannot confirm this PaymentIntent because it has a status "
                               f"of {pi['status']}.", code="payment_intent_unexpected_state",
                               executed=True)
            pm = params.get("payment_method") or pi["payment_method"]
            if not pm:
                raise _invalid("You cannot confirm this PaymentIntent because it's missing a "
                               "payment method.", param="payment_method",
                               code="payment_intent_unexpected_state", executed=True)
            self._check_payment_method(pm, pi["payment_method_types"])
            if params.get("capture_method"):
                pi["capture_method"] = params["capture_method"]
            self._confirm(pi, pm)
            return 200, pi

        return await self._idempotent(request, params, run)

    async def _h_pi_capture(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"amount_to_capture", "metadata", "expand", "final_capture",
                                   "statement_descriptor", "statement_descriptor_suffix",
                                   "application_fee_amount", "transfer_data"})
        pi = self._pi(request.match_info["id"])
        amount = self._int(params, "amount_to_capture", minimum=1)
        metadata = self._metadata(params)

        def run() -> tuple[int, JSON]:
            if pi["status"] != "requires_capture":
                raise _invalid(
                    f"This PaymentIntent could not be captured because it has a status of "
                    f"{pi['status']}. Only a PaymentIntent with one of the following statuses "
                    f"may be captured: requires_capture.",
                    code="payment_intent_unexpected_state", executed=True)
            to_capture = amount if amount is not None else pi["amount_capturable"]
            if to_capture > pi["amount_capturable"]:
                raise _invalid("The amount to capture must be less than or equal to the "
                               "amount capturable.", param="amount_to_capture",
                               code="amount_too_large", executed=True)
            pi["metadata"].update(metadata)
            pi["amount_received"] = to_capture
            pi["amount_capturable"] = 0
            pi["status"] = "succeeded"
            ch = self.charges[pi["latest_charge"]]
            ch["captured"] = True
            ch["amount_captured"] = to_capture
            return 200, pi

        return await self._idempotent(request, params, run)

    async def _h_pi_cancel(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"cancellation_reason", "expand"})
        pi = self._pi(request.match_info["id"])
        reason = self._str(params, "cancellation_reason",
                           choices=("duplicate", "fraudulent", "requested_by_customer",
                                    "abandoned"))

        def run() -> tuple[int, JSON]:
            if pi["status"] not in _CANCELABLE:
                raise _invalid(
                    f"You cannot cancel this PaymentIntent because it has a status of "
                    f"{pi['status']}. Only a PaymentIntent with one of the following statuses "
                    f"may be canceled: {', '.join(_CANCELABLE)}.",
                    code="payment_intent_unexpected_state", executed=True)
            pi["status"] = "canceled"
            pi["canceled_at"] = int(self.now())
            pi["cancellation_reason"] = reason
            pi["amount_capturable"] = 0
            for reader in self.readers.values():
                action = reader["action"]
                if (action and action["status"] == "in_progress"
                        and action["process_payment_intent"]["payment_intent"] == pi["id"]):
                    reader["action"] = None
            return 200, pi

        return await self._idempotent(request, params, run)

    # -- Refunds --------------------------------------------------------------------------

    async def _h_refund_create(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"payment_intent", "charge", "amount", "reason", "metadata",
                                   "expand", "instructions_email", "refund_application_fee",
                                   "reverse_transfer", "origin", "currency", "customer"})
        amount = self._int(params, "amount", minimum=1)
        reason = self._str(params, "reason",
                           choices=("duplicate", "fraudulent", "requested_by_customer"))
        metadata = self._metadata(params)
        pid, chid = params.get("payment_intent"), params.get("charge")
        if not pid and not chid:
            raise _invalid("One of the following params should be provided for this request: "
                           "payment_intent or charge.", code="parameter_missing")
        if pid:
            pi = self.payment_intents.get(pid)
            if pi is None:
                raise _invalid(f"No such payment_intent: '{pid}'", param="payment_intent",
                               code="resource_missing")
            chid = pi["latest_charge"] if pi["status"] == "succeeded" else None
            if chid is None:
                raise _invalid(f"This PaymentIntent ({pid}) does not have a successful charge "
                               f"to refund.", param="payment_intent",
                               code="charge_not_refundable")
        assert chid is not None
        ch = self.charges.get(chid)
        if ch is None:
            raise _invalid(f"No such charge: '{chid}'", param="charge", code="resource_missing")

        def run() -> tuple[int, JSON]:
            remaining = ch["amount_captured"] - ch["amount_refunded"]
            if remaining <= 0:
                raise _invalid(f"Charge {chid} has already been refunded.",
                               code="charge_already_refunded", executed=True)
            value = amount if amount is not None else remaining
            if value > remaining:
                raise _invalid(f"Refund amount ({value}) is greater than unrefunded amount on "
                               f"charge ({remaining})", param="amount", code="amount_too_large",
                               executed=True)
            ch["amount_refunded"] += value
            ch["refunded"] = ch["amount_refunded"] >= ch["amount_captured"]
            refund: JSON = {
                "id": self._id("re"), "object": "refund", "amount": value,
                "balance_transaction": None, "charge": chid, "created": int(self.now()),
                "currency": ch["currency"], "destination_details": None, "metadata": metadata,
                "payment_intent": ch["payment_intent"], "reason": reason,
                "receipt_number": None, "source_transfer_reversal": None,
                "status": "succeeded", "transfer_reversal": None,
            }
            self.refunds[refund["id"]] = refund
            return 200, refund

        return await self._idempotent(request, params, run)

    async def _h_refund_get(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"expand"})
        rid = request.match_info["id"]
        refund = self.refunds.get(rid)
        if refund is None:
            raise _missing("refund", rid, "refund")
        return self._respond(200, refund)

    async def _h_refund_list(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"payment_intent", "charge", "limit", "starting_after",
                                   "ending_before", "created", "expand"})
        items = list(self.refunds.values())
        if params.get("payment_intent"):
            items = [r for r in items if r["payment_intent"] == params["payment_intent"]]
        if params.get("charge"):
            items = [r for r in items if r["charge"] == params["charge"]]
        return self._respond(200, self._page(items, params, "/v1/refunds"))

    # -- Terminal -------------------------------------------------------------------------

    def _reader(self, rid: str) -> JSON:
        reader = self.readers.get(rid)
        if reader is None:
            raise _missing("terminal.reader", rid, "reader")
        return reader

    async def _h_reader_get(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"expand"})
        reader = self._reader(request.match_info["id"])
        expand = params.get("expand") or []
        path = "action.process_payment_intent.payment_intent"
        action = reader["action"]
        if action and any(e in (path, f"{path}.latest_charge") for e in expand):
            pi = self.payment_intents.get(action["process_payment_intent"]["payment_intent"])
            if pi is not None:
                inner = self._expanded(pi, {"expand": [e[len(path) + 1:] for e in expand
                                                       if e.startswith(path + ".")]}, "")
                reader = {**reader, "action": {**action, "process_payment_intent": {
                    **action["process_payment_intent"], "payment_intent": inner}}}
        return self._respond(200, reader)

    async def _h_reader_process(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"payment_intent", "process_config", "expand"})
        reader = self._reader(request.match_info["id"])
        pid = self._str(params, "payment_intent", required=True)
        assert pid is not None
        pi = self.payment_intents.get(pid)
        if pi is None:
            raise _invalid(f"No such payment_intent: '{pid}'", param="payment_intent",
                           code="resource_missing")

        def run() -> tuple[int, JSON]:
            if reader["status"] != "online":
                raise _invalid("Reader is currently offline, please ensure the reader is "
                               "powered on and connected to the internet before retrying "
                               "your request.", code="terminal_reader_offline", executed=True)
            if reader["action"] and reader["action"]["status"] == "in_progress":
                raise _invalid("Reader is currently busy processing another request. Please "
                               "try again later.", code="terminal_reader_busy", executed=True)
            if not {"card_present", "interac_present"} & set(pi["payment_method_types"]):
                raise _invalid("The PaymentIntent must have card_present in its "
                               "payment_method_types.", param="payment_intent",
                               code="payment_intent_invalid_parameter", executed=True)
            if pi["status"] not in ("requires_payment_method", "requires_confirmation"):
                raise _invalid(f"This PaymentIntent has a status of {pi['status']} and cannot "
                               f"be processed.", code="payment_intent_unexpected_state",
                               executed=True)
            refusal = self._process_refusals.pop(reader["id"], None)
            if refusal is None or refusal[1]:
                reader["action"] = {
                    "type": "process_payment_intent", "status": "in_progress",
                    "failure_code": None, "failure_message": None, "api_error": None,
                    "process_payment_intent": {"payment_intent": pid,
                                               "process_config": params.get("process_config")},
                }
            if refusal is not None:
                code, _took, then = refusal
                if then is not None:
                    then()
                raise _invalid("The Reader did not respond in time. Check the reader's"
                               " status before retrying.", code=code, executed=True)
            return 200, reader

        return await self._idempotent(request, params, run)

    async def _h_reader_cancel(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"expand"})
        reader = self._reader(request.match_info["id"])

        def run() -> tuple[int, JSON]:
            action = reader["action"]
            if not action or action["status"] != "in_progress":
                raise _invalid("This Reader has no in-progress action to cancel.",
                               code="terminal_reader_invalid_state", executed=True)
            # Unverified detail: Stripe documents that the action stops; the fake marks it
            # failed with failure_code "canceled".
            action.update(status="failed", failure_code="canceled",
                          failure_message="The action was canceled.")
            return 200, reader

        return await self._idempotent(request, params, run)

    async def _h_reader_present(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        self._check_known(params, {"type", "card_present", "card", "interac_present",
                                   "amount_tip", "expand"})
        rid = request.match_info["id"]
        self._reader(rid)
        return await self._idempotent(request, params, lambda: (200, self._present(rid, params)))

    def _present(self, rid: str, params: JSON) -> JSON:
        reader = self._reader(rid)
        action = reader["action"]
        if not action or action["status"] != "in_progress":
            raise _invalid("This Reader has no in-progress action to present a payment "
                           "method to.", code="terminal_reader_invalid_state", executed=True)
        pi = self.payment_intents[action["process_payment_intent"]["payment_intent"]]
        card = params.get("card_present") or {}
        number = card.get("number", "4242424242424242") if isinstance(card, dict) else ""
        pm = self._id("pm")
        try:
            self._confirm(pi, pm, card_present=True, decline=TERMINAL_DECLINES.get(number),
                          number=number)
        except StripeError as e:
            action.update(status="failed", failure_code=e.code, failure_message=e.message,
                          api_error={"type": e.type, "code": e.code,
                                     "decline_code": e.decline_code, "message": e.message})
            return reader
        action["status"] = "succeeded"
        return reader


def _brand(number: str) -> str:
    """The card brand Stripe names for a test number (by its first digits)."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("51", "52", "53", "54", "55") or number[:2] == "22":
        return "mastercard"
    if number[:2] in ("34", "37"):
        return "amex"
    return "unknown"


def _search_predicate(query: str) -> Callable[[JSON], bool]:
    """Stripe's search query language, enough of it for PaymentIntents."""
    clause = re.compile(
        r"""\s*(-?)(metadata\[(['"])(.+?)\3\]|[a-z_]+)\s*(:|>=|<=|>|<)\s*"""
        r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s]+)\s*"""
    )
    parts = re.split(r"\s+(AND|OR)\s+", query.strip())
    clauses, joins = parts[::2], set(parts[1::2])
    if len(joins) > 1:
        raise _invalid("Search queries cannot mix AND and OR.", param="query",
                       code="parameter_invalid")
    preds: list[Callable[[JSON], bool]] = []
    for text in clauses:
        m = clause.fullmatch(text)
        if m is None:
            raise _invalid(f"Invalid search query: could not parse {text!r}", param="query",
                           code="parameter_invalid")
        negate, field, meta_key, op, raw = m.group(1), m.group(2), m.group(4), m.group(5), \
            m.group(6)
        value = json.loads(raw) if raw.startswith('"') else (
            raw[1:-1].replace("\\'", "'") if raw.startswith("'") else raw)

        if meta_key is None and field not in ("status", "currency", "customer", "amount",
                                              "created"):
            raise _invalid(f"Field '{field}' is an unsupported search field for resource "
                           f"payment_intents.", param="query", code="parameter_invalid")

        def get(pi: JSON, field: str = field, meta_key: str | None = meta_key) -> Any:
            if meta_key is not None:
                return pi["metadata"].get(meta_key)
            return pi.get(field)

        def pred(pi: JSON, get: Callable[[JSON], Any] = get, op: str = op, value: str = value,
                 negate: bool = bool(negate)) -> bool:
            actual = get(pi)
            if op == ":":
                result = actual is not None and str(actual) == value
            else:
                try:
                    a, v = int(actual), int(value)
                except (TypeError, ValueError):
                    return False
                result = {">": a > v, ">=": a >= v, "<": a < v, "<=": a <= v}[op]
            return result != negate

        preds.append(pred)
    if joins == {"OR"}:
        return lambda pi: any(p(pi) for p in preds)
    return lambda pi: all(p(pi) for p in preds)


__all__ = ["DECLINES", "TERMINAL_DECLINES", "FakeStripe", "StripeError", "decode_form"]
