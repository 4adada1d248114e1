"""One call outside the outbox engine through a destination's breaker, judged by the policy.

The cloud terminal clients (``sync.stripe_api.terminal``, ``sync.square_api.terminal``) call the
processors on their own schedule, not as outbox work; their outcomes still count in the
destination's breaker, sorted by the same :func:`sync.core.policy.judge` as the engine's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sync.core.breaker import CircuitBreaker
from sync.core.policy import judge, settle

T = TypeVar("T")


async def through(breaker: CircuitBreaker, call: Callable[[], Awaitable[T]]) -> T:
    """Take a permit (or raise ``BreakerOpen``), make the call, report its outcome."""
    permit = breaker.acquire()
    try:
        result = await call()
    except Exception as exc:
        settle(permit, judge(exc).breaker)
        raise
    except BaseException:
        permit.cancel()
        raise
    permit.success()
    return result
