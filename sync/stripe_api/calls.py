"""Stripe's errors, sorted once for every caller: one refusal value.

Every call of this processor's gateway, Terminal client and read-back goes through
:func:`stripe_call`, so that a failure means the same thing whichever part of the daemon
asked, sorted as every processor's call is (:mod:`sync.core.errors`). A refusal (a decline,
a bad request, a key seen with another body) is one :class:`StripeRefusal` value, which the
caller's ``refused`` turns into its own exception: what a refusal means is the caller's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from sync.core.clock import Clock
from sync.core.errors import CredentialsRequired, OutcomeUnknown, Throttled, TransientError
from sync.core.limiter import TokenBucket, header, retry_after_seconds

T = TypeVar("T")


class StripeRefusalKind(Enum):
    CARD = "card"  # a decline (CardError)
    IDEMPOTENCY = "idempotency"  # the key was seen with another body
    INVALID = "invalid"  # a bad request (InvalidRequestError)
    OTHER = "other"  # another 4xx, or an error the SDK names no better


@dataclass(frozen=True, slots=True)
class StripeRefusal:
    kind: StripeRefusalKind
    text: str
    """What Stripe said, ready for a message: its user message (a decline's, or
    "declined"), prefixed by the call for INVALID and OTHER."""
    code: str | None
    decline_code: str | None
    error: Mapping[str, Any] | None  # the body's ``error`` object, when there is one


async def stripe_call(what: str, call: Callable[[], Awaitable[T]], bucket: TokenBucket,
                      clock: Clock, refused: Callable[[StripeRefusal], Exception]) -> T:
    """Make ``call`` (a token must already be taken) and sort its failure."""
    import aiohttp  # noqa: PLC0415  (imported with the SDK, never at start)
    import stripe  # noqa: PLC0415

    try:
        answer = await call()
    except stripe.RateLimitError as exc:
        wait = bucket.on_429(retry_after_seconds(header(exc.headers, "retry-after"),
                                                 clock.now()))
        raise Throttled(wait, f"stripe rate-limited the call to {what} (429)") from None
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        bucket.on_success()
        raise CredentialsRequired(
            f"ERR-6072: Stripe refused the secret key ({exc.http_status}) when asked to "
            f"{what}; set a valid one with `edged secret set stripe.key`") from None
    except stripe.CardError as exc:
        bucket.on_success()
        error = exc.json_body.get("error") if isinstance(exc.json_body, dict) else None
        error = error if isinstance(error, Mapping) else None
        raise refused(StripeRefusal(
            StripeRefusalKind.CARD, exc.user_message or "declined", exc.code,
            error.get("decline_code") if error is not None else None, error)) from None
    except stripe.IdempotencyError as exc:
        bucket.on_success()
        raise refused(StripeRefusal(StripeRefusalKind.IDEMPOTENCY, str(exc.user_message),
                                    "idempotency_error", None, None)) from None
    except stripe.InvalidRequestError as exc:
        bucket.on_success()
        raise refused(StripeRefusal(
            StripeRefusalKind.INVALID, f"Stripe refused the call to {what}: "
            f"{exc.user_message}", exc.code, None, None)) from None
    except stripe.APIConnectionError as exc:
        cause = exc.__cause__
        name = type(cause).__name__ if cause is not None else type(exc).__name__
        if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            raise TransientError(f"stripe unreachable ({name}): could not {what}; nothing"
                                 " was sent") from None
        raise OutcomeUnknown(f"stripe: the connection failed after sending the call to "
                             f"{what} ({name})") from None
    except stripe.APIError as exc:
        status = exc.http_status
        if status is not None and 400 <= status < 500 and status != 409:
            raise refused(StripeRefusal(
                StripeRefusalKind.OTHER, f"Stripe refused the call to {what} ({status}): "
                f"{exc.user_message}", exc.code, None, None)) from None
        replayed = header(exc.headers, "idempotent-replayed") == "true"
        raise OutcomeUnknown(
            f"stripe answered {status} to the call to {what}"
            + (" (the answer stored under this idempotency key, replayed: the key is spent"
               " until Stripe forgets it)" if replayed else "")) from None
    except stripe.StripeError as exc:
        raise refused(StripeRefusal(
            StripeRefusalKind.OTHER, f"stripe: {type(exc).__name__} when asked to {what}: "
            f"{exc.user_message}", exc.code, None, None)) from None
    except TimeoutError:
        raise OutcomeUnknown(f"stripe: no answer in time to the call to {what}") from None
    bucket.on_success()
    return answer


def payment_search(payment_id: str) -> str:
    """The Search API query for the PaymentIntents of one edged payment (its metadata), the
    id quoted as Stripe's search syntax says (a backslash escapes ``'`` and itself)."""
    literal = payment_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['edged_payment_id']:'{literal}'"
