"""A circuit breaker with the semantics of Polly v8's advanced circuit breaker.

Why: when an upstream is down, every worker hammering it only adds load and latency. The
breaker counts outcomes over a rolling sampling window and, once at least
``minimum_throughput`` calls were seen and the share of failures reaches ``failure_ratio``,
opens: calls are refused with :class:`~sync.core.errors.BreakerOpen` for ``break_duration``.
It then goes half-open and lets exactly one probe through (others are refused while the
probe runs); the probe's success closes the breaker with an empty window, its failure opens
it for another full break.

Every permit remembers the breaker's *generation*, which changes on each transition, so an
outcome that arrives after a transition (a call started before the breaker opened, say)
neither extends nor resets a break and never counts into a later window.

Time comes from the injected :class:`~sync.core.clock.Clock`; the breaker itself never sleeps.
Which outcome a call reports (success, failure or nothing) is decided by ``sync.core.policy``.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sync.core.clock import Clock
from sync.core.errors import BreakerOpen

logger = logging.getLogger(__name__)

#: Buckets in the rolling window: an outcome leaves it between 9/10 and 10/10 of the
#: sampling window after it was recorded.
DEFAULT_BUCKETS = 10


class BreakerState(enum.Enum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """How a breaker decides; durations in seconds."""

    failure_ratio: float
    sampling_window: float
    minimum_throughput: int
    break_duration: float

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError(f"failure_ratio must be in (0, 1], got {self.failure_ratio}")
        if not self.sampling_window > 0.0:
            raise ValueError(f"sampling_window must be positive, got {self.sampling_window}")
        if self.minimum_throughput < 1:
            raise ValueError(
                f"minimum_throughput must be at least 1, got {self.minimum_throughput}"
            )
        if not self.break_duration > 0.0:
            raise ValueError(f"break_duration must be positive, got {self.break_duration}")

    @classmethod
    def shopify(cls) -> BreakerSettings:
        """The default for Shopify: 0.5 over 30 s, at least 5 calls, 30 s break (docs/design.md)."""
        return cls(failure_ratio=0.5, sampling_window=30.0, minimum_throughput=5,
                   break_duration=30.0)

    @classmethod
    def processors(cls) -> BreakerSettings:
        """The default for Stripe and Square: 0.3 over 60 s, 3 calls, 60 s break."""
        return cls(failure_ratio=0.3, sampling_window=60.0, minimum_throughput=3,
                   break_duration=60.0)


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state for the status page and metrics; times are clock-monotonic."""

    name: str
    state: BreakerState
    failure_ratio: float
    calls: int
    failures: int
    opened_at: float | None
    open_until: float | None
    retry_after: float
    probe_in_flight: bool


#: ``listener(old, new, reason)``, called after each transition.
BreakerListener = Callable[[BreakerState, BreakerState, str], None]


class _RollingWindow:
    """Successes and failures over the last ``window`` seconds, in ``buckets`` buckets."""

    def __init__(self, window: float, buckets: int) -> None:
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        self._width = window / buckets
        self._count = buckets
        # Each entry: [bucket index, calls, failures].
        self._buckets: deque[list[int]] = deque()

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def _prune(self, now: float) -> int:
        current = self._index(now)
        while self._buckets and self._buckets[0][0] <= current - self._count:
            self._buckets.popleft()
        return current

    def add(self, now: float, failed: bool) -> None:
        current = self._prune(now)
        if not self._buckets or self._buckets[-1][0] != current:
            self._buckets.append([current, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(failed)

    def totals(self, now: float) -> tuple[int, int]:
        """``(calls, failures)`` in the window ending at ``now``."""
        self._prune(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def reset(self) -> None:
        self._buckets.clear()


class Permit:
    """Leave to make one call; report its outcome exactly once.

    The first of :meth:`success`, :meth:`failure` or :meth:`cancel` counts; later reports
    are ignored (and logged). A half-open probe that is never reported keeps the breaker
    refusing calls, so report on every path (:meth:`CircuitBreaker.call` does).
    """

    __slots__ = ("_breaker", "_generation", "_probe", "_settled")

    def __init__(self, breaker: CircuitBreaker, generation: int, probe: bool) -> None:
        self._breaker = breaker
        self._generation = generation
        self._probe = probe
        self._settled = False

    @property
    def probe(self) -> bool:
        """Whether this is the half-open probe."""
        return self._probe

    @property
    def generation(self) -> int:
        """The breaker generation the permit was granted in."""
        return self._generation

    @property
    def settled(self) -> bool:
        """Whether an outcome was reported."""
        return self._settled

    def success(self) -> None:
        """The call succeeded (or got an answer that does not mean the upstream is unwell)."""
        self._settle("success")

    def failure(self) -> None:
        """The call failed in a way that counts against the upstream's health."""
        self._settle("failure")

    def cancel(self) -> None:
        """The call ended without an outcome (cancelled): counts neither way, frees a probe."""
        self._settle("cancel")

    def _settle(self, outcome: str) -> None:
        if self._settled:
            logger.warning("breaker %s: permit reported twice (%s ignored)",
                           self._breaker.name, outcome)
            return
        self._settled = True
        self._breaker._record(self, outcome)


class CircuitBreaker:
    """One breaker per destination; see the module docstring for the semantics."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        clock: Clock,
        *,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        self._name = name
        self._settings = settings
        self._clock = clock
        self._window = _RollingWindow(settings.sampling_window, buckets)
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._opened_at: float | None = None
        self._open_until: float | None = None
        self._probe_in_flight = False
        self._listeners: list[BreakerListener] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @property
    def state(self) -> BreakerState:
        """The current state; an elapsed break turns into HALF_OPEN here (and notifies)."""
        self._refresh(self._clock.monotonic())
        return self._state

    def add_listener(self, listener: BreakerListener) -> Callable[[], None]:
        """Call ``listener(old, new, reason)`` after each transition; returns a remover.

        A listener that raises is logged and skipped: metrics must not break the breaker.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def acquire(self) -> Permit:
        """Leave for one call, or :class:`~sync.core.errors.BreakerOpen` with ``retry_after``."""
        now = self._clock.monotonic()
        self._refresh(now)
        if self._state is BreakerState.CLOSED:
            return Permit(self, self._generation, probe=False)
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            logger.info("breaker %s: letting one probe through", self._name)
            return Permit(self, self._generation, probe=True)
        raise BreakerOpen(self._name, self._retry_after(now))

    def snapshot(self) -> BreakerSnapshot:
        """The state, window and timings now, as a frozen value."""
        now = self._clock.monotonic()
        self._refresh(now)
        calls, failures = (
            self._window.totals(now) if self._state is BreakerState.CLOSED else (0, 0)
        )
        return BreakerSnapshot(
            name=self._name,
            state=self._state,
            failure_ratio=failures / calls if calls else 0.0,
            calls=calls,
            failures=failures,
            opened_at=self._opened_at,
            open_until=self._open_until,
            retry_after=self._retry_after(now),
            probe_in_flight=self._probe_in_flight,
        )

    # -- internals ---------------------------------------------------------------------

    def _retry_after(self, now: float) -> float:
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            return max(0.0, self._open_until - now)
        if self._state is BreakerState.HALF_OPEN and self._probe_in_flight:
            # The probe may succeed any moment, or fail and open for a full break: the
            # break duration is the estimate Polly gives as well.
            return self._settings.break_duration
        return 0.0

    def _refresh(self, now: float) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._open_until is not None
            and now >= self._open_until
        ):
            self._transition(
                BreakerState.HALF_OPEN, now,
                f"break of {self._settings.break_duration:g} s elapsed",
            )

    def _record(self, permit: Permit, outcome: str) -> None:
        if permit.generation != self._generation:
            logger.debug("breaker %s: late %s from generation %d ignored (now %d, %s)",
                         self._name, outcome, permit.generation, self._generation,
                         self._state.value)
            return
        now = self._clock.monotonic()
        if permit.probe:
            self._probe_in_flight = False
            if outcome == "success":
                self._transition(BreakerState.CLOSED, now, "probe succeeded")
            elif outcome == "failure":
                self._transition(BreakerState.OPEN, now, "probe failed")
            return
        if outcome == "cancel" or self._state is not BreakerState.CLOSED:
            return
        failed = outcome == "failure"
        self._window.add(now, failed)
        if not failed:
            return
        calls, failures = self._window.totals(now)
        ratio = failures / calls
        if calls >= self._settings.minimum_throughput and ratio >= self._settings.failure_ratio:
            self._transition(
                BreakerState.OPEN, now,
                f"{failures} of {calls} calls failed in "
                f"{self._settings.sampling_window:g} s (ratio {ratio:.2f} >= "
                f"{self._settings.failure_ratio:g})",
            )

    def _transition(self, new: BreakerState, now: float, reason: str) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._probe_in_flight = False
        self._window.reset()
        if new is BreakerState.OPEN:
            self._opened_at = now
            self._open_until = now + self._settings.break_duration
        elif new is BreakerState.CLOSED:
            self._opened_at = None
            self._open_until = None
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        logger.log(level, "breaker %s: %s -> %s (%s)", self._name, old.value, new.value, reason)
        for listener in list(self._listeners):
            try:
                listener(old, new, reason)
            except Exception:
                logger.exception("breaker %s: state listener failed", self._name)
