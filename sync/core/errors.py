"""The errors of the sync package, rooted at :class:`SyncError`.

They sort an upstream call's outcome by what the caller may do next, because that is what
the breaker, the retry policy and the outbox worker decide on:

- :class:`BreakerOpen`: the call was not made; try again after ``retry_after``.
- :class:`TransientError`: the call did not take effect and may succeed later unchanged.
  :class:`Throttled` is the rate-limited case, with the wait the upstream asked for.
- :class:`HoldRow`: nothing was sent; this row waits a while, its destination goes on.
- :class:`PermanentError`: the upstream refused the call; resending it cannot help.
  :class:`RefusedInDoubt` is the refusal that proves an earlier request ran (a key seen
  with another body).
- :class:`OutcomeUnknown`: the call may or may not have taken effect (a 5xx, a timeout, a
  dropped connection after sending). Read the object back before any new attempt; it is
  deliberately *not* a :class:`TransientError`, so a generic retry never resends it blindly.

A processor's failures (Stripe, Square: ``sync/*/calls.py``) are sorted the same way:

- 429 → the bucket backs off (``Retry-After``) and :class:`Throttled`;
- a refused key or token (401/403) → :class:`CredentialsRequired` ``ERR-6072``;
- no connection (refused, connect timeout): nothing left the box → :class:`TransientError`;
- the connection failed after sending, a timeout, a 5xx, 408 or 409 (the key is in use by a
  request still running), an answer that cannot be read → :class:`OutcomeUnknown`;
- anything else is the processor refusing the call, which its caller names;
- an answer, also a refusal, tells the bucket the processor is answering again.

Each keeps its constructor arguments in ``args`` so that it pickles and copies normally.
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error raised by the sync package."""


class BreakerOpen(SyncError):
    """A circuit breaker refused the call: nothing was sent upstream."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(name, retry_after)
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"circuit {self.name!r} is open; retry after {self.retry_after:.3f} s"


class TransientError(SyncError):
    """The call did not take effect; the same call may succeed later."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Throttled(TransientError):
    """The upstream rate-limited the call (HTTP 429, Shopify ``THROTTLED``); not applied."""

    def __init__(self, wait: float, message: str = "throttled by the upstream") -> None:
        super().__init__(message)
        self.args = (wait, message)
        self.wait = wait

    def __str__(self) -> str:
        return f"{self.message} (wait {self.wait:.3f} s)"


class HoldRow(SyncError):
    """This row must wait ``wait`` seconds before it is tried again; nothing was sent, and
    the rest of its destination goes on meanwhile (an order whose lookup cannot be trusted
    yet after a lost answer, say). Unlike :class:`Throttled`, the upstream is not asking
    the whole destination to wait."""

    def __init__(self, wait: float, message: str) -> None:
        super().__init__(wait, message)
        self.wait = wait
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (this row waits {self.wait:.3f} s)"


class PermanentError(SyncError):
    """The upstream refused the call for good; ``code`` is its error code, when it gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


class RefusedInDoubt(PermanentError):
    """Refused for good, and the refusal itself proves that an earlier request under the
    same idempotency key ran (the processor saw the key with another body,
    ``IDEMPOTENCY_KEY_REUSED`` / ``idempotency_error``): whatever that request did may have
    happened. The row dies in doubt; a payment or refund it carried is ``unknown``."""


class OutcomeUnknown(SyncError):
    """The upstream may or may not have applied the call: reconcile before retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CredentialsRequired(TransientError):
    """The destination's credentials are missing or refused: nothing was applied.

    Rows wait without using up attempts until a technician sets a valid secret;
    the worker shows the message on ``/v1/sync``.
    """
