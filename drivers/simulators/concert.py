"""A Concert E+ terminal on a pty: the terminal side of :mod:`drivers.concert`.

It speaks the real bytes (see ``docs/facts/concert.md``) on the master side of a
pseudo-terminal; the daemon opens the slave device like any serial port. It runs on its
own thread, so a test or a benchmark drives it from anywhere.

From code::

    sim = ConcertSimulator(link="/tmp/concert0")   # link optional
    path = sim.start()          # the device to configure (the link if given)
    sim.push(Behaviour.NAK_FIRST, Behaviour.DECLINE)   # the next two transactions
    ...
    sim.requests                # every request received, decoded, with arrival times
    sim.unplug(); sim.plug()    # the device disappears, then comes back (same link)
    sim.stop()

or as a context manager (``with ConcertSimulator() as sim: ...``). From a shell:
``python -m drivers.simulators.concert --pty --link /tmp/concert0`` (:func:`run_cli` is what
``edged simulate concert`` calls).

Behaviours (:class:`Behaviour`) are queued per transaction with :meth:`push`; when the
queue is empty :attr:`ConcertSimulator.default` applies (``AUTO``: approve, except amounts
whose minor units end in 13, which are declined; a type-2 request is always declined).
``NO_ACK`` is consumed by the next ENQ (a status probe included); the others by the next
request frame.
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
import sys
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import FrameType, TracebackType

from drivers.base import DriverError
from drivers.concert.framing import (
    ACK,
    ENQ,
    EOT,
    NAK,
    Control,
    Frame,
    FrameError,
    FrameParser,
    encode_frame,
)
from drivers.concert.messages import (
    AnswerStatus,
    ConcertAnswer,
    ConcertRequest,
    MessageError,
    TransactionType,
)

logger = logging.getLogger(__name__)

TEST_CARD = "4711690463168807"
"""The card number the simulated terminal reads (a test PAN; only its last4 may survive)."""

NOISE = b"\x00\xff\x7f#garbage!\x80\x13\x11\x02half a fr"
"""Junk sent before the answer by ``NOISE``: stray bytes and a frame cut short."""


class Behaviour(enum.StrEnum):
    AUTO = "auto"
    """Approve, except amounts ending in 13 (minor units) which are declined."""
    APPROVE = "approve"
    DECLINE = "decline"
    NOT_VERIFIED = "not_verified"
    """Answer with status 9."""
    NAK_FIRST = "nak_first"
    """NAK the first copy of the request, accept the retransmission, then AUTO."""
    CORRUPT_LRC = "corrupt_lrc"
    """Send the answer once with a bad LRC, then correctly after the host's NAK (AUTO)."""
    LATE = "late"
    """Answer (AUTO) after ``late_delay`` seconds."""
    SILENT = "silent"
    """ACK the request, then never answer."""
    DROP = "drop"
    """ACK the request, then unplug (the pty closes mid-transaction)."""
    NO_ACK = "no_ack"
    """Do not ACK the next ENQ (terminal busy or absent)."""
    NOISE = "noise"
    """Send junk bytes before the answer (AUTO)."""
    OTHER_AMOUNT = "other_amount"
    """Approve one minor unit less than asked (a terminal keyed by hand)."""
    OTHER_POS = "other_pos"
    """Approve, the answer naming another POS number."""
    OTHER_CURRENCY = "other_currency"
    """Approve, the answer naming a currency the driver does not know (numeric 999)."""
    ENQ_LOOP = "enq_loop"
    """ACK the request, then send ENQ every ``loop_interval`` seconds and never an answer (a
    looping terminal, or noise that reads as ENQ), until :meth:`ConcertSimulator.release`,
    an unplug or stop."""
    ENQ_EOT_LOOP = "enq_eot_loop"
    """Like ``ENQ_LOOP``, but each ENQ is followed by EOT: sessions opened and given up."""
    NO_EOT = "no_eot"
    """Answer (AUTO), then never close the session: no EOT after the host's ACK."""
    DROP_AFTER_ANSWER = "drop_after_answer"
    """Answer (AUTO), then unplug once the host has ACKed it, before the EOT."""


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the terminal received it. Times are ``time.monotonic()``."""

    request: ConcertRequest
    behaviour: Behaviour
    first_byte_at: float
    """When the ENQ opening this exchange arrived (the first byte of the transaction)."""
    received_at: float
    """When the accepted copy of the request frame was complete."""
    copies: int
    """Request frames received, retransmissions included."""


class _Unplugged(DriverError):
    """Control flow inside the simulator thread: the pty went away."""


class _Stopped(DriverError):
    """Control flow inside the simulator thread: stop() was called."""


class ConcertSimulator:
    """A scriptable Concert E+ terminal on a pty, served by its own thread."""

    def __init__(
        self,
        *,
        link: str | None = None,
        default: Behaviour = Behaviour.AUTO,
        card_number: str = TEST_CARD,
        late_delay: float = 0.5,
        ack_timeout: float = 1.0,
        frame_timeout: float = 3.0,
        max_retransmissions: int = 3,
        poll_interval: float = 0.02,
        loop_interval: float = 0.05,
    ) -> None:
        self.link = link
        self.default = default
        self.card_number = card_number
        self.late_delay = late_delay
        self.ack_timeout = ack_timeout
        self.frame_timeout = frame_timeout
        self.max_retransmissions = max_retransmissions
        self.poll_interval = poll_interval
        self.loop_interval = loop_interval

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._requests: list[ReceivedRequest] = []
        self._fds: tuple[int, int] | None = None
        self._device: str | None = None
        self._parser = FrameParser()
        self._last_read_at = 0.0
        self._sequence = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._plugged = threading.Event()
        self._unplug_requested = threading.Event()
        self._unplug_done = threading.Event()
        self._release = threading.Event()
        self._loop_ended = threading.Event()
        self._loop_ended.set()
        self.naks_received = 0
        """NAKs the host sent for an answer frame."""
        self.naks_sent = 0
        """NAKs this terminal sent (NAK_FIRST, broken request frames)."""
        self.enqs_refused = 0
        """ENQs left unanswered (NO_ACK)."""
        self.answers_sent = 0
        """Answers the host acknowledged."""
        self.enqs_sent = 0
        """ENQs this terminal sent (one per answer, many in ``ENQ_LOOP``)."""
        self.sessions_opened = 0
        """ENQs from the host that this terminal ACKed (a transaction or a status probe)."""
        self.sessions_closed_empty = 0
        """Sessions the host closed (EOT) without sending a request: status probes, and a
        held request that was let go (its payment not recorded, or its commit slow)."""

    # -- control API ---------------------------------------------------------------------

    def start(self) -> str:
        """Create the pty, start the thread; returns the device path to configure."""
        if self._thread is not None:
            return self.path
        self._stop.clear()
        self.plug()
        self._thread = threading.Thread(target=self._main, name="concert-sim", daemon=True)
        self._thread.start()
        logger.info("concert simulator on %s", self.path)
        return self.path

    def stop(self) -> None:
        """Stop the thread, close the pty, remove the link."""
        self._stop.set()
        self._plugged.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
        with self._lock:
            self._close_pty()

    def __enter__(self) -> ConcertSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """What the daemon should open: the link if one was given, else the pty slave."""
        if self.link is not None:
            return self.link
        if self._device is None:
            raise RuntimeError("the simulator is unplugged")
        return self._device

    @property
    def device(self) -> str | None:
        """The current pty slave (``/dev/pts/N``), ``None`` while unplugged."""
        return self._device

    @property
    def plugged(self) -> bool:
        return self._fds is not None

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next transactions, in order."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def queued(self) -> tuple[Behaviour, ...]:
        with self._lock:
            return tuple(self._queue)

    @property
    def requests(self) -> tuple[ReceivedRequest, ...]:
        with self._lock:
            return tuple(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` requests were received (``False`` after ``timeout``)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._requests) >= count, timeout)

    def unplug(self, timeout: float = 5.0) -> None:
        """Close the pty (the device and the link disappear) as if the cable were pulled."""
        with self._lock:
            if self._fds is None:
                return
            if self._thread is None or not self._thread.is_alive():
                self._close_pty()
                return
            self._unplug_done.clear()
            self._unplug_requested.set()
        if not self._unplug_done.wait(timeout):
            raise RuntimeError("the simulator thread did not unplug")

    def release(self, timeout: float = 5.0) -> None:
        """End a running ``ENQ_LOOP``/``ENQ_EOT_LOOP``; returns once it has ended, so the
        terminal serves the next request."""
        self._release.set()
        self._loop_ended.wait(timeout)

    def plug(self) -> str:
        """A new pty; the link (if any) is re-pointed to it. Returns :attr:`path`."""
        with self._lock:
            if self._fds is None:
                self._open_pty()
        self._plugged.set()
        return self.path

    # -- pty -----------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline (ETX is not ^C here)
        device = os.ttyname(slave)
        if self.link is not None:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(device, tmp)
            os.replace(tmp, self.link)
        self._parser = FrameParser()
        self._device = device
        self._fds = (master, slave)  # the slave stays open: no EIO while the host is away
        logger.info("concert simulator plugged: %s", device)

    def _close_pty(self) -> None:
        fds, self._fds = self._fds, None
        self._device = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        if fds is not None:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            logger.info("concert simulator unplugged")

    # -- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stop.is_set():
            if self._unplug_requested.is_set():
                self._do_unplug()
            if self._fds is None:
                self._plugged.wait(self.poll_interval)
                self._plugged.clear()
                continue
            try:
                event = self._next(time.monotonic() + self.poll_interval)
                if event is Control.ENQ:
                    self._session(self._last_read_at)
            except _Unplugged:
                continue
            except _Stopped:
                break
            except Exception:
                logger.exception("concert simulator: unexpected error")

    def _do_unplug(self) -> None:
        with self._lock:
            self._close_pty()
            self._unplug_requested.clear()
            self._unplug_done.set()

    def _write(self, data: bytes) -> None:
        fds = self._fds
        if fds is None:
            raise _Unplugged
        try:
            os.write(fds[0], data)
        except OSError:
            logger.debug("concert simulator: write failed")

    def _control(self, byte: int) -> None:
        self._write(bytes((byte,)))

    def _next(self, deadline: float) -> Frame | Control | FrameError | None:
        """Next event from the host before ``deadline``; handles stop and unplug requests."""
        while True:
            try:
                event = self._parser.next_event()
            except FrameError as exc:
                return exc
            if event is not None:
                return event
            if self._stop.is_set():
                raise _Stopped
            if self._unplug_requested.is_set():
                self._do_unplug()
                raise _Unplugged
            fds = self._fds
            if fds is None:
                raise _Unplugged
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fds[0]], [], [], min(remaining, self.poll_interval))
            if ready:
                try:
                    chunk = os.read(fds[0], 4096)
                except OSError:
                    chunk = b""
                if chunk:
                    self._last_read_at = time.monotonic()
                    self._parser.feed(chunk)

    def _await_control(self, wanted: frozenset[Control], timeout: float) -> Control | None:
        deadline = time.monotonic() + timeout
        while True:
            event = self._next(deadline)
            if event is None:
                return None
            if isinstance(event, Control) and event in wanted:
                return event

    def _idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._next(deadline) is not None:
            pass

    def _take_no_ack(self) -> bool:
        with self._lock:
            if self._queue and self._queue[0] is Behaviour.NO_ACK:
                self._queue.popleft()
                return True
            return not self._queue and self.default is Behaviour.NO_ACK

    def _take_behaviour(self) -> Behaviour:
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self.default
        return Behaviour.AUTO if behaviour is Behaviour.NO_ACK else behaviour

    def _session(self, first_byte_at: float) -> None:
        """The host sent ENQ: a request (or just a status probe) follows."""
        if self._take_no_ack():
            self.enqs_refused += 1
            logger.info("concert simulator: ENQ left unanswered (NO_ACK)")
            return
        self.sessions_opened += 1
        self._control(ACK)
        behaviour: Behaviour | None = None
        copies = 0
        deadline = time.monotonic() + self.frame_timeout
        request: ConcertRequest | None = None
        while request is None:
            event = self._next(deadline)
            if event is None or event is Control.EOT:
                if event is Control.EOT and copies == 0:
                    self.sessions_closed_empty += 1
                return  # a status probe, or the host gave up
            if event is Control.ENQ:
                self._control(ACK)
                continue
            if isinstance(event, FrameError):
                self.naks_sent += 1
                self._control(NAK)
                continue
            if not isinstance(event, Frame):
                continue
            copies += 1
            try:
                decoded = ConcertRequest.decode(event.data)
            except MessageError as exc:
                logger.info("concert simulator: bad request (%s), NAK", exc)
                self.naks_sent += 1
                self._control(NAK)
                continue
            if behaviour is None:
                behaviour = self._take_behaviour()
            if behaviour is Behaviour.NAK_FIRST and copies == 1:
                self.naks_sent += 1
                self._control(NAK)
                deadline = time.monotonic() + self.frame_timeout
                continue
            self._control(ACK)
            request = decoded
        assert behaviour is not None
        received_at = self._last_read_at
        self._await_control(frozenset({Control.EOT}), self.ack_timeout)
        with self._changed:
            self._requests.append(
                ReceivedRequest(request, behaviour, first_byte_at, received_at, copies)
            )
            self._changed.notify_all()
        logger.info(
            "concert simulator: request type %s of %d (%s) -> %s",
            request.transaction_type.value,
            request.amount,
            request.currency,
            behaviour.value,
        )
        self._act(request, behaviour)

    def _act(self, request: ConcertRequest, behaviour: Behaviour) -> None:
        if behaviour is Behaviour.SILENT:
            return
        if behaviour is Behaviour.DROP:
            self._do_unplug()
            raise _Unplugged
        if behaviour is Behaviour.LATE:
            self._idle(self.late_delay)
        if behaviour is Behaviour.NOISE:
            self._write(NOISE)
        if behaviour in (Behaviour.ENQ_LOOP, Behaviour.ENQ_EOT_LOOP):
            self._loop_enq(with_eot=behaviour is Behaviour.ENQ_EOT_LOOP)
            return
        status = self._status(request, behaviour)
        if behaviour is Behaviour.OTHER_AMOUNT:
            request = replace(request, amount=request.amount - 1)
        elif behaviour is Behaviour.OTHER_POS:
            request = replace(request, pos_number=request.pos_number % 99 + 1)
        taken = self._answer(request, status, corrupt_first=behaviour is Behaviour.CORRUPT_LRC,
                             currency="999" if behaviour is Behaviour.OTHER_CURRENCY else None)
        if taken and behaviour is Behaviour.DROP_AFTER_ANSWER:
            self._do_unplug()
            raise _Unplugged
        if not (taken and behaviour is Behaviour.NO_EOT):
            self._control(EOT)

    def _loop_enq(self, *, with_eot: bool) -> None:
        """ENQ (and EOT) again and again, whatever the host answers, until released."""
        self._release.clear()
        self._loop_ended.clear()
        try:
            while not self._release.is_set():
                self._control(ENQ)
                self.enqs_sent += 1
                if with_eot:
                    self._control(EOT)
                self._idle(self.loop_interval)
        finally:
            self._loop_ended.set()
        logger.info("concert simulator: ENQ loop released after %d ENQ", self.enqs_sent)

    @staticmethod
    def _status(request: ConcertRequest, behaviour: Behaviour) -> AnswerStatus:
        if behaviour in (Behaviour.APPROVE, Behaviour.OTHER_AMOUNT, Behaviour.OTHER_POS,
                         Behaviour.OTHER_CURRENCY):
            return AnswerStatus.APPROVED
        if behaviour is Behaviour.DECLINE:
            return AnswerStatus.DECLINED
        if behaviour is Behaviour.NOT_VERIFIED:
            return AnswerStatus.NOT_VERIFIED
        if request.transaction_type is TransactionType.TYPE_2 or request.amount % 100 == 13:
            return AnswerStatus.DECLINED
        return AnswerStatus.APPROVED

    def _answer(self, request: ConcertRequest, status: AnswerStatus, corrupt_first: bool,
                currency: str | None = None) -> bool:
        """Send the answer; True once the host ACKed it. The closing EOT is the caller's.
        ``currency``: another numeric currency code than the request's."""
        self._sequence += 1
        answer = ConcertAnswer(
            pos_number=request.pos_number,
            status=status,
            amount=request.amount,
            mode=request.mode,
            currency_numeric=currency or request.currency_numeric,
            private=f"{self._sequence:010d}",
            full=request.full_answer,
        )
        frame = encode_frame(answer.encode(self.card_number if request.full_answer else None))
        for _ in range(1 + self.max_retransmissions):
            self._control(ENQ)
            self.enqs_sent += 1
            if self._await_control(frozenset({Control.ACK}), self.ack_timeout):
                break
        else:
            logger.info("concert simulator: the host never ACKed the answer's ENQ")
            return False
        corrupt = corrupt_first
        for _ in range(1 + self.max_retransmissions):
            self._write(frame[:-1] + bytes((frame[-1] ^ 0x55,)) if corrupt else frame)
            corrupt = False
            reply = self._await_control(frozenset({Control.ACK, Control.NAK}), self.ack_timeout)
            if reply is Control.ACK:
                self.answers_sent += 1  # before the EOT: the host may look as soon as it reads it
                return True
            if reply is Control.NAK:
                self.naks_received += 1
        logger.info("concert simulator: the host did not take the answer")
        return False


def run_cli(pty_link: str | None, behaviour: str) -> int:
    """Run a simulator until SIGINT/SIGTERM; prints the device path. Returns an exit code."""
    try:
        default = Behaviour(behaviour.lower())
    except ValueError:
        choices = ", ".join(b.value for b in Behaviour)
        print(f"unknown behaviour {behaviour!r}; one of: {choices}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    simulator = ConcertSimulator(link=pty_link, default=default)
    try:
        print(simulator.start(), flush=True)
        while not done.wait(0.5):
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edged simulate concert", description="A Concert E+ terminal on a pty."
    )
    parser.add_argument("--pty", action="store_true", help="serve on a pty (the only transport)")
    parser.add_argument("--link", metavar="PATH", help="a stable symlink to the pty device")
    parser.add_argument(
        "--behaviour",
        default=Behaviour.AUTO.value,
        choices=[b.value for b in Behaviour],
        help="default behaviour (auto: approve, amounts ending in 13 decline)",
    )
    args = parser.parse_args(argv)
    return run_cli(args.link, args.behaviour)


if __name__ == "__main__":
    raise SystemExit(main())
