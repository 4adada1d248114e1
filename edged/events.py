"""In-process events: payment, terminal, sync and alert changes, for SSE and long-polls."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("payment", "refund", "order", "inventory", "terminal", "sync", "alert")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]


@dataclass(slots=True, eq=False)
class Subscription:
    queue: asyncio.Queue[Event]
    kinds: frozenset[str] = field(default_factory=frozenset)
    dropped: bool = False


class EventBus:
    """Fan-out to subscribers; a subscriber too slow to keep up is dropped, never waited on."""

    def __init__(self, queue_size: int = 1000, recent: int = 200) -> None:
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        self._queue_size = queue_size
        self._recent: list[Event] = []
        self._recent_max = recent
        self._watchers: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        event = Event(next(self._ids), kind, data)
        self._recent.append(event)
        if len(self._recent) > self._recent_max:
            del self._recent[: len(self._recent) - self._recent_max]
        for sub in list(self._subs):
            if sub.kinds and kind not in sub.kinds:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped = True
                self._subs.discard(sub)
                log.warning("dropped a slow event subscriber after %d events", self._queue_size)
        subject = data.get("id")
        if isinstance(subject, str):
            for waiter in self._watchers.pop(subject, set()):
                if not waiter.done():
                    waiter.set_result(data)
        return event

    def subscribe(self, kinds: frozenset[str] = frozenset()) -> Subscription:
        sub = Subscription(asyncio.Queue(self._queue_size), kinds)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

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
