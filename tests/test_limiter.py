"""The rate limiters, driven by a manual clock: every wait is asserted on clock time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.core.errors import PermanentError
from sync.core.limiter import (
    CostBucketSettings,
    ShopifyCostBucket,
    ThrottleStatus,
    TokenBucket,
    TokenBucketSettings,
    retry_after_seconds,
)
from tests.clock import ManualClock

EPS = 1e-9


async def settle(rounds: int = 40) -> None:
    """Let every ready task run until all are blocked on the clock or on each other."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def start(awaitable: Awaitable[float]) -> asyncio.Task[float]:
    async def run() -> float:
        return await awaitable

    return asyncio.create_task(run())


async def assert_waits(clock: ManualClock, task: asyncio.Task[float], seconds: float) -> None:
    """``task`` is still waiting a hair before ``seconds`` from now and is done at it."""
    await settle()
    if seconds > 1e-3:
        assert not task.done()
        clock.advance(seconds - 1e-3)
        await settle()
        assert not task.done(), f"granted before {seconds} s"
        clock.advance(1e-3)
    await settle()
    if not task.done():
        # Split advances can land an ulp short of the sleeper's float deadline.
        clock.advance(1e-9)
        await settle()
    assert task.done(), f"not granted after {seconds} s"


# -- token bucket ----------------------------------------------------------------------


def test_token_bucket_settings() -> None:
    assert TokenBucketSettings.stripe().rate == 25.0
    assert TokenBucketSettings.square().rate == 10.0
    with pytest.raises(ValueError):
        TokenBucketSettings(rate=0.0, burst=1.0)
    with pytest.raises(ValueError):
        TokenBucketSettings(rate=1.0, burst=0.5)
    with pytest.raises(ValueError):
        TokenBucketSettings(rate=1.0, burst=1.0, backoff_initial=10.0, backoff_max=5.0)


async def test_burst_then_exactly_the_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=2.0, burst=5.0), clock)
    for _ in range(5):
        assert await bucket.acquire() == 0.0
    sixth = start(bucket.acquire())
    await assert_waits(clock, sixth, 0.5)
    assert sixth.result() == pytest.approx(0.5, abs=EPS)
    three = start(bucket.acquire(3))
    await assert_waits(clock, three, 1.5)
    assert bucket.snapshot().available == pytest.approx(0.0, abs=EPS)


async def test_token_bucket_rejects_impossible_costs() -> None:
    bucket = TokenBucket(TokenBucketSettings(rate=1.0, burst=5.0), ManualClock())
    with pytest.raises(ValueError):
        await bucket.acquire(6)
    with pytest.raises(ValueError):
        await bucket.acquire(-1)


async def test_no_acquire_beyond_the_budget() -> None:
    clock = ManualClock()
    t0 = clock.monotonic()
    bucket = TokenBucket(TokenBucketSettings(rate=10.0, burst=5.0), clock)
    granted: list[float] = []

    async def worker() -> None:
        await bucket.acquire()
        granted.append(clock.monotonic())

    tasks = [asyncio.create_task(worker()) for _ in range(40)]
    await settle()
    for _ in range(100):
        assert len(granted) <= 5 + 10.0 * (clock.monotonic() - t0) + EPS
        clock.advance(0.05)
        await settle()
    assert len(granted) == 40
    assert granted == sorted(granted)
    for n, moment in enumerate(granted, start=1):
        assert n <= 5 + 10.0 * (moment - t0) + EPS
    await asyncio.gather(*tasks)


async def test_token_bucket_is_fifo() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=1.0, burst=5.0), clock)
    await bucket.acquire(5)
    order: list[str] = []

    async def take(label: str, cost: float) -> None:
        await bucket.acquire(cost)
        order.append(label)

    big = asyncio.create_task(take("big", 5))
    await settle()
    small = asyncio.create_task(take("small", 1))
    clock.advance(1.0)  # one token: enough for "small", which must still not overtake
    await settle()
    assert order == []
    assert bucket.snapshot().waiting == 2
    clock.advance(4.0)
    await settle()
    assert order == ["big"]
    clock.advance(1.0)
    await settle()
    assert order == ["big", "small"]
    await asyncio.gather(big, small)


async def test_retry_after_is_honoured_then_sends_resume_at_the_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=4.0, burst=10.0), clock)
    assert bucket.on_429(2.5) == 2.5
    assert bucket.snapshot().blocked_for == 2.5
    first = start(bucket.acquire())
    await assert_waits(clock, first, 2.5)
    second = start(bucket.acquire())  # the burst is not replayed after a block
    await assert_waits(clock, second, 0.25)


async def test_a_429_reaches_a_waiter_already_waiting() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=10.0, burst=1.0), clock)
    await bucket.acquire()
    waiter = start(bucket.acquire())  # needs 0.1 s
    await settle()
    clock.advance(0.05)
    bucket.on_429(3.0)
    await assert_waits(clock, waiter, 3.0)
    assert waiter.result() == pytest.approx(3.05, abs=EPS)


async def test_a_block_is_never_shortened() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=10.0, burst=10.0), clock)
    bucket.on_429(5.0)
    bucket.on_429(1.0)
    bucket.penalize(0.0)
    waiter = start(bucket.acquire())
    await assert_waits(clock, waiter, 5.0)


async def test_429_without_retry_after_backs_off_exponentially_with_jitter() -> None:
    clock = ManualClock()
    draws = iter([0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    bucket = TokenBucket(
        TokenBucketSettings(rate=100.0, burst=1.0, backoff_initial=1.0, backoff_max=8.0),
        clock, rand=lambda: next(draws),
    )
    # ceiling 1, 2, 4, 8 (drawn at 0.5 of its range), then capped at 8
    assert [bucket.on_429(None) for _ in range(5)] == [0.5, 1.0, 2.0, 6.0, 4.0]
    assert bucket.snapshot().consecutive_429 == 5
    bucket.on_success()
    assert bucket.snapshot().consecutive_429 == 0
    clock.advance(100.0)
    wait = bucket.on_429(None)
    assert wait == 0.5
    waiter = start(bucket.acquire())
    await assert_waits(clock, waiter, 0.5)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    clock = ManualClock()
    bucket = TokenBucket(TokenBucketSettings(rate=1.0, burst=1.0), clock)
    await bucket.acquire()
    first = start(bucket.acquire())
    second = start(bucket.acquire())
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    await assert_waits(clock, second, 1.0)
    assert bucket.snapshot().waiting == 0


def test_retry_after_header_parsing() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("-4", now) == 0.0
    assert retry_after_seconds("Thu, 26 Nov 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 26 Nov 2026 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("", now) is None
    assert retry_after_seconds("soon", now) is None


# -- Shopify cost bucket ---------------------------------------------------------------


def status(maximum: float, current: float, rate: float) -> ThrottleStatus:
    return ThrottleStatus(maximum_available=maximum, currently_available=current,
                          restore_rate=rate)


def test_throttle_status_parsing() -> None:
    body = {"data": {}, "extensions": {"cost": {
        "requestedQueryCost": 10, "actualQueryCost": 10,
        "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990,
                           "restoreRate": 100.0}}}}
    assert ThrottleStatus.from_response(body) == status(2000.0, 1990.0, 100.0)
    assert ThrottleStatus.from_response({"data": {}}) is None
    assert ThrottleStatus.from_response({"extensions": {"cost": {}}}) is None
    with pytest.raises(ValueError):
        ThrottleStatus.from_json({"maximumAvailable": 2000, "currentlyAvailable": "1",
                                  "restoreRate": 100})
    with pytest.raises(ValueError):
        ThrottleStatus.from_json({"maximumAvailable": 2000, "currentlyAvailable": 1})
    with pytest.raises(ValueError):
        status(2000, 10, 0)


async def test_cost_bucket_starts_conservative_and_refills_at_the_restore_rate() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    snap = bucket.snapshot()
    assert (snap.maximum_available, snap.currently_available, snap.restore_rate) == (
        1000.0, 1000.0, 50.0)
    assert snap.updated_at is None
    assert await bucket.acquire(990) == 0.0
    waiter = start(bucket.acquire(20))  # 10 short at 50 a second
    await assert_waits(clock, waiter, 0.2)
    clock.advance(1000.0)
    assert bucket.snapshot().currently_available == 1000.0  # capped at the maximum


async def test_cost_bucket_resets_from_throttle_status() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock, CostBucketSettings(initial_maximum=1000,
                                                         initial_restore_rate=50))
    bucket.update(status(2000.0, 1500.0, 100.0))
    snap = bucket.snapshot()
    assert (snap.maximum_available, snap.currently_available, snap.restore_rate) == (
        2000.0, 1500.0, 100.0)
    assert snap.updated_at == clock.monotonic()
    waiter = start(bucket.acquire(1600))
    await assert_waits(clock, waiter, 1.0)
    assert waiter.result() == pytest.approx(1.0, abs=EPS)
    bucket.update(status(2000.0, 40.0, 100.0))  # lower than the local estimate: trusted
    waiter = start(bucket.acquire(100))
    await assert_waits(clock, waiter, 0.6)


async def test_throttled_answer_waits_exactly_what_the_bucket_needs() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    assert await bucket.acquire(500) == 0.0  # sent, and answered THROTTLED
    assert bucket.on_throttled(500, status(2000.0, 200.0, 100.0)) == 3.0
    retry = start(bucket.acquire(500))
    await assert_waits(clock, retry, 3.0)  # (500 - 200) / 100
    assert retry.result() == pytest.approx(3.0, abs=EPS)


async def test_throttled_without_status_assumes_an_empty_bucket() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    assert bucket.on_throttled(100, None) == 2.0
    retry = start(bucket.acquire(100))
    await assert_waits(clock, retry, 2.0)


async def test_an_update_lets_a_waiter_go_early() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    bucket.update(status(1000.0, 0.0, 50.0))
    waiter = start(bucket.acquire(100))  # 2 s by the local estimate
    await settle()
    clock.advance(0.5)
    await settle()
    assert not waiter.done()
    bucket.update(status(1000.0, 150.0, 50.0))  # e.g. a refund of unused cost
    await settle()
    assert waiter.done() and waiter.result() == pytest.approx(0.5, abs=EPS)


async def test_cost_above_the_maximum_is_an_error() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    with pytest.raises(PermanentError) as info:
        await bucket.acquire(1001)
    assert info.value.code == "MAX_COST_EXCEEDED"
    await bucket.acquire(1000)
    waiter = start(bucket.acquire(800))
    behind = start(bucket.acquire(10))
    await settle()
    bucket.update(status(500.0, 0.0, 50.0))  # the real bucket is smaller than assumed
    await settle()
    assert isinstance(waiter.exception(), PermanentError)
    await assert_waits(clock, behind, 0.2)  # the queue moves on


async def test_cost_bucket_is_fifo() -> None:
    clock = ManualClock()
    bucket = ShopifyCostBucket(clock)
    bucket.update(status(1000.0, 0.0, 100.0))
    order: list[int] = []

    async def take(cost: int) -> None:
        await bucket.acquire(cost)
        order.append(cost)

    tasks = []
    for cost in (500, 10, 200, 10):
        tasks.append(asyncio.create_task(take(cost)))
        await settle()
    clock.advance(4.99)
    await settle()
    assert order == []  # 499 available: the 10s could go, but wait their turn
    clock.advance(0.01)
    await settle()
    assert order == [500]
    clock.advance(0.1)
    await settle()
    assert order == [500, 10]
    clock.advance(2.1)
    await settle()
    assert order == [500, 10, 200, 10]
    await asyncio.gather(*tasks)


# -- properties ------------------------------------------------------------------------


async def _run_schedule(bucket_kind: str, steps: list[tuple[float, int]]) -> None:
    clock = ManualClock()
    t0 = clock.monotonic()
    bucket: ShopifyCostBucket | TokenBucket
    if bucket_kind == "shopify":
        bucket = ShopifyCostBucket(clock)  # starts full: 1000, restoring 50 a second
        initial, rate = 1000.0, 50.0
    else:
        bucket = TokenBucket(TokenBucketSettings(rate=7.0, burst=20.0), clock)
        initial, rate = 20.0, 7.0
        steps = [(dt, 1 + cost % 20) for dt, cost in steps]
    grants: list[tuple[int, float, int]] = []

    async def take(n: int, cost: int) -> None:
        await bucket.acquire(cost)
        grants.append((n, clock.monotonic(), cost))

    tasks = []
    for n, (dt, cost) in enumerate(steps):
        tasks.append(asyncio.create_task(take(n, cost)))
        await settle()
        clock.advance(dt)
        await settle()
    while len(grants) < len(steps):
        clock.advance(1.0)
        await settle()
    await asyncio.gather(*tasks)

    assert [n for n, _, _ in grants] == list(range(len(steps)))  # FIFO
    total = 0.0
    for _, moment, cost in grants:
        total += cost
        assert total <= initial + rate * (moment - t0) + 1e-6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=5.0), st.integers(1, 1000)),
                max_size=25))
def test_cost_bucket_never_grants_more_than_it_restores(steps: list[tuple[float, int]]) -> None:
    asyncio.run(_run_schedule("shopify", steps))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=2.0), st.integers(1, 1000)),
                max_size=25))
def test_token_bucket_never_grants_more_than_its_rate(steps: list[tuple[float, int]]) -> None:
    asyncio.run(_run_schedule("token", steps))
