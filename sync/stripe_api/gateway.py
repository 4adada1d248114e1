"""The Stripe gateway: forwarded token payments, refunds, cancels and captures.

One outbox row is one call (never batched), made through the stripe SDK's ``StripeClient``
on its aiohttp client with ``max_network_retries=0``: the engine's policy decides on every
retry, so the two layers never multiply. Every POST carries the row's stored idempotency
key; every HTTP call first takes a token from the destination's :class:`TokenBucket`.

Kinds and their answers (``WorkResult.applied[row.id]``):

- ``payment.forward`` → PaymentIntent create with ``confirm=true``, ``off_session=true``
  (the customer is gone when an offline payment is forwarded, so Stripe must decline rather
  than ask for authentication), ``allowed_payment_method_types=["card"]`` (the SDK's API
  version no longer accepts ``payment_method_types``), ``metadata[edged_payment_id]``, the
  register's reference as ``description``, and ``expand=["latest_charge"]`` for the card's
  brand and last four digits.
  ``{"processor_ref": "pi_…", "status": "succeeded", "brand"?, "last4"?}``. A decline goes to
  ``WorkResult.dead`` as ``ERR-6071`` with Stripe's message and codes: final, never resent.
- ``refund.create`` → Refund create on the PaymentIntent with ``metadata[edged_refund_id]``
  (a free-text reason that is not one of Stripe's three goes into ``metadata[edged_reason]``).
  ``{"processor_ref": "re_…", "status": …}``; a refusal is dead with ``ERR-6074``.
- ``payment.cancel`` / ``payment.capture`` (a void or capture of an authorised payment) →
  PaymentIntent cancel / capture (with
  ``amount_to_capture`` when the payload has ``amount``).
  ``{"processor_ref": "pi_…", "status": …, "amount"?}``; a refusal is ``ERR-6070``.

Reading back (``work.outcome_unknown``: a 5xx, a timeout or a crash left the previous attempt
in doubt). Stripe stores the *first* answer of a key once execution started, 500s included,
and replays it for 24 hours or more: resending after a lost answer may only replay that 500.
So, before any resend:

- a forward searches PaymentIntents by ``metadata['edged_payment_id']``. Found and settled
  (succeeded, processing, requires_capture → applied; declined or needing authentication →
  dead ``ERR-6071``; canceled → ``ERR-6070``): nothing is sent. Not found: the request is
  resent under the *same* key. Search is eventually consistent (Stripe: usually under a
  minute), but a miss is still safe: within the key's lifetime the resend either executes
  for the first time (the request never got there) or replays the stored answer (the object,
  a decline, or the 500, which is raised again as :class:`OutcomeUnknown` naming the replay,
  so the row waits and searches again later). A second charge would need a search that
  misses for longer than Stripe keeps the key. When Stripe stored a 500 for a request that
  created nothing, the row keeps answering "unknown" until the key expires; it then goes
  ``dead`` after its attempts, to be retried by a manager, rather than risk a double charge.
- a refund lists the PaymentIntent's refunds (a list is strongly consistent) and matches
  ``metadata[edged_refund_id]``; found → settled without a call.
- a cancel or capture retrieves the PaymentIntent: already ``canceled`` / ``succeeded`` →
  applied without a call; otherwise it is resent under the same key.

Errors (sorted in ``sync.stripe_api.calls``, as for the Terminal client): 429 →
``bucket.on_429(Retry-After)`` and :class:`Throttled`; 5xx, 409 (the key is in use by a
request still running), a dropped connection or a timeout after sending →
:class:`OutcomeUnknown`; connection refused or a connect timeout → :class:`TransientError`;
401/403 → :class:`TransientError` naming ``ERR-6072`` (rows wait until the key is fixed);
``idempotency_error`` → :class:`RefusedInDoubt` ``ERR-6073`` (dies in doubt); other
400/404 → ``ERR-6070``.
A missing key → :class:`TransientError` telling the technician ``edged secret set stripe.key``.

The SDK is imported by the first call (:mod:`sync.stripe_api.sdk`), never at module level or
in the constructor: the daemon imports it only when Stripe is configured, and after it is
ready (start-up and idle memory targets).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sync.core.clock import Clock
from sync.core.contract import (
    OutboxKind,
    PaymentCancel,
    PaymentCapture,
    PaymentForward,
    RefundCreate,
)
from sync.core.errors import CredentialsRequired, PermanentError, RefusedInDoubt
from sync.core.gateway import OutboxRow, RowFailure, Work, WorkResult
from sync.core.limiter import TokenBucket, TokenBucketSettings
from sync.stripe_api.calls import (
    StripeRefusal,
    StripeRefusalKind,
    payment_search,
    stripe_call,
)
from sync.stripe_api.sdk import StripeSdk

if TYPE_CHECKING:
    import stripe
    from stripe.params import (
        PaymentIntentCaptureParams,
        PaymentIntentCreateParams,
        RefundCreateParams,
        RefundListParams,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Stripe's own refund reasons; any other text travels in metadata.
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
#: PaymentIntent statuses that mean the money was taken or is held.
PAID = ("succeeded", "processing", "requires_capture")


@dataclass(frozen=True, slots=True)
class StripeSettings:
    base_url: str | None = None
    """``None``: https://api.stripe.com; a loopback URL for test doubles."""
    timeout: float = 20.0
    """Seconds for one HTTP call (the connect phase gets at most 10 of them)."""


class _Refused(Exception):
    """Stripe answered 400/402/404: the call was refused. Never leaves this module."""

    def __init__(self, message: str, *, decline: bool) -> None:
        super().__init__(message)
        self.message = message
        self.decline = decline


def _card(pi: Mapping[str, Any]) -> dict[str, str]:
    """Brand and last four digits from an expanded ``latest_charge``, when Stripe gave them."""
    charge = pi.get("latest_charge")
    details = charge.get("payment_method_details") if isinstance(charge, Mapping) else None
    card = details.get("card") if isinstance(details, Mapping) else None
    out: dict[str, str] = {}
    if isinstance(card, Mapping):
        for ours, theirs in (("brand", "brand"), ("last4", "last4")):
            if isinstance(card.get(theirs), str):
                out[ours] = card[theirs]
    return out


def _decline_message(error: Mapping[str, Any] | None, fallback: str) -> str:
    if not isinstance(error, Mapping):
        return fallback
    message = error.get("message") or fallback
    codes = "/".join(str(c) for c in (error.get("code"), error.get("decline_code")) if c)
    return f"{message} ({codes})" if codes else str(message)


class StripeGateway:
    """The ``stripe`` destination (see the module docstring)."""

    destination = "stripe"

    def __init__(self, settings: StripeSettings, key_provider: Callable[[], str | None],
                 clock: Clock, bucket: TokenBucket | None = None) -> None:
        self.settings = settings
        self.bucket = bucket if bucket is not None else TokenBucket(
            TokenBucketSettings.stripe(), clock, name="stripe")
        self._key_provider = key_provider
        self._clock = clock
        self._sdk = StripeSdk(settings.base_url, settings.timeout)

    # -- Gateway ------------------------------------------------------------------------

    def batch_limit(self, kind: str) -> int:
        return 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        return rows[0].payload

    async def send(self, work: Work) -> WorkResult:
        if len(work.rows) != 1:
            raise PermanentError(f"stripe rows are sent one by one, got {len(work.rows)}")
        row = work.rows[0]
        client = self._stripe_client()
        if work.kind == OutboxKind.PAYMENT_FORWARD:
            return await self._forward(client, work, row)
        if work.kind == OutboxKind.REFUND_CREATE:
            return await self._refund(client, work, row)
        if work.kind == OutboxKind.PAYMENT_CANCEL:
            return await self._cancel(client, work, row)
        if work.kind == OutboxKind.PAYMENT_CAPTURE:
            return await self._capture(client, work, row)
        raise PermanentError(f"stripe does not carry outbox rows of kind {work.kind!r}")

    async def close(self) -> None:
        await self._sdk.close()

    # -- kinds --------------------------------------------------------------------------

    async def _forward(self, client: stripe.StripeClient, work: Work,
                       row: OutboxRow) -> WorkResult:
        p = PaymentForward.from_json(work.payload)
        payment_id, amount, token = p.payment_id, p.amount, p.token
        currency = p.currency.lower()
        if work.outcome_unknown:
            found = await self._find_payment(client, payment_id)
            if found is not None:
                settled = self._settle_payment(row, found)
                if settled is not None:
                    log.warning("stripe: read back %s for payment %s (%s): not resent",
                                found.id, payment_id, found.status)
                    return settled
            log.warning("stripe: no settled PaymentIntent for payment %s; resending under its"
                        " key %s", payment_id, work.idempotency_key)
        params: PaymentIntentCreateParams = {
            "amount": amount,
            "currency": currency,
            "payment_method": token,
            "confirm": True,
            "off_session": True,
            "allowed_payment_method_types": ["card"],
            "metadata": {"edged_payment_id": payment_id},
            "expand": ["latest_charge"],
        }
        if p.capture == "manual":  # authorise only: requires_capture, captured later
            params["capture_method"] = "manual"
        if p.reference:
            params["description"] = p.reference
        try:
            pi = await self._call(
                "create the PaymentIntent", work,
                lambda: client.v1.payment_intents.create_async(
                    params, options={"idempotency_key": work.idempotency_key}))
        except _Refused as refused:
            if refused.decline:
                return WorkResult(dead={row.id: RowFailure("ERR-6071", refused.message)})
            raise PermanentError(refused.message, "ERR-6070") from None
        settled = self._settle_payment(row, pi)
        if settled is None:
            raise PermanentError(f"PaymentIntent {pi.id} is {pi.status} after confirmation",
                                 "ERR-6070")
        return settled

    async def _refund(self, client: stripe.StripeClient, work: Work,
                      row: OutboxRow) -> WorkResult:
        p = RefundCreate.from_json(work.payload)
        refund_id, payment_id, intent, amount = (p.refund_id, p.payment_id, p.processor_ref,
                                                  p.amount)
        if work.outcome_unknown:
            found = await self._find_refund(client, intent, refund_id)
            if found is not None:
                log.warning("stripe: read back refund %s for %s (%s): not resent", found.id,
                            refund_id, found.status)
                return self._settle_refund(row, found)
        metadata = {"edged_refund_id": refund_id, "edged_payment_id": payment_id}
        params: RefundCreateParams = {"payment_intent": intent, "amount": amount,
                                      "metadata": metadata}
        reason = p.reason
        if reason:
            if reason in REFUND_REASONS:
                params["reason"] = reason
            else:
                metadata["edged_reason"] = reason[:500]
        try:
            refund = await self._call(
                "create the refund", work,
                lambda: client.v1.refunds.create_async(
                    params, options={"idempotency_key": work.idempotency_key}))
        except _Refused as refused:
            return WorkResult(dead={row.id: RowFailure("ERR-6074", refused.message)})
        return self._settle_refund(row, refund)

    async def _cancel(self, client: stripe.StripeClient, work: Work,
                      row: OutboxRow) -> WorkResult:
        intent = PaymentCancel.from_json(work.payload).processor_ref
        try:
            if work.outcome_unknown:
                pi = await self._retrieve(client, work, intent)
                if pi.status == "canceled":
                    return self._applied_intent(row, pi)
            pi = await self._call(
                "cancel the PaymentIntent", work,
                lambda: client.v1.payment_intents.cancel_async(
                    intent, options={"idempotency_key": work.idempotency_key}))
        except _Refused as refused:
            raise PermanentError(refused.message, "ERR-6070") from None
        return self._applied_intent(row, pi)

    async def _capture(self, client: stripe.StripeClient, work: Work,
                       row: OutboxRow) -> WorkResult:
        capture = PaymentCapture.from_json(work.payload)
        intent, amount = capture.processor_ref, capture.amount
        params: PaymentIntentCaptureParams = {}
        if amount is not None:
            params["amount_to_capture"] = amount
        try:
            if work.outcome_unknown:
                pi = await self._retrieve(client, work, intent)
                if pi.status == "succeeded":
                    return self._applied_intent(row, pi)
            pi = await self._call(
                "capture the PaymentIntent", work,
                lambda: client.v1.payment_intents.capture_async(
                    intent, params, options={"idempotency_key": work.idempotency_key}))
        except _Refused as refused:
            raise PermanentError(refused.message, "ERR-6070") from None
        return self._applied_intent(row, pi)

    # -- read-back ----------------------------------------------------------------------

    async def _find_payment(self, client: stripe.StripeClient,
                            payment_id: str) -> stripe.PaymentIntent | None:
        """The PaymentIntent made for ``payment_id``, preferring one that took the money."""
        query = payment_search(payment_id)
        try:
            found = await self._call(
                "search PaymentIntents", None,
                lambda: client.v1.payment_intents.search_async(
                    {"query": query, "limit": 10, "expand": ["data.latest_charge"]}))
        except _Refused as refused:
            raise PermanentError(refused.message, "ERR-6070") from None
        intents = list(found.data)
        paid = [pi for pi in intents if pi.status in PAID]
        if len(paid) > 1:
            log.error("stripe: payment %s has %d paid PaymentIntents: %s", payment_id,
                      len(paid), ", ".join(pi.id for pi in paid))
        chosen = paid or intents
        return chosen[0] if chosen else None

    async def _find_refund(self, client: stripe.StripeClient, intent: str,
                           refund_id: str) -> stripe.Refund | None:
        after: str | None = None
        while True:
            params: RefundListParams = {"payment_intent": intent, "limit": 100}
            if after is not None:
                params["starting_after"] = after
            try:
                page = await self._call("list refunds", None,
                                        partial(client.v1.refunds.list_async, params))
            except _Refused as refused:
                raise PermanentError(refused.message, "ERR-6074") from None
            for refund in page.data:
                metadata = refund.to_dict().get("metadata") or {}
                if metadata.get("edged_refund_id") == refund_id:
                    return refund
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id

    async def _retrieve(self, client: stripe.StripeClient, work: Work,
                        intent: str) -> stripe.PaymentIntent:
        return await self._call("retrieve the PaymentIntent", work,
                                lambda: client.v1.payment_intents.retrieve_async(intent))

    # -- answers ------------------------------------------------------------------------

    @staticmethod
    def _settle_payment(row: OutboxRow, pi: stripe.PaymentIntent) -> WorkResult | None:
        """What a forwarded payment's PaymentIntent means; ``None``: not settled yet."""
        data = pi.to_dict()
        status = data.get("status")
        if status in PAID:
            return WorkResult(applied={row.id: {"processor_ref": pi.id, "status": status,
                                                **_card(data)}})
        error = data.get("last_payment_error")
        if status == "requires_payment_method" and isinstance(error, Mapping):
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6071", _decline_message(error, "The card was declined."))})
        if status == "requires_action":
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6071", f"PaymentIntent {pi.id} needs the customer to authenticate, and "
                "the customer is not present (authentication_required)")})
        if status == "canceled":
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6070", f"PaymentIntent {pi.id} was canceled")})
        return None

    @staticmethod
    def _settle_refund(row: OutboxRow, refund: stripe.Refund) -> WorkResult:
        data = refund.to_dict()
        status = data.get("status")
        if status in ("failed", "canceled"):
            reason = data.get("failure_reason") or status
            return WorkResult(dead={row.id: RowFailure(
                "ERR-6074", f"refund {refund.id} {status} ({reason})")})
        return WorkResult(applied={row.id: {"processor_ref": refund.id, "status": status}})

    @staticmethod
    def _applied_intent(row: OutboxRow, pi: stripe.PaymentIntent) -> WorkResult:
        data = pi.to_dict()
        answer: dict[str, Any] = {"processor_ref": pi.id, "status": data.get("status")}
        if data.get("status") == "succeeded":
            answer["amount"] = data.get("amount_received")
        return WorkResult(applied={row.id: answer})

    # -- plumbing -----------------------------------------------------------------------

    def _stripe_client(self) -> stripe.StripeClient:
        key = self._key_provider()
        if not key:
            raise CredentialsRequired("ERR-6006: no Stripe secret key is set; set it with "
                                 "`edged secret set stripe.key`")
        return self._sdk.client(key)

    async def _call(self, what: str, work: Work | None,
                    call: Callable[[], Awaitable[T]]) -> T:
        """One HTTP call: take a token, make it, sort its failure (``sync.stripe_api.calls``)."""
        await self.bucket.acquire()
        return await stripe_call(what, call, self.bucket, self._clock,
                                 partial(_row_refusal, what, work))


def _row_refusal(what: str, work: Work | None, refusal: StripeRefusal) -> Exception:
    """What Stripe refusing a row's call means for the row."""
    if refusal.kind is StripeRefusalKind.IDEMPOTENCY:  # an earlier request under it ran
        key = work.idempotency_key if work is not None else "?"
        return RefusedInDoubt(f"Stripe saw the idempotency key {key} with another body: "
                              f"{refusal.text}", "ERR-6073")
    if refusal.kind is StripeRefusalKind.CARD:
        return _Refused(_decline_message(refusal.error, refusal.text), decline=True)
    if refusal.kind is StripeRefusalKind.INVALID:
        code = f" ({refusal.code})" if refusal.code else ""
        return _Refused(f"{refusal.text}{code}", decline=False)
    return PermanentError(refusal.text, "ERR-6070")


__all__ = ["StripeGateway", "StripeSettings"]
