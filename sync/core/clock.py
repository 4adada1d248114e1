"""Clocks, injectable so that nothing time-based ever needs a real sleep in a test.

Every part of the daemon that measures time takes a :class:`Clock`. The real one reads
the monotonic clock for timeouts and breakers, and UTC wall time for the data.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What time-based code may ask of a clock."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (timeouts, breakers, limiters)."""

    def now(self) -> datetime:
        """The current UTC time (records)."""

    async def sleep(self, seconds: float) -> None:
        """Wait for ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def utc_iso(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``: the one time format in the data."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:23] + "Z"  # no "+00:00"
