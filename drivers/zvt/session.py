"""The ZVT line: settings, and the two transports that carry APDUs.

- :class:`TcpLink`: APDUs raw on one TCP connection (the PT listens, port 20007).
- :class:`SerialLink`: 9600 baud, 8 data bits, no parity, 2 stop bits; each APDU in a
  ``DLE STX … DLE ETX CRC`` frame that the receiver answers with ACK or NAK; a NAKed or
  unanswered frame is sent again, at most :attr:`ZvtSettings.max_sends` times in all. A
  frame with a bad CRC is NAKed (the PT repeats it); a frame the PT repeats because it
  missed our ACK is ACKed again and not handed on twice.

Both are blocking and are used on the driver's one worker thread (see
:mod:`drivers.zvt.adapter`); a :class:`TcpLink` also has the same two calls for the event
loop (:meth:`TcpLink.send_on_loop`, :meth:`TcpLink.receive_on_loop`), used while the worker
is idle. Every wait is bounded by a deadline on the injectable clock, read in slices of
``poll_interval`` so that a stop request is seen quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from drivers.base import DriverError
from drivers.zvt.framing import (
    ACK,
    NAK,
    Apdu,
    ApduReader,
    Control,
    Frame,
    FrameError,
    FrameParser,
    encode_frame,
    parse_apdu,
)
from drivers.zvt.messages import DEFAULT_CONFIG, password_bytes
from sync.core.clock import Clock

logger = logging.getLogger(__name__)


class ZvtConfigError(DriverError, ValueError):
    """A ZVT setting is out of range; the message starts with the setting's name."""


@dataclass(frozen=True, slots=True)
class ZvtSettings:
    """How to reach one ZVT terminal. Every timer in seconds, every one configurable."""

    address: str
    """``tcp://host:port`` (port 20007 by default) or ``serial:///dev/ttyUSB0``."""
    password: str
    """The terminal's six-digit password (sent as 3 bytes BCD)."""
    currency: str = "EUR"
    """The store's currency (sent at Registration and with every amount)."""
    config_byte: int = DEFAULT_CONFIG
    connect_timeout: float = 3.0
    ack_timeout: float = 5.0
    """Wait for the PT's ``80 00 00`` (or ``84 xx``) to a command."""
    link_timeout: float = 1.0
    """Serial: wait for the ACK/NAK of a frame, and for a frame to complete."""
    customer_timeout: float = 120.0
    """Wait for the end of a transaction (Completion or Abort) once it was accepted."""
    message_timeout: float = 180.0
    """Wait for the end of an end of day (the PT settles with its host)."""
    completion_timeout: float = 10.0
    """After the result (Status-Information), wait this long for the Completion."""
    max_sends: int = 3
    """Serial: copies of a frame sent in all (NAK or no answer: sent again)."""
    poll_interval: float = 0.05
    """Longest single wait for the line, on the worker thread or the event loop (bounds stop
    and cancel latency)."""
    baudrate: int = 9600

    def __post_init__(self) -> None:
        check_address(self.address)
        try:
            password_bytes(self.password)
        except ValueError:
            raise ZvtConfigError("password must be six digits (the terminal's)") from None
        if not 0 <= self.config_byte <= 0xFF:
            raise ZvtConfigError("config_byte must be within 0..255")
        for name in ("connect_timeout", "ack_timeout", "link_timeout", "customer_timeout",
                     "message_timeout", "completion_timeout", "poll_interval"):
            if not getattr(self, name) > 0:
                raise ZvtConfigError(f"{name} must be positive")
        if not 1 <= self.max_sends <= 10:
            raise ZvtConfigError("max_sends must be within 1..10")
        if self.baudrate <= 0:
            raise ZvtConfigError("baudrate must be positive")

    @property
    def is_tcp(self) -> bool:
        return self.address.startswith("tcp://")

    @property
    def endpoint(self) -> tuple[str, int]:
        parts = urlsplit(self.address)
        return parts.hostname or "", parts.port or 20007

    @property
    def device(self) -> str:
        return urlsplit(self.address).path


def check_address(address: str) -> None:
    """``tcp://host:port`` or ``serial:///dev/…``; :class:`ZvtConfigError` otherwise."""
    parts = urlsplit(address)
    if parts.scheme == "tcp":
        if not parts.hostname:
            raise ZvtConfigError("address tcp:// needs a host, e.g. tcp://10.0.0.20:20007")
        try:
            parts.port  # noqa: B018  (raises for a bad port)
        except ValueError:
            raise ZvtConfigError(f"address {address!r} has a bad port") from None
    elif parts.scheme == "serial":
        if not parts.path:
            raise ZvtConfigError("address serial:// needs a device, e.g. serial:///dev/ttyUSB0")
    else:
        raise ZvtConfigError(f"address {address!r} must start with tcp:// or serial://")


class LineLost(DriverError):
    """The connection or port failed under us."""


class Aborted(DriverError):
    """``close()`` or a cancelled caller stopped the worker."""


class NotDelivered(DriverError):
    """Serial: the PT NAKed every copy of a frame: it certainly did not take it."""


class Unconfirmed(DriverError):
    """Serial: a copy went out and was neither ACKed nor NAKed: the PT may have taken it."""


class Link(Protocol):
    def send(self, apdu: bytes) -> None: ...

    def receive(self, deadline: float) -> Apdu | None: ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


class _Base:
    def __init__(self, clock: Clock, abort: threading.Event, poll: float, name: str) -> None:
        self._clock = clock
        self.abort = abort
        self._poll = poll
        self._name = name

    def _check(self) -> None:
        if self.abort.is_set():
            raise Aborted("stopped")


class TcpLink(_Base):
    """APDUs raw on a TCP connection."""

    def __init__(self, sock: socket.socket, clock: Clock, abort: threading.Event,
                 poll: float, name: str) -> None:
        super().__init__(clock, abort, poll, name)
        self._sock = sock
        self._reader = ApduReader()

    @classmethod
    def connect(cls, settings: ZvtSettings, clock: Clock, abort: threading.Event,
                name: str) -> TcpLink:
        try:
            sock = socket.create_connection(settings.endpoint, timeout=settings.connect_timeout)
        except OSError as exc:
            raise LineLost(f"cannot connect to {settings.address}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setblocking(False)
        return cls(sock, clock, abort, settings.poll_interval, name)

    def send(self, apdu: bytes) -> None:
        view = memoryview(apdu)
        try:
            while view:
                try:
                    view = view[self._sock.send(view):]
                except BlockingIOError:
                    select.select([], [self._sock], [], self._poll)
                    self._check()
        except OSError as exc:
            raise LineLost(f"write failed: {exc}") from exc

    def receive(self, deadline: float) -> Apdu | None:
        while isinstance(wait := self._take(deadline), float):
            try:  # an interrupted select is retried by Python itself (PEP 475)
                select.select([self._sock], [], [], min(wait, self._poll))
            except (OSError, ValueError) as exc:
                raise LineLost(f"read failed: {exc}") from exc
        return wait

    def _take(self, deadline: float) -> Apdu | float | None:
        """The next APDU, from what was read or what the socket holds; None once
        ``deadline`` has passed; else the seconds left to wait for the socket."""
        while True:
            apdu = self._reader.next_apdu()
            if apdu is not None:
                return apdu
            self._check()
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return None
            try:
                chunk = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return remaining
            except OSError as exc:
                raise LineLost(f"read failed: {exc}") from exc
            if not chunk:
                raise LineLost("the terminal closed the connection")
            self._reader.feed(chunk)

    async def send_on_loop(self, apdu: bytes) -> None:
        """:meth:`send`, on the event loop (an APDU this small leaves at once)."""
        view = memoryview(apdu)
        try:
            while view:
                try:
                    view = view[self._sock.send(view):]
                except (BlockingIOError, InterruptedError):
                    await _ready(self._sock, self._poll, write=True)
                    self._check()
        except OSError as exc:
            raise LineLost(f"write failed: {exc}") from exc

    async def receive_on_loop(self, deadline: float) -> Apdu | None:
        """:meth:`receive`, on the event loop: it reads only once the socket is readable,
        so that a wait that times out never loses what arrived meanwhile."""
        while isinstance(wait := self._take(deadline), float):
            await _ready(self._sock, min(wait, self._poll))
        return wait

    def discard_input(self) -> None:
        stale = self._reader.pending
        self._reader.clear()
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                try:
                    chunk = self._sock.recv(65536)
                except OSError as exc:
                    if isinstance(exc, BlockingIOError):
                        raise
                    raise LineLost(f"read failed: {exc}") from exc
                if not chunk:
                    raise LineLost("the terminal closed the connection")
                stale += len(chunk)
        if stale:
            logger.warning("zvt %s: discarding %d stale bytes", self._name, stale)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


async def _ready(sock: socket.socket, timeout: float, *, write: bool = False) -> None:
    """Wait until ``sock`` is readable (writable) or ``timeout`` s have passed; read nothing."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = sock.fileno()
    if fd < 0:
        raise LineLost("the connection is closed")
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class SerialPort(Protocol):
    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


try:  # tcflush and friends raise termios.error, which is not an OSError
    import termios

    PORT_ERRORS: tuple[type[Exception], ...] = (OSError, termios.error)
except ImportError:  # pragma: no cover
    PORT_ERRORS = (OSError,)
OPEN_ERRORS: tuple[type[Exception], ...] = (*PORT_ERRORS, ValueError)


class SerialLink(_Base):
    """APDUs in DLE/STX frames with ACK/NAK, CRC-16/KERMIT, at most ``max_sends`` sends."""

    def __init__(self, port: SerialPort, settings: ZvtSettings, clock: Clock,
                 abort: threading.Event, name: str) -> None:
        super().__init__(clock, abort, settings.poll_interval, name)
        self.port = port
        self._parser = FrameParser()
        self._link_timeout = settings.link_timeout
        self._max_sends = settings.max_sends
        self._pending: list[Frame | Control | FrameError] = []
        self._last_frame: bytes | None = None
        self.naks_sent = 0
        self.repeats_ignored = 0

    @classmethod
    def open(cls, settings: ZvtSettings, clock: Clock, abort: threading.Event,
             name: str) -> SerialLink:
        import serial  # noqa: PLC0415  (pyserial only for serial lanes)

        try:
            port = serial.serial_for_url(
                settings.device, baudrate=settings.baudrate, bytesize=8, parity="N",
                stopbits=2, timeout=settings.poll_interval,
                write_timeout=max(settings.link_timeout, 1.0), exclusive=True)
        except OPEN_ERRORS as exc:
            raise LineLost(f"cannot open {settings.device}: {exc}") from exc
        return cls(port, settings, clock, abort, name)

    # -- raw events --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except PORT_ERRORS as exc:
            raise LineLost(f"write failed: {exc}") from exc

    def _event(self, deadline: float) -> Frame | Control | FrameError | None:
        if self._pending:
            return self._pending.pop(0)
        while True:
            self._check()
            try:
                event = self._parser.next_event()
            except FrameError as exc:
                return exc
            if event is not None:
                return event
            if self._clock.monotonic() >= deadline:
                return None
            try:
                chunk = self.port.read(1)
                if chunk:
                    waiting = self.port.in_waiting
                    if waiting:
                        chunk += self.port.read(waiting)
            except PORT_ERRORS as exc:
                raise LineLost(f"read failed: {exc}") from exc
            if chunk:
                self._parser.feed(chunk)

    # -- the link ----------------------------------------------------------------------

    def send(self, apdu: bytes) -> None:
        """Send one APDU; returns once the PT ACKed a copy.

        Raises :class:`NotDelivered` when every copy was NAKed, :class:`Unconfirmed` when a
        copy went unanswered and no later one was ACKed.
        """
        frame = encode_frame(apdu)
        unanswered = False
        for _ in range(self._max_sends):
            self._write(frame)
            deadline = self._clock.monotonic() + self._link_timeout
            while True:
                event = self._event(deadline)
                if event is None:
                    unanswered = True
                    break
                if event is Control.ACK:
                    self._last_frame = None  # the PT moved on: the same bytes are news
                    return
                if event is Control.NAK:
                    break
                if isinstance(event, Frame) and event.apdu == self._last_frame:
                    # the PT repeats its last frame: it did not get our ACK
                    self.repeats_ignored += 1
                    self._write(bytes((ACK,)))
                    continue
                self._pending.append(event)  # the PT spoke first: keep it for receive()
        if unanswered:
            raise Unconfirmed(f"frame not acknowledged after {self._max_sends} sends")
        raise NotDelivered(f"frame refused (NAK) {self._max_sends} times")

    def receive(self, deadline: float) -> Apdu | None:
        naks = 0
        while True:
            event = self._event(deadline)
            if event is None:
                return None
            if isinstance(event, FrameError):
                if naks + 1 >= self._max_sends + 1:
                    raise LineLost(f"frames unreadable after {naks} NAKs: {event}")
                naks += 1
                self.naks_sent += 1
                logger.info("zvt %s: NAK to a broken frame (%s)", self._name,
                            type(event).__name__)
                self._write(bytes((NAK,)))
                continue
            if isinstance(event, Frame):
                self._write(bytes((ACK,)))
                self._last_frame = event.apdu  # a copy of it before our next frame: a repeat
                try:
                    return parse_apdu(event.apdu)
                except FrameError:
                    continue
                except DriverError:
                    logger.info("zvt %s: a frame that holds no APDU was ignored", self._name)
                    continue
            # a stray ACK/NAK: nothing waits for it

    def forget_last(self) -> None:
        """A new command begins: an identical frame from now on is a new message."""
        self._last_frame = None

    def discard_input(self) -> None:
        self._pending.clear()
        self._parser.reset()
        self._last_frame = None
        try:
            self.port.reset_input_buffer()
        except PORT_ERRORS as exc:
            raise LineLost(f"flush failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(*PORT_ERRORS):
            self.port.close()
