"""Stripe: read a payment or a refund back (``sync.core.readback``), never send a create.

- a payment: by its PaymentIntent id when the daemon stored one
  (``GET /v1/payment_intents/{id}?expand[]=latest_charge``), else by the metadata the daemon
  set (``search`` on ``metadata['edged_payment_id']``; Stripe's search can lag about a
  minute: a miss is :attr:`~sync.core.readback.Seen.NOT_FOUND`, which proves nothing).
  ``succeeded``/``processing`` → approved, ``requires_capture`` → authorized, ``canceled``
  → canceled, ``requires_payment_method`` with a ``last_payment_error`` → declined (a
  forwarded payment needing authentication too: its customer is gone); anything else is
  still open.
- a refund: by its id when stored, else among the PaymentIntent's refunds (a list, which is
  strongly consistent) by ``metadata[edged_refund_id]``. ``failed``/``canceled`` → failed,
  any other status → succeeded (Stripe accepted it, as the outbox gateway counts it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock
from sync.core.errors import CredentialsRequired, PermanentError
from sync.core.limiter import TokenBucket
from sync.core.readback import Guarded, PaymentQuery, PaymentSeen, RefundQuery, RefundSeen, Seen
from sync.stripe_api.calls import StripeRefusal, payment_search, stripe_call
from sync.stripe_api.sdk import StripeSdk
from sync.stripe_api.terminal import intent_view

if TYPE_CHECKING:
    import stripe

T = TypeVar("T")


class StripeReadBack(Guarded):
    destination = "stripe"

    def __init__(self, base_url: str | None, timeout: float,
                 key_provider: Callable[[], str | None], clock: Clock,
                 breaker: CircuitBreaker, bucket: TokenBucket) -> None:
        super().__init__(breaker, bucket)
        self._sdk = StripeSdk(base_url, timeout)
        self._key_provider = key_provider
        self._clock = clock

    async def close(self) -> None:
        await self._sdk.close()

    async def payment(self, query: PaymentQuery) -> PaymentSeen:
        client = self._client()
        if query.processor_ref and query.processor_ref.startswith("pi_"):
            ref = query.processor_ref
            pi = await self._call("read the PaymentIntent", lambda: (
                client.v1.payment_intents.retrieve_async(ref, {"expand": ["latest_charge"]})))
            return _payment_seen(pi.to_dict(), query.method)
        found = await self._call("search PaymentIntents", lambda: (
            client.v1.payment_intents.search_async(
                {"query": payment_search(query.payment_id),
                 "limit": 10, "expand": ["data.latest_charge"]})))
        seen = [_payment_seen(pi.to_dict(), query.method) for pi in found.data]
        for wanted in (Seen.APPROVED, Seen.AUTHORIZED, Seen.OPEN, Seen.DECLINED,
                       Seen.CANCELED):
            chosen = [s for s in seen if s.seen is wanted]
            if chosen:
                return chosen[0]
        return PaymentSeen(Seen.NOT_FOUND, detail="no PaymentIntent carries its metadata"
                           " (Stripe's search may lag)")

    async def refund(self, query: RefundQuery) -> RefundSeen:
        client = self._client()
        if query.processor_ref and query.processor_ref.startswith("re_"):
            ref = query.processor_ref
            refund = await self._call("read the refund", lambda: (
                client.v1.refunds.retrieve_async(ref)))
            return _refund_seen(refund.to_dict())
        if not query.payment_ref:
            return RefundSeen(Seen.NOT_FOUND, detail="its payment has no PaymentIntent id")
        intent = query.payment_ref
        listed = await self._call("list the PaymentIntent's refunds", lambda: (
            client.v1.refunds.list_async({"payment_intent": intent, "limit": 100})))
        for refund in listed.data:
            data = refund.to_dict()
            if (data.get("metadata") or {}).get("edged_refund_id") == query.refund_id:
                return _refund_seen(data)
        return RefundSeen(Seen.NOT_FOUND, detail="no refund of the PaymentIntent carries its"
                          " metadata")

    # -- plumbing -------------------------------------------------------------------------

    def _client(self) -> stripe.StripeClient:
        key = self._key_provider()
        if not key:
            raise CredentialsRequired("ERR-6006: no Stripe secret key is set; set it with "
                                      "`edged secret set stripe.key`")
        return self._sdk.client(key)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await self.guarded(lambda: stripe_call(what, call, self.bucket, self._clock,
                                                      _refused))


def _refused(refusal: StripeRefusal) -> Exception:
    return PermanentError(refusal.text, refusal.code or "ERR-6070")


def _payment_seen(pi: Mapping[str, Any], method: str) -> PaymentSeen:
    view = intent_view(pi)
    base: dict[str, Any] = {"processor_ref": view.id, "currency": view.currency,
                            "brand": view.brand, "last4": view.last4,
                            "auth_code": view.auth_code, "raw_status": view.status}
    if view.status in ("succeeded", "processing"):
        return PaymentSeen(Seen.APPROVED, amount=view.amount_received or view.amount, **base)
    if view.status == "requires_capture":
        return PaymentSeen(Seen.AUTHORIZED, amount=view.amount_capturable or view.amount,
                           **base)
    if view.status == "canceled":
        return PaymentSeen(Seen.CANCELED, amount=view.amount, detail="the PaymentIntent was"
                           " canceled", **base)
    if view.error_code and view.status == "requires_payment_method":
        codes = "/".join(c for c in (view.error_code, view.decline_code) if c)
        message = view.error_message or "declined"
        return PaymentSeen(Seen.DECLINED, amount=view.amount, detail=f"{message} ({codes})",
                           **base)
    if view.status == "requires_action" and method == "token":
        return PaymentSeen(Seen.DECLINED, amount=view.amount, detail="the payment needs the"
                           " customer to authenticate, and the customer is not present", **base)
    return PaymentSeen(Seen.OPEN, amount=view.amount, detail=f"the PaymentIntent is"
                       f" {view.status}", **base)


def _refund_seen(refund: Mapping[str, Any]) -> RefundSeen:
    status = refund.get("status")
    amount = refund.get("amount")
    if status in ("failed", "canceled"):
        return RefundSeen(Seen.FAILED, str(refund.get("id")), amount,
                          f"Stripe shows the refund {status}"
                          f" ({refund.get('failure_reason') or status})")
    return RefundSeen(Seen.SUCCEEDED, str(refund.get("id")), amount,
                      f"Stripe shows the refund {status}")


__all__ = ["StripeReadBack"]
