"""Supervised background tasks: a task that raises is logged loudly and started again.

Each task is a coroutine function run in a loop: if it raises, the error is logged with its
traceback (once for a run of identical failures; the repeats as one line), the task waits a
backoff on the injected clock (``initial``, doubling to ``maximum``; back to ``initial``
after it ran ``healthy_after`` seconds without failing) and is started again. A task that
returns has finished. ``on_crash`` runs after each failure, before the backoff (a worker
gives back the rows it holds there). The state of every task is in :meth:`status`, which
``/v1/sync`` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sync.core.clock import Clock

log = logging.getLogger(__name__)


class TaskState(enum.StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"
    """It failed and waits its backoff before starting again."""
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0
    healthy_after: float = 60.0


@dataclass(frozen=True, slots=True)
class TaskStatus:
    name: str
    state: TaskState
    restarts: int
    last_error: str | None
    retry_in: float | None
    """Seconds until the next start while restarting."""


class _Task:
    def __init__(self, name: str, run: Callable[[], Awaitable[None]],
                 on_crash: Callable[[], Awaitable[object]] | None,
                 stop: Callable[[], None] | None) -> None:
        self.name = name
        self.run = run
        self.on_crash = on_crash
        self.stop = stop
        self.state = TaskState.RUNNING
        self.restarts = 0
        self.last_error: str | None = None
        self.restart_at: float | None = None
        self.task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, clock: Clock, backoff: Backoff | None = None) -> None:
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._tasks: dict[str, _Task] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]], *,
              on_crash: Callable[[], Awaitable[object]] | None = None,
              stop: Callable[[], None] | None = None) -> None:
        """Run ``run()`` under supervision. ``stop``: asks the task to return by itself
        (it is cancelled otherwise when the supervisor stops)."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        entry = _Task(name, run, on_crash, stop)
        self._tasks[name] = entry
        entry.task = asyncio.create_task(self._loop(entry), name=name)

    def status(self) -> list[TaskStatus]:
        now = self._clock.monotonic()
        return [TaskStatus(t.name, t.state, t.restarts, t.last_error,
                           None if t.restart_at is None else max(0.0, t.restart_at - now))
                for t in self._tasks.values()]

    async def _loop(self, entry: _Task) -> None:
        delay = self._backoff.initial
        last_logged: str | None = None
        while True:
            started = self._clock.monotonic()
            entry.state, entry.restart_at = TaskState.RUNNING, None
            try:
                await entry.run()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if self._clock.monotonic() - started >= self._backoff.healthy_after:
                    delay, last_logged = self._backoff.initial, None
                if error != last_logged:
                    log.error("background task %s failed; restarting it in %g s", entry.name,
                              delay, exc_info=exc)
                    last_logged = error
                else:
                    log.warning("background task %s failed again (%s); restart %d in %g s",
                                entry.name, error, entry.restarts + 1, delay)
                if entry.on_crash is not None:
                    try:
                        await entry.on_crash()
                    except Exception:
                        log.exception("cleaning up after %s failed", entry.name)
                entry.restarts += 1
                entry.last_error = error
                entry.state = TaskState.RESTARTING
                entry.restart_at = self._clock.monotonic() + delay
                await self._clock.sleep(delay)
                delay = min(delay * 2, self._backoff.maximum)
                continue
            entry.state, entry.restart_at = TaskState.FINISHED, None
            return

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the tasks that can stop by themselves, cancel the others; after ``grace``
        seconds, cancel what still runs."""
        running = [t for t in self._tasks.values() if t.task is not None and not t.task.done()]
        for t in running:
            assert t.task is not None
            if t.stop is not None and t.state is TaskState.RUNNING:
                t.stop()
            else:
                t.task.cancel()
        tasks = [t.task for t in running if t.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in running:
            t.state, t.restart_at = TaskState.FINISHED, None
