"""Square: read a payment or a refund back (``sync.core.readback``), never send a create.

- a Terminal sale (``card_present`` on a ``square_terminal`` lane): by the checkout's id the
  daemon stored (``GET /v2/terminals/checkouts/{id}``; a stored id Square does not know as a
  checkout is read as a payment id, which a completed sale stores), else among the device's
  checkouts by the note ``edged <payment>`` (``POST /v2/terminals/checkouts/search``).
  ``COMPLETED`` → its payment is read (``COMPLETED`` approved, ``APPROVED`` authorized);
  ``CANCELED`` → canceled; ``PENDING``/``IN_PROGRESS``/``CANCEL_REQUESTED`` → still open.
- a forwarded token payment: by its payment id when stored, else among the location's
  payments since it was taken (``GET /v2/payments?begin_time=…``) by its note
  ``edged <payment>``. ``COMPLETED`` approved, ``APPROVED`` authorized, ``FAILED`` declined,
  ``CANCELED`` canceled, ``PENDING`` open.
- a refund: by its id when stored, else among the refunds Square lists on the payment
  (``refund_ids``) that the daemon does not know yet, when exactly one has the refund's
  amount (a Square refund carries no metadata). ``COMPLETED``/``PENDING`` → succeeded,
  ``REJECTED``/``FAILED`` → failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.errors import CredentialsRequired, PermanentError
from sync.core.limiter import TokenBucket
from sync.core.readback import Guarded, PaymentQuery, PaymentSeen, RefundQuery, RefundSeen, Seen
from sync.square_api.calls import SquareRefusal, square_call
from sync.square_api.sdk import SquareSdk
from sync.square_api.terminal import checkout_note

if TYPE_CHECKING:
    from square.core.request_options import RequestOptions
    from square.payments.client import AsyncPaymentsClient
    from square.refunds.client import AsyncRefundsClient
    from square.terminal.checkouts.client import AsyncCheckoutsClient
    from square.types.payment import Payment
    from square.types.payment_refund import PaymentRefund

T = TypeVar("T")
NO_RETRY: RequestOptions = {"max_retries": 0}
#: How far before a payment's creation its search looks (clocks differ).
MARGIN = timedelta(minutes=10)
#: Pages of a search at most (100 objects each).
MAX_PAGES = 20


class _NotFound(Exception):
    """Square answered 404 NOT_FOUND. Never leaves this module."""


class SquareReadBack(Guarded):
    destination = "square"

    def __init__(self, base_url: str | None, timeout: float, location_id: str | None,
                 token_provider: Callable[[], str | None], clock: Clock,
                 breaker: CircuitBreaker, bucket: TokenBucket) -> None:
        super().__init__(breaker, bucket)
        self._sdk = SquareSdk(base_url, timeout)
        self._location = location_id
        self._token_provider = token_provider
        self._clock = clock

    async def close(self) -> None:
        await self._sdk.close()

    @property
    def _payments(self) -> AsyncPaymentsClient:
        return cast("AsyncPaymentsClient", self._sdk.client().payments)

    @property
    def _refunds(self) -> AsyncRefundsClient:
        return cast("AsyncRefundsClient", self._sdk.client().refunds)

    @property
    def _checkouts(self) -> AsyncCheckoutsClient:
        return cast("AsyncCheckoutsClient", self._sdk.client().terminal.checkouts)

    # -- payments -------------------------------------------------------------------------

    async def payment(self, query: PaymentQuery) -> PaymentSeen:
        if query.method == "card_present":
            return await self._terminal_sale(query)
        if query.processor_ref:
            return await self._payment_by_id(query.processor_ref)
        note = checkout_note(query.payment_id)
        since = datetime.fromisoformat(query.created_at) - MARGIN
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page: dict[str, Any] = {"cursor": cursor} if cursor else {}
            if self._location:
                page["location_id"] = self._location
            pager = await self._call("list the payments", partial(
                self._payments.list, begin_time=utc_iso(since), sort_order="ASC", limit=100,
                request_options=NO_RETRY, **page))
            for payment in pager.items or ():
                if payment.note == note:
                    return _payment_seen(payment)
            cursor = pager.response.cursor
            if not cursor:
                break
        return PaymentSeen(Seen.NOT_FOUND, detail="no Square payment carries its note")

    async def _payment_by_id(self, payment_id: str) -> PaymentSeen:
        answer = await self._call("read the payment", lambda: self._payments.get(
            payment_id, request_options=NO_RETRY))
        if answer.payment is None:
            return PaymentSeen(Seen.NOT_FOUND, detail=f"Square answered without {payment_id}")
        return _payment_seen(answer.payment)

    async def _terminal_sale(self, query: PaymentQuery) -> PaymentSeen:
        checkout = None
        if query.processor_ref:
            ref = query.processor_ref
            try:
                answer = await self._call("read the checkout", lambda: self._checkouts.get(
                    ref, request_options=NO_RETRY))
                checkout = answer.checkout
            except _NotFound:  # what a completed sale stores: the Square payment's id
                return await self._payment_by_id(ref)
        elif query.device:
            checkout = await self._find_checkout(query)
        if checkout is None:
            return PaymentSeen(Seen.NOT_FOUND, detail="no checkout names it at Square")
        status = str(checkout.status)
        money = checkout.amount_money
        amount = int(money.amount or 0) if money is not None else None
        currency = str(money.currency or "") if money is not None else None
        if status == "COMPLETED" and checkout.payment_ids:
            return await self._payment_by_id(checkout.payment_ids[0])
        if status == "CANCELED":
            reason = str(checkout.cancel_reason) if checkout.cancel_reason else "CANCELED"
            return PaymentSeen(Seen.CANCELED, str(checkout.id), amount, currency,
                               raw_status=reason,
                               detail=f"Square shows the checkout canceled ({reason})")
        return PaymentSeen(Seen.OPEN, str(checkout.id), amount, currency, raw_status=status,
                           detail=f"the checkout is {status} at Square")

    async def _find_checkout(self, query: PaymentQuery) -> Any:
        note = checkout_note(query.payment_id)
        start = utc_iso(datetime.fromisoformat(query.created_at) - MARGIN)
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            search: Any = {"filter": {"device_id": query.device,
                                      "created_at": {"start_at": start}},
                           "sort": {"sort_order": "ASC"}}
            page: dict[str, Any] = {"cursor": cursor} if cursor else {}
            answer = await self._call("search the checkouts", partial(
                self._checkouts.search, query=search, limit=100, request_options=NO_RETRY,
                **page))
            for checkout in answer.checkouts or ():
                if checkout.note == note:
                    return checkout
            cursor = answer.cursor
            if not cursor:
                return None
        return None

    # -- refunds --------------------------------------------------------------------------

    async def refund(self, query: RefundQuery) -> RefundSeen:
        if query.processor_ref:
            ref = query.processor_ref
            answer = await self._call("read the refund", lambda: self._refunds.get(
                ref, request_options=NO_RETRY))
            if answer.refund is None:
                return RefundSeen(Seen.NOT_FOUND, detail=f"Square answered without {ref}")
            return _refund_seen(answer.refund)
        if not query.payment_ref:
            return RefundSeen(Seen.NOT_FOUND, detail="its payment has no Square id")
        payment_ref = query.payment_ref
        paid = await self._call("read the payment", lambda: self._payments.get(
            payment_ref, request_options=NO_RETRY))
        candidates = []
        for refund_id in (paid.payment.refund_ids or ()) if paid.payment else ():
            if refund_id in query.known_refs:
                continue
            found = await self._call("read the refund", partial(
                self._refunds.get, refund_id, request_options=NO_RETRY))
            refund = found.refund
            if refund is not None and refund.amount_money is not None \
                    and refund.amount_money.amount == query.amount:
                candidates.append(refund)
        if len(candidates) == 1:
            return _refund_seen(candidates[0])
        return RefundSeen(Seen.NOT_FOUND, detail=f"{len(candidates)} refunds of that amount"
                          " on the payment are not the daemon's known ones")

    # -- plumbing -------------------------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        token = self._token_provider()
        if not token:
            raise CredentialsRequired("ERR-6006: no Square access token is set; set it with "
                                      "`edged secret set square.token`")
        self._sdk.token = token
        return await self.guarded(lambda: square_call(what, call, self.bucket, self._clock,
                                                      _refused))


def _refused(refusal: SquareRefusal) -> Exception:
    if "NOT_FOUND" in refusal.codes:
        return _NotFound(refusal.message)
    return PermanentError(refusal.message, refusal.codes[0] if refusal.codes else "ERR-6070")


def _payment_seen(p: Payment) -> PaymentSeen:
    money = p.amount_money
    amount = int(money.amount or 0) if money is not None else None
    currency = str(money.currency or "") if money is not None else None
    details = p.card_details
    card = details.card if details is not None else None
    status = str(p.status)
    base: dict[str, Any] = {
        "processor_ref": p.id, "amount": amount, "currency": currency, "raw_status": status,
        "brand": str(card.card_brand) if card is not None and card.card_brand else None,
        "last4": card.last4 if card is not None else None,
        "auth_code": details.auth_result_code if details is not None else None}
    seen = {"COMPLETED": Seen.APPROVED, "APPROVED": Seen.AUTHORIZED, "FAILED": Seen.DECLINED,
            "CANCELED": Seen.CANCELED}.get(status, Seen.OPEN)
    return PaymentSeen(seen, detail=f"Square shows the payment {status}", **base)


def _refund_seen(r: PaymentRefund) -> RefundSeen:
    status = str(r.status)
    amount = r.amount_money.amount if r.amount_money is not None else None
    if status in ("REJECTED", "FAILED"):
        return RefundSeen(Seen.FAILED, r.id, amount, f"Square shows the refund {status}")
    return RefundSeen(Seen.SUCCEEDED, r.id, amount, f"Square shows the refund {status}")


__all__ = ["SquareReadBack"]
