"""Square Terminal checkouts: the calls a ``square_terminal`` lane makes, as typed values.

The lane's driver (``drivers/square_terminal``) calls this client, which goes through the
``square`` destination's circuit breaker and token bucket (the ones the outbox worker uses),
with ``request_options={"max_retries": 0}`` (the SDK would otherwise retry by itself).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.errors import CredentialsRequired, OutcomeUnknown, PermanentError
from sync.core.guarded import through
from sync.core.limiter import TokenBucket
from sync.square_api.calls import square_call
from sync.square_api.sdk import SquareSdk

if TYPE_CHECKING:
    from square.core.request_options import RequestOptions
    from square.payments.client import AsyncPaymentsClient
    from square.terminal.actions.client import AsyncActionsClient
    from square.terminal.checkouts.client import AsyncCheckoutsClient
    from square.types.terminal_action import TerminalAction
    from square.types.terminal_checkout import TerminalCheckout

T = TypeVar("T")
NO_RETRY: RequestOptions = {"max_retries": 0}
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


def _view(c: TerminalCheckout) -> CheckoutView:
    return CheckoutView(id=str(c.id), status=str(c.status),
                        amount=int(c.amount_money.amount or 0),
                        currency=str(c.amount_money.currency or ""),
                        payment_ids=tuple(c.payment_ids or ()),
                        cancel_reason=str(c.cancel_reason) if c.cancel_reason else None,
                        note=c.note, created_at=c.created_at)


def _action(a: TerminalAction) -> ActionView:
    return ActionView(id=str(a.id), status=str(a.status),
                      cancel_reason=str(a.cancel_reason) if a.cancel_reason else None)


class SquareTerminalClient:
    """Square's Terminal API through the ``square`` destination's breaker and bucket."""

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

    # The client's sub-client properties are untyped in the SDK: name their types.
    @property
    def _checkouts(self) -> AsyncCheckoutsClient:
        return cast("AsyncCheckoutsClient", self._sdk.client().terminal.checkouts)

    @property
    def _actions(self) -> AsyncActionsClient:
        return cast("AsyncActionsClient", self._sdk.client().terminal.actions)

    @property
    def _payments(self) -> AsyncPaymentsClient:
        return cast("AsyncPaymentsClient", self._sdk.client().payments)

    async def close(self) -> None:
        await self._sdk.close()

    async def ping(self, device_id: str) -> ActionView:
        """Send a ``PING`` to the Terminal; its answer is read with :meth:`action`."""
        answer = await self._call("ping the Terminal", lambda: self._actions.create(
            idempotency_key=f"edged-ping-{uuid.uuid4().hex}",
            action={"device_id": device_id, "type": "PING",
                    "deadline_duration": f"PT{PING_DEADLINE_SECONDS}S"},
            request_options=NO_RETRY))
        if answer.action is None:
            raise OutcomeUnknown("square answered the PING without an action")
        return _action(answer.action)

    async def action(self, action_id: str) -> ActionView:
        answer = await self._call("read the PING", lambda: self._actions.get(
            action_id, request_options=NO_RETRY))
        if answer.action is None:
            raise OutcomeUnknown(f"square answered without action {action_id}")
        return _action(answer.action)

    async def find(self, device_id: str, payment_id: str,
                   since: datetime) -> CheckoutView | None:
        """The device's checkout whose note names ``payment_id``, made after ``since``."""
        note = checkout_note(payment_id)
        start = utc_iso(since - SEARCH_MARGIN)
        cursor: str | None = None
        for _ in range(20):  # 2000 checkouts of one device since the payment: enough
            query: Any = {"filter": {"device_id": device_id,
                                     "created_at": {"start_at": start}},
                          "sort": {"sort_order": "ASC"}}
            page: dict[str, Any] = {"cursor": cursor} if cursor else {}
            answer = await self._call("search the checkouts", partial(
                self._checkouts.search, query=query, limit=100, request_options=NO_RETRY,
                **page))
            for checkout in answer.checkouts or ():
                if checkout.note == note:
                    return _view(checkout)
            cursor = answer.cursor
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
        answer = await self._call("create the checkout", lambda: self._checkouts.create(
            idempotency_key=checkout_key(payment_id), checkout=cast(Any, checkout),
            request_options=NO_RETRY))
        if answer.checkout is None:
            raise OutcomeUnknown("square answered the checkout create without a checkout")
        return _view(answer.checkout)

    async def get(self, checkout_id: str) -> CheckoutView:
        answer = await self._call("read the checkout", lambda: self._checkouts.get(
            checkout_id, request_options=NO_RETRY))
        if answer.checkout is None:
            raise OutcomeUnknown(f"square answered without checkout {checkout_id}")
        return _view(answer.checkout)

    async def cancel(self, checkout_id: str) -> CheckoutView:
        answer = await self._call("cancel the checkout", lambda: self._checkouts.cancel(
            checkout_id, request_options=NO_RETRY))
        if answer.checkout is None:
            raise OutcomeUnknown(f"square answered the cancel without checkout {checkout_id}")
        return _view(answer.checkout)

    async def payment(self, payment_id: str) -> CardView:
        answer = await self._call("read the payment", lambda: self._payments.get(
            payment_id, request_options=NO_RETRY))
        p = answer.payment
        if p is None:
            raise OutcomeUnknown(f"square answered without payment {payment_id}")
        details = p.card_details
        card = details.card if details is not None else None
        return CardView(payment_id=payment_id, status=p.status,
                        brand=str(card.card_brand) if card is not None and card.card_brand
                        else None,
                        last4=card.last4 if card is not None else None,
                        auth_code=details.auth_result_code if details is not None else None)

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        token = self._token_provider()
        if not token:
            raise CredentialsRequired("ERR-6006: no Square access token is set; set it with "
                                      "`edged secret set square.token`")
        self._sdk.token = token

        async def limited() -> T:
            await self.bucket.acquire()
            self.calls += 1
            return await self._sorted(what, call)

        return await through(self.breaker, limited)

    async def _sorted(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await square_call(
            what, call, self.bucket, self._clock,
            lambda refusal: CheckoutRefused(f"Square refused the call to {what}: "
                                            f"{refusal.message}", refusal.codes))


__all__ = ["ActionView", "CardView", "CheckoutRefused", "CheckoutView", "SquareTerminalClient",
           "SquareTerminalSettings", "checkout_key", "checkout_note"]
