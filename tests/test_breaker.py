"""The circuit breaker, driven by a manual clock: no real time passes."""

from __future__ import annotations

import pickle

import pytest

from sync.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from sync.core.errors import (
    BreakerOpen,
    OutcomeUnknown,
    PermanentError,
    SyncError,
    Throttled,
    TransientError,
)
from tests.clock import ManualClock

SHOPIFY = BreakerSettings.shopify()  # 0.5 / 30 s / 5 calls / 30 s
PROCESSORS = BreakerSettings.processors()  # 0.3 / 60 s / 3 calls / 60 s

Transition = tuple[BreakerState, BreakerState, str]


def make(settings: BreakerSettings = SHOPIFY) -> tuple[CircuitBreaker, ManualClock,
                                                        list[Transition]]:
    clock = ManualClock()
    breaker = CircuitBreaker("shopify", settings, clock)
    seen: list[Transition] = []
    breaker.add_listener(lambda old, new, reason: seen.append((old, new, reason)))
    return breaker, clock, seen


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state (a call, so that mypy does not narrow it across transitions)."""
    return breaker.state


def outcomes(breaker: CircuitBreaker, *results: bool) -> None:
    """Run calls to completion: True is a success, False a failure."""
    for ok in results:
        permit = breaker.acquire()
        if ok:
            permit.success()
        else:
            permit.failure()


def open_it(breaker: CircuitBreaker) -> None:
    outcomes(breaker, False, False, False, False, False)
    assert state(breaker) is BreakerState.OPEN


# -- settings --------------------------------------------------------------------------


def test_default_settings_match_the_design() -> None:
    assert (SHOPIFY.failure_ratio, SHOPIFY.sampling_window, SHOPIFY.minimum_throughput,
            SHOPIFY.break_duration) == (0.5, 30.0, 5, 30.0)
    assert (PROCESSORS.failure_ratio, PROCESSORS.sampling_window,
            PROCESSORS.minimum_throughput, PROCESSORS.break_duration) == (0.3, 60.0, 3, 60.0)


@pytest.mark.parametrize("kwargs", [
    {"failure_ratio": 0.0}, {"failure_ratio": 1.5}, {"sampling_window": 0.0},
    {"minimum_throughput": 0}, {"break_duration": -1.0},
])
def test_settings_are_validated(kwargs: dict[str, float]) -> None:
    base: dict[str, float] = {"failure_ratio": 0.5, "sampling_window": 30.0,
                              "minimum_throughput": 5, "break_duration": 30.0}
    with pytest.raises(ValueError):
        BreakerSettings(**(base | kwargs))  # type: ignore[arg-type]


# -- closed: ratio, throughput, window ---------------------------------------------------


def test_opens_when_the_ratio_is_reached_at_minimum_throughput() -> None:
    breaker, clock, seen = make()
    outcomes(breaker, True, True, False, False)
    assert state(breaker) is BreakerState.CLOSED  # 4 calls: below the minimum throughput
    outcomes(breaker, False)  # 3 of 5 failed: 0.6 >= 0.5
    assert state(breaker) is BreakerState.OPEN
    assert [(o, n) for o, n, _ in seen] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert "3 of 5" in seen[0][2]
    snap = breaker.snapshot()
    assert snap.opened_at == clock.monotonic()
    assert snap.open_until == clock.monotonic() + 30.0
    assert snap.retry_after == 30.0


def test_does_not_open_below_minimum_throughput_even_at_full_failure() -> None:
    breaker, _, seen = make()
    outcomes(breaker, False, False, False, False)
    assert state(breaker) is BreakerState.CLOSED
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.failure_ratio) == (4, 4, 1.0)
    assert seen == []


def test_opens_exactly_at_the_ratio() -> None:
    breaker, _, _ = make()
    outcomes(breaker, True, True, True, False, False)  # 2 of 5 = 0.4
    assert state(breaker) is BreakerState.CLOSED
    outcomes(breaker, False)  # 3 of 6 = 0.5
    assert state(breaker) is BreakerState.OPEN


def test_does_not_open_below_the_ratio() -> None:
    breaker, _, seen = make(PROCESSORS)
    for _ in range(20):
        outcomes(breaker, True, True, True, False)  # 0.25 < 0.3, many times over
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.snapshot().failure_ratio == 0.25
    assert seen == []


def test_successes_never_open_it() -> None:
    breaker, _, _ = make(BreakerSettings(0.5, 30.0, 2, 30.0))
    outcomes(breaker, False)
    outcomes(breaker, True)  # 1 of 2 = 0.5, but only a failure triggers the check
    assert state(breaker) is BreakerState.CLOSED
    outcomes(breaker, False)  # 2 of 3
    assert state(breaker) is BreakerState.OPEN


def test_old_outcomes_slide_out_of_the_window() -> None:
    breaker, clock, _ = make()
    outcomes(breaker, False, False, False, False)
    clock.advance(30.0)  # a whole sampling window later
    assert breaker.snapshot().calls == 0
    outcomes(breaker, False)  # 1 call in the window: below the throughput
    assert state(breaker) is BreakerState.CLOSED
    outcomes(breaker, False, False, False)
    assert state(breaker) is BreakerState.CLOSED  # 4 in the window
    outcomes(breaker, False)
    assert state(breaker) is BreakerState.OPEN


def test_window_is_rolling_not_tumbling() -> None:
    breaker, clock, _ = make()
    outcomes(breaker, True, True)
    clock.advance(15.0)
    outcomes(breaker, False, False)
    clock.advance(15.0)  # the two successes leave; the failures stay
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (2, 2)
    outcomes(breaker, True, True)
    assert state(breaker) is BreakerState.CLOSED
    outcomes(breaker, False)  # 3 of 5 in the last 30 s
    assert state(breaker) is BreakerState.OPEN


def test_cancelled_calls_count_neither_way() -> None:
    breaker, _, _ = make()
    for _ in range(10):
        breaker.acquire().cancel()
    assert breaker.snapshot().calls == 0


# -- open ----------------------------------------------------------------------------


def test_open_refuses_with_retry_after_and_goes_half_open_after_the_break() -> None:
    breaker, clock, seen = make()
    open_it(breaker)
    clock.advance(10.0)
    with pytest.raises(BreakerOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == 20.0
    assert info.value.name == "shopify"
    assert isinstance(info.value, SyncError)
    clock.advance(19.999)
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    clock.advance(0.001)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert [(o, n) for o, n, _ in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
    ]


def test_late_outcomes_while_open_neither_extend_nor_reset_the_break() -> None:
    breaker, clock, seen = make()
    slow = [breaker.acquire() for _ in range(3)]  # started before the breaker opened
    open_it(breaker)
    opened = breaker.snapshot()
    clock.advance(20.0)
    slow[0].failure()
    slow[1].success()
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert (snap.opened_at, snap.open_until) == (opened.opened_at, opened.open_until)
    assert snap.retry_after == 10.0
    clock.advance(10.0)
    probe = breaker.acquire()
    assert probe.probe
    slow[2].failure()  # late again, now while half-open: no effect on the probe's fate
    assert state(breaker) is BreakerState.HALF_OPEN
    probe.success()
    assert state(breaker) is BreakerState.CLOSED
    assert len(seen) == 3


def test_late_outcomes_do_not_count_into_the_new_window() -> None:
    breaker, clock, _ = make()
    slow = [breaker.acquire() for _ in range(5)]
    open_it(breaker)
    clock.advance(30.0)
    breaker.acquire().success()  # the probe closes it
    for permit in slow:
        permit.failure()
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED
    assert (snap.calls, snap.failures) == (0, 0)


# -- half-open -----------------------------------------------------------------------


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30.0)
    probe = breaker.acquire()
    assert probe.probe
    for _ in range(3):
        with pytest.raises(BreakerOpen) as info:
            breaker.acquire()
        assert info.value.retry_after == 30.0
    snap = breaker.snapshot()
    assert snap.state is BreakerState.HALF_OPEN and snap.probe_in_flight
    clock.advance(100.0)  # however long the probe takes, it stays the only one
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    probe.success()


def test_probe_success_closes_with_an_empty_window() -> None:
    breaker, clock, seen = make()
    open_it(breaker)
    clock.advance(30.0)
    breaker.acquire().success()
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED
    assert (snap.calls, snap.opened_at, snap.open_until, snap.retry_after) == (0, None, None, 0)
    assert [(o, n, r) for o, n, r in seen][-1] == (
        BreakerState.HALF_OPEN, BreakerState.CLOSED, "probe succeeded")
    # A fresh window: it takes the minimum throughput again to open.
    outcomes(breaker, False, False, False, False)
    assert state(breaker) is BreakerState.CLOSED


def test_probe_failure_reopens_for_a_full_break() -> None:
    breaker, clock, seen = make()
    open_it(breaker)
    clock.advance(30.0)
    probe = breaker.acquire()
    clock.advance(7.0)  # the probe took 7 s to fail
    probe.failure()
    snap = breaker.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.opened_at == clock.monotonic()
    assert snap.retry_after == 30.0  # counted from the failure, not from going half-open
    clock.advance(29.9)
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    clock.advance(0.1)
    assert breaker.acquire().probe
    assert [(o, n) for o, n, _ in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
    ]
    assert seen[2][2] == "probe failed"


def test_cancelled_probe_frees_the_slot() -> None:
    breaker, clock, seen = make()
    open_it(breaker)
    clock.advance(30.0)
    breaker.acquire().cancel()
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.acquire().probe
    assert len(seen) == 2


def test_double_reports_count_once() -> None:
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30.0)
    probe = breaker.acquire()
    probe.success()
    probe.failure()  # ignored: the first report wins
    assert state(breaker) is BreakerState.CLOSED


# -- listeners -------------------------------------------------------------------------


def test_listeners_see_each_transition_and_a_failing_one_is_contained() -> None:
    breaker, clock, seen = make()

    def broken(old: BreakerState, new: BreakerState, reason: str) -> None:
        raise RuntimeError("metrics down")

    breaker.add_listener(broken)
    late: list[Transition] = []
    remove = breaker.add_listener(lambda o, n, r: late.append((o, n, r)))
    open_it(breaker)
    remove()
    clock.advance(30.0)
    breaker.acquire().success()
    assert [(o, n) for o, n, _ in seen] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert len(late) == 1


def test_a_listener_may_read_the_breaker() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker("stripe", PROCESSORS, clock)
    snaps = []
    breaker.add_listener(lambda o, n, r: snaps.append(breaker.snapshot()))
    outcomes(breaker, False, False, False)
    assert snaps[0].state is BreakerState.OPEN
    assert snaps[0].retry_after == 60.0


# -- cancellation ----------------------------------------------------------------------


def test_a_cancelled_probe_reports_nothing_and_frees_the_probe() -> None:
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30.0)
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(BreakerOpen):
        breaker.acquire()  # one probe at a time
    probe.cancel()
    assert state(breaker) is BreakerState.HALF_OPEN
    again = breaker.acquire()
    assert again.probe
    again.success()
    assert state(breaker) is BreakerState.CLOSED


def test_errors_carry_their_fields_and_pickle() -> None:
    for exc in (BreakerOpen("square", 12.5), Throttled(3.0, "429"),
                PermanentError("declined", code="card_declined"), OutcomeUnknown("502"),
                TransientError("reset")):
        copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
        assert type(copy) is type(exc) and str(copy) == str(exc)
    assert BreakerOpen("square", 12.5).retry_after == 12.5
    assert Throttled(3.0).wait == 3.0
    assert isinstance(Throttled(3.0), TransientError)
    assert not isinstance(OutcomeUnknown("x"), TransientError)
    assert PermanentError("m").code is None
    assert str(PermanentError("declined", code="card_declined")) == "card_declined: declined"
