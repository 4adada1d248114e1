"""Reading a payment or a refund back from its processor: what it shows, as typed values.

The daemon settles a payment or refund left ``unknown`` only on what its processor shows
(``edged.payments.unknown_settler``). The readers (``sync.stripe_api.readback``,
``sync.square_api.readback``) only read: by the processor's id the daemon stored, else by
what the daemon set on the object (Stripe's ``metadata[edged_payment_id]``, a Square note
``edged <payment>``). They never send a create. A search that finds nothing proves nothing
(Stripe's search can lag a minute): :attr:`Seen.NOT_FOUND` leaves the record as it is.

Calls go through the destination's breaker and token bucket like every other call, and
raise ``sync.core.errors`` exceptions when the processor cannot be asked (the record then stays
as it is until the next pass).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sync.core.breaker import CircuitBreaker
from sync.core.guarded import through
from sync.core.limiter import TokenBucket

T = TypeVar("T")


class Seen(enum.StrEnum):
    APPROVED = "approved"
    """Taken (captured, completed)."""
    AUTHORIZED = "authorized"
    """Held for a capture."""
    DECLINED = "declined"
    CANCELED = "canceled"
    OPEN = "open"
    """Still running at the processor (a checkout on its Terminal): not settled."""
    NOT_FOUND = "not_found"
    """Nothing found: proves nothing."""
    SUCCEEDED = "succeeded"
    """A refund sent back (or accepted to be)."""
    FAILED = "failed"
    """A refund refused, failed or canceled: nothing went back."""


@dataclass(frozen=True, slots=True)
class PaymentQuery:
    payment_id: str
    method: str
    """``token`` (forwarded) or ``card_present`` (a cloud lane's sale)."""
    processor_ref: str | None
    created_at: str
    device: str | None = None
    """The lane's device (Square Terminal ``device_id``), for a search by note."""


@dataclass(frozen=True, slots=True)
class PaymentSeen:
    seen: Seen
    processor_ref: str | None = None
    amount: int | None = None
    currency: str | None = None
    brand: str | None = None
    last4: str | None = None
    auth_code: str | None = None
    raw_status: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class RefundQuery:
    refund_id: str
    payment_id: str
    payment_ref: str | None
    """The processor's id of the refunded payment."""
    processor_ref: str | None
    amount: int
    known_refs: tuple[str, ...] = ()
    """The processor ids of the payment's other refunds the daemon already knows."""


@dataclass(frozen=True, slots=True)
class RefundSeen:
    seen: Seen
    processor_ref: str | None = None
    amount: int | None = None
    detail: str | None = None


class ReadBack(Protocol):
    destination: str

    async def payment(self, query: PaymentQuery) -> PaymentSeen: ...

    async def refund(self, query: RefundQuery) -> RefundSeen: ...

    async def close(self) -> None: ...


class Guarded:
    """Calls through a destination's breaker and bucket (shared with its outbox worker)."""

    def __init__(self, breaker: CircuitBreaker, bucket: TokenBucket) -> None:
        self.breaker = breaker
        self.bucket = bucket

    async def guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        async def limited() -> T:
            await self.bucket.acquire()
            return await call()

        return await through(self.breaker, limited)


__all__ = ["Guarded", "PaymentQuery", "PaymentSeen", "ReadBack", "RefundQuery",
           "RefundSeen", "Seen"]
