"""In-process events: payment, terminal, sync and alert changes, for SSE and long-polls."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("payment", "refund", "order", "inventory", "terminal", "sync", "alert")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]


REPLAY = 1000
"""Events kept for clients that reconnect with ``Last-Event-ID``."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a reconnecting client missed: ``events``, or ``None`` when it is too far
    behind (or its id is from another run of the daemon) and must start again (reset)."""

    events: list[Event] | None
    reason: str = ""


Accept = Callable[[str, dict[str, Any]], bool]


@dataclass(slots=True, eq=False)
class Subscription:
    queue: asyncio.Queue[Event]
    kinds: frozenset[str] = field(default_factory=frozenset)
    dropped: bool = False
    accept: Accept | None = None
    """Asked at publishing whether the subscriber wants an event at all: one it does not
    want costs it no wake-up (a cash sale, for the alert center)."""


class EventBus:
    """Fan-out to subscribers; a subscriber too slow to keep up is dropped, never waited on."""

    def __init__(self, queue_size: int = 1000, recent: int = 200,
                 replay: int = REPLAY) -> None:
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self.run = secrets.token_hex(4)
        """Names this run of the daemon in event ids: an id from before a restart is
        recognised as such (its events are gone)."""
        self._replay: collections.deque[Event] = collections.deque(maxlen=replay)
        self._last_id = 0
        self._queue_size = queue_size
        self._recent: collections.deque[Event] = collections.deque(maxlen=recent)
        self._watchers: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        event = Event(next(self._ids), kind, data)
        self._last_id = event.id
        self._replay.append(event)
        self._recent.append(event)
        subject = data.get("id")
        if isinstance(subject, str) and self._watchers:  # first: a long-poll waiting on it
            for waiter in self._watchers.pop(subject, ()):  # answers first
                if not waiter.done():
                    waiter.set_result(data)
        for sub in tuple(self._subs) if self._subs else ():
            if (sub.kinds and kind not in sub.kinds) or \
                    (sub.accept is not None and not sub.accept(kind, data)):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped = True
                self._subs.discard(sub)
                log.warning("dropped a slow event subscriber after %d events", self._queue_size)
        return event

    def subscribe(self, kinds: frozenset[str] = frozenset(),
                  accept: Accept | None = None) -> Subscription:
        sub = Subscription(asyncio.Queue(self._queue_size), kinds, accept=accept)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def sse_id(self, event_id: int | None = None) -> str:
        """The SSE ``id:`` of an event (the latest one by default): ``<run>-<number>``."""
        return f"{self.run}-{self._last_id if event_id is None else event_id}"

    def since(self, last_event_id: str, kinds: frozenset[str] = frozenset()) -> Replay:
        """The events after ``last_event_id`` (an :meth:`sse_id`), or a reset."""
        run, _, number = last_event_id.strip().partition("-")
        if run != self.run or not (number.isascii() and number.isdigit()) \
                or len(number) > 18:
            return Replay(None, "the id is not from this run of the daemon")
        last = int(number)
        if last > self._last_id:
            return Replay(None, "the id is ahead of this daemon")
        oldest = self._replay[0].id if self._replay else self._last_id + 1
        if last + 1 < oldest:
            return Replay(None, f"more than {self._replay.maxlen} events were missed")
        return Replay([e for e in self._replay
                       if e.id > last and (not kinds or e.kind in kinds)])

    def recent(self, kind: str | None = None) -> list[Event]:
        return [e for e in self._recent if kind is None or e.kind == kind]

    def watch(self, subject_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future holding the data of the next event about ``subject_id``."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(subject_id, set()).add(waiter)
        return waiter

    def unwatch(self, subject_id: str, waiter: asyncio.Future[dict[str, Any]]) -> None:
        waiters = self._watchers.get(subject_id)
        if waiters is not None:
            waiters.discard(waiter)
            waiter.cancel()
            if not waiters:
                del self._watchers[subject_id]

    @property
    def subscribers(self) -> int:
        return len(self._subs)
