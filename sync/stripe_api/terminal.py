"""Stripe Terminal, server-driven: the calls a ``stripe_reader`` lane makes, as typed values.

The reader driver (``drivers/stripe_reader``) never sees the SDK or a wire dict: it calls
this client, which goes through the ``stripe`` destination's circuit breaker and token
bucket (the same ones the outbox worker uses), one SDK call at a time, with
``max_network_retries=0`` (the driver's poller decides on every retry).

Calls and their keys (every POST carries one; all are derived from the payment's id, so
whatever is resent after a lost answer goes under the same key and Stripe replays it):

- ``create_intent``: ``POST /v1/payment_intents`` with ``allowed_payment_method_types=
  ["card_present"]`` (the SDK 16.1 pins an API version on which ``payment_method_types``
  is no longer writable), ``capture_method`` ``automatic`` or ``manual``,
  ``metadata[edged_payment_id]``. Key ``edged-<payment>-pi``.
- ``process``: ``POST /v1/terminal/readers/{id}/process_payment_intent``. Key
  ``edged-<payment>-process``.
- ``reader``: ``GET /v1/terminal/readers/{id}``: status and the ``action``, expanded down to
  the action's PaymentIntent and its charge, so that one read per poll tells the outcome
  and the card's details.
- ``intent``: ``GET /v1/payment_intents/{id}?expand[]=latest_charge``: status, amounts, and
  the card's brand, last four digits and authorisation code from the charge's
  ``payment_method_details.card_present``.
- ``find_intent``: search by ``metadata['edged_payment_id']`` (reconciliation only).
- ``list_intent``: the same, by Stripe's list of PaymentIntents created since a time, which
  is read as written; its search can lag about a minute, and Stripe's docs point
  read-after-write flows to the list APIs instead (a restart's reconciliation).
- ``cancel_action`` and ``cancel_intent`` (key ``edged-<payment>-cancel``, whichever path asks).

Errors: Stripe's own error ``code`` decides, never the HTTP status: a refusal is
:class:`TerminalRefused` with ``code`` (``terminal_reader_offline``,
``terminal_reader_busy``, ``resource_missing``…); a decline carries ``decline_code``.
The rest as in ``sync.stripe_api.gateway``: 429 → :class:`Throttled`, 5xx / a dropped answer →
:class:`OutcomeUnknown`, nothing sent → :class:`TransientError`, keys →
:class:`CredentialsRequired`, an open breaker → :class:`BreakerOpen`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote_plus

from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock
from sync.core.errors import CredentialsRequired, OutcomeUnknown, PermanentError
from sync.core.guarded import through
from sync.core.limiter import TokenBucket
from sync.stripe_api.calls import (
    StripeRefusal,
    StripeRefusalKind,
    payment_search,
    stripe_call,
)
from sync.stripe_api.sdk import StripeSdk
from sync.stripe_api.wire import StripeWire

if TYPE_CHECKING:
    from stripe.params import (
        PaymentIntentCancelParams,
        PaymentIntentCreateParams,
        PaymentIntentListParams,
        PaymentIntentRetrieveParams,
        PaymentIntentSearchParams,
    )
    from stripe.params.terminal import (
        ReaderCancelActionParams,
        ReaderProcessPaymentIntentParams,
        ReaderRetrieveParams,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")


class TerminalRefused(PermanentError):
    """Stripe refused the call; ``code`` is Stripe's error code, ``decline_code`` a decline's."""

    def __init__(self, message: str, code: str | None = None,
                 decline_code: str | None = None) -> None:
        super().__init__(message, code)
        self.args = (message, code, decline_code)
        self.decline_code = decline_code


@dataclass(frozen=True, slots=True)
class IntentView:
    """What the driver needs of a PaymentIntent."""

    id: str
    status: str
    amount: int
    currency: str
    amount_capturable: int = 0
    amount_received: int = 0
    capture_method: str = "automatic"
    brand: str | None = None
    last4: str | None = None
    auth_code: str | None = None
    error_code: str | None = None
    decline_code: str | None = None
    error_message: str | None = None
    payment_id: str | None = None
    """``metadata[edged_payment_id]``: the payment it was made for."""


@dataclass(frozen=True, slots=True)
class ReaderView:
    """A reader's status and its current (or last) action."""

    id: str
    status: str
    """``online`` or ``offline``, as Stripe last saw it."""
    action_type: str | None = None
    action_status: str | None = None
    """``in_progress``, ``succeeded`` or ``failed``."""
    action_intent: str | None = None
    intent: IntentView | None = None
    """The action's PaymentIntent, when the read expanded it (one call instead of two)."""
    failure_code: str | None = None
    failure_message: str | None = None
    decline_code: str | None = None


@dataclass(frozen=True, slots=True)
class Listed:
    """What Stripe's list of PaymentIntents said about one payment's."""

    intent: IntentView | None
    complete: bool
    """Every PaymentIntent since the time was read: a miss means none was made since.
    False when the pages allowed ran out first: a miss then proves nothing."""


#: How many pages of 100 ``list_intent`` reads before it gives up (a busy shared account).
LIST_PAGES = 10


@dataclass(frozen=True, slots=True)
class StripeTerminalSettings:
    base_url: str | None = None
    timeout: float = 20.0


#: A reader read carries its action's PaymentIntent and charge: one call tells the outcome.
READER_EXPAND = "action.process_payment_intent.payment_intent.latest_charge"


def intent_key(payment_id: str) -> str:
    return f"edged-{payment_id}-pi"


def process_key(payment_id: str) -> str:
    return f"edged-{payment_id}-process"


def cancel_key(payment_id: str) -> str:
    """The PaymentIntent's cancel: one key however many times it is asked (stop, unused,
    declined), so Stripe replays a cancel already made."""
    return f"edged-{payment_id}-cancel"


def intent_view(pi: Mapping[str, Any]) -> IntentView:
    charge = pi.get("latest_charge")
    details = charge.get("payment_method_details") if isinstance(charge, Mapping) else None
    card = None
    if isinstance(details, Mapping):
        card = details.get("card_present") or details.get("card")
    error = pi.get("last_payment_error")
    err = error if isinstance(error, Mapping) else {}
    return IntentView(
        id=str(pi["id"]), status=str(pi.get("status")), amount=int(pi.get("amount") or 0),
        currency=str(pi.get("currency") or "").upper(),
        amount_capturable=int(pi.get("amount_capturable") or 0),
        amount_received=int(pi.get("amount_received") or 0),
        capture_method=str(pi.get("capture_method") or "automatic"),
        brand=str(card["brand"]).upper() if isinstance(card, Mapping) and card.get("brand")
        else None,
        last4=str(card["last4"]) if isinstance(card, Mapping) and card.get("last4") else None,
        auth_code=str(card["authorization_code"]) if isinstance(card, Mapping)
        and card.get("authorization_code") else None,
        error_code=err.get("code"), decline_code=err.get("decline_code"),
        error_message=err.get("message"),
        payment_id=(pi.get("metadata") or {}).get("edged_payment_id"))


def _reader_view(reader: Mapping[str, Any]) -> ReaderView:
    action = reader.get("action")
    if not isinstance(action, Mapping):
        return ReaderView(id=str(reader["id"]), status=str(reader.get("status") or "offline"))
    ppi = action.get("process_payment_intent")
    intent = ppi.get("payment_intent") if isinstance(ppi, Mapping) else None
    expanded = intent_view(intent) if isinstance(intent, Mapping) else None
    if expanded is not None:
        intent = expanded.id
    api_error = action.get("api_error")
    decline = api_error.get("decline_code") if isinstance(api_error, Mapping) else None
    return ReaderView(
        id=str(reader["id"]), status=str(reader.get("status") or "offline"),
        action_type=action.get("type"), action_status=action.get("status"),
        action_intent=intent if isinstance(intent, str) else None, intent=expanded,
        failure_code=action.get("failure_code"), failure_message=action.get("failure_message"),
        decline_code=decline)


class StripeTerminalClient:
    """Stripe Terminal through the ``stripe`` destination's breaker and bucket."""

    def __init__(self, settings: StripeTerminalSettings, key_provider: Callable[[], str | None],
                 clock: Clock, breaker: CircuitBreaker, bucket: TokenBucket) -> None:
        self.settings = settings
        self.breaker = breaker
        self.bucket = bucket
        self.calls = 0
        """HTTP calls made (for the bench: processor calls per payment)."""
        self._clock = clock
        self._key_provider = key_provider
        self._sdk = StripeSdk(settings.base_url, settings.timeout)  # built on first use

    async def close(self) -> None:
        await self._sdk.close()

    # -- calls ----------------------------------------------------------------------------
    # Each call is the SDK's request for it with the SDK's typed parameters (its TypedDicts,
    # checked by mypy: the contract where Stripe publishes no description here), sent by
    # :mod:`sync.stripe_api.wire` on the SDK's settings and HTTP client, its answer read by
    # the SDK (errors raised as its error classes) as the JSON it is. The typed services
    # build a StripeObject for every nested object of an answer, and the SDK's request
    # assembly formats its log lines whatever the level: for a reader expanded down to its
    # charge that was most of the lane's own time per poll (bench/README.md, issue 22).

    async def create_intent(self, payment_id: str, amount: int, currency: str, *,
                            manual_capture: bool = False,
                            description: str | None = None) -> IntentView:
        wire = self._stripe()
        params: PaymentIntentCreateParams = {  # the SDK's typed parameters: the contract
            "amount": amount, "currency": currency.lower(),
            "allowed_payment_method_types": ["card_present"],
            "capture_method": "manual" if manual_capture else "automatic",
            "metadata": {"edged_payment_id": payment_id},
        }
        if description:
            params["description"] = description[:1000]
        pi = await self._call("create the PaymentIntent", partial(
            _raw, wire, "post", "/v1/payment_intents", params, intent_key(payment_id)))
        return intent_view(pi)

    async def process(self, reader_id: str, payment_id: str, intent_id: str) -> ReaderView:
        wire = self._stripe()
        params: ReaderProcessPaymentIntentParams = {"payment_intent": intent_id}
        reader = await self._call("hand the PaymentIntent to the reader", partial(
            _raw, wire, "post", f"/v1/terminal/readers/{_id(reader_id)}"
            "/process_payment_intent", params, process_key(payment_id)))
        return _reader_view(reader)

    async def reader(self, reader_id: str) -> ReaderView:
        wire = self._stripe()
        params: ReaderRetrieveParams = {"expand": [READER_EXPAND]}
        reader = await self._call("read the reader", partial(
            _raw, wire, "get", f"/v1/terminal/readers/{_id(reader_id)}", params))
        return _reader_view(reader)

    async def intent(self, intent_id: str) -> IntentView:
        wire = self._stripe()
        params: PaymentIntentRetrieveParams = {"expand": ["latest_charge"]}
        pi = await self._call("read the PaymentIntent", partial(
            _raw, wire, "get", f"/v1/payment_intents/{_id(intent_id)}", params))
        return intent_view(pi)

    async def find_intent(self, payment_id: str) -> IntentView | None:
        wire = self._stripe()
        params: PaymentIntentSearchParams = {
            "query": payment_search(payment_id), "limit": 10,
            "expand": ["data.latest_charge"]}
        found = await self._call("search PaymentIntents", partial(
            _raw, wire, "get", "/v1/payment_intents/search", params))
        data = found.get("data")
        intents = [intent_view(pi) for pi in data if isinstance(pi, Mapping)] \
            if isinstance(data, list) else []
        return _likeliest(intents)

    async def list_intent(self, payment_id: str, created_from: int, *,
                          pages: int = LIST_PAGES) -> Listed:
        """The PaymentIntent made for ``payment_id`` among those Stripe created at or after
        ``created_from`` (seconds since the epoch), newest first, ``pages`` pages at most."""
        wire = self._stripe()
        after: str | None = None
        mine: list[IntentView] = []
        for _ in range(pages):
            params: PaymentIntentListParams = {"created": {"gte": created_from}, "limit": 100}
            if after is not None:
                params["starting_after"] = after
            page = await self._call("list PaymentIntents", partial(
                _raw, wire, "get", "/v1/payment_intents", params))
            data = page.get("data")
            items = [pi for pi in data if isinstance(pi, Mapping)] \
                if isinstance(data, list) else []
            mine += [view for view in map(intent_view, items) if view.payment_id == payment_id]
            if not page.get("has_more"):
                return Listed(_likeliest(mine), complete=True)
            if not items:
                break  # more, Stripe says, but nothing to page on from
            after = str(items[-1]["id"])
        return Listed(_likeliest(mine), complete=False)

    async def cancel_action(self, reader_id: str, key: str) -> ReaderView:
        wire = self._stripe()
        params: ReaderCancelActionParams = {}
        reader = await self._call("cancel the reader's action", partial(
            _raw, wire, "post", f"/v1/terminal/readers/{_id(reader_id)}/cancel_action",
            params, key))
        return _reader_view(reader)

    async def cancel_intent(self, intent_id: str, key: str) -> IntentView:
        wire = self._stripe()
        params: PaymentIntentCancelParams = {}
        pi = await self._call("cancel the PaymentIntent", partial(
            _raw, wire, "post", f"/v1/payment_intents/{_id(intent_id)}/cancel", params, key))
        return intent_view(pi)

    # -- plumbing -------------------------------------------------------------------------

    def _stripe(self) -> StripeWire:
        key = self._key_provider()
        if not key:
            raise CredentialsRequired("ERR-6006: no Stripe secret key is set; set it with "
                                      "`edged secret set stripe.key`")
        return self._sdk.wire(key)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        async def limited() -> T:
            await self.bucket.acquire()
            self.calls += 1
            return await self._sorted(what, call)

        return await through(self.breaker, limited)

    async def _sorted(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await stripe_call(what, call, self.bucket, self._clock,
                                 partial(_lane_refusal, what))


async def _raw(wire: StripeWire, method: str, url: str, params: Mapping[str, object],
               idempotency_key: str | None = None) -> Mapping[str, Any]:
    """One call (:mod:`sync.stripe_api.wire`); its answer's JSON object."""
    data = await wire.request(method, url, params, idempotency_key)
    if not isinstance(data, Mapping):
        raise OutcomeUnknown(f"stripe answered {url} with something that is not an object")
    return data


def _likeliest(intents: list[IntentView]) -> IntentView | None:
    """Of one payment's PaymentIntents, the one that took money, else the newest."""
    paid = [i for i in intents if i.status in ("succeeded", "requires_capture", "processing")]
    chosen = paid or intents
    return chosen[0] if chosen else None


def _id(value: str) -> str:
    """An id in a URL's path, escaped as the SDK's typed services escape it."""
    return quote_plus(value)


def _lane_refusal(what: str, refusal: StripeRefusal) -> Exception:
    """Stripe refusing a lane's call: the reader's sale ends with Stripe's own codes."""
    if refusal.kind is StripeRefusalKind.IDEMPOTENCY:
        return TerminalRefused(f"Stripe saw the key with another body when asked to {what}: "
                               f"{refusal.text}", refusal.code)
    return TerminalRefused(refusal.text, refusal.code, refusal.decline_code)


__all__ = ["IntentView", "Listed", "ReaderView", "StripeTerminalClient", "StripeTerminalSettings",
           "TerminalRefused", "cancel_key", "intent_key", "intent_view", "process_key"]
