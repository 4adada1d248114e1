"""systemd's notify protocol (``Type=notify``), spoken directly on ``$NOTIFY_SOCKET``.

sd_notify(3) is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX datagram socket
systemd names in ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). The
daemon sends ``READY=1`` once the database is open and the API listens, ``STATUS=`` with a
one-line summary, ``STOPPING=1`` when it stops, and ``WATCHDOG=1`` every half
``WATCHDOG_USEC`` only while a real health check passes: the event loop runs this check
(a blocked loop sends nothing) and a write to the database commits within the interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from sync.core.clock import Clock, utc_iso

log = logging.getLogger(__name__)

STATUS_ONLY_INTERVAL = 10.0  # seconds between STATUS= updates when there is no watchdog


class Notifier:
    """Sends notifications; does nothing when systemd gave no socket."""

    def __init__(self, env: Mapping[str, str], pid: int | None = None) -> None:
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self._address = raw
        self.watchdog_seconds: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        owner = env.get("WATCHDOG_PID", "")
        mine = pid if pid is not None else os.getpid()
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(mine)):
            self.watchdog_seconds = int(usec) / 1_000_000
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """One datagram; False (logged) when it could not be sent."""
        if self._address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self._address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


def beat(clock: Clock) -> Callable[[sqlite3.Connection], None]:
    """A write that really changes the file, so its commit proves the disk takes writes."""
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO health (id, beat_at, beats) VALUES (1, ?, 1) ON CONFLICT(id)"
                     " DO UPDATE SET beat_at = excluded.beat_at, beats = beats + 1",
                     (utc_iso(clock.now()),))
    return write


class HealthCheck:
    """The event loop answers and a database write commits within ``timeout`` seconds.

    At most one check write is outstanding: a stuck writer is not fed more of them.
    """

    def __init__(self, write: Callable[[], Awaitable[None]], clock: Clock) -> None:
        self._write = write
        self._clock = clock
        self._pending: asyncio.Future[None] | None = None

    async def check(self, timeout: float) -> Health:
        started = self._clock.monotonic()
        await asyncio.sleep(0)  # a turn of the loop: it runs and schedules us again
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._write())
        try:
            await asyncio.wait_for(asyncio.shield(self._pending), timeout)
        except TimeoutError:
            return Health(False, f"a database write has not committed in {timeout:g} s")
        except Exception as exc:
            return Health(False, f"a database write failed: {exc}")
        finally:
            if self._pending.done() and not self._pending.cancelled():
                self._pending.exception()  # retrieved: never "exception was never retrieved"
        took = self._clock.monotonic() - started
        return Health(True, f"database write committed in {took * 1000:.0f} ms")


async def run(notifier: Notifier, health: HealthCheck, summary: Callable[[], Awaitable[str]],
              clock: Clock) -> None:
    """Feed the watchdog while healthy and keep STATUS= current, until cancelled."""
    interval = (notifier.watchdog_seconds / 2 if notifier.watchdog_seconds
                else STATUS_ONLY_INTERVAL)
    was_ok = True
    while True:
        result = await health.check(interval)
        try:
            line = await asyncio.wait_for(summary(), interval)
        except Exception as exc:  # the summary is cosmetic; the check decides
            line = f"summary unavailable: {exc}"
        if result.ok:
            lines = [f"STATUS={line}"]
            if notifier.watchdog_seconds:
                lines.insert(0, "WATCHDOG=1")
            notifier.send(*lines)
            if not was_ok:
                log.warning("health check passes again: %s", result.detail)
        else:
            notifier.send(f"STATUS=unhealthy: {result.detail}")
            if was_ok:
                log.error("health check failed, the watchdog is not fed: %s", result.detail)
        was_ok = result.ok
        await clock.sleep(interval)
