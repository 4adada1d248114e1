"""The Square gateway: forwarded token payments, refunds, cancels and captures.

One outbox row is one call (never batched), made through squareup's ``AsyncSquare`` on its
own httpx client. The SDK retries 408/409/429/5xx twice by itself unless told otherwise, so
every call passes ``request_options={"max_retries": 0}``: the engine's policy decides on
every retry and the two layers never multiply. Every HTTP call first takes a token from the
destination's :class:`TokenBucket`.

Kinds and their answers (``WorkResult.applied[row.id]``):

- ``payment.forward`` → ``payments.create(source_id=<token>, idempotency_key=<row key>,
  amount_money, location_id, reference_id, note="edged <payment_id>")``, every field from the
  row's stored payload (``location_id`` is the ``[square] location_id`` the payment was
  taken under, not today's: a resend under the key must carry the first request's body),
  completed at once (Square's default ``autocomplete``). ``{"processor_ref": <payment id>, "status":
  "COMPLETED", "brand"?, "last4"?}``. A decline (category ``PAYMENT_METHOD_ERROR``, or a
  ``FAILED`` payment) goes to ``WorkResult.dead`` as ``ERR-6071``: final, never resent.
- ``refund.create`` → ``refunds.refund_payment(idempotency_key, payment_id, amount_money,
  reason)``. ``{"processor_ref": <refund id>, "status": "PENDING"|"COMPLETED"}``; a refusal
  (or a ``REJECTED``/``FAILED`` refund) is dead with ``ERR-6074``.
- ``payment.cancel`` / ``payment.capture`` → ``payments.cancel`` / ``payments.complete``
  (a void or capture of an authorised payment).
  ``{"processor_ref", "status", "amount"?}``; a refusal is ``ERR-6070``. Square completes the
  whole authorised amount: a capture whose payload names another ``amount`` is refused
  (``ERR-6070``) before anything is sent.

Idempotency keys: Square takes at most 45 characters on payments and refunds. The row keys
(35 characters) go as they are; a longer one is replaced by a fixed digest of itself, so the
key stays the same on every attempt.

Reading back (``work.outcome_unknown``: a 5xx, a timeout or a crash left the previous attempt
in doubt):

- a forward or a refund is read back by sending the *same* request under the *same* key.
  Square answers the first answer again for the same key and body: the payment or refund it
  made (one charge, one refund), the decline it gave, or, if the first request never got
  there, it executes now. This is the only lookup Square offers by our key: ``payments.list``
  filters by time and location only, and a refund has no metadata.
  ``cancel_by_idempotency_key`` is *not* used: it voids only an ``APPROVED`` (delayed
  capture) payment, these payments complete at once, and a forward wants the charge made
  exactly once, not voided. It is the tool for abandoning a card-present payment, later.
  Residual risk, stated: Square does not publish how long it keeps keys. A resend after
  Square forgot the key would make a second payment; the engine's retries of one row follow
  within minutes to hours, far inside any retention a payment API can have.
- a cancel or a capture has no idempotency key on Square's side (both act on a payment id
  and are idempotent by their target state); they retrieve the payment first and answer
  ``applied`` when it is already ``CANCELED`` / ``COMPLETED``.

Errors: 429 → ``bucket.on_429(Retry-After)`` and :class:`Throttled`; 5xx, 408, 409, an
unreadable answer, a dropped connection or a timeout after sending → :class:`OutcomeUnknown`;
connection refused or a connect timeout → :class:`TransientError`; 401/403 →
:class:`TransientError` naming ``ERR-6072``; ``IDEMPOTENCY_KEY_REUSED`` →
:class:`RefusedInDoubt` ``ERR-6073`` (an earlier request under the key ran: the row dies in
doubt); other 400/404 → ``ERR-6070``. A missing token →
:class:`TransientError` telling the technician ``edged secret set square.token``.

The SDK is imported in the constructor, never at module level: the daemon imports it only
when Square is configured (idle memory target).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sync.core.clock import Clock
from sync.core.contract import (
    OutboxKind,
    PaymentCancel,
    PaymentCapture,
    PaymentForward,
    RefundCreate,
)
from sync.core.errors import CredentialsRequired, OutcomeUnknown, PermanentError, RefusedInDoubt
from sync.core.gateway import OutboxRow, RowFailure, Work, WorkResult
from sync.core.limiter import TokenBucket, TokenBucketSettings
from sync.square_api.calls import SquareRefusal, square_call
from sync.square_api.sdk import SquareSdk

if TYPE_CHECKING:
    from square.core.request_options import RequestOptions
    from square.payments.client import AsyncPaymentsClient
    from square.refunds.client import AsyncRefundsClient
    from square.types.payment import Payment
    from square.types.payment_refund import PaymentRefund

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Square's limit on ``idempotency_key`` for payments and refunds.
KEY_MAX = 45
NO_RETRY: RequestOptions = {"max_retries": 0}


@dataclass(frozen=True, slots=True)
class SquareSettings:
    base_url: str | None = None
    """``None``: https://connect.squareup.com; a loopback URL for test doubles."""
    location_id: str | None = None
    """The configured location (``None``: the seller's main location). A forward does not
    read it: its location is the one stored with the row when the payment was taken."""
    timeout: float = 20.0
    """Seconds for one HTTP call (the connect phase gets at most 10 of them)."""


class _Refused(Exception):
    """Square answered 4xx: the call was refused. Never leaves this module."""

    def __init__(self, message: str, *, decline: bool) -> None:
        super().__init__(message)
        self.message = message
        self.decline = decline


def square_key(key: str) -> str:
    """The row's key as Square takes it: itself, or a fixed digest if over 45 characters."""
    if len(key) <= KEY_MAX:
        return key
    return "edged-" + hashlib.sha256(key.encode()).hexdigest()[:KEY_MAX - 6]


class SquareGateway:
    """The ``square`` destination (see the module docstring)."""

    destination = "square"

    def __init__(self, settings: SquareSettings, token_provider: Callable[[], str | None],
                 clock: Clock, bucket: TokenBucket | None = None) -> None:
        self.settings = settings
        self.bucket = bucket if bucket is not None else TokenBucket(
            TokenBucketSettings.square(), clock, name="square")
        self._token_provider = token_provider
        self._clock = clock
        self._sdk = SquareSdk(settings.base_url, settings.timeout)  # built on first use

    # The client's sub-client properties are untyped in the SDK: name their types.
    @property
    def _payments(self) -> AsyncPaymentsClient:
        return cast("AsyncPaymentsClient", self._sdk.client().payments)

    @property
    def _refunds(self) -> AsyncRefundsClient:
        return cast("AsyncRefundsClient", self._sdk.client().refunds)

    # -- Gateway ------------------------------------------------------------------------

    def batch_limit(self, kind: str) -> int:
        return 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        return rows[0].payload

    async def send(self, work: Work) -> WorkResult:
        if len(work.rows) != 1:
            raise PermanentError(f"square rows are sent one by one, got {len(work.rows)}")
        row = work.rows[0]
        token = self._token_provider()
        if not token:
            raise CredentialsRequired("ERR-6006: no Square access token is set; set it with "
                                 "`edged secret set square.token`")
        self._sdk.token = token
        if work.kind == OutboxKind.PAYMENT_FORWARD:
            return await self._forward(work, row)
        if work.kind == OutboxKind.REFUND_CREATE:
            return await self._refund(work, row)
        if work.kind == OutboxKind.PAYMENT_CANCEL:
            return await self._cancel(work, row)
        if work.kind == OutboxKind.PAYMENT_CAPTURE:
            return await self._capture(work, row)
        raise PermanentError(f"square does not carry outbox rows of kind {work.kind!r}")

    async def close(self) -> None:
        await self._sdk.close()

    # -- kinds --------------------------------------------------------------------------

    async def _forward(self, work: Work, row: OutboxRow) -> WorkResult:
        p = PaymentForward.from_json(work.payload)
        payment_id, amount, token, reference = p.payment_id, p.amount, p.token, p.reference
        currency = p.currency.upper()
        key = square_key(work.idempotency_key)
        if work.outcome_unknown:
            log.warning("square: outcome of payment %s unknown; asking again under its key %s"
                        " (Square answers the first answer again)", payment_id, key)
        extra: dict[str, Any] = {}
        if p.location_id:  # as stored with the row: a resend's body is the first one's
            extra["location_id"] = p.location_id
        if reference:
            extra["reference_id"] = reference[:40]
        if p.capture == "manual":  # authorise only: APPROVED, completed later
            extra["autocomplete"] = False
        try:
            answer = await self._call(
                "create the payment", work,
                lambda: self._payments.create(
                    source_id=token, idempotency_key=key,
                    amount_money={"amount": amount, "currency": currency},
                    note=f"edged {payment_id}", request_options=NO_RETRY, **extra))
        except _Refused as refused:
            if refused.decline:
                return WorkResult(dead={row.id: RowFailure("ERR-6071", refused.message)})
            raise PermanentError(refused.message, "ERR-6070") from None
        payment = answer.payment
        if payment is None or not payment.id:
            raise OutcomeUnknown("square answered the payment without a payment")
        if payment.status == "FAILED":
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6071", f"Square payment {payment.id} FAILED")})
        if payment.status == "CANCELED":
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6070", f"Square payment {payment.id} was canceled")})
        result: dict[str, Any] = {"processor_ref": payment.id, "status": payment.status}
        card = payment.card_details.card if payment.card_details is not None else None
        if card is not None:
            if card.card_brand:
                result["brand"] = str(card.card_brand)
            if card.last4:
                result["last4"] = card.last4
        return WorkResult(applied={row.id: result})

    async def _refund(self, work: Work, row: OutboxRow) -> WorkResult:
        p = RefundCreate.from_json(work.payload)
        refund_id, payment_ref, amount = p.refund_id, p.processor_ref, p.amount
        currency = p.currency.upper()
        key = square_key(work.idempotency_key)
        if work.outcome_unknown:
            log.warning("square: outcome of refund %s unknown; asking again under its key %s",
                        refund_id, key)
        extra: dict[str, Any] = {}
        if p.reason:
            extra["reason"] = p.reason[:192]
        try:
            answer = await self._call(
                "refund the payment", work,
                lambda: self._refunds.refund_payment(
                    idempotency_key=key, payment_id=payment_ref,
                    amount_money={"amount": amount, "currency": currency},
                    request_options=NO_RETRY, **extra))
        except _Refused as refused:
            return WorkResult(dead={row.id: RowFailure("ERR-6074", refused.message)})
        refund = answer.refund
        if refund is None:
            raise OutcomeUnknown("square answered the refund without a refund")
        return self._settle_refund(row, refund)

    async def _cancel(self, work: Work, row: OutboxRow) -> WorkResult:
        payment_ref = PaymentCancel.from_json(work.payload).processor_ref
        try:
            if work.outcome_unknown:
                current = await self._get(work, payment_ref)
                if current.status == "CANCELED":
                    return self._applied_payment(row, current)
            answer = await self._call(
                "cancel the payment", work,
                lambda: self._payments.cancel(payment_ref, request_options=NO_RETRY))
        except _Refused as refused:
            raise PermanentError(refused.message, "ERR-6070") from None
        if answer.payment is None:
            raise OutcomeUnknown("square answered the cancel without a payment")
        return self._applied_payment(row, answer.payment)

    async def _capture(self, work: Work, row: OutboxRow) -> WorkResult:
        capture = PaymentCapture.from_json(work.payload)
        payment_ref, amount = capture.processor_ref, capture.amount
        try:
            if work.outcome_unknown or amount is not None:
                current = await self._get(work, payment_ref)
                if current.status == "COMPLETED":
                    return self._applied_payment(row, current)
                held = current.approved_money or current.total_money
                if amount is not None and held is not None and held.amount != amount:
                    raise PermanentError(
                        f"Square completes the whole authorised amount ({held.amount}) of "
                        f"payment {payment_ref}, not {amount}", "ERR-6070")
            answer = await self._call(
                "complete the payment", work,
                lambda: self._payments.complete(payment_ref, request_options=NO_RETRY))
        except _Refused as refused:
            raise PermanentError(refused.message, "ERR-6070") from None
        if answer.payment is None:
            raise OutcomeUnknown("square answered the capture without a payment")
        return self._applied_payment(row, answer.payment)

    # -- answers ------------------------------------------------------------------------

    async def _get(self, work: Work, payment_ref: str) -> Payment:
        answer = await self._call(
            "retrieve the payment", work,
            lambda: self._payments.get(payment_ref, request_options=NO_RETRY))
        if answer.payment is None:
            raise OutcomeUnknown(f"square answered without payment {payment_ref}")
        return answer.payment

    @staticmethod
    def _applied_payment(row: OutboxRow, payment: Payment) -> WorkResult:
        answer: dict[str, Any] = {"processor_ref": payment.id, "status": payment.status}
        if payment.status == "COMPLETED" and payment.total_money is not None:
            answer["amount"] = payment.total_money.amount
        return WorkResult(applied={row.id: answer})

    @staticmethod
    def _settle_refund(row: OutboxRow, refund: PaymentRefund) -> WorkResult:
        if refund.status in ("REJECTED", "FAILED"):
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6074", f"Square refund {refund.id} {refund.status}")})
        return WorkResult(applied={row.id: {"processor_ref": refund.id,
                                            "status": refund.status}})

    # -- plumbing -----------------------------------------------------------------------

    async def _call(self, what: str, work: Work, call: Callable[[], Awaitable[T]]) -> T:
        """One HTTP call: take a token, make it, sort its failure (``sync.stripe_api.calls``)."""
        await self.bucket.acquire()
        return await square_call(what, call, self.bucket, self._clock,
                                 partial(_row_refusal, what, work))


def _row_refusal(what: str, work: Work, refusal: SquareRefusal) -> Exception:
    """What Square refusing a row's call means for the row."""
    if "IDEMPOTENCY_KEY_REUSED" in refusal.codes:  # an earlier request under it ran
        return RefusedInDoubt(f"Square saw the idempotency key {work.idempotency_key} with"
                              " another body: an earlier request under it ran, and what it"
                              " did may have happened", "ERR-6073")
    return _Refused(refusal.message if refusal.decline else f"Square refused the call to"
                    f" {what}: {refusal.message}", decline=refusal.decline)


__all__ = ["SquareGateway", "SquareSettings", "square_key"]
