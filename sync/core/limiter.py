"""Rate limiters for the upstreams, waiting on the injected clock.

- :class:`TokenBucket` (Stripe, Square): ``rate`` tokens a second up to ``burst``. A 429
  blocks every send until its ``Retry-After`` has passed, or, without one, for an
  exponential backoff with jitter; after a block, sends resume at the rate, not in a burst.
- :class:`ShopifyCostBucket` (Shopify GraphQL): a local copy of Shopify's leaky bucket that
  refills at ``restoreRate`` up to ``maximumAvailable`` and is reset from every response's
  ``extensions.cost.throttleStatus``; a request goes only when the bucket holds its cost.

Both serve waiters strictly first come, first served (a cheap request does not overtake an
expensive one), and a waiter re-computes its wait whenever the bucket is updated or
penalised, so it never sends early and never sleeps on stale numbers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from sync.core.clock import Clock
from sync.core.errors import PermanentError

logger = logging.getLogger(__name__)

#: Token amounts closer than this count as equal: float time arithmetic must not leave a
#: waiter a nanosecond short, sleeping again for nothing.
EPSILON = 1e-9


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by its lower-case ``name`` from an SDK error's plain mapping of headers."""
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Parse a ``Retry-After`` header (delta seconds or an HTTP date) into seconds from now.

    ``None`` when absent or unreadable; never negative.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds())


class _FifoGate:
    """Serialises waiters in arrival order; the head waits on the clock or on a change."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.waiting = 0

    def notify(self) -> None:
        """The bucket changed: let the head waiter re-compute its wait."""
        self._changed.set()

    async def run(
        self, wait_for: Callable[[float], float], grant: Callable[[float], None]
    ) -> float:
        """Wait until ``wait_for(now)`` is zero, then ``grant(now)``; return seconds waited."""
        start = self._clock.monotonic()
        self.waiting += 1
        try:
            async with self._lock:
                while True:
                    self._changed.clear()
                    now = self._clock.monotonic()
                    wait = wait_for(now)
                    if wait <= EPSILON:
                        grant(now)
                        return now - start
                    await self._sleep_or_change(wait)
        finally:
            self.waiting -= 1

    async def _sleep_or_change(self, seconds: float) -> None:
        sleeper = asyncio.create_task(self._clock.sleep(seconds))
        watcher = asyncio.create_task(self._changed.wait())
        try:
            await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            watcher.cancel()


# -- token bucket (Stripe, Square) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenBucketSettings:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` banked; backoff in s."""

    rate: float
    burst: float
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if not self.rate > 0.0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if not self.burst >= 1.0:
            raise ValueError(f"burst must be at least 1, got {self.burst}")
        if not 0.0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")

    @classmethod
    def stripe(cls) -> TokenBucketSettings:
        """25 a second: Stripe's default per-endpoint limit, and its whole test-mode limit."""
        return cls(rate=25.0, burst=25.0)

    @classmethod
    def square(cls) -> TokenBucketSettings:
        """10 a second: Square publishes no limits, so start low and rely on 429 handling."""
        return cls(rate=10.0, burst=10.0)


@dataclass(frozen=True, slots=True)
class TokenBucketSnapshot:
    """A token bucket's state for the status page."""

    rate: float
    burst: float
    available: float
    blocked_for: float
    consecutive_429: int
    waiting: int


class TokenBucket:
    """Token bucket with ``Retry-After`` / 429 handling; see the module docstring."""

    def __init__(
        self,
        settings: TokenBucketSettings,
        clock: Clock,
        *,
        name: str = "",
        rand: Callable[[], float] | None = None,
    ) -> None:
        """``rand`` returns floats in [0, 1) for the backoff jitter (inject it in tests)."""
        self._settings = settings
        self._clock = clock
        self._name = name
        self._rand = rand if rand is not None else random.Random().random
        self._gate = _FifoGate(clock)
        self._level = settings.burst
        self._at = clock.monotonic()
        self._blocked_until = self._at
        self._consecutive_429 = 0

    @property
    def settings(self) -> TokenBucketSettings:
        return self._settings

    async def acquire(self, cost: float = 1.0) -> float:
        """Wait (FIFO) until ``cost`` tokens are there and no block is on; take them.

        Returns the seconds waited on the clock.
        """
        if cost < 0 or cost > self._settings.burst:
            raise ValueError(f"cost must be in [0, burst={self._settings.burst:g}], got {cost}")
        return await self._gate.run(lambda now: self._wait_for(cost, now),
                                    lambda now: self._take(cost, now))

    def penalize(self, retry_after: float) -> None:
        """Send nothing for ``retry_after`` seconds from now (never shortens a block).

        When the block ends the bucket holds at most one token, so sends resume at the rate.
        """
        now = self._clock.monotonic()
        until = now + max(0.0, retry_after)
        if until <= self._blocked_until:
            return
        level = min(self._level_at(until), 1.0)
        self._blocked_until = until
        self._level, self._at = level, until
        logger.info("limiter %s: no sends for %.3f s", self._name, until - now)
        self._gate.notify()

    def on_429(self, retry_after: float | None) -> float:
        """Handle a 429: honour ``Retry-After`` or back off exponentially with jitter.

        The backoff ceiling doubles with each 429 since the last :meth:`on_success`, from
        ``backoff_initial`` up to ``backoff_max``; the wait is drawn from
        [ceiling / 2, ceiling). Returns the imposed wait.
        """
        if retry_after is not None:
            wait = max(0.0, retry_after)
        else:
            ceiling = min(self._settings.backoff_max,
                          self._settings.backoff_initial * 2.0 ** self._consecutive_429)
            wait = ceiling * (0.5 + 0.5 * self._rand())
        self._consecutive_429 += 1
        logger.warning("limiter %s: 429 #%d, waiting %.3f s (Retry-After %s)",
                       self._name, self._consecutive_429, wait, retry_after)
        self.penalize(wait)
        return wait

    def on_success(self) -> None:
        """A call went through: the next 429 backs off from the start again."""
        self._consecutive_429 = 0

    def snapshot(self) -> TokenBucketSnapshot:
        now = self._clock.monotonic()
        return TokenBucketSnapshot(
            rate=self._settings.rate,
            burst=self._settings.burst,
            available=self._level_at(now),
            blocked_for=max(0.0, self._blocked_until - now),
            consecutive_429=self._consecutive_429,
            waiting=self._gate.waiting,
        )

    def _level_at(self, moment: float) -> float:
        elapsed = max(0.0, moment - self._at)
        return min(self._settings.burst, self._level + elapsed * self._settings.rate)

    def _wait_for(self, cost: float, now: float) -> float:
        start = max(now, self._blocked_until)
        level = self._level_at(start)
        if level >= cost - EPSILON:
            return start - now
        return start - now + (cost - level) / self._settings.rate

    def _take(self, cost: float, now: float) -> None:
        self._level = self._level_at(now) - cost
        self._at = now


# -- Shopify cost bucket --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThrottleStatus:
    """Shopify's ``extensions.cost.throttleStatus``."""

    maximum_available: float
    currently_available: float
    restore_rate: float

    def __post_init__(self) -> None:
        if not self.maximum_available > 0.0:
            raise ValueError(f"maximumAvailable must be positive, got {self.maximum_available}")
        if not self.restore_rate > 0.0:
            raise ValueError(f"restoreRate must be positive, got {self.restore_rate}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ThrottleStatus:
        """From the ``throttleStatus`` object; ``ValueError`` when a field is missing or wrong."""

        def number(key: str) -> float:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"throttleStatus.{key} is not a number: {value!r}")
            return float(value)

        return cls(
            maximum_available=number("maximumAvailable"),
            currently_available=number("currentlyAvailable"),
            restore_rate=number("restoreRate"),
        )

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> ThrottleStatus | None:
        """From a whole GraphQL response body; ``None`` when it carries no throttle status."""
        extensions = body.get("extensions")
        cost = extensions.get("cost") if isinstance(extensions, Mapping) else None
        status = cost.get("throttleStatus") if isinstance(cost, Mapping) else None
        return cls.from_json(status) if isinstance(status, Mapping) else None


@dataclass(frozen=True, slots=True)
class CostBucketSettings:
    """The bucket assumed until Shopify's first response corrects it.

    Shopify's current plans restore 100 to 2000 points a second with larger buckets; the
    defaults are the old standard plan's 1000 points restoring 50 a second, lower than any
    current plan, and 1000 is also the most a single query may cost. The bucket starts full.
    """

    initial_maximum: float = 1000.0
    initial_restore_rate: float = 50.0

    def __post_init__(self) -> None:
        if not self.initial_maximum > 0.0 or not self.initial_restore_rate > 0.0:
            raise ValueError("initial_maximum and initial_restore_rate must be positive")


@dataclass(frozen=True, slots=True)
class CostBucketSnapshot:
    """The local Shopify bucket for the status page; ``updated_at`` is clock-monotonic."""

    maximum_available: float
    currently_available: float
    restore_rate: float
    waiting: int
    updated_at: float | None


class ShopifyCostBucket:
    """Local model of Shopify's GraphQL cost bucket; see the module docstring."""

    def __init__(self, clock: Clock, settings: CostBucketSettings | None = None) -> None:
        settings = settings if settings is not None else CostBucketSettings()
        self._clock = clock
        self._gate = _FifoGate(clock)
        self._maximum = settings.initial_maximum
        self._rate = settings.initial_restore_rate
        self._level = settings.initial_maximum
        self._at = clock.monotonic()
        self._updated_at: float | None = None

    async def acquire(self, cost: float) -> float:
        """Wait (FIFO) until the bucket holds ``cost``, then take it; return seconds waited.

        A cost above ``maximumAvailable`` can never be sent: :class:`PermanentError` with
        Shopify's own code ``MAX_COST_EXCEEDED``.
        """
        if cost < 0:
            raise ValueError(f"cost must not be negative, got {cost}")
        return await self._gate.run(lambda now: self._wait_for(cost, now),
                                    lambda now: self._take(cost, now))

    def update(self, status: ThrottleStatus) -> None:
        """Reset from a response's throttle status (every response, success or not)."""
        self._maximum = status.maximum_available
        self._rate = status.restore_rate
        self._level = min(status.currently_available, status.maximum_available)
        self._at = self._updated_at = self._clock.monotonic()
        self._gate.notify()

    def on_throttled(self, requested_cost: float, status: ThrottleStatus | None) -> float:
        """Handle a ``THROTTLED`` answer (HTTP 200 or 429) to a request of ``requested_cost``.

        Resets from ``status`` (without one, assumes the bucket empty) so that the next
        acquire of that cost waits exactly as long as the bucket needs; returns that wait.
        """
        if status is not None:
            self.update(status)
        else:
            self._level, self._at = 0.0, self._clock.monotonic()
            self._gate.notify()
        wait = max(0.0, (requested_cost - self._level) / self._rate)
        logger.warning("shopify bucket: THROTTLED at cost %g, %.1f of %.1f available, "
                       "next send in %.3f s", requested_cost, self._level, self._maximum, wait)
        return wait

    def snapshot(self) -> CostBucketSnapshot:
        return CostBucketSnapshot(
            maximum_available=self._maximum,
            currently_available=self._level_at(self._clock.monotonic()),
            restore_rate=self._rate,
            waiting=self._gate.waiting,
            updated_at=self._updated_at,
        )

    def _level_at(self, moment: float) -> float:
        elapsed = max(0.0, moment - self._at)
        return min(self._maximum, self._level + elapsed * self._rate)

    def _wait_for(self, cost: float, now: float) -> float:
        if cost > self._maximum + EPSILON:
            raise PermanentError(
                f"query cost {cost:g} exceeds the bucket maximum {self._maximum:g}",
                code="MAX_COST_EXCEEDED",
            )
        level = self._level_at(now)
        if level >= cost - EPSILON:
            return 0.0
        return (cost - level) / self._rate

    def _take(self, cost: float, now: float) -> None:
        self._level = self._level_at(now) - cost
        self._at = now
