"""Square's errors, sorted once for every caller: one refusal value.

Every call of this processor's gateway, Terminal client and read-back goes through
:func:`square_call`, so that a failure means the same thing whichever part of the daemon
asked, sorted as every processor's call is (:mod:`sync.core.errors`). A refusal (a decline,
a bad request, a key seen with another body) is one :class:`SquareRefusal` value, which the
caller's ``refused`` turns into its own exception: what a refusal means is the caller's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sync.core.clock import Clock
from sync.core.errors import CredentialsRequired, OutcomeUnknown, Throttled, TransientError
from sync.core.limiter import TokenBucket, header, retry_after_seconds

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SquareRefusal:
    status: int
    codes: tuple[str, ...]
    message: str  # "detail (CODE); …", or "HTTP 400" when Square listed no error
    decline: bool  # a PAYMENT_METHOD_ERROR: the card was declined


async def square_call(what: str, call: Callable[[], Awaitable[T]], bucket: TokenBucket,
                      clock: Clock, refused: Callable[[SquareRefusal], Exception]) -> T:
    """Make ``call`` (a token must already be taken) and sort its failure."""
    import httpx  # noqa: PLC0415  (imported with the SDK, never at start)
    from square.core.api_error import ApiError  # noqa: PLC0415

    try:
        answer = await call()
    except ApiError as exc:
        status: int | None = exc.status_code
        if status == 429:
            wait = bucket.on_429(retry_after_seconds(header(exc.headers, "retry-after"),
                                                     clock.now()))
            raise Throttled(wait, f"square rate-limited the call to {what} (429)") from None
        bucket.on_success()
        if status in (401, 403):
            raise CredentialsRequired(
                f"ERR-6072: Square refused the access token ({status}) when asked to "
                f"{what}; set a valid one with `edged secret set square.token`") from None
        if status is None or status < 400 or status >= 500 or status in (408, 409):
            raise OutcomeUnknown(f"square answered {status} to the call to {what}") from None
        errors = list(exc.errors or [])
        raise refused(SquareRefusal(
            status, tuple(str(e.code) for e in errors),
            "; ".join(f"{e.detail or e.code} ({e.code})" for e in errors) or f"HTTP {status}",
            any(str(e.category) == "PAYMENT_METHOD_ERROR" for e in errors))) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
            httpx.UnsupportedProtocol) as exc:
        raise TransientError(f"square unreachable ({type(exc).__name__}): could not "
                             f"{what}; nothing was sent") from None
    except (httpx.TransportError, TimeoutError) as exc:
        raise OutcomeUnknown(f"square: the connection failed after sending the call to "
                             f"{what} ({type(exc).__name__})") from None
    except ValueError as exc:  # a 2xx answer the SDK could not read
        raise OutcomeUnknown(f"square: unreadable answer to the call to {what} "
                             f"({type(exc).__name__})") from None
    bucket.on_success()
    return answer
