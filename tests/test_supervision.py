"""Supervised background tasks: each one, made to raise, is logged, restarted with backoff
on the injected clock, and shown on /v1/sync; a worker that dies gives its rows back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edged.app import Daemon
from edged.store import Database
from sync.core.supervisor import Backoff, Supervisor, TaskState
from tests.clock import ManualClock
from tests.helpers import make_config
from tests.test_sync_engine import ScriptedGateway, _engine, _enqueue, _states

BOUND = 2000  # turns of the event loop a test may wait for something to happen


async def turns(cond: Callable[[], bool], clock: ManualClock | None = None,
                step: float = 0.0) -> None:
    """Let the loop run (moving ``clock`` by ``step`` each turn) until ``cond`` holds."""
    for _ in range(BOUND):
        if cond():
            return
        await asyncio.sleep(0.002)
        if clock is not None and step:
            clock.advance(step)
    raise AssertionError("condition not reached")


# -- the supervisor ---------------------------------------------------------------------------


async def test_a_failing_task_restarts_with_backoff_and_logs_the_traceback_once(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    sup = Supervisor(clock, Backoff(initial=1.0, maximum=4.0, healthy_after=60.0))
    runs: list[float] = []
    healthy = asyncio.Event()

    async def task() -> None:
        runs.append(clock.monotonic())
        if len(runs) <= 4:
            raise RuntimeError("boom")
        healthy.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.WARNING, logger="sync.core.supervisor"):
        sup.start("flaky", task)
        await turns(lambda: len(runs) == 1)
        (status,) = sup.status()
        assert (status.state, status.restarts, status.retry_in) == (TaskState.RESTARTING, 1,
                                                                   1.0)
        assert status.last_error == "RuntimeError: boom"
        await turns(healthy.is_set, clock, step=0.5)
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps == [1.0, 2.0, 4.0, 4.0]  # doubling up to the maximum, on the clock
    assert sup.status()[0].state is TaskState.RUNNING
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1  # loud once; the identical repeats are one line each
    assert sum("failed again" in r.getMessage() for r in caplog.records) == 3
    await sup.stop(grace=1.0)
    assert sup.status()[0].state is TaskState.FINISHED


async def test_a_task_that_ran_healthy_starts_again_from_the_first_backoff() -> None:
    clock = ManualClock()
    sup = Supervisor(clock, Backoff(initial=1.0, maximum=8.0, healthy_after=60.0))
    fail = asyncio.Event()
    runs: list[float] = []

    async def task() -> None:
        runs.append(clock.monotonic())
        if len(runs) in (1, 2):
            raise RuntimeError("early")
        await fail.wait()
        fail.clear()
        raise RuntimeError("later")

    sup.start("t", task)
    await turns(lambda: len(runs) == 3, clock, step=0.25)
    clock.advance(100.0)  # healthy for a long while
    fail.set()
    await turns(lambda: sup.status()[0].state is TaskState.RESTARTING)
    assert sup.status()[0].retry_in == 1.0
    await sup.stop(grace=1.0)


# -- a worker dies: its rows go back at once ------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "edged.db")
    await database.open()
    yield database
    await database.close()


async def test_a_worker_that_dies_gives_back_its_rows_and_restarts(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    _enqueue(db.path, 2)
    gateway = ScriptedGateway()
    engine, _ = _engine(db, clock, gateway)
    store = engine.store
    real_complete = store.complete
    calls = 0

    async def complete_fails_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        await real_complete(*args)

    monkeypatch.setattr(store, "complete", complete_fails_once)
    await engine.start()
    await turns(lambda: engine.supervisor.status()[0].state is TaskState.RESTARTING)
    # dead, waiting its backoff: the rows it held are not left in flight meanwhile
    assert _states(db.path) == {"pending": 2}
    conn = sqlite3.connect(db.path)
    assert {r[0] for r in conn.execute("SELECT outcome_unknown FROM outbox")} == {1}
    conn.close()
    status = await_status(engine)
    assert status["restarts"] == 1 and "disk I/O error" in status["last_error"]
    await turns(lambda: _states(db.path) == {"done": 2}, clock, step=0.5)
    first, again = gateway.calls
    assert again.idempotency_key == first.idempotency_key and again.outcome_unknown
    await engine.stop()


def await_status(engine: Any) -> dict[str, Any]:
    (status,) = engine.supervisor.status()
    return {"restarts": status.restarts, "last_error": status.last_error or ""}


# -- the daemon's tasks, each made to raise once ------------------------------------------


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, ManualClock]]:
    clock = ManualClock()
    d = Daemon(make_config(tmp_path / "data", shopify=True), clock, shutdown_grace=0.5)
    await d.start()
    yield d, clock
    await d.stop()


async def _task(d: Daemon, name: str) -> dict[str, Any]:
    status = await d.sync_status()
    return next(t for t in status["tasks"] if t["name"] == name)


async def _restarted(d: Daemon, clock: ManualClock, name: str) -> dict[str, Any]:
    """Wait until ``name`` failed once, then let its backoff pass until it runs again."""
    for _ in range(BOUND):
        task = await _task(d, name)
        if task["restarts"] == 1 and task["state"] == "running":
            return task
        await asyncio.sleep(0.002)
        if task["state"] == "restarting":
            clock.advance(0.5)
    raise AssertionError(f"{name} did not restart: {await _task(d, name)}")


async def test_the_wake_task_restarts(daemon: tuple[Daemon, ManualClock],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d, clock = daemon
    assert d.sync is not None
    engine = d.sync.engine
    real_wake = engine.wake
    woken: list[str | None] = []

    def wake(destination: str | None = None) -> None:
        woken.append(destination)
        if len(woken) == 1:
            raise RuntimeError("wake failed")
        real_wake(destination)

    monkeypatch.setattr(engine, "wake", wake)
    d.bus.publish("inventory", {"id": "adj_1"})
    task = await _restarted(d, clock, "sync-wake")
    assert "wake failed" in task["last_error"]
    d.bus.publish("inventory", {"id": "adj_2"})  # the restarted task wakes the workers again
    await turns(lambda: len(woken) == 2)


async def test_the_link_watcher_restarts(daemon: tuple[Daemon, ManualClock]) -> None:
    d, clock = daemon

    class Broken(dict[str, Any]):
        """An event the watcher cannot read (the bus itself only asks for its "id")."""

        def get(self, key: str, default: Any = None) -> Any:
            if key == "id":
                return default
            raise RuntimeError("unreadable event")

    d.bus.publish("sync", Broken())
    task = await _restarted(d, clock, "sync-links")
    assert "unreadable event" in task["last_error"]
    d.bus.publish("sync", Broken())  # the restarted watcher reads events again
    for _ in range(BOUND):
        if (await _task(d, "sync-links"))["restarts"] == 2:
            break
        await asyncio.sleep(0.002)
    else:
        raise AssertionError("the restarted watcher does not read events")


async def test_the_secrets_refresh_restarts(daemon: tuple[Daemon, ManualClock],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    d, clock = daemon
    assert d.sync is not None
    secrets = d.sync.secrets
    real_refresh = secrets.refresh
    refreshes = 0

    async def refresh() -> None:
        nonlocal refreshes
        refreshes += 1
        if refreshes == 1:
            raise OSError("key file unreadable")
        await real_refresh()

    monkeypatch.setattr(secrets, "refresh", refresh)
    await turns(lambda: refreshes == 1, clock, step=5.0)  # every 30 s on the clock
    task = await _restarted(d, clock, "sync-secrets")
    assert "key file unreadable" in task["last_error"]
    await turns(lambda: refreshes == 2, clock, step=5.0)


async def test_the_sync_worker_shows_on_v1_sync(daemon: tuple[Daemon, ManualClock],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    d, clock = daemon
    assert d.sync is not None
    store = d.sync.engine.store
    real_claim = store.claim
    claims = 0

    async def claim(gateway: Any) -> Any:
        nonlocal claims
        claims += 1
        if claims == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real_claim(gateway)

    monkeypatch.setattr(store, "claim", claim)
    d.sync.engine.wake()
    task = await _restarted(d, clock, "sync-shopify")
    assert "database is locked" in task["last_error"]
    status = await d.sync_status()
    (shopify,) = status["destinations"]
    assert shopify["worker"] in ("idle", "waiting_credentials", "sending")


async def test_the_catalogue_pull_runs_supervised_and_restarts(
        daemon: tuple[Daemon, ManualClock], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 16 item 10: the pull is a supervised task like the others: shown under
    ``tasks``, a crash logged once and restarted with backoff, then pulling on the clock."""
    from edged.upstream import sync_setup  # noqa: PLC0415

    d, clock = daemon
    real = sync_setup.pull_once
    pulls = 0

    async def pull_once(*args: Any) -> int:
        nonlocal pulls
        pulls += 1
        if pulls == 1:
            raise RuntimeError("pull crashed")
        return await real(*args)

    monkeypatch.setattr(sync_setup, "pull_once", pull_once)
    with caplog.at_level(logging.ERROR, logger="sync.core.supervisor"):
        # the start's pull has run already; the next one is due after the interval
        interval = d.cfg.sync.pull_interval_seconds
        assert (await _task(d, "shopify-pull"))["state"] == "running"
        clock.advance(interval)
        task = await _restarted(d, clock, "shopify-pull")
    assert "pull crashed" in task["last_error"]
    assert [r for r in caplog.records if "shopify-pull" in r.getMessage()]
    await turns(lambda: pulls == 2)  # the restarted task pulls at once
    clock.advance(interval)
    await turns(lambda: pulls == 3)
