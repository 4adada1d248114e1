"""Square Terminal checkouts: the calls a ``square_terminal`` lane makes, as typed values.

The lane's driver (``drivers/square_terminal``) calls this client, which goes through the
``square`` destination's circuit breaker and token bucket (the ones the outbox worker uses),
never retried by the SDK (the daemon's policy decides).

- ``ping`` / ``action``: a ``PING`` terminal action (``POST /v2/terminals/actions``, ``type:
  PING``, to the Terminal API's ``device_id``) and its status, read back by its id: Square's
  own advice for telling whether a Terminal is reachable (``COMPLETED``: it answered;
  ``CANCELED`` with ``TIMED_OUT``: it did not answer within the action's deadline). The
  Devices API is not used: it names a device by a synthetic ``device:…`` id, not the
  Terminal API's ``device_id`` (``GET /v2/devices/{device_id}`` is a 404 for a healthy
  Terminal), it is beta and "periodically updated, not real-time".
- ``create``: ``POST /v2/terminals/checkouts`` under the key ``edged-<payment>-co``
  (Square keeps the first answer of a key: a resend after a lost answer gets the same
  checkout, never a second one). The checkout's ``note`` is ``edged <payment>``.
- ``get``, ``cancel`` a checkout; ``find`` searches the device's checkouts
  (``POST /v2/terminals/checkouts/search``) for the one whose note names a payment (a read:
  what a restart uses when the checkout's id was never stored); ``payment`` reads a
  payment's card (brand, last four digits, authorisation code) once a checkout is
  ``COMPLETED``.

Errors: Square's error ``code`` decides, never the HTTP status: a refusal is
:class:`CheckoutRefused` with ``codes``; 429 → :class:`Throttled`; 5xx, 408, 409, a dropped
answer → :class:`OutcomeUnknown`; nothing sent → :class:`TransientError`; 401/403 →
:class:`CredentialsRequired`; an open breaker → :class:`BreakerOpen`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import quote

from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.errors import CredentialsRequired, OutcomeUnknown, PermanentError
from sync.core.guarded import through
from sync.core.limiter import TokenBucket
from sync.square_api.calls import square_call
from sync.square_api.sdk import SquareSdk
from sync.square_api.wire import field, request

#: How long a PING may wait for the Terminal before Square cancels it (``TIMED_OUT``).
PING_DEADLINE_SECONDS = 30
#: How far back a restart searches for a checkout made before the stop.
SEARCH_MARGIN = timedelta(minutes=10)


class CheckoutRefused(PermanentError):
    """Square refused the call; ``codes`` are Square's error codes."""

    def __init__(self, message: str, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message, codes[0] if codes else None)
        self.args = (message, codes)
        self.codes = codes


@dataclass(frozen=True, slots=True)
class CheckoutView:
    id: str
    status: str
    """``PENDING``, ``IN_PROGRESS``, ``CANCEL_REQUESTED``, ``CANCELED`` or ``COMPLETED``."""
    amount: int
    currency: str
    payment_ids: tuple[str, ...] = ()
    cancel_reason: str | None = None
    note: str | None = None
    created_at: str | None = None


@dataclass(frozen=True, slots=True)
class ActionView:
    """A terminal action (a PING) as Square shows it."""

    id: str
    status: str
    """``PENDING``, ``IN_PROGRESS``, ``CANCEL_REQUESTED``, ``CANCELED`` or ``COMPLETED``."""
    cancel_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CardView:
    payment_id: str
    status: str | None
    brand: str | None = None
    last4: str | None = None
    auth_code: str | None = None


@dataclass(frozen=True, slots=True)
class SquareTerminalSettings:
    base_url: str | None = None
    location_id: str | None = None
    timeout: float = 20.0


def checkout_key(payment_id: str) -> str:
    return f"edged-{payment_id}-co"


def checkout_note(payment_id: str) -> str:
    """The note a checkout carries: what :meth:`SquareTerminalClient.find` looks for."""
    return f"edged {payment_id}"


def _view(c: Mapping[str, Any]) -> CheckoutView:
    money = c.get("amount_money") or {}
    reason = c.get("cancel_reason")
    return CheckoutView(id=str(c.get("id")), status=str(c.get("status")),
                        amount=int(money.get("amount") or 0),
                        currency=str(money.get("currency") or ""),
                        payment_ids=tuple(str(p) for p in c.get("payment_ids") or ()),
                        cancel_reason=str(reason) if reason else None,
                        note=c.get("note"), created_at=c.get("created_at"))


def _action(a: Mapping[str, Any]) -> ActionView:
    reason = a.get("cancel_reason")
    return ActionView(id=str(a.get("id")), status=str(a.get("status")),
                      cancel_reason=str(reason) if reason else None)


def _object(answer: Mapping[str, Any], name: str, what: str) -> Mapping[str, Any]:
    """The answer's ``name`` object (``checkout``, ``action``, ``payment``)."""
    found = answer.get(name)
    if not isinstance(found, Mapping):
        raise OutcomeUnknown(f"square answered {what} without a {name}")
    return found


class SquareTerminalClient:
    """Square's Terminal API through the ``square`` destination's breaker and bucket.

    Each call is the SDK's request (:func:`sync.square_api.wire.request`: its token,
    ``Square-Version``, base URL and timeout) sent on the aiohttp session its requests go
    out on, its answer's JSON read as it is: the typed calls' request building and the
    pydantic model of every answer were most of a Square Terminal lane's own CPU per
    payment (bench/README.md, issue 22). Never retried by itself (the daemon's policy).
    The request bodies are Square's own field names, checked by the tests' fake against
    Square's OpenAPI description.
    """

    def __init__(self, settings: SquareTerminalSettings,
                 token_provider: Callable[[], str | None], clock: Clock,
                 breaker: CircuitBreaker, bucket: TokenBucket) -> None:
        self.settings = settings
        self.breaker = breaker
        self.bucket = bucket
        self.calls = 0
        self._clock = clock
        self._token_provider = token_provider
        self._sdk = SquareSdk(settings.base_url, settings.timeout)  # built on first use

    async def close(self) -> None:
        await self._sdk.close()

    async def ping(self, device_id: str) -> ActionView:
        """Send a ``PING`` to the Terminal; its answer is read with :meth:`action`."""
        answer = await self._call("ping the Terminal", "v2/terminals/actions", "POST", {
            "idempotency_key": f"edged-ping-{uuid.uuid4().hex}",
            "action": {"device_id": device_id, "type": "PING",
                       "deadline_duration": f"PT{PING_DEADLINE_SECONDS}S"}})
        return _action(_object(answer, "action", "the PING"))

    async def action(self, action_id: str) -> ActionView:
        answer = await self._call("read the PING", f"v2/terminals/actions/{_id(action_id)}")
        return _action(_object(answer, "action", f"the read of action {action_id}"))

    async def find(self, device_id: str, payment_id: str,
                   since: datetime) -> CheckoutView | None:
        """The device's checkout whose note names ``payment_id``, made after ``since``."""
        note = checkout_note(payment_id)
        start = utc_iso(since - SEARCH_MARGIN)
        cursor: str | None = None
        for _ in range(20):  # 2000 checkouts of one device since the payment: enough
            body: dict[str, Any] = {
                "query": {"filter": {"device_id": device_id,
                                     "created_at": {"start_at": start}},
                          "sort": {"sort_order": "ASC"}},
                "limit": 100}
            if cursor:
                body["cursor"] = cursor
            answer = await self._call("search the checkouts", "v2/terminals/checkouts/search",
                                      "POST", body)
            for checkout in answer.get("checkouts") or ():
                if isinstance(checkout, Mapping) and checkout.get("note") == note:
                    return _view(checkout)
            cursor = answer.get("cursor")
            if not cursor:
                return None
        return None

    async def create(self, payment_id: str, device_id: str, amount: int, currency: str, *,
                     reference: str | None, manual_capture: bool,
                     deadline_seconds: float) -> CheckoutView:
        checkout: dict[str, Any] = {
            "amount_money": {"amount": amount, "currency": currency.upper()},
            "device_options": {"device_id": device_id},
            "note": checkout_note(payment_id),
            "deadline_duration": f"PT{max(10, int(deadline_seconds))}S",
        }
        if reference:
            checkout["reference_id"] = reference[:40]
        if manual_capture:
            checkout["payment_options"] = {"autocomplete": False}
        answer = await self._call("create the checkout", "v2/terminals/checkouts", "POST",
                                  {"idempotency_key": checkout_key(payment_id),
                                   "checkout": checkout})
        return _view(_object(answer, "checkout", "the checkout create"))

    async def get(self, checkout_id: str) -> CheckoutView:
        answer = await self._call("read the checkout",
                                  f"v2/terminals/checkouts/{_id(checkout_id)}")
        return _view(_object(answer, "checkout", f"the read of checkout {checkout_id}"))

    async def cancel(self, checkout_id: str) -> CheckoutView:
        answer = await self._call("cancel the checkout",
                                  f"v2/terminals/checkouts/{_id(checkout_id)}/cancel", "POST")
        return _view(_object(answer, "checkout", f"the cancel of checkout {checkout_id}"))

    async def payment(self, payment_id: str) -> CardView:
        answer = await self._call("read the payment", f"v2/payments/{_id(payment_id)}")
        p = _object(answer, "payment", f"the read of payment {payment_id}")
        details = field(p, "card_details")
        brand = field(details, "card", "card_brand")
        return CardView(payment_id=payment_id, status=p.get("status"),
                        brand=str(brand) if brand else None,
                        last4=field(details, "card", "last_4"),
                        auth_code=field(details, "auth_result_code"))

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, path: str, method: str = "GET",
                    body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        token = self._token_provider()
        if not token:
            raise CredentialsRequired("ERR-6006: no Square access token is set; set it with "
                                      "`edged secret set square.token`")
        self._sdk.token = token
        client, transport = self._sdk.client(), self._sdk.transport()

        async def limited() -> dict[str, Any]:
            await self.bucket.acquire()
            self.calls += 1
            return await square_call(
                what, partial(request, client, transport, path, method, body=body),
                self.bucket, self._clock,
                lambda refusal: CheckoutRefused(f"Square refused the call to {what}: "
                                                f"{refusal.message}", refusal.codes))

        return await through(self.breaker, limited)


def _id(value: str) -> str:
    """An id as one segment of a path."""
    return quote(value, safe="")


__all__ = ["ActionView", "CardView", "CheckoutRefused", "CheckoutView", "SquareTerminalClient",
           "SquareTerminalSettings", "checkout_key", "checkout_note"]
