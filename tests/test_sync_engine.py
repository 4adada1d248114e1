"""The outbox drain with a scripted gateway: batches, leases, breaker, dead rows.

Time is a manual clock; the store is a real SQLite file with the daemon's schema.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edged.store import Database
from edged.upstream.sync_hooks import StoreHooks
from sync.core import outbox
from sync.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from sync.core.clock import utc_iso
from sync.core.contract import InventoryAdjust, OrderCreate, OrderLine, OutboxKind, Payload
from sync.core.engine import EngineSettings, SyncEngine
from sync.core.errors import OutcomeUnknown, PermanentError, TransientError
from sync.core.gateway import OutboxRow, RowFailure, Work, WorkResult
from sync.core.outbox import OutboxSettings, OutboxStore
from tests.clock import ManualClock

Script = Callable[[Work], WorkResult]


class ScriptedGateway:
    """Applies rows like an idempotent upstream; a test can make calls fail."""

    destination = "shopify"

    def __init__(self) -> None:
        self.calls: list[Work] = []
        self.applied: dict[str, Mapping[str, Any]] = {}  # key -> payload applied under it
        self.failures: list[BaseException | Script] = []
        self.down = False

    def batch_limit(self, kind: str) -> int:
        return 3 if kind == "inventory.adjust" else 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        return {"changes": [{"item": r.payload["inventory_item_id"], "delta": r.payload["delta"]}
                            for r in rows]}

    async def send(self, work: Work) -> WorkResult:
        self.calls.append(work)
        if self.down:
            raise TransientError("connection refused")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, BaseException):
                if isinstance(failure, OutcomeUnknown):  # applied, but the answer was lost
                    self.applied.setdefault(work.idempotency_key, work.payload)
                raise failure
            return failure(work)
        first = self.applied.setdefault(work.idempotency_key, work.payload)
        assert first == work.payload, "same key, other variables"
        return WorkResult(applied={r.id: {"ok": True} for r in work.rows})

    async def close(self) -> None:
        pass


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "edged.db")
    await database.open()
    yield database
    await database.close()


def _payload(kind: OutboxKind, i: int) -> Payload:
    if kind is OutboxKind.ORDER_CREATE:
        return OrderCreate(order_id=f"ord_{i}", currency="EUR", processed_at="2026-01-01T00:00:00Z",
                           source_identifier=f"edged://test/orders/ord_{i}",
                           lines=(OrderLine(quantity=1, price=100, title="Tea"),))
    return InventoryAdjust(adjustment_id=f"adj_{i}", delta_id=i + 1, reason="correction",
                           inventory_item_id=f"gid://shopify/InventoryItem/{i}", delta=i + 1)


def _enqueue(db_path: Path, n: int, kind: OutboxKind = OutboxKind.INVENTORY_ADJUST) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("BEGIN")
    for i in range(n):
        outbox.enqueue(conn, "shopify", _payload(kind, i), utc_iso(ManualClock().now()))
    conn.execute("COMMIT")
    conn.close()


def _states(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    rows = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    conn.close()
    return rows


async def _until(cond: Callable[[], bool], clock: ManualClock, step: float = 0.5,
                 limit: int = 2000) -> None:
    """Let the workers run, moving the manual clock, until ``cond`` holds."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.002)  # real I/O (the database threads) needs a moment
        clock.advance(step)
    raise AssertionError("condition not reached")


def _engine(db: Database, clock: ManualClock, gateway: ScriptedGateway,
            breaker: CircuitBreaker | None = None, max_attempts: int = 12,
            ) -> tuple[SyncEngine, CircuitBreaker]:
    store = OutboxStore(db, clock, StoreHooks(clock), OutboxSettings(max_attempts=max_attempts),
                        rand=lambda: 1.0)
    engine = SyncEngine(store, clock, EngineSettings(quick_retries=2))
    breaker = breaker or CircuitBreaker("shopify", BreakerSettings.shopify(), clock)
    engine.add(gateway, breaker)
    return engine, breaker


async def test_rows_drain_in_fixed_batches_exactly_once(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 7)
    gateway = ScriptedGateway()
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"done": 7}, clock)
    await engine.stop()
    assert [len(w.rows) for w in gateway.calls] == [3, 3, 1]
    assert sum(len(p["changes"]) for p in gateway.applied.values()) == 7


async def test_a_lost_answer_is_resent_with_the_same_key_and_variables(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 2)
    gateway = ScriptedGateway()
    gateway.failures = [OutcomeUnknown("HTTP 500 after apply")]
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"done": 2}, clock)
    await engine.stop()
    first, second = gateway.calls
    assert first.idempotency_key == second.idempotency_key
    assert first.payload == second.payload
    assert second.outcome_unknown is True
    assert len(gateway.applied) == 1


async def test_membership_survives_a_crash_mid_send(db: Database, tmp_path: Path) -> None:
    clock = ManualClock()
    _enqueue(db.path, 3)
    gateway = ScriptedGateway()
    store = OutboxStore(db, clock, StoreHooks(clock))
    work = await store.claim(gateway)  # leased, then the process "dies"
    assert work is not None
    assert _states(db.path) == {"inflight": 3}
    # a new process starts: leases go back to pending, flagged unknown
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"done": 3}, clock)
    await engine.stop()
    (resent,) = gateway.calls
    assert resent.idempotency_key == work.idempotency_key
    assert resent.payload == work.payload
    assert resent.outcome_unknown is True


async def test_breaker_opens_waits_and_resumes_by_itself(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 9, kind=OutboxKind.ORDER_CREATE)
    gateway = ScriptedGateway()
    gateway.down = True
    settings = BreakerSettings(failure_ratio=0.5, sampling_window=30, minimum_throughput=3,
                               break_duration=30)
    breaker = CircuitBreaker("shopify", settings, clock)
    engine, _ = _engine(db, clock, gateway, breaker)
    await engine.start()
    await _until(lambda: breaker.state is BreakerState.OPEN, clock, step=0.1)
    calls_when_open = len(gateway.calls)
    clock.advance(10)  # inside the break: nothing is sent
    for _ in range(500):  # the worker settles into its wait (real threads: no fixed sleep)
        if engine.workers["shopify"].status().state.value == "waiting_breaker":
            break
        await asyncio.sleep(0.01)
    assert engine.workers["shopify"].status().state.value == "waiting_breaker"
    assert len(gateway.calls) == calls_when_open
    gateway.down = False
    await _until(lambda: _states(db.path) == {"done": 9}, clock, step=1.0)
    await engine.stop()
    assert breaker.state is BreakerState.CLOSED
    assert _states(db.path) == {"done": 9}


async def test_permanent_failure_kills_its_row_and_the_rest_flows(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 3, kind=OutboxKind.ORDER_CREATE)
    gateway = ScriptedGateway()
    gateway.failures = [PermanentError("lineItems[0]: variant does not exist", "ERR-6015")]
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"dead": 1, "done": 2}, clock)
    await engine.stop()
    conn = sqlite3.connect(db.path)
    (error,) = conn.execute("SELECT last_error FROM outbox WHERE state = 'dead'").fetchone()
    assert error == "ERR-6015: lineItems[0]: variant does not exist"


async def test_a_refused_batch_kills_the_culprit_and_rebatches_the_rest(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 3)
    gateway = ScriptedGateway()

    def refuse_second(work: Work) -> WorkResult:
        bad, *good = work.rows[1:2] + work.rows[:1] + work.rows[2:]
        return WorkResult(dead={bad.id: RowFailure("ERR-6012", "unknown inventory item")},
                          retry_apart=tuple(r.id for r in good))

    gateway.failures = [refuse_second]
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"dead": 1, "done": 2}, clock)
    await engine.stop()
    first, second = gateway.calls
    assert len(second.rows) == 2
    assert second.idempotency_key != first.idempotency_key  # a new batch, a new key


async def test_rows_go_dead_after_max_attempts(db: Database) -> None:
    clock = ManualClock()
    _enqueue(db.path, 1, kind=OutboxKind.ORDER_CREATE)
    gateway = ScriptedGateway()
    gateway.down = True
    never = BreakerSettings(failure_ratio=1.0, sampling_window=1, minimum_throughput=1000,
                            break_duration=1)
    engine, _ = _engine(db, clock, gateway, CircuitBreaker("shopify", never, clock),
                        max_attempts=3)
    await engine.start()
    await _until(lambda: _states(db.path) == {"dead": 1}, clock, step=5.0)
    await engine.stop()
    conn = sqlite3.connect(db.path)
    attempts, error = conn.execute("SELECT attempts, last_error FROM outbox").fetchone()
    assert attempts == 3
    assert "gave up after 3 attempts" in error
    jobs = await OutboxStore(db, clock, StoreHooks(clock)).jobs("dead", None, 10)
    assert json.dumps(jobs[0]["payload"])  # listed with its payload for the manager


async def test_missing_credentials_wait_without_using_attempts(db: Database) -> None:
    from sync.core.errors import CredentialsRequired

    clock = ManualClock()
    _enqueue(db.path, 2, kind=OutboxKind.ORDER_CREATE)
    gateway = ScriptedGateway()
    gateway.failures = [CredentialsRequired("ERR-6006: no token; edged secret set shopify.token")]
    engine, breaker = _engine(db, clock, gateway)
    await engine.start()
    worker = engine.workers["shopify"]
    await _until(lambda: worker.status().state.value == "waiting_credentials", clock, step=0.0)
    conn = sqlite3.connect(db.path)
    assert conn.execute("SELECT max(attempts) FROM outbox").fetchone()[0] == 0
    assert "edged secret set" in (worker.status().last_error or "")
    await _until(lambda: _states(db.path) == {"done": 2}, clock, step=5.0)
    await engine.stop()
    assert breaker.state is BreakerState.CLOSED


def test_a_repeated_error_is_logged_once_loudly(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from sync.core.quiet_log import RepeatFilter

    caplog.set_level(logging.DEBUG, logger="test.quiet")
    quiet = RepeatFilter(logging.getLogger("test.quiet"))
    for _ in range(5):
        quiet.log("link", logging.WARNING, "shopify: %s", "connection refused")
    quiet.clear("link", "shopify: back")
    quiet.log("link", logging.WARNING, "shopify: %s", "connection refused")
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "DEBUG", "DEBUG", "DEBUG", "DEBUG", "INFO", "WARNING"]


# -- issue 16 item 12: a row in doubt keeps when its answer was lost; counts wait for sales --


def _column(db_path: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db_path)
    try:
        return [r[0] for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


async def test_a_crash_mid_send_records_the_doubt_when_the_send_went_out(
        db: Database) -> None:
    """The lease was taken when the send went out: a restart long after keeps that moment
    (a settle time counts from the lost answer, not from the start of the new worker)."""
    clock = ManualClock()
    _enqueue(db.path, 1, kind=OutboxKind.ORDER_CREATE)
    store = OutboxStore(db, clock, StoreHooks(clock))
    sent_at = utc_iso(clock.now())
    assert await store.claim(ScriptedGateway()) is not None  # then the process "dies"
    clock.advance(40)
    assert await store.recover_leases() == 1
    assert _column(db.path, "SELECT doubt_at FROM outbox") == [sent_at]
    work = await store.claim(ScriptedGateway())
    assert work is not None and work.outcome_unknown and work.doubt_at == sent_at


async def test_a_held_sale_lets_deltas_pass_and_holds_later_counts(db: Database) -> None:
    """A held order.create (HoldRow) waits alone: stock deltas behind it are sent; a stock
    count (compare-and-swap on local stock, which counts the sale) waits for it."""
    from sync.core.contract import InventorySet  # noqa: PLC0415
    from sync.core.errors import HoldRow  # noqa: PLC0415

    clock = ManualClock()
    _enqueue(db.path, 1, kind=OutboxKind.ORDER_CREATE)
    conn = sqlite3.connect(db.path)
    conn.execute("BEGIN")
    outbox.enqueue(conn, "shopify", InventorySet(
        count_id="cnt_1", delta_id=99, inventory_item_id="gid://shopify/InventoryItem/7",
        quantity=5, last_known_quantity=4, reason="correction"), utc_iso(clock.now()))
    conn.execute("COMMIT")
    conn.close()
    _enqueue(db.path, 2)  # two deltas after them
    gateway = ScriptedGateway()
    gateway.failures = [HoldRow(30.0, "the order search may lag")]
    engine, _ = _engine(db, clock, gateway)
    await engine.start()
    await _until(lambda: _states(db.path) == {"pending": 2, "done": 2}, clock, step=0.01)
    assert [w.kind for w in gateway.calls] == ["order.create", "inventory.adjust"]
    assert engine.workers["shopify"].state.value != "backing_off"
    await _until(lambda: _states(db.path) == {"done": 4}, clock, step=1.0)
    await engine.stop()
    assert [w.kind for w in gateway.calls] == ["order.create", "inventory.adjust",
                                               "order.create", "inventory.set"]


async def test_a_claim_with_nothing_due_takes_no_turn_of_the_writer(db: Database) -> None:
    """Every payment, refund, order and stock event wakes the workers, and most queue
    nothing for them: such a wake-up reads, and writes nothing. A row due later is left
    to its time; once due, the claim leases it."""
    clock = ManualClock()
    store = OutboxStore(db, clock, StoreHooks(clock))
    gateway = ScriptedGateway()
    before = db.stats.commits
    for _ in range(5):
        assert await store.claim(gateway) is None
    assert db.stats.commits == before  # the empty outbox was only read

    _enqueue(db.path, 1)
    conn = sqlite3.connect(db.path)
    conn.execute("UPDATE outbox SET next_attempt_at = ?",
                 (utc_iso(clock.now() + timedelta(seconds=60)),))
    conn.commit()
    conn.close()
    assert await store.claim(gateway) is None  # pending, not yet due
    assert db.stats.commits == before
    clock.advance(61)
    work = await store.claim(gateway)
    assert work is not None and len(work.rows) == 1
    assert db.stats.commits == before + 1
    assert _states(db.path) == {"inflight": 1}
