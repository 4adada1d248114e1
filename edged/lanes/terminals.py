"""The lanes: one driver per terminal, one transaction at a time, an idle heartbeat.

The manager owns who may use a terminal (a claim taken synchronously, so two requests
can never both start), runs transactions as tasks that outlive the HTTP request, and keeps
each terminal's status true: online, offline (with reopening on a backoff) or busy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from drivers.base import (
    Capabilities,
    DriverError,
    NothingSent,
    Outcome,
    Terminal,
    TerminalState,
    TerminalUnavailable,
    TransactionResult,
)
from edged.config import TerminalConfig
from edged.errors import ApiError
from edged.events import EventBus
from edged.lanes.factory import CloudLinks, build_terminal
from sync.core.clock import Clock, utc_iso

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class NotSent:
    """A transaction's end when nothing reached the terminal: nothing was charged."""

    reason: str


# A transaction's end: the terminal's result, or NotSent.
Completion = Callable[[TransactionResult | NotSent, str], Awaitable[None]]
# Settle an unknown ending with the terminal (ZVT Repeat receipt): True once there is
# nothing more to ask (settled, or the terminal cannot tell); False: ask again later.
Settle = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class TerminalView:
    id: str
    kind: str
    state: str
    busy_with: str | None
    last_seen: str | None
    detail: str | None
    capabilities: Capabilities

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "busy_with": self.busy_with,
            "last_seen": self.last_seen, "detail": self.detail,
            "capabilities": {"refund": self.capabilities.refund,
                             "cancel": self.capabilities.cancel},
        }


class _Lane:
    def __init__(self, config: TerminalConfig, driver: Terminal) -> None:
        self.config = config
        self.driver = driver
        self.state = TerminalState.OFFLINE
        self.detail: str | None = "not opened yet"
        self.last_seen: datetime | None = None
        self.busy_with: str | None = None
        self.backoff = min(1.0, config.max_backoff_seconds)


class TerminalManager:
    def __init__(self, configs: tuple[TerminalConfig, ...], bus: EventBus,
                 clock: Clock, links: CloudLinks | None = None, currency: str = "EUR") -> None:
        self._bus = bus
        self._clock = clock
        self._lanes = {c.id: _Lane(c, build_terminal(c, clock, links, currency))
                       for c in configs}
        self._loops: list[asyncio.Task[None]] = []
        # every transaction until its outcome is recorded (which may be after its lane is free)
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for lane in self._lanes.values():
            await self._try_open(lane)
            self._loops.append(asyncio.create_task(self._watch(lane),
                                                   name=f"terminal-{lane.config.id}"))

    def driver(self, terminal_id: str) -> Terminal | None:
        lane = self._lanes.get(terminal_id)
        return lane.driver if lane else None

    def ids(self) -> list[str]:
        return list(self._lanes)

    def claim(self, terminal_id: str, subject_id: str) -> Terminal:
        """Reserve the terminal for one transaction, or refuse at once."""
        lane = self._lanes.get(terminal_id)
        if lane is None:
            raise ApiError("ERR-3001", f"no terminal {terminal_id!r}; known: "
                           f"{', '.join(self._lanes) or 'none'}")
        if lane.busy_with is not None:
            raise ApiError("ERR-3002", f"terminal {terminal_id} is running {lane.busy_with}; "
                           "wait for it to finish or cancel it")
        if lane.state is TerminalState.OFFLINE:
            raise ApiError("ERR-3003", f"terminal {terminal_id} is offline"
                           f" ({lane.detail or 'no answer'}); check its cable and power")
        lane.busy_with = subject_id
        self._set_state(lane, TerminalState.BUSY, None)
        return lane.driver

    def mark_offline(self, terminal_id: str, detail: str) -> None:
        """A driver found the terminal offline while starting a transaction."""
        lane = self._lanes[terminal_id]
        if lane.busy_with is None:
            self._set_state(lane, TerminalState.OFFLINE, detail)

    def release(self, terminal_id: str, subject_id: str) -> None:
        lane = self._lanes[terminal_id]
        if lane.busy_with == subject_id:
            lane.busy_with = None
            if lane.state is TerminalState.BUSY:
                self._set_state(lane, TerminalState.ONLINE, None)

    def run(self, terminal_id: str, subject_id: str,
            action: Callable[[Terminal], Awaitable[TransactionResult]],
            done: Completion, settle: Settle | None = None) -> None:
        """Run ``action`` on a claimed terminal in the background, then ``done``.

        An unknown ending on a terminal that can settle it (``settle_unknown``) keeps the
        lane claimed until ``settle`` has asked the terminal how it ended: the lane takes no
        other transaction before that.
        """
        lane = self._lanes[terminal_id]

        async def _go() -> None:
            result: TransactionResult | NotSent
            try:
                result = await action(lane.driver)
            except TerminalUnavailable as exc:
                log.warning("terminal %s unreachable for %s: %s", terminal_id, subject_id, exc)
                self._set_state(lane, TerminalState.OFFLINE, str(exc))
                result = NotSent(f"the terminal could not be reached: {exc}")
            except NothingSent as exc:  # refused before anything went out
                log.warning("terminal %s did not start %s: %s", terminal_id, subject_id, exc)
                result = NotSent(f"nothing reached the terminal: {exc}")
            except DriverError as exc:
                log.error("terminal %s failed during %s: %s", terminal_id, subject_id, exc)
                result = TransactionResult(Outcome.UNKNOWN, 0, "", detail=str(exc))
            except Exception:  # a bug must not lose the outcome: it becomes unknown
                log.exception("terminal %s crashed during %s", terminal_id, subject_id)
                result = TransactionResult(Outcome.UNKNOWN, 0, "", detail="driver error")
            unknown = isinstance(result, TransactionResult) and \
                result.outcome is Outcome.UNKNOWN
            if not unknown:
                # the terminal is done: free the lane before the outcome is committed, so a
                # register that can read the outcome can start the next sale on this lane
                self._touch_and_release(lane, terminal_id, subject_id)
            try:
                await done(result, subject_id)
                if unknown and settle is not None and \
                        lane.driver.capabilities.settle_unknown:
                    await self._settle(lane, subject_id, settle)
                elif unknown:
                    await self._recheck(lane)
            except Exception:  # e.g. the disk is full: the row stays in progress
                log.exception("terminal %s: the outcome of %s (%s) could not be recorded; it"
                              " stays in progress and becomes unknown at the next start",
                              terminal_id, subject_id,
                              result.outcome.value if isinstance(result, TransactionResult)
                              else "not sent")
            finally:
                self._touch_and_release(lane, terminal_id, subject_id)

        task = asyncio.create_task(_go(), name=f"txn-{subject_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _touch_and_release(self, lane: _Lane, terminal_id: str, subject_id: str) -> None:
        """The lane's transaction ``subject_id`` is over (a no-op once released)."""
        if lane.busy_with != subject_id:
            return
        if lane.state is not TerminalState.OFFLINE:
            lane.last_seen = self._clock.now()
        self.release(terminal_id, subject_id)

    async def _settle(self, lane: _Lane, subject_id: str, settle: Settle) -> None:
        """Ask the terminal until it has told how ``subject_id`` ended (the lane stays
        claimed meanwhile: busy, with a detail saying why)."""
        pause = min(1.0, lane.config.max_backoff_seconds)
        self._set_state(lane, TerminalState.BUSY,
                        f"asking the terminal how {subject_id} ended (Repeat receipt)")
        while True:
            try:
                if await settle():
                    return
            except Exception:  # a bug must not free a lane whose last outcome is unknown
                log.exception("terminal %s: settling %s failed", lane.config.id, subject_id)
            self._set_state(lane, TerminalState.BUSY,
                            f"{subject_id} is unknown and the terminal did not say how it"
                            " ended yet; asking again")
            await self._clock.sleep(pause)
            pause = min(pause * 2, lane.config.max_backoff_seconds)

    def settle_later(self, terminal_id: str, subject_id: str, settle: Settle) -> bool:
        """At start: hold the lane until ``settle`` has asked the terminal about
        ``subject_id`` (whatever the lane's state). False when the lane cannot settle."""
        lane = self._lanes.get(terminal_id)
        if lane is None or not lane.driver.capabilities.settle_unknown or \
                lane.busy_with is not None:
            return False
        lane.busy_with = subject_id

        async def _go() -> None:
            try:
                await self._settle(lane, subject_id, settle)
            finally:
                self._touch_and_release(lane, terminal_id, subject_id)

        task = asyncio.create_task(_go(), name=f"settle-{subject_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return True

    async def _recheck(self, lane: _Lane) -> None:
        """After an unknown ending (silence, a lost line), probe before freeing the lane.

        Otherwise ``release`` would call the lane online until the next heartbeat, even
        when its port has just vanished. The lane stays claimed meanwhile.
        """
        try:
            status = await lane.driver.status()
        except DriverError as exc:
            self._set_state(lane, TerminalState.OFFLINE, str(exc))
            return
        if status.state is TerminalState.OFFLINE:
            self._set_state(lane, TerminalState.OFFLINE, status.detail)

    async def cancel(self, terminal_id: str, subject_id: str) -> None:
        """Abort ``subject_id`` if, and only if, it is what the lane is running."""
        lane = self._lanes[terminal_id]
        if lane.busy_with != subject_id:
            running = f"running {lane.busy_with}" if lane.busy_with else "idle"
            raise ApiError("ERR-3007", f"terminal {terminal_id} is {running}, not"
                           f" {subject_id}; nothing was cancelled")
        # no await between the check and the driver's cancel: the lane cannot move on
        await lane.driver.cancel()

    async def wait_idle(self, timeout: float) -> None:
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)

    def views(self) -> list[TerminalView]:
        return [self._view(lane) for lane in self._lanes.values()]

    def view(self, terminal_id: str) -> TerminalView | None:
        lane = self._lanes.get(terminal_id)
        return self._view(lane) if lane else None

    def _view(self, lane: _Lane) -> TerminalView:
        return TerminalView(lane.config.id, lane.config.kind, lane.state.value, lane.busy_with,
                            utc_iso(lane.last_seen) if lane.last_seen else None, lane.detail,
                            lane.driver.capabilities)

    def _set_state(self, lane: _Lane, state: TerminalState, detail: str | None) -> None:
        previous = lane.state
        changed = state is not previous
        lane.state = state
        lane.detail = detail
        if state is TerminalState.ONLINE:
            lane.last_seen = self._clock.now()
        if changed:
            # online <-> busy is every sale (the payment's own lines say it): not worth a
            # line each on the path of a sale; coming and going offline is
            routine = {state, previous} <= {TerminalState.ONLINE, TerminalState.BUSY}
            (log.debug if routine else log.info)(
                "terminal %s is %s%s", lane.config.id, state.value,
                f" ({detail})" if detail else "")
            self._bus.publish("terminal", self._view(lane).as_dict())

    async def _try_open(self, lane: _Lane) -> None:
        try:
            await lane.driver.open()
            status = await lane.driver.status()
        except DriverError as exc:
            self._set_state(lane, TerminalState.OFFLINE, str(exc))
            return
        self._set_state(lane, status.state, status.detail)

    async def _watch(self, lane: _Lane) -> None:
        while True:
            if lane.state is TerminalState.OFFLINE and lane.busy_with is None:
                await self._clock.sleep(lane.backoff)
                lane.backoff = min(lane.backoff * 2, lane.config.max_backoff_seconds)
                if lane.busy_with is None:
                    await self._try_open(lane)
                if lane.state is not TerminalState.OFFLINE:
                    lane.backoff = min(1.0, lane.config.max_backoff_seconds)
                continue
            await self._clock.sleep(lane.config.heartbeat_seconds)
            if lane.busy_with is not None:
                continue
            try:
                status = await lane.driver.status()
            except DriverError as exc:
                self._set_state(lane, TerminalState.OFFLINE, str(exc))
                continue
            if lane.busy_with is None:
                self._set_state(lane, status.state, status.detail)

    async def stop(self, grace: float) -> None:
        """Let running transactions end (up to ``grace`` s), then close every line."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.wait_idle(grace)
        for task in list(self._running):
            if not task.done():
                log.warning("%s still running at shutdown; it will be reconciled at the next"
                            " start", task.get_name())
                task.cancel()
        for lane in self._lanes.values():
            try:
                await lane.driver.close()
            except DriverError as exc:
                log.warning("closing terminal %s: %s", lane.config.id, exc)
