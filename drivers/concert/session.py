"""The Concert line: its settings, and the session that speaks the handshakes on it.

One worker thread per terminal owns the pyserial port (see :mod:`drivers.concert`); every
wait is bounded by a setting.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from drivers.base import (
    DriverError,
)
from drivers.concert.framing import (
    Control,
    Frame,
    FrameError,
    FrameParser,
)
from sync.core.clock import Clock

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

try:  # tcflush and friends raise termios.error, which is not an OSError
    import termios

    PORT_ERRORS: tuple[type[Exception], ...] = (OSError, termios.error)
except ImportError:  # pragma: no cover - not a POSIX system
    PORT_ERRORS = (OSError,)
OPEN_ERRORS: tuple[type[Exception], ...] = (*PORT_ERRORS, ValueError)

LineFormat = Literal["8N1", "7E1"]


class ConcertConfigError(DriverError, ValueError):
    """A Concert setting is out of range."""


@dataclass(frozen=True, slots=True)
class ConcertSettings:
    """How to reach one Concert terminal. Every timer in seconds, every one configurable."""

    port: str
    """Device path or pyserial URL (``/dev/ttyACM0``, ``socket://10.0.0.5:8888``)."""
    baudrate: int = 9600
    line: LineFormat = "8N1"
    """``8N1`` (USB CDC-ACM) or ``7E1`` (native RS-232)."""
    pos_number: int = 1
    ack_timeout: float = 1.0
    """Wait for each control byte (ACK to ENQ, ACK/NAK to a frame, EOT)."""
    frame_timeout: float = 3.0
    """Wait for the answer frame to complete once the terminal's ENQ was ACKed."""
    customer_timeout: float = 120.0
    """Wait for the terminal's ENQ while the customer pays. Whatever the line sends, a
    transaction ends within ``customer_timeout + frame_timeout`` of its request being
    handed over: an answer that began before the customer deadline gets one frame's time
    to complete, and nothing (ENQ, EOT, noise) moves that bound."""
    max_retransmissions: int = 3
    """Copies of a frame sent again after a NAK (and NAKs sent for a broken answer)."""
    answer_full: bool = True
    """Ask for the full answer (with the card number, cut to last4) or the short one."""
    poll_interval: float = 0.05
    """Longest single blocking read on the worker thread (bounds close/abort latency)."""
    hold_timeout: float = 0.5
    """A sale's ENQ goes out while its payment is being committed; the terminal's ACK
    then waits for the request frame, which is sent only once the commit is durable. A
    commit slower than this closes that session (EOT) and opens another one for the frame,
    so the terminal never waits for a frame past its own timer."""

    def __post_init__(self) -> None:
        if not self.port:
            raise ConcertConfigError("port must be set")
        if self.baudrate <= 0:
            raise ConcertConfigError(f"baudrate {self.baudrate} must be positive")
        if self.line not in ("8N1", "7E1"):
            raise ConcertConfigError(f"line {self.line!r} must be 8N1 or 7E1")
        if not 1 <= self.pos_number <= 99:
            raise ConcertConfigError(f"pos_number {self.pos_number} must be within 1..99")
        for name in ("ack_timeout", "frame_timeout", "customer_timeout", "poll_interval",
                     "hold_timeout"):
            if not getattr(self, name) > 0:
                raise ConcertConfigError(f"{name} must be positive")
        if not 0 <= self.max_retransmissions <= 10:
            raise ConcertConfigError("max_retransmissions must be within 0..10")

    @property
    def bytesize(self) -> int:
        return 8 if self.line == "8N1" else 7

    @property
    def parity(self) -> str:
        return "N" if self.line == "8N1" else "E"

    @property
    def stopbits(self) -> int:
        return 1


class Phase(enum.StrEnum):
    """Where the worker thread is; read it to observe a transaction (tests, status page)."""

    IDLE = "idle"
    PROBING = "probing"
    ENQUIRY = "enquiry"
    HELD = "held"
    """The terminal ACKed the ENQ; the request frame waits for the payment's commit."""
    SENDING_REQUEST = "sending_request"
    AWAITING_ANSWER = "awaiting_answer"
    RECEIVING_ANSWER = "receiving_answer"


class SerialPort(Protocol):
    """The part of a pyserial port this driver uses."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


class LineLost(DriverError):
    """The port failed under us (unplugged, closed by the peer)."""


class Aborted(DriverError):
    """``close()`` or a cancelled caller stopped the worker."""


Event = Frame | Control | FrameError


class Line:
    """The open port and its frame parser; used only on the worker thread.

    On a local device (pyserial's POSIX port: a tty, a pty, USB CDC) the bytes go through
    the port's non-blocking file descriptor directly: one ``select`` and one ``read`` per
    chunk received, one ``write`` per frame or control byte, where pyserial adds a
    ``select`` after every write and an ``ioctl`` after every read. Each system call lets
    the event loop's thread take the interpreter lock, which the worker must then wait
    for, so the fewer the better on a sale's path. Other ports (``socket://``) go through
    pyserial.
    """

    def __init__(self, port: SerialPort, clock: Clock, abort: threading.Event, name: str,
                 *, poll_interval: float = 0.05, write_timeout: float = 1.0) -> None:
        self.port = port
        self.parser = FrameParser()
        self._clock = clock
        self.abort = abort
        self._name = name
        fd = getattr(port, "fd", None)
        self._fd: int | None = fd if isinstance(fd, int) and fd >= 0 else None
        self._poll = poll_interval
        self._write_timeout = write_timeout

    def write(self, data: bytes) -> None:
        if self._fd is not None:
            self._write_fd(self._fd, data)
            return
        try:
            self.port.write(data)
        except PORT_ERRORS as exc:  # serial.SerialException is an OSError
            raise LineLost(f"write failed: {exc}") from exc

    def _write_fd(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + self._write_timeout  # like pyserial's: real time
        try:
            while view:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(fd, view):]
                if view:  # the driver's buffer is full: wait until it takes more
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LineLost("write failed: write timeout")
                    select.select([], [fd], [], remaining)
        except PORT_ERRORS as exc:
            raise LineLost(f"write failed: {exc}") from exc

    def send_control(self, byte: int) -> None:
        logger.debug("concert %s: -> %s", self._name, Control(byte).name)
        self.write(bytes((byte,)))

    def discard_input(self) -> None:
        """Start an exchange clean: drop unread bytes (a late answer of an earlier one)."""
        stale = self.parser.pending + (1 if self.parser.in_frame else 0)
        self.parser.reset()
        try:
            stale += self.port.in_waiting
            if stale:
                logger.warning("concert %s: discarding %d stale bytes", self._name, stale)
            self.port.reset_input_buffer()
        except PORT_ERRORS as exc:
            raise LineLost(f"flush failed: {exc}") from exc

    def has_input(self) -> bool:
        """Whether anything arrived that was not read yet (no wait)."""
        if self.parser.pending:
            return True
        try:
            return bool(self.port.in_waiting)
        except PORT_ERRORS as exc:
            raise LineLost(f"read failed: {exc}") from exc

    def _read(self) -> bytes:
        fd = self._fd
        if fd is not None:
            try:
                ready, _, _ = select.select([fd], [], [], self._poll)
                if not ready:
                    return b""
                data = os.read(fd, 4096)
            except (BlockingIOError, InterruptedError):
                return b""
            except PORT_ERRORS as exc:
                raise LineLost(f"read failed: {exc}") from exc
            if not data:  # readable but empty: the device went away
                raise LineLost("read failed: the device reports data but returns none")
            return data
        try:
            data = self.port.read(1)
            if data:
                waiting = self.port.in_waiting
                if waiting:
                    data += self.port.read(waiting)
        except PORT_ERRORS as exc:
            raise LineLost(f"read failed: {exc}") from exc
        return data

    def next_event(self, deadline: float) -> Event | None:
        """The next frame, control byte or frame error before ``deadline``; ``None`` after.

        The deadline is checked before every event, so a line that never stops sending
        (a flood of ENQ, noise) cannot keep a caller here past it.
        """
        while True:
            if self.abort.is_set():
                raise Aborted("stopped")
            if self._clock.monotonic() >= deadline:
                return None
            try:
                event = self.parser.next_event()
            except FrameError as exc:
                return exc
            if event is not None:
                return event
            chunk = self._read()
            if chunk:
                self.parser.feed(chunk)

    def await_control(self, wanted: frozenset[Control], timeout: float) -> Control | None:
        """Wait up to ``timeout`` for one of ``wanted``; anything else is ignored."""
        deadline = self._clock.monotonic() + timeout
        while True:
            event = self.next_event(deadline)
            if event is None:
                return None
            if isinstance(event, Control) and event in wanted:
                logger.debug("concert %s: <- %s", self._name, event.name)
                return event
            logger.debug("concert %s: ignored %r", self._name, describe(event))


def describe(event: Event) -> str:
    if isinstance(event, Control):
        return event.name
    if isinstance(event, Frame):
        return f"frame of {len(event.data)} bytes"
    return type(event).__name__


ACK_ONLY = frozenset({Control.ACK})
ACK_OR_NAK = frozenset({Control.ACK, Control.NAK})
EOT_ONLY = frozenset({Control.EOT})
