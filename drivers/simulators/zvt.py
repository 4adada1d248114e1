"""A ZVT payment terminal (PT) on TCP or on a pty: the terminal side of the protocol.

Built to the protocol (``docs/facts/zvt.md`` and the specification's tables), not
to :mod:`drivers.zvt.adapter`: it answers any ECR that speaks ZVT — Registration, Status
enquiry, Authorisation, Refund, Reversal, Repeat receipt, End of day, Abort command, Log
off — the way a PT does: ``80 00 00`` (or ``84 xx``) to the command, then, as master,
Intermediate status, Status-Information, Print Line and Completion or Abort, each of which
the ECR must acknowledge with ``80 00 00``. On a pty every APDU travels in a
``DLE STX … DLE ETX CRC`` frame answered by ACK/NAK (9600 8N2 on a real line).

As a PT does, it sends a receipt as Print Lines only when the Registration's config byte
gives that receipt to the ECR (0x02 payment receipts, 0x04 administration receipts such as
the end of day, with print type 0x80); any other receipt it "prints" itself, and nothing of
it crosses the line. A Status enquiry needs no password (``05 01 00`` is answered).

From code::

    sim = ZvtSimulator(tcp_port=0)        # or ZvtSimulator(pty=True, link="/tmp/zvt0")
    address = sim.start()                  # "tcp://127.0.0.1:PORT" or "serial:///dev/pts/N"
    sim.push(Behaviour.DECLINE)            # the next transaction
    sim.requests, sim.journal              # what the ECR asked, what was booked
    sim.stop()

From a shell: ``edged simulate zvt --tcp 20007`` or ``edged simulate zvt --pty --link
/tmp/zvt0`` (:func:`run_cli`).

Behaviours (:class:`Behaviour`) are taken per transaction (Authorisation, Refund,
Reversal) from the queue filled by :meth:`ZvtSimulator.push`, else the default ``AUTO``:
approve, except amounts whose minor units end in 13 (declined by the issuer, result 05),
14 (card not readable, Abort 64) and 77 (a slow customer: ``slow_delay`` seconds, long
enough to cancel from the register).

What it does not do (a real terminal may): reverse a payment by itself when the register
does not acknowledge in time, settle with a real host, print on its own printer, ask for
a signature, DCC, tips, partial approvals, ask the register for a password on a menu.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import enum
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType, TracebackType

from drivers.base import DriverError
from drivers.concert.messages import CURRENCY_NUMERIC
from drivers.zvt import messages as m
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

logger = logging.getLogger(__name__)

TEST_CARD = "4711690463168807"
"""The card the simulated customer presents (a test PAN; only its last four may survive)."""
TERMINAL_ID = "52001233"
SW_VERSION = "edged-zvt-sim 1.0"


class Behaviour(enum.StrEnum):
    AUTO = "auto"
    """Approve; amounts ending in 13 decline, 14 abort (card not readable), 77 are slow."""
    APPROVE = "approve"
    DECLINE = "decline"
    """Status-Information with result 05 (declined by the issuer), then Abort 05."""
    ABORT = "abort"
    """Abort 6C right after accepting the command."""
    ABORT_CARD = "abort_card"
    """Abort 64 (card not readable) after "insert card"."""
    ABORT_HOST = "abort_host"
    """Abort 9B (host not reached) after the PIN, once the customer committed."""
    SLOW = "slow"
    """The customer takes ``slow_delay`` seconds before committing (cancellable)."""
    DROP = "drop"
    """Accept, book the sale approved, and drop the line (TCP closed, pty gone)."""
    DROP_UNBOOKED = "drop_unbooked"
    """Accept and drop the line; nothing is booked."""
    SILENT = "silent"
    """Accept, then say nothing more; nothing is booked."""
    NO_COMPLETION = "no_completion"
    """Approve and book, send the result and the receipt, never the Completion."""
    REPEAT = "repeat"
    """Approve, sending every message of the transaction twice."""
    CORRUPT_CRC = "corrupt_crc"
    """Approve; the first copy of the result frame has a bad CRC (serial)."""
    NAK_FIRST = "nak_first"
    """NAK the first copy of the command frame (serial), then approve."""
    REFUSE = "refuse"
    """Answer the command with ``84 83`` (function not possible): nothing started."""
    BUSY = "busy"
    """Answer the command with ``84 9C`` (busy, repeat later)."""
    OTHER_AMOUNT = "other_amount"
    """Approve one minor unit less than asked."""
    LEAKY_RECEIPT = "leaky_receipt"
    """Approve, printing the whole card number on the receipt (a misconfigured PT)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One command as the PT received it; times are ``time.monotonic()``."""

    command: m.EcrCommand
    behaviour: Behaviour | None
    received_at: float


@dataclass(slots=True)
class Booked:
    """A transaction the PT booked (what Repeat receipt and End of day read)."""

    kind: str  # sale | refund | reversal
    receipt: int
    trace: int
    amount: int
    result: int
    bmps: list[tuple[int, bytes]] = field(repr=False)
    lines: list[str] = field(repr=False)
    reversed: bool = False
    settled: bool = False


@dataclass(slots=True)
class Timing:
    """When a transaction's command arrived and when its last acknowledgement did."""

    first_byte_at: float
    done_at: float = 0.0


class _Closed(DriverError):
    """The ECR's line went away."""


class _Stopped(DriverError):
    """stop() was called."""


class _Channel:
    def send(self, apdu: bytes, *, corrupt: bool = False) -> None: ...

    def recv(self, deadline: float) -> Apdu | None: ...

    def close(self) -> None: ...


class _TcpChannel(_Channel):
    def __init__(self, conn: socket.socket, stop: threading.Event, poll: float) -> None:
        self._conn = conn
        self._reader = ApduReader()
        self._stop = stop
        self._poll = poll
        self.first_byte_at = 0.0

    def send(self, apdu: bytes, *, corrupt: bool = False) -> None:
        try:
            self._conn.sendall(apdu)
        except OSError as exc:
            raise _Closed(str(exc)) from exc

    def recv(self, deadline: float) -> Apdu | None:
        while True:
            apdu = self._reader.next_apdu()
            if apdu is not None:
                return apdu
            if self._stop.is_set():
                raise _Stopped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                ready, _, _ = select.select([self._conn], [], [], min(remaining, self._poll))
                if not ready:
                    continue
                chunk = self._conn.recv(65536)
            except OSError as exc:
                raise _Closed(str(exc)) from exc
            if not chunk:
                raise _Closed("the ECR closed the connection")
            if not self._reader.pending:
                self.first_byte_at = time.monotonic()
            self._reader.feed(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._conn.close()


class _PtyChannel(_Channel):
    """DLE/STX frames with ACK/NAK on the pty's master side."""

    def __init__(self, fd: int, sim: ZvtSimulator) -> None:
        self._fd = fd
        self._sim = sim
        self._parser = FrameParser()
        self._pending: list[Frame | FrameError] = []
        self.first_byte_at = 0.0

    def _write(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError as exc:
            raise _Closed(str(exc)) from exc

    def _event(self, deadline: float) -> Frame | Control | FrameError | None:
        while True:
            try:
                event = self._parser.next_event()
            except FrameError as exc:
                return exc
            if event is not None:
                return event
            if self._sim.stopping.is_set():
                raise _Stopped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], min(remaining,
                                                                self._sim.poll_interval))
            if ready:
                try:
                    chunk = os.read(self._fd, 4096)
                except OSError:
                    chunk = b""
                if chunk:
                    if not self._parser.in_frame and not self._parser.pending:
                        self.first_byte_at = time.monotonic()
                    self._parser.feed(chunk)

    def send(self, apdu: bytes, *, corrupt: bool = False) -> None:
        frame = encode_frame(apdu)
        for copy in range(self._sim.max_sends):
            bad = corrupt and copy == 0
            self._write(frame[:-1] + bytes((frame[-1] ^ 0x5A,)) if bad else frame)
            deadline = time.monotonic() + self._sim.link_timeout
            while True:
                event = self._event(deadline)
                if event is None or event is Control.NAK:
                    if event is Control.NAK:
                        self._sim.naks_received += 1
                    break
                if event is Control.ACK:
                    return
                if isinstance(event, Frame | FrameError):
                    self._pending.append(event)  # the ECR spoke: read it after
        raise _Closed("the ECR did not acknowledge a frame")

    def recv(self, deadline: float) -> Apdu | None:
        while True:
            if self._pending:
                event: Frame | Control | FrameError | None = self._pending.pop(0)
            else:
                event = self._event(deadline)
            if event is None:
                return None
            if isinstance(event, FrameError):
                self._sim.naks_sent += 1
                self._write(bytes((NAK,)))
                continue
            if isinstance(event, Frame):
                if self._sim.nak_this(event.apdu):
                    self._sim.naks_sent += 1
                    self._write(bytes((NAK,)))
                    continue
                self._write(bytes((ACK,)))
                try:
                    return parse_apdu(event.apdu)
                except DriverError:
                    continue

    def close(self) -> None:
        pass


class ZvtSimulator:
    """A scriptable ZVT PT on TCP (``tcp_port``, 0 for any) or a pty, on its own thread."""

    def __init__(self, *, tcp_port: int | None = None, pty: bool = False,
                 link: str | None = None, host: str = "127.0.0.1",
                 default: Behaviour = Behaviour.AUTO, password: str | None = None,
                 card_number: str = TEST_CARD, step_delay: float = 0.0,
                 slow_delay: float = 3.0, ack_timeout: float = 5.0,
                 link_timeout: float = 1.0, max_sends: int = 3, poll_interval: float = 0.02,
                 first_receipt: int = 41) -> None:
        if (tcp_port is None) == (not pty):
            raise ValueError("give tcp_port or pty=True")
        self.tcp_port = tcp_port
        self.pty = pty
        self.link = link
        self.host = host
        self.default = default
        self.password = password
        self.card_number = card_number
        self.step_delay = step_delay
        self.slow_delay = slow_delay
        self.ack_timeout = ack_timeout
        self.link_timeout = link_timeout
        self.max_sends = max_sends
        self.poll_interval = poll_interval
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._requests: list[Received] = []
        self.journal: list[Booked] = []
        self.timings: list[Timing] = []
        self._receipt = first_receipt
        self._trace = 1000
        self._config = 0
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._fds: tuple[int, int] | None = None
        self._device: str | None = None
        self._ch: _Channel | None = None
        self._drop_requested = threading.Event()
        self._nak_done = False
        self.connections = 0
        self.registrations = 0
        self.naks_sent = 0
        self.naks_received = 0
        self.abort_commands = 0
        self.completions_sent = 0

    # -- control ------------------------------------------------------------------------

    def start(self) -> str:
        """Listen (or open the pty) and serve on a thread; returns the lane's address."""
        if self._thread is not None:
            return self.address
        self.stopping.clear()
        if self.pty:
            master, slave = os.openpty()
            tty.setraw(slave)
            self._device = os.ttyname(slave)
            self._fds = (master, slave)
            if self.link is not None:
                tmp = f"{self.link}.{os.getpid()}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.symlink(self._device, tmp)
                os.replace(tmp, self.link)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.tcp_port or 0))
            listener.listen(4)
            self._listener = listener
        self._thread = threading.Thread(target=self._main, name="zvt-sim", daemon=True)
        self._thread.start()
        logger.info("zvt simulator on %s", self.address)
        return self.address

    def stop(self) -> None:
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._ch is not None:
            self._ch.close()
        if self._fds is not None:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    def __enter__(self) -> ZvtSimulator:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self.pty:
            return f"serial://{self.link or self._device}"
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return f"tcp://{host}:{port}"

    def nak_this(self, apdu: bytes) -> bool:
        """NAK_FIRST: the first copy of the next transaction's command frame is refused."""
        if apdu[:2] not in (bytes(m.Cmd.AUTHORISATION.value), bytes(m.Cmd.REFUND.value),
                            bytes(m.Cmd.REVERSAL.value)):
            return False
        with self._lock:
            if self._queue and self._queue[0] is Behaviour.NAK_FIRST and not self._nak_done:
                self._nak_done = True
                return True
        return False

    def push(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def drop(self) -> None:
        """Close the ECR's connection now (a cable pulled; TCP only)."""
        self._drop_requested.set()

    @property
    def requests(self) -> tuple[Received, ...]:
        with self._lock:
            return tuple(self._requests)

    def transactions(self) -> list[Received]:
        return [r for r in self.requests if r.behaviour is not None]

    def wait_for(self, predicate_count: int, cmd: m.Cmd | None = None,
                 timeout: float = 5.0) -> bool:
        """Block until ``predicate_count`` commands (of ``cmd``, if given) arrived."""
        def enough() -> bool:
            return sum(1 for r in self._requests
                       if cmd is None or r.command.cmd is cmd) >= predicate_count
        with self._changed:
            return self._changed.wait_for(enough, timeout)

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self.pty:
                assert self._fds is not None
                channel = _PtyChannel(self._fds[0], self)
                while not self.stopping.is_set():  # a dropped serial line comes back
                    self._ch = channel
                    self._serve()
            else:
                while not self.stopping.is_set():
                    conn = self._accept()
                    if conn is None:
                        continue
                    self._ch = _TcpChannel(conn, self.stopping, self.poll_interval)
                    self.connections += 1
                    self._serve()
        except _Stopped:
            pass
        except Exception:
            logger.exception("zvt simulator: unexpected error")

    def _accept(self) -> socket.socket | None:
        assert self._listener is not None
        ready, _, _ = select.select([self._listener], [], [], self.poll_interval)
        if not ready:
            return None
        conn, _ = self._listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._drop_requested.clear()
        return conn

    def _newer_connection(self) -> bool:
        """A new ECR connection waits: a PT serves the latest (the old one is dead)."""
        if self._listener is None:
            return False
        ready, _, _ = select.select([self._listener], [], [], 0)
        return bool(ready)

    def _serve(self) -> None:
        """Serve commands on the current channel until it closes."""
        while not self.stopping.is_set():
            ch = self._ch
            if ch is None:
                return
            if self._drop_requested.is_set() or self._newer_connection():
                self._drop_line()
                return
            try:
                apdu = ch.recv(time.monotonic() + self.poll_interval * 5)
            except _Closed:
                self._drop_line()
                return
            if apdu is None:
                continue
            first = getattr(ch, "first_byte_at", time.monotonic())
            try:
                self._dispatch(apdu, first)
            except _Closed:
                self._drop_line()
                return

    def _drop_line(self) -> None:
        ch, self._ch = self._ch, None
        if ch is not None and not self.pty:
            ch.close()
        elif ch is not None:
            self._ch = ch  # a pty stays: the ECR may come back on it

    # -- PT side of an exchange ---------------------------------------------------------

    def _send(self, apdu: bytes, *, corrupt: bool = False) -> None:
        ch = self._ch
        if ch is None:
            raise _Closed("no ECR on the line")
        ch.send(apdu, corrupt=corrupt)

    def _tell(self, apdu: bytes, *, twice: bool = False, corrupt: bool = False,
              txn: _Txn | None = None) -> bool:
        """Send a message as master and wait for the ECR's ``80 00 00``; False if none came
        (the line is gone: the customer's side of the transaction goes on regardless).

        An Abort command (``06 B0``) arriving meanwhile is answered at once.
        """
        try:
            for copy in range(2 if twice else 1):
                self._send(apdu, corrupt=corrupt and copy == 0)
                if not self._await_ack(txn):
                    return False
        except _Closed:
            self._drop_line()
            return False
        return True

    def _await_ack(self, txn: _Txn | None) -> bool:
        deadline = time.monotonic() + self.ack_timeout
        while True:
            ch = self._ch
            if ch is None:
                return False
            apdu = ch.recv(deadline)
            if apdu is None:
                logger.info("zvt simulator: the ECR did not acknowledge in time")
                return False
            if apdu.command == m.Cmd.ACK.value:
                if txn is not None:
                    txn.timing.done_at = time.monotonic()
                return True
            if apdu.command == m.Cmd.ABORT_COMMAND.value:
                self._abort_command(txn)

    def _abort_command(self, txn: _Txn | None) -> None:
        self.abort_commands += 1
        if txn is not None and not txn.committed:
            txn.abort_requested = True
            self._send(m.ACK_APDU)
        else:
            self._send(m.refused(0x83))  # the customer committed: too late

    def _wait_customer(self, seconds: float, txn: _Txn) -> None:
        """The customer acts for ``seconds``; an Abort command may come meanwhile."""
        deadline = time.monotonic() + seconds
        while not txn.abort_requested:
            ch = self._ch
            if ch is None:
                time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    return
                continue
            try:
                apdu = ch.recv(deadline)
            except _Closed:
                self._drop_line()
                continue
            if apdu is None:
                return
            if apdu.command == m.Cmd.ABORT_COMMAND.value:
                self._abort_command(txn)

    # -- commands -----------------------------------------------------------------------

    def _record(self, command: m.EcrCommand, behaviour: Behaviour | None, at: float) -> None:
        with self._changed:
            self._requests.append(Received(command, behaviour, at))
            self._changed.notify_all()

    def _take(self, amount: int | None) -> Behaviour:
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self.default
            self._nak_done = False
        if behaviour is Behaviour.AUTO or behaviour is Behaviour.NAK_FIRST:
            cents = (amount or 0) % 100
            return {13: Behaviour.DECLINE, 14: Behaviour.ABORT_CARD,
                    77: Behaviour.SLOW}.get(cents, Behaviour.APPROVE)
        return behaviour

    def _dispatch(self, apdu: Apdu, first_byte_at: float) -> None:
        try:
            command = m.decode_ecr(apdu)
        except DriverError as exc:
            logger.info("zvt simulator: command not understood (%s): 84 9A", exc)
            self._record(m.EcrCommand(None, apdu.command), None, first_byte_at)
            self._send(m.refused(0x9A))
            return
        cmd = command.cmd
        if cmd in (m.Cmd.AUTHORISATION, m.Cmd.REFUND, m.Cmd.REVERSAL):
            self._transaction(command, first_byte_at)
            return
        self._record(command, None, first_byte_at)
        if command.password is not None and self.password is not None \
                and command.password != self.password:
            logger.info("zvt simulator: wrong password: 84 83")
            self._send(m.refused(0x83))
            return
        if cmd is m.Cmd.REGISTRATION:
            self._config = command.config or 0
            self.registrations += 1
            self._send(m.ACK_APDU)
            self._tell(m.completion(terminal_status=0, terminal_id=TERMINAL_ID,
                                    currency=command.currency
                                    if command.currency in CURRENCY_NUMERIC else None))
        elif cmd is m.Cmd.STATUS_ENQUIRY:
            self._send(m.ACK_APDU)
            self._tell(m.completion(sw_version=SW_VERSION, terminal_status=0))
        elif cmd is m.Cmd.REPEAT_RECEIPT:
            self._send(m.ACK_APDU)
            self._repeat_receipt()
        elif cmd is m.Cmd.END_OF_DAY:
            self._send(m.ACK_APDU)
            self._end_of_day()
        elif cmd is m.Cmd.LOG_OFF:
            self._send(m.ACK_APDU)
        elif cmd is m.Cmd.ABORT_COMMAND:  # nothing is running that could be aborted
            self.abort_commands += 1
            self._send(m.refused(0x83))
        else:
            self._send(m.refused(0x83))

    def _print(self, lines: list[str], txn: _Txn | None = None, twice: bool = False, *,
               administration: bool = False) -> bool:
        """Send a receipt as Print Lines if the registration gave it to the ECR; else the
        PT prints it on its own printer (nothing on the line)."""
        if not m.ecr_gets_print_lines(self._config, administration=administration):
            return True
        return all(self._tell(m.print_line(line), twice=twice, txn=txn) for line in lines)

    def _intermediate(self, code: int, txn: _Txn) -> bool:
        if not (self._config & m.CONFIG_INTERMEDIATE_STATUS):
            return True
        return self._tell(m.intermediate_status(code), twice=txn.behaviour is Behaviour.REPEAT,
                          txn=txn)

    def _transaction(self, command: m.EcrCommand, first_byte_at: float) -> None:
        behaviour = self._take(command.amount)
        self._record(command, behaviour, first_byte_at)
        txn = _Txn(command, behaviour, Timing(first_byte_at))
        with self._lock:
            self.timings.append(txn.timing)
        if behaviour is Behaviour.REFUSE or behaviour is Behaviour.BUSY:
            self._send(m.refused(0x83 if behaviour is Behaviour.REFUSE else 0x9C))
            return
        if command.password is not None and self.password is not None \
                and command.password != self.password:
            self._send(m.refused(0x83))
            return
        self._send(m.ACK_APDU)
        try:
            self._run(txn)
        except _Closed:
            self._drop_line()
            if txn.booked is None and txn.committed and behaviour not in (
                    Behaviour.DROP_UNBOOKED, Behaviour.SILENT):
                self._book(txn)  # the customer paid: the PT books whatever the line does
            raise

    def _run(self, txn: _Txn) -> None:
        behaviour = txn.behaviour
        command = txn.command
        if behaviour is Behaviour.SILENT:
            return
        if behaviour is Behaviour.DROP_UNBOOKED:
            raise _Closed("dropped (simulated)")
        if behaviour is Behaviour.DROP:
            txn.committed = True
            self._book(txn)
            raise _Closed("dropped after accepting (simulated)")
        if behaviour is Behaviour.ABORT:
            self._tell(m.abort(0x6C), txn=txn)
            return
        self._intermediate(0x0A, txn)  # insert card
        self._wait_customer(self.slow_delay if behaviour is Behaviour.SLOW else
                            self.step_delay, txn)
        if txn.abort_requested:
            self._tell(m.abort(0x6C), txn=txn)
            return
        if behaviour is Behaviour.ABORT_CARD:
            self._tell(m.abort(0x64), txn=txn)
            return
        self._intermediate(0x01, txn)  # PIN pad
        txn.committed = True
        self._intermediate(0x04, txn)  # waiting for the host
        if behaviour is Behaviour.ABORT_HOST:
            self._tell(m.abort(0x9B), txn=txn)
            return
        if command.cmd is m.Cmd.REVERSAL and self._original(command) is None:
            self._tell(m.abort(0x83), txn=txn)
            return
        if behaviour is Behaviour.DECLINE:
            self._tell(m.status_information(self._result_bmps(txn, 0x05)), txn=txn)
            self._tell(m.abort(0x05), txn=txn)
            return
        booked = self._book(txn)
        twice = behaviour is Behaviour.REPEAT
        if not self._tell(m.status_information(booked.bmps), twice=twice, txn=txn,
                          corrupt=behaviour is Behaviour.CORRUPT_CRC):
            return
        self._print(booked.lines, txn, twice)
        if behaviour is Behaviour.NO_COMPLETION:
            return
        if self._tell(m.completion(), twice=twice, txn=txn):
            self.completions_sent += 1

    def _original(self, command: m.EcrCommand) -> Booked | None:
        for entry in self.journal:
            if entry.kind == "sale" and entry.receipt == command.receipt \
                    and not entry.reversed and not entry.settled:
                return entry
        return None

    def _result_bmps(self, txn: _Txn, result: int, receipt: int | None = None,
                     amount: int | None = None) -> list[tuple[int, bytes]]:
        now = datetime.now()
        amount = amount if amount is not None else (txn.command.amount or 0)
        bmps = [(0x27, bytes((result,))), (0x04, m.bcd(amount, 6)),
                (0x49, m.currency_code(txn.command.currency or "EUR")),
                (0x0B, m.bcd(self._trace, 3)), (0x0C, bytes.fromhex(now.strftime("%H%M%S"))),
                (0x0D, bytes.fromhex(now.strftime("%m%d"))),
                (0x22, m.masked_pan(self.card_number))]
        if receipt is not None:
            bmps += [(0x87, m.bcd(receipt, 2)), (0x88, m.bcd(self._trace, 3))]
        bmps += [(0x29, bytes.fromhex(TERMINAL_ID)),
                 (0x3B, f"{self._trace:06d}".encode().ljust(8, b"\x00")),
                 (0x8A, bytes((0x0A,))), (0x8B, b"VISA")]
        return bmps

    def _book(self, txn: _Txn) -> Booked:
        command = txn.command
        kind = {m.Cmd.AUTHORISATION: "sale", m.Cmd.REFUND: "refund",
                m.Cmd.REVERSAL: "reversal"}[command.cmd or m.Cmd.AUTHORISATION]
        amount = command.amount or 0
        original = self._original(command) if kind == "reversal" else None
        if original is not None:
            original.reversed = True
            amount = original.amount
        if txn.behaviour is Behaviour.OTHER_AMOUNT:
            amount -= 1
        self._receipt = self._receipt % 9999 + 1
        self._trace = self._trace % 999999 + 1
        bmps = self._result_bmps(txn, 0x00, self._receipt, amount)
        pan = self.card_number if txn.behaviour is Behaviour.LEAKY_RECEIPT else \
            "*" * (len(self.card_number) - 4) + self.card_number[-4:]
        title = {"sale": "Kartenzahlung", "refund": "Gutschrift", "reversal": "Storno"}[kind]
        lines = ["      edged ZVT simulator", f"        {title}", f"Terminal-ID: {TERMINAL_ID}",
                 f"Beleg-Nr. {self._receipt:04d}   Trace {self._trace:06d}",
                 f"Karte: VISA {pan}", f"Betrag: EUR {amount // 100},{amount % 100:02d}",
                 "      Zahlung erfolgt"]
        booked = Booked(kind, self._receipt, self._trace, amount, 0, bmps, lines)
        with self._lock:
            self.journal.append(booked)
        txn.booked = booked
        return booked

    def _repeat_receipt(self) -> None:
        last = self.journal[-1] if self.journal else None
        if last is None:
            self._tell(m.abort(0x83))
            return
        if self._tell(m.status_information(last.bmps)) \
                and self._print(["*** Duplikat ***", *last.lines]):
            self._tell(m.completion())

    def _end_of_day(self) -> None:
        open_entries = [e for e in self.journal if not e.settled]
        total = 0
        count = 0
        for e in open_entries:
            if e.kind == "sale" and not e.reversed:
                total += e.amount
                count += 1
            elif e.kind == "refund":
                total -= e.amount
                count += 1
        receipts = [e.receipt for e in open_entries] or [self._receipt]
        self._trace = self._trace % 999999 + 1
        now = datetime.now()
        totals = m.encode_totals(min(receipts), max(receipts), {"visa": (count, max(total, 0))})
        bmps = [(0x27, b"\x00"), (0x04, m.bcd(max(total, 0), 6)), (0x49, m.bcd(978, 2)),
                (0x0B, m.bcd(self._trace, 3)), (0x0C, bytes.fromhex(now.strftime("%H%M%S"))),
                (0x0D, bytes.fromhex(now.strftime("%m%d"))), (0x60, totals)]
        for e in open_entries:
            e.settled = True
        self._intermediate_plain(0x0E)
        if self._tell(m.status_information(bmps)) and self._print([
                "      Kassenschnitt", f"Terminal-ID: {TERMINAL_ID}",
                f"Belege {min(receipts):04d}-{max(receipts):04d}",
                f"VISA {count:3d}  EUR {total // 100},{total % 100:02d}"],
                administration=True):
            self._tell(m.completion())

    def _intermediate_plain(self, code: int) -> None:
        if self._config & m.CONFIG_INTERMEDIATE_STATUS:
            self._tell(m.intermediate_status(code))


@dataclass(slots=True)
class _Txn:
    command: m.EcrCommand
    behaviour: Behaviour
    timing: Timing
    committed: bool = False
    abort_requested: bool = False
    booked: Booked | None = None


def run_cli(tcp_port: int | None, pty: bool, link: str | None, behaviour: str,
            password: str | None = None, slow_delay: float = 10.0,
            host: str = "127.0.0.1") -> int:
    """Serve until SIGINT/SIGTERM; prints the lane's address. Returns an exit code."""
    try:
        default = Behaviour(behaviour.lower())
    except ValueError:
        print(f"unknown behaviour {behaviour!r}; one of: "
              f"{', '.join(b.value for b in Behaviour)}", file=sys.stderr)
        return 2
    if (tcp_port is None) == (not pty):
        print("give --tcp PORT or --pty", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sim = ZvtSimulator(tcp_port=tcp_port, pty=pty, link=link, default=default,
                       password=password, slow_delay=slow_delay, host=host)
    try:
        print(sim.start(), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edged simulate zvt",
                                     description="A ZVT payment terminal on TCP or a pty.")
    parser.add_argument("--tcp", type=int, metavar="PORT")
    parser.add_argument("--pty", action="store_true")
    parser.add_argument("--link", metavar="PATH")
    parser.add_argument("--behaviour", default="auto", choices=[b.value for b in Behaviour])
    parser.add_argument("--password", metavar="DIGITS")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    return run_cli(args.tcp, args.pty, args.link, args.behaviour, args.password,
                   host=args.host)


if __name__ == "__main__":
    raise SystemExit(main())
