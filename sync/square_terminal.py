"""Square Terminal checkouts: the calls a ``square_terminal`` lane makes, as typed values.

The lane's driver (``drivers/square_terminal``) calls this client, which goes through the
``square`` destination's circuit breaker and token bucket (the ones the outbox worker uses),
with ``request_options={"max_retries": 0}`` (the SDK would otherwise retry by itself).

- ``device``: ``GET /v2/devices/{id}``: Square's ``status.category`` (``AVAILABLE``,
  ``NEEDS_ATTENTION``, ``OFFLINE``). ``CreateTerminalCheckout`` accepts a checkout for a
  device that is off (it waits ``PENDING`` until its deadline), so the lane asks the device
  first. That the Devices API takes the Terminal API's ``device_id`` as it is, is
  *unverified*; a device Square does not know answers ``NOT_FOUND``, which the lane treats
  as offline.
- ``create``: ``POST /v2/terminals/checkouts`` under the key ``edged-<payment>-co``
  (Square keeps the first answer of a key: a resend after a lost answer gets the same
  checkout, never a second one).
- ``get``, ``cancel`` a checkout; ``payment`` reads a payment's card (brand, last four
  digits, authorisation code) once a checkout is ``COMPLETED``.

Errors: Square's error ``code`` decides, never the HTTP status: a refusal is
:class:`CheckoutRefused` with ``codes``; 429 → :class:`Throttled`; 5xx, 408, 409, a dropped
answer → :class:`OutcomeUnknown`; nothing sent → :class:`TransientError`; 401/403 →
:class:`CredentialsRequired`; an open breaker → :class:`BreakerOpen`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sync.breaker import CircuitBreaker
from sync.clock import Clock
from sync.errors import (
    CredentialsRequired,
    OutcomeUnknown,
    PermanentError,
)
from sync.guarded import through
from sync.limiter import TokenBucket
from sync.sdk_calls import square_call
from sync.sdk_clients import SquareSdk

if TYPE_CHECKING:
    from square.core.request_options import RequestOptions
    from square.devices.client import AsyncDevicesClient
    from square.payments.client import AsyncPaymentsClient
    from square.terminal.checkouts.client import AsyncCheckoutsClient
    from square.types.terminal_checkout import TerminalCheckout

T = TypeVar("T")
NO_RETRY: RequestOptions = {"max_retries": 0}


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


def _view(c: TerminalCheckout) -> CheckoutView:
    return CheckoutView(id=str(c.id), status=str(c.status),
                        amount=int(c.amount_money.amount or 0),
                        currency=str(c.amount_money.currency or ""),
                        payment_ids=tuple(c.payment_ids or ()),
                        cancel_reason=str(c.cancel_reason) if c.cancel_reason else None)


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
    def _devices(self) -> AsyncDevicesClient:
        return cast("AsyncDevicesClient", self._sdk.client().devices)

    @property
    def _payments(self) -> AsyncPaymentsClient:
        return cast("AsyncPaymentsClient", self._sdk.client().payments)

    async def close(self) -> None:
        await self._sdk.close()

    async def device(self, device_id: str) -> str | None:
        """Square's status category of the device (``None``: Square gave none)."""
        answer = await self._call("read the device", lambda: self._devices.get(
            device_id, request_options=NO_RETRY))
        status = answer.device.status if answer.device is not None else None
        return str(status.category) if status is not None and status.category else None

    async def create(self, payment_id: str, device_id: str, amount: int, currency: str, *,
                     reference: str | None, manual_capture: bool,
                     deadline_seconds: float) -> CheckoutView:
        checkout: dict[str, Any] = {
            "amount_money": {"amount": amount, "currency": currency.upper()},
            "device_options": {"device_id": device_id},
            "note": f"edged {payment_id}",
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


__all__ = ["CardView", "CheckoutRefused", "CheckoutView", "SquareTerminalClient",
           "SquareTerminalSettings", "checkout_key"]
