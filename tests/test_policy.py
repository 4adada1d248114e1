"""The one failure policy: each exception's verdict, and the engine following it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edged.store import Database
from sync.core.breaker import BreakerState
from sync.core.errors import (
    CredentialsRequired,
    OutcomeUnknown,
    PermanentError,
    Throttled,
    TransientError,
)
from sync.core.gateway import PartialWork, Work, WorkResult
from sync.core.policy import BreakerOutcome, RowAction, judge
from tests.clock import ManualClock
from tests.test_sync_engine import ScriptedGateway, _engine, _enqueue, _states, _until

S, F, C = BreakerOutcome.SUCCESS, BreakerOutcome.FAILURE, BreakerOutcome.CANCEL
KILL, RELEASE, LATER = RowAction.KILL, RowAction.RELEASE, RowAction.LATER


@pytest.mark.parametrize(("exc", "breaker", "action", "now", "attempt", "unknown"), [
    (PermanentError("refused", "ERR-6015"), S, KILL, False, True, False),
    (CredentialsRequired("no token"), C, RELEASE, False, False, False),
    (Throttled(2.5), S, LATER, False, False, False),
    (TransientError("connection refused"), F, LATER, True, True, False),
    (OutcomeUnknown("HTTP 502 after sending"), F, LATER, True, True, True),
    (TimeoutError(), F, LATER, True, True, True),
    (ConnectionResetError(), F, LATER, True, True, True),
    (KeyError("a bug in a gateway"), C, LATER, False, True, True),
    (asyncio.CancelledError(), C, LATER, False, False, True),
])
def test_each_exception_has_one_verdict(exc: BaseException, breaker: BreakerOutcome,
                                        action: RowAction, now: bool, attempt: bool,
                                        unknown: bool) -> None:
    verdict = judge(exc)
    assert (verdict.breaker, verdict.action, verdict.retry_now, verdict.uses_attempt,
            verdict.outcome_unknown) == (breaker, action, now, attempt, unknown)
    assert verdict.wait == (2.5 if isinstance(exc, Throttled) else None)
    assert verdict.defect == isinstance(exc, KeyError)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "edged.db")
    await database.open()
    yield database
    await database.close()


def _attempts(db: Database) -> list[tuple[str, int, int]]:
    conn = sqlite3.connect(db.path)
    try:
        return list(conn.execute("SELECT state, attempts, outcome_unknown FROM outbox"))
    finally:
        conn.close()


async def test_a_gateway_defect_is_logged_retried_later_and_the_worker_goes_on(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    _enqueue(db.path, 1)
    gateway = ScriptedGateway()
    gateway.failures = [KeyError("payload")]  # once only: not quick-retried in the claim
    engine, breaker = _engine(db, clock, gateway)
    with caplog.at_level(logging.ERROR, logger="sync.core.engine"):
        await engine.start()
        await _until(lambda: _states(db.path) == {"done": 1}, clock)
        await engine.stop()
    _, second = gateway.calls  # one call per claim: a defect is not retried at once
    assert second.outcome_unknown and second.attempt == 1
    (record,) = [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert record.exc_info is not None  # the traceback, once
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (1, 0, BreakerState.CLOSED)


async def test_quick_retry_and_step_agree(db: Database) -> None:
    """Transient: retried inside the claim (quick_retries=2), then one attempt used.
    Throttled: never retried inside the claim, no attempt used."""
    clock = ManualClock()
    _enqueue(db.path, 1)
    gateway = ScriptedGateway()
    gateway.failures = [TransientError("reset"), TransientError("reset")]
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: len(gateway.calls) >= 2, clock, step=0.1)
    await _until(lambda: _attempts(db)[0][:2] == ("pending", 1), clock, step=0.0)
    assert [w.attempt for w in gateway.calls] == [0, 1]
    await engine.stop()

    clock2 = ManualClock()
    gateway2 = ScriptedGateway()
    gateway2.failures = [Throttled(40.0)]
    engine2, _ = _engine(db, clock2, gateway2)
    conn = sqlite3.connect(db.path)
    conn.execute("UPDATE outbox SET attempts = 0, next_attempt_at = '2000-01-01T00:00:00Z'")
    conn.commit()
    conn.close()
    await engine2.start()
    await _until(lambda: len(gateway2.calls) == 1, clock2, step=0.0)
    await _until(lambda: _attempts(db)[0][:2] == ("pending", 0), clock2, step=0.0)
    clock2.advance(39.0)
    await asyncio.sleep(0.05)
    assert len(gateway2.calls) == 1  # the destination waits the throttle out
    await _until(lambda: _states(db.path) == {"done": 1}, clock2)
    await engine2.stop()


async def test_a_send_that_stops_part_way_keeps_what_it_applied(db: Database) -> None:
    """The gateway applied the first row, then the link failed: that row is done at once
    and never sent again; only the others go back (same batch, same key), and when they
    run out of attempts the applied row stays done."""
    clock = ManualClock()
    _enqueue(db.path, 3)
    gateway = ScriptedGateway()

    def first_then_fail(work: Work) -> WorkResult:
        gateway.down = True  # from now on
        first = work.rows[0]
        raise PartialWork(WorkResult(applied={first.id: {"ok": True}}),
                          TransientError("connection reset"))

    gateway.failures = [first_then_fail]
    engine, _ = _engine(db, clock, gateway, max_attempts=2)
    await engine.start()
    await _until(lambda: _states(db.path) == {"done": 1, "dead": 2}, clock, step=5.0)
    await engine.stop()
    assert [len(w.rows) for w in gateway.calls] == [3, 2, 2, 2]  # 2 claims x 2 quick tries
    assert {w.idempotency_key for w in gateway.calls} == {gateway.calls[0].idempotency_key}


async def test_a_row_once_in_doubt_dies_in_doubt_and_its_retry_keeps_the_key(
        db: Database) -> None:
    """An early attempt may have been applied (502 after sending); later attempts only fail
    to connect. The row dies still flagged in doubt, so a manager's retry resends it in its
    batch under the same key (the upstream replays it) instead of a new key."""
    clock = ManualClock()
    _enqueue(db.path, 1)
    gateway = ScriptedGateway()
    gateway.failures = [OutcomeUnknown("HTTP 502 after sending")]
    engine, _ = _engine(db, clock, gateway, max_attempts=2)

    def down(work: Work) -> WorkResult:
        raise TransientError("connection refused")

    gateway.failures += [down, down, down]
    await engine.start()
    await _until(lambda: _states(db.path) == {"dead": 1}, clock, step=5.0)
    await engine.stop()
    assert _attempts(db) == [("dead", 2, 1)]
    moved = await engine.store.retry_dead(1)
    assert moved is not None and moved["batch_id"] is not None  # the same batch, same key
