"""What the cloud terminal kinds share: the polling schedule, a cancellable pause, settings.

A cloud terminal is followed by reading the processor (no inbound webhooks: a store box is
not reachable from the internet). Reads start quick, back off by ``factor`` up to
``maximum`` seconds, and stop at the final state; a register's cancel wakes the pause at
once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sync.core.clock import Clock


@dataclass(frozen=True, slots=True)
class CloudSettings:
    """The options of a ``stripe_reader`` or ``square_terminal`` lane."""

    device: str
    """The reader id (``tmr_…``) or the Square Terminal ``device_id``."""
    customer_timeout: float = 120.0
    """Seconds the customer may take before the payment is cancelled on the terminal."""
    poll_interval: float = 0.5
    """First pause between two reads of the processor."""
    poll_max: float = 3.0
    """Longest pause between two reads (the pause grows by half each read)."""
    link_grace: float = 60.0
    """After the customer timeout, how long a lost link may keep the outcome open before
    the payment is declared ``unknown``."""
    ping_interval: float = 60.0
    """Square Terminal: the least time between two PING actions while the Terminal answers
    them (an unanswered one is followed by the next at once)."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any], device_key: str,
                     customer_timeout: float,
                     extra: tuple[str, ...] = ()) -> CloudSettings:
        """Build from a ``[[terminals]]`` table; raises ``ValueError(key, message)``.
        ``extra``: the kind's own keys besides the common ones (``ping_interval``)."""
        allowed = {device_key, "poll_interval", "poll_max", "link_grace", *extra}
        for key in options:
            if key not in allowed:
                raise ValueError(key, f"unknown key for this terminal kind (known: "
                                 f"{', '.join(sorted(allowed))})")
        device = options.get(device_key)
        if not isinstance(device, str) or not device.strip():
            raise ValueError(device_key, "is required")
        defaults = {f.name: f.default for f in fields(cls)}
        numbers: dict[str, float] = {}
        for key in ("poll_interval", "poll_max", "link_grace", *extra):
            value = options.get(key, defaults[key])
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(key, "must be a number of seconds greater than 0")
            numbers[key] = float(value)
        if numbers["poll_max"] < numbers["poll_interval"]:
            raise ValueError("poll_max", "must be at least poll_interval")
        return cls(device=device.strip(), customer_timeout=customer_timeout, **numbers)


class Schedule:
    """Pauses between reads: ``first``, then half as long again each time, up to ``maximum``."""

    def __init__(self, first: float, maximum: float, factor: float = 1.5) -> None:
        self._next = first
        self._maximum = maximum
        self._factor = factor

    def next(self) -> float:
        pause = self._next
        self._next = min(self._maximum, self._next * self._factor)
        return pause


async def pause(clock: Clock, seconds: float, wake: asyncio.Event) -> None:
    """Sleep ``seconds`` on ``clock``, or less if ``wake`` is set meanwhile."""
    if wake.is_set():
        return
    waiter = asyncio.ensure_future(wake.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
