"""One worker per destination drains its outbox rows, as fast as upstream allows.

Every call goes through, in this order: the destination's circuit breaker, a timeout,
tenacity retries with exponential backoff and jitter for transient failures, and the
gateway, whose HTTP calls take from the destination's rate limiter. A worker wakes at
once on new rows, waits while its breaker is open and resumes by itself when it closes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from sync.core.breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from sync.core.clock import Clock
from sync.core.errors import BreakerOpen, PermanentError, RefusedInDoubt
from sync.core.gateway import Gateway, PartialWork, RowFailure, Work, WorkResult
from sync.core.outbox import OutboxStore
from sync.core.policy import RowAction, Verdict, judge, settle
from sync.core.quiet_log import RepeatFilter
from sync.core.supervisor import Supervisor

log = logging.getLogger(__name__)


class WorkerState(enum.StrEnum):
    IDLE = "idle"
    SENDING = "sending"
    WAITING_BREAKER = "waiting_breaker"
    WAITING_CREDENTIALS = "waiting_credentials"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    work_timeout: float = 600.0
    """Longest one work may take, limiter waits included (the gateways time each call)."""
    quick_retries: int = 3
    """Attempts of one work inside a single claim (tenacity), before it is put back."""
    quick_backoff_initial: float = 0.5
    quick_backoff_max: float = 5.0
    idle_poll: float = 30.0
    """Longest idle sleep: a safety net if a wake-up is missed."""
    credentials_poll: float = 30.0
    """How often a worker without valid credentials looks again."""


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    destination: str
    state: WorkerState
    breaker: BreakerSnapshot
    sent: int
    failed: int
    last_error: str | None


Listener = Callable[[str, str, dict[str, object]], None]


@dataclass
class _InFlight:
    work: Work
    """The rows of the claimed work not settled yet."""


class DestinationWorker:
    def __init__(self, gateway: Gateway, store: OutboxStore, breaker: CircuitBreaker,
                 clock: Clock, settings: EngineSettings, notify: Listener) -> None:
        self.gateway = gateway
        self.breaker = breaker
        self._store = store
        self._clock = clock
        self._settings = settings
        self._notify = notify
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.state = WorkerState.IDLE
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        self._quiet = RepeatFilter(log)

    @property
    def destination(self) -> str:
        return self.gateway.destination

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _sleep(self, seconds: float, until: asyncio.Event) -> None:
        """Sleep ``seconds`` on the clock, or less if ``until`` is set meanwhile."""
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waiter = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()

    async def _pause_for(self, seconds: float) -> None:
        """Sleep ``seconds`` whatever wakes come (only a stop ends it early)."""
        await self._sleep(seconds, self._stop)

    def status(self) -> WorkerStatus:
        return WorkerStatus(self.destination, self.state, self.breaker.snapshot(), self.sent,
                            self.failed, self.last_error)

    async def _pause(self, seconds: float | None) -> None:
        """Sleep on the clock until ``seconds`` pass, a wake-up or a stop."""
        if self._wake.is_set() or self._stop.is_set():  # woken while busy: go on at once
            self._wake.clear()
            return
        timeout = self._settings.idle_poll if seconds is None else seconds
        try:
            await self._sleep(timeout, self._wake)  # stop() sets the wake-up too
        finally:
            self._wake.clear()

    async def run(self) -> None:
        """Drain until stopped. Rows of this destination still in flight when it starts are
        orphans (of a crash, or of a previous run of this worker): they go back first."""
        self.state = WorkerState.IDLE
        try:
            await self.give_back()
            while not self._stop.is_set():
                await self._step()
        finally:
            self.state = WorkerState.STOPPED

    async def give_back(self) -> None:
        """Rows this worker holds go back to pending, in doubt (run when it dies)."""
        await self._store.recover_leases(self.destination)

    async def _step(self) -> None:
        snap = self.breaker.snapshot()
        if snap.state is BreakerState.OPEN:
            self.state = WorkerState.WAITING_BREAKER
            await self._pause(max(snap.retry_after, 0.001))
            return
        work = await self._store.claim(self.gateway)
        if work is None:
            self.state = WorkerState.IDLE
            await self._pause(await self._store.next_due_in(self.destination))
            return
        try:
            permit = self.breaker.acquire()
        except BreakerOpen as exc:
            await self._store.release(work)
            self.state = WorkerState.WAITING_BREAKER
            await self._pause(max(exc.retry_after, 0.001))
            return
        self.state = WorkerState.SENDING
        flight = _InFlight(work)
        try:
            result = await self._send(flight)
        except BaseException as exc:
            verdict = judge(exc)
            settle(permit, verdict.breaker)
            left = replace(flight.work, attempt=work.attempt)  # one claim, one attempt
            if not isinstance(exc, Exception):  # cancelled (a stop): put back, in doubt
                await self._store.retry_later(left, "interrupted", outcome_unknown=True,
                                              counts=False)
                raise
            if left.rows:
                await self._fail(left, exc, verdict)
            return
        permit.success()
        await self._complete(flight, result)
        self.last_error = None
        self._quiet.clear("credentials", "%s: credentials accepted", self.destination)
        self._quiet.clear("retry", "%s: sending again after failures", self.destination)

    async def _complete(self, flight: _InFlight, result: WorkResult, *,
                        partial: bool = False) -> None:
        """Record the rows ``result`` settles; with ``partial``, the rest of the work stays
        in flight (else rows the gateway forgot are retried by the store)."""
        settled = (set(result.applied) | set(result.dead) | set(result.conflict)
                   | set(result.retry_apart))
        done = tuple(r for r in flight.work.rows if r.id in settled)
        left = tuple(r for r in flight.work.rows if r.id not in settled)
        if partial:
            await self._store.complete(replace(flight.work, rows=done), result)
            flight.work = replace(flight.work, rows=left)
        else:
            await self._store.complete(flight.work, result)
        self.sent += len(result.applied)
        for row_id, failure in {**result.dead, **result.conflict}.items():
            self._failed(flight.work, f"row {row_id}: {failure.code}: {failure.message}",
                         dead=True)

    async def _fail(self, work: Work, exc: Exception, verdict: Verdict) -> None:
        """Apply the policy's verdict on ``exc`` to the rows and the worker."""
        message = str(exc) or type(exc).__name__
        if verdict.defect:
            log.error("%s %s: the gateway failed unexpectedly (a defect; the rows will be"
                      " read back and retried): %s", self.destination, work.kind, message,
                      exc_info=exc)
        if verdict.action is RowAction.KILL:
            code = exc.code if isinstance(exc, PermanentError) else None
            failure = RowFailure(code or "ERR-6004", getattr(exc, "message", message),
                                 outcome_unknown=isinstance(exc, RefusedInDoubt))
            await self._store.kill(work, failure)
            self._failed(work, failure.message, dead=True)
        elif verdict.action is RowAction.RELEASE:
            await self._store.release(work)
            self.state = WorkerState.WAITING_CREDENTIALS
            self.last_error = message
            self._quiet.log("credentials", logging.WARNING, "%s: %s", self.destination, exc)
            await self._pause(self._settings.credentials_poll)
        elif verdict.hold is not None:  # this row waits; the next step takes the others
            await self._store.retry_later(work, message, wait=verdict.hold,
                                          outcome_unknown=work.outcome_unknown, counts=False)
            log.info("%s %s: %s", self.destination, work.kind, message)
        else:
            dead = await self._store.retry_later(work, message, wait=verdict.wait,
                                                 outcome_unknown=verdict.outcome_unknown
                                                 or work.outcome_unknown,
                                                 counts=verdict.uses_attempt,
                                                 new_doubt=verdict.outcome_unknown)
            if verdict.wait is not None:  # the whole destination waits, not just the row
                self.state = WorkerState.BACKING_OFF
                await self._pause_for(verdict.wait)
            else:
                self._failed(work, message, dead=dead)

    async def _send(self, flight: _InFlight) -> WorkResult:
        """Send the work in flight, retrying at once (with a short backoff) what the policy
        says may pass in a moment; raise what remains. A send that stopped part-way
        (:class:`PartialWork`) has its settled rows recorded at once, and only the others
        are retried (under the same key and variables)."""
        work = flight.work
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.quick_retries),
            wait=wait_exponential_jitter(multiplier=self._settings.quick_backoff_initial,
                                         max=self._settings.quick_backoff_max),
            retry=retry_if_exception(lambda exc: judge(exc).retry_now),
            sleep=self._clock.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    try:
                        # a safety net only: each HTTP call has the gateway's own timeout,
                        # and a batch may wait on the rate limiter between its calls
                        async with asyncio.timeout(self._settings.work_timeout):
                            return await self.gateway.send(flight.work)
                    except PartialWork as partial:
                        await self._complete(flight, partial.result, partial=True)
                        raise partial.cause from partial
                except Exception as exc:
                    verdict = judge(exc)
                    if verdict.retry_now:
                        current = flight.work
                        flight.work = replace(current, attempt=current.attempt + 1,
                                              outcome_unknown=current.outcome_unknown
                                              or verdict.outcome_unknown)
                    if verdict.retry_now and verdict.outcome_unknown:
                        log.warning("%s: outcome of %s unknown (%s); reading back before any"
                                    " resend", self.destination, work.kind,
                                    str(exc) or type(exc).__name__)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(self, work: Work, message: str, *, dead: bool) -> None:
        self.failed += 1
        self.last_error = message
        if dead:  # the outbox hooks raise the alert with the row's business meaning
            log.error("%s %s: gave up on %d row(s): %s", self.destination, work.kind,
                      len(work.rows), message)
        else:
            self._quiet.log("retry", logging.WARNING, "%s %s: will retry: %s",
                            self.destination, work.kind, message)


class SyncEngine:
    """The workers, started and stopped together."""

    def __init__(self, store: OutboxStore, clock: Clock,
                 settings: EngineSettings | None = None,
                 notify: Listener | None = None) -> None:
        self.store = store
        self._clock = clock
        self._settings = settings or EngineSettings()
        self._notify: Listener = notify or (lambda kind, event, data: None)
        self.workers: dict[str, DestinationWorker] = {}
        self.supervisor = Supervisor(clock)
        """Runs the workers, and the daemon's other background tasks beside them."""

    def add(self, gateway: Gateway, breaker: CircuitBreaker) -> DestinationWorker:
        worker = DestinationWorker(gateway, self.store, breaker, self._clock, self._settings,
                                   self._notify)
        self.workers[gateway.destination] = worker

        def on_change(old: BreakerState, new: BreakerState, reason: str) -> None:
            log.warning("%s breaker %s → %s (%s)", gateway.destination, old.value, new.value,
                        reason)
            self._notify("sync", "breaker", {"destination": gateway.destination,
                                             "from": old.value, "to": new.value,
                                             "reason": reason})
            if new is not BreakerState.OPEN:
                worker.wake()

        breaker.add_listener(on_change)
        return worker

    async def start(self) -> None:
        await self.store.recover_leases()
        for worker in self.workers.values():
            self.supervisor.start(f"sync-{worker.destination}", worker.run,
                                  on_crash=worker.give_back, stop=worker.stop)

    def wake(self, destination: str | None = None) -> None:
        for name, worker in self.workers.items():
            if destination is None or destination == name:
                worker.wake()

    async def stop(self, grace: float = 5.0) -> None:
        await self.supervisor.stop(grace)
        for worker in self.workers.values():
            await worker.gateway.close()
