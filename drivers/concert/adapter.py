"""The Concert lane: :class:`ConcertTerminal`, one E+ transaction at a time on a session.

The protocol and the money rule are described in :mod:`drivers.concert`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

import serial

from drivers.base import (
    CancelNotSupported,
    Capabilities,
    InterruptedTransaction,
    NothingSent,
    Outcome,
    Terminal,
    TerminalBusy,
    TerminalState,
    TerminalStatus,
    TerminalUnavailable,
    TransactionKind,
    TransactionRequest,
    TransactionResult,
)
from drivers.concert.framing import (
    ACK,
    ENQ,
    EOT,
    NAK,
    Control,
    Frame,
    FrameError,
    encode_frame,
)
from drivers.concert.messages import (
    AnswerStatus,
    ConcertAnswer,
    ConcertRequest,
    MessageError,
    RequestError,
    TransactionType,
)
from drivers.concert.session import (
    ACK_ONLY,
    ACK_OR_NAK,
    EOT_ONLY,
    OPEN_ERRORS,
    PORT_ERRORS,
    Aborted,
    ConcertSettings,
    Line,
    LineLost,
    Phase,
    SerialPort,
    describe,
)
from drivers.hold import HANDOFF_SECONDS, Hold
from sync.core.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_OUTCOMES = {
    AnswerStatus.APPROVED: Outcome.APPROVED,
    AnswerStatus.DECLINED: Outcome.DECLINED,
    AnswerStatus.NOT_VERIFIED: Outcome.UNKNOWN,
}


class _Abandoned(NothingSent):
    """The payment was not written: the held request was never sent."""


@dataclass(slots=True)
class _Opened:
    """A sale whose exchange (ENQ) began while its payment was being committed."""

    payment_id: str
    hold: Hold
    abort: threading.Event
    future: asyncio.Future[TransactionResult]


class ConcertTerminal(Terminal):
    """A Concert E+ terminal on one line. Refund (credit) yes; cancel and recover no."""

    kind = "concert"

    def __init__(
        self, terminal_id: str, settings: ConcertSettings, *, clock: Clock | None = None
    ) -> None:
        super().__init__(terminal_id)
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self._executor: ThreadPoolExecutor | None = None
        self._line: Line | None = None  # owned by the worker thread
        self._phase = Phase.IDLE  # written by the worker thread
        self._busy = False  # event-loop side: a transaction is running
        self._closed = False
        self._abort = threading.Event()  # the running operation's stop flag
        self._opened: _Opened | None = None  # a sale begun by prepare(), not yet collected

    # -- the interface -------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(refund=True, cancel=False, recover=False)

    @property
    def phase(self) -> Phase:
        """The worker's current step (``awaiting_answer`` while the customer pays)."""
        return self._phase

    async def open(self) -> None:
        self._closed = False
        await self._run(self._open_blocking)

    async def status(self) -> TerminalStatus:
        if self._busy:
            return TerminalStatus(TerminalState.BUSY, "transaction in progress")
        if self._closed:
            return TerminalStatus(TerminalState.OFFLINE, "closed")
        try:
            return await self._run(self._probe_blocking)
        except Exception as exc:  # status never raises for an absent terminal
            logger.warning("concert %s: status probe failed: %s", self.terminal_id, exc)
            return TerminalStatus(TerminalState.OFFLINE, f"probe failed: {exc}")

    async def prepare(self, request: TransactionRequest) -> str | None:
        """Open the sale's exchange now, while its payment is being committed.

        The ENQ commits the terminal to nothing; the worker sends it and waits for the ACK,
        then holds the request frame until :meth:`start` (the payment is durable) or
        :meth:`abandon` (it is not: EOT, nothing sent). A request that cannot be encoded,
        a closed or busy terminal: nothing begins here, :meth:`collect` refuses it as before.
        """
        if request.kind is not TransactionKind.SALE or self._closed or self._busy \
                or request.amount <= 0:
            return None
        try:
            concert_request = self._concert_request(request, TransactionType.DEBIT)
        except RequestError:
            return None
        hold = Hold()
        abort = threading.Event()
        self._abort = abort
        self._busy = True
        future = self._submit_transaction(request, concert_request, abort, hold)
        self._opened = _Opened(request.payment_id, hold, abort, future)
        return None

    async def start(self, request: TransactionRequest) -> None:
        """The payment is committed: the held request frame may go out."""
        opened = self._opened
        if opened is None or opened.payment_id != request.payment_id:
            return
        opened.hold.release()
        if self._phase is Phase.HELD:
            # The worker is parked and the terminal waits for the frame. Waiting here (the
            # interpreter lock released) lets the worker send it now; otherwise it would
            # wait for the lock until the loop has answered the register and run whatever
            # else is ready, a few tenths of a millisecond more on the sale's path.
            opened.hold.gone.wait(HANDOFF_SECONDS)

    def abandon(self, request: TransactionRequest) -> None:
        """The payment was not written: the worker closes the exchange (EOT), sends nothing."""
        opened = self._opened
        if opened is None or opened.payment_id != request.payment_id:
            return
        self._opened = None
        opened.hold.drop()
        opened.future.add_done_callback(_consume)
        # the single worker thread finishes the EOT before it takes the next job
        self._busy = False
        logger.info("concert %s: payment %s not recorded; its request was never sent",
                    self.terminal_id, request.payment_id)

    async def collect(self, request: TransactionRequest) -> TransactionResult:
        """A sale (Concert type ``0``, debit). The method decides the type, not ``kind``."""
        opened, self._opened = self._opened, None
        if opened is not None:
            if opened.payment_id == request.payment_id:
                opened.hold.release()
                return await self._finish(request, opened.future, opened.abort)
            opened.hold.drop()  # not expected: a prepared sale was never started
            opened.future.add_done_callback(_consume)
            self._busy = False
        return await self._transact(request, TransactionType.DEBIT)

    async def refund(self, request: TransactionRequest) -> TransactionResult:
        """A refund (Concert type ``1``, credit) of ``request.amount``."""
        return await self._transact(request, TransactionType.CREDIT)

    async def cancel(self) -> None:
        """E+ has no abort from the register: the cashier cancels on the terminal."""
        raise CancelNotSupported(
            f"concert terminal {self.terminal_id}: the register cannot abort a Concert E+"
            " transaction; press the red (cancel) key on the terminal"
        )

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        """E+ cannot be asked how a past transaction ended: the payment stays unknown."""
        logger.info(
            "concert %s: payment %s cannot be reconciled over Concert E+",
            self.terminal_id,
            interrupted.payment_id,
        )
        return None

    async def close(self) -> None:
        self._closed = True
        self._abort.set()
        if self._opened is not None:
            self._opened.hold.drop()
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_blocking)
        finally:
            executor.shutdown(wait=False)
            self._executor = None

    # -- event-loop side -----------------------------------------------------------------

    def _submit(self, func: Callable[[], _T]) -> asyncio.Future[_T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"concert-{self.terminal_id}"
            )
        return asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await self._submit(func)

    def _submit_transaction(
        self,
        request: TransactionRequest,
        concert_request: ConcertRequest,
        abort: threading.Event,
        hold: Hold | None = None,
    ) -> asyncio.Future[TransactionResult]:
        """Run a transaction on the worker; the future ends as soon as its result is known.

        That is when the answer frame is ACKed, before the terminal's closing EOT: the
        payment's outcome is committed while the worker waits for it. The worker takes no
        other job until the session has ended.
        """
        loop = asyncio.get_running_loop()
        ending: asyncio.Future[TransactionResult] = loop.create_future()

        def answered(result: TransactionResult) -> None:  # on the worker thread
            with contextlib.suppress(RuntimeError):  # a closed loop has nobody to tell
                loop.call_soon_threadsafe(_settle, ending, result)

        worker = self._submit(
            lambda: self._transact_blocking(request, concert_request, abort, hold, answered)
        )
        worker.add_done_callback(functools.partial(_follow, ending))
        return ending

    def _concert_request(
        self, request: TransactionRequest, transaction_type: TransactionType
    ) -> ConcertRequest:
        if request.amount <= 0:
            raise RequestError(f"amount {request.amount} must be positive")
        return ConcertRequest(
            pos_number=self.settings.pos_number,
            amount=request.amount,
            currency=request.currency,
            transaction_type=transaction_type,
            full_answer=self.settings.answer_full,
        )  # RequestError (bad amount/currency) before anything is sent

    async def _transact(
        self, request: TransactionRequest, transaction_type: TransactionType
    ) -> TransactionResult:
        if self._closed:
            raise TerminalUnavailable(f"concert terminal {self.terminal_id} is closed")
        if self._busy:
            raise TerminalBusy(f"concert terminal {self.terminal_id} is running a transaction")
        concert_request = self._concert_request(request, transaction_type)
        abort = threading.Event()
        self._abort = abort
        self._busy = True
        logger.debug(
            "concert %s: %s %s of %d %s started",
            self.terminal_id,
            "sale" if transaction_type is TransactionType.DEBIT else "refund",
            request.payment_id,
            request.amount,
            request.currency,
        )
        future = self._submit_transaction(request, concert_request, abort)
        return await self._finish(request, future, abort)

    async def _finish(
        self,
        request: TransactionRequest,
        future: asyncio.Future[TransactionResult],
        abort: threading.Event,
    ) -> TransactionResult:
        try:
            result = await future
        except asyncio.CancelledError:
            abort.set()  # the worker stops at its next read; the outcome is unknown
            raise
        finally:
            self._busy = False
        log = logger.info if result.outcome is not Outcome.APPROVED or result.detail \
            else logger.debug  # an ordinary approval: the daemon logs the payment's end
        log(
            "concert %s: payment %s %s (status %s, reference %s)%s",
            self.terminal_id,
            request.payment_id,
            result.outcome.value,
            result.raw_status,
            result.reference,
            f": {result.detail}" if result.detail else "",
        )
        return result

    # -- worker thread -------------------------------------------------------------------

    def _open_blocking(self) -> Line:
        if self._line is not None:
            return self._line
        settings = self.settings
        extra: dict[str, object] = {}
        if "://" not in settings.port:
            extra["exclusive"] = True  # two processes on one terminal would be a disaster
        try:
            port = cast(
                SerialPort,
                serial.serial_for_url(
                    settings.port,
                    baudrate=settings.baudrate,
                    bytesize=settings.bytesize,
                    parity=settings.parity,
                    stopbits=settings.stopbits,
                    timeout=settings.poll_interval,
                    write_timeout=max(settings.ack_timeout, 1.0),
                    **extra,
                ),
            )
        except OPEN_ERRORS as exc:
            raise TerminalUnavailable(
                f"concert terminal {self.terminal_id}: cannot open {settings.port}: {exc}"
            ) from exc
        logger.info("concert %s: line %s open", self.terminal_id, settings.port)
        self._line = Line(port, self._clock, self._abort, self.terminal_id,
                          poll_interval=settings.poll_interval,
                          write_timeout=max(settings.ack_timeout, 1.0))
        return self._line

    def _drop_line(self, reason: str) -> None:
        line, self._line = self._line, None
        if line is None:
            return
        logger.warning("concert %s: line lost: %s", self.terminal_id, reason)
        try:
            line.port.close()
        except PORT_ERRORS:
            logger.debug("concert %s: closing a lost line failed", self.terminal_id)

    def _close_blocking(self) -> None:
        line, self._line = self._line, None
        self._phase = Phase.IDLE
        if line is not None:
            try:
                line.port.close()
            except PORT_ERRORS as exc:
                logger.debug("concert %s: close failed: %s", self.terminal_id, exc)

    def _use_line(self, abort: threading.Event) -> Line:
        line = self._open_blocking()
        line.abort = abort
        return line

    def _probe_blocking(self) -> TerminalStatus:
        abort = threading.Event()
        self._phase = Phase.PROBING
        try:
            try:
                line = self._use_line(abort)
            except TerminalUnavailable as exc:
                return TerminalStatus(TerminalState.OFFLINE, str(exc))
            try:
                line.discard_input()
                line.send_control(ENQ)
                reply = line.await_control(ACK_ONLY, self.settings.ack_timeout)
                line.send_control(EOT)
            except LineLost as exc:
                self._drop_line(str(exc))
                return TerminalStatus(TerminalState.OFFLINE, f"line lost: {exc}")
            if reply is None:
                return TerminalStatus(
                    TerminalState.OFFLINE, "no ACK to ENQ: terminal absent or busy"
                )
            return TerminalStatus(TerminalState.ONLINE)
        finally:
            self._phase = Phase.IDLE

    def _transact_blocking(
        self,
        request: TransactionRequest,
        concert_request: ConcertRequest,
        abort: threading.Event,
        hold: Hold | None = None,
        answered: Callable[[TransactionResult], None] | None = None,
    ) -> TransactionResult:
        try:
            return self._exchange(request, concert_request, abort, hold, answered)
        finally:
            self._phase = Phase.IDLE
            if hold is not None:
                hold.gone.set()

    def _unknown(self, request: TransactionRequest, detail: str) -> TransactionResult:
        return TransactionResult(
            outcome=Outcome.UNKNOWN,
            amount=request.amount,
            currency=request.currency,
            detail=detail,
        )

    def _exchange(
        self,
        request: TransactionRequest,
        concert_request: ConcertRequest,
        abort: threading.Event,
        hold: Hold | None = None,
        answered: Callable[[TransactionResult], None] | None = None,
    ) -> TransactionResult:
        settings = self.settings
        name = self.terminal_id
        line = self._use_line(abort)  # TerminalUnavailable: nothing sent

        # 1. ENQ → ACK. No ACK: nothing was sent. A held request waits for its payment's
        # commit here; nothing is sent if that commit fails.
        try:
            self._enquire(line)
            if hold is not None and self._hold(line, hold, abort):
                self._enquire(line)
        except LineLost as exc:
            self._drop_line(str(exc))
            raise TerminalUnavailable(f"concert terminal {name}: line lost: {exc}") from exc
        except Aborted as exc:
            raise TerminalUnavailable(f"concert terminal {name}: stopped") from exc

        # 2. Request frame → ACK, or NAK and send again (bounded).
        self._phase = Phase.SENDING_REQUEST
        frame = encode_frame(concert_request.encode())
        unconfirmed = False  # a copy went out that was neither ACKed nor NAKed
        awaiting = False  # a copy went out and its ACK/NAK is being waited for
        copies = 0
        try:
            while True:
                try:
                    line.write(frame)
                except LineLost as exc:
                    self._drop_line(str(exc))
                    if unconfirmed:
                        return self._unknown(request, f"line lost resending the request: {exc}")
                    raise TerminalUnavailable(
                        f"concert terminal {name}: line lost sending the request: {exc}"
                    ) from exc
                copies += 1
                awaiting = True
                if hold is not None:
                    hold.gone.set()
                logger.debug("concert %s: -> request frame (copy %d)", name, copies)
                try:
                    reply = line.await_control(ACK_OR_NAK, settings.ack_timeout)
                except LineLost as exc:
                    self._drop_line(str(exc))
                    return self._unknown(
                        request, f"line lost before the terminal acknowledged the request: {exc}"
                    )
                awaiting = False
                if reply is Control.ACK:
                    break
                if reply is None:
                    unconfirmed = True
                if copies > settings.max_retransmissions:
                    try:
                        line.send_control(EOT)
                    except LineLost as exc:
                        self._drop_line(str(exc))
                    if unconfirmed:
                        return self._unknown(
                            request,
                            f"request not acknowledged after {copies} copies; the terminal"
                            " may have taken it",
                        )
                    raise TerminalUnavailable(
                        f"concert terminal {name}: request refused (NAK) {copies} times"
                    )
        except Aborted:
            if unconfirmed or awaiting:  # the terminal may have taken a copy
                return self._unknown(request, "stopped while sending the request")
            raise TerminalUnavailable(f"concert terminal {name}: stopped") from None

        # From here the terminal has the request: every ending is a TransactionResult.
        try:
            line.send_control(EOT)
            return self._await_answer(line, request, concert_request, answered)
        except LineLost as exc:
            self._drop_line(str(exc))
            return self._unknown(request, f"line lost during the transaction: {exc}")
        except Aborted:
            return self._unknown(request, "stopped during the transaction (driver closed)")

    def _enquire(self, line: Line) -> None:
        """ENQ → ACK; no ACK: EOT and :class:`TerminalUnavailable` (nothing sent)."""
        self._phase = Phase.ENQUIRY
        line.discard_input()
        line.send_control(ENQ)
        if line.await_control(ACK_ONLY, self.settings.ack_timeout) is None:
            line.send_control(EOT)
            raise TerminalUnavailable(
                f"concert terminal {self.terminal_id}: no ACK to ENQ (terminal absent or busy)"
            )

    def _hold(self, line: Line, hold: Hold, abort: threading.Event) -> bool:
        """Keep the request frame until the payment is committed (``hold`` decided).

        Returns True when the session must be opened again before the frame: the commit
        took longer than ``hold_timeout`` (the session was closed with EOT meanwhile), or
        the terminal sent something while it should have been waiting. Raises
        :class:`_Abandoned` (after EOT) when the payment was not written.
        """
        settings = self.settings
        self._phase = Phase.HELD
        deadline = self._clock.monotonic() + settings.hold_timeout
        closed = False
        while True:
            wait = settings.poll_interval
            if not closed:
                wait = min(wait, max(0.0, deadline - self._clock.monotonic()))
            if hold.wait(wait) or abort.is_set():
                break
            if not closed and self._clock.monotonic() >= deadline:
                logger.info(
                    "concert %s: the payment's commit is slow; the session is closed and"
                    " opened again once it is durable",
                    self.terminal_id,
                )
                line.send_control(EOT)  # the terminal must not wait for a frame past its timer
                closed = True
        if abort.is_set() or not hold.send:
            if not closed:
                line.send_control(EOT)
            if abort.is_set():
                raise Aborted("stopped")
            raise _Abandoned(
                f"concert terminal {self.terminal_id}: the payment was not recorded; its"
                " request was never sent"
            )
        if not closed and line.has_input():
            logger.info(
                "concert %s: the terminal spoke while the request was held; the session is"
                " opened again",
                self.terminal_id,
            )
            line.send_control(EOT)
            closed = True
        return closed

    def _await_answer(
        self,
        line: Line,
        request: TransactionRequest,
        concert_request: ConcertRequest,
        answered: Callable[[TransactionResult], None] | None = None,
    ) -> TransactionResult:
        settings = self.settings
        name = self.terminal_id
        customer_deadline = self._clock.monotonic() + settings.customer_timeout
        # The one bound nothing on the line can move: every wait below is cut to it.
        hard_deadline = customer_deadline + settings.frame_timeout
        deadline = customer_deadline
        self._phase = Phase.AWAITING_ANSWER
        in_session = False  # the terminal's ENQ was ACKed, a frame is due
        naks = 0

        def frame_deadline() -> float:
            return min(self._clock.monotonic() + settings.frame_timeout, hard_deadline)

        def ask_again(why: str) -> TransactionResult | None:
            nonlocal naks, deadline
            if self._clock.monotonic() >= hard_deadline:
                return self._unknown(
                    request,
                    f"no complete answer within {settings.customer_timeout:g} s"
                    f" (+{settings.frame_timeout:g} s for the frame): {why}",
                )
            if naks >= settings.max_retransmissions:
                return self._unknown(request, f"answer unreadable after {naks} NAKs: {why}")
            naks += 1
            logger.info(
                "concert %s: NAK to the answer (%s), %d/%d",
                name,
                why,
                naks,
                settings.max_retransmissions,
            )
            line.parser.abandon_frame()
            line.send_control(NAK)
            deadline = frame_deadline()
            return None

        while True:
            event = line.next_event(deadline)
            if event is None:
                if not in_session:
                    return self._unknown(
                        request,
                        f"no answer from the terminal within {settings.customer_timeout:g} s",
                    )
                failed = ask_again("answer frame incomplete")
                if failed is not None:
                    return failed
                continue
            if event is Control.ENQ:
                logger.debug("concert %s: <- ENQ", name)
                line.send_control(ACK)
                if not in_session:
                    # A repeated ENQ (our ACK lost, or a looping line) is ACKed again but
                    # does not restart the frame's clock.
                    in_session = True
                    self._phase = Phase.RECEIVING_ANSWER
                    deadline = frame_deadline()
                continue
            if event is Control.EOT and in_session:
                # The terminal gave up this session; it may open another one.
                logger.debug("concert %s: <- EOT before the answer", name)
                in_session = False
                self._phase = Phase.AWAITING_ANSWER
                deadline = min(customer_deadline, hard_deadline)
                continue
            if isinstance(event, FrameError):
                if not in_session:
                    logger.debug(
                        "concert %s: ignored %s outside a session", name, type(event).__name__
                    )
                    continue
                failed = ask_again(type(event).__name__)
                if failed is not None:
                    return failed
                continue
            if isinstance(event, Frame):
                try:
                    answer = ConcertAnswer.decode(event.data)
                except MessageError as exc:
                    # intact frame: a copy would say the same
                    result = self._unknown(request, f"answer not understood: {exc}")
                else:
                    result = self._result(request, concert_request, answer)
                del event  # the frame's bytes may hold a PAN; only the answer goes on
                line.send_control(ACK)
                self._end_session(line, result, answered)
                return result
            logger.debug("concert %s: ignored %s", name, describe(event))

    def _end_session(
        self,
        line: Line,
        result: TransactionResult,
        answered: Callable[[TransactionResult], None] | None,
    ) -> None:
        """The answer is ACKed, so it is the outcome: hand it over, then wait for the EOT.

        Whatever happens to the EOT (late, the line lost, the driver stopped) changes
        nothing the terminal did; the next exchange starts clean (ENQ after a discard).
        """
        if answered is not None:
            answered(result)
        try:
            if line.await_control(EOT_ONLY, self.settings.ack_timeout) is None:
                logger.debug("concert %s: no EOT after the answer", self.terminal_id)
        except LineLost as exc:
            self._drop_line(str(exc))
            logger.info("concert %s: line lost after the answer was taken: %s",
                        self.terminal_id, exc)
        except Aborted:
            logger.debug("concert %s: stopped after the answer was taken", self.terminal_id)

    def _result(
        self, request: TransactionRequest, concert_request: ConcertRequest, answer: ConcertAnswer
    ) -> TransactionResult:
        notes: list[str] = []
        if answer.status is AnswerStatus.NOT_VERIFIED:
            notes.append("terminal status 9 (not verified): check the terminal's journal")
        if answer.pos_number != concert_request.pos_number:
            notes.append(
                f"answer for POS {answer.pos_number:02d}, asked as POS"
                f" {concert_request.pos_number:02d}"
            )
        if answer.amount != request.amount:
            notes.append(f"terminal amount {answer.amount} differs from {request.amount}")
        # a currency this driver cannot name stays its numeric code: never the request's,
        # so that an approval in it is "other figures" (unknown), not an ordinary one
        currency = answer.currency or answer.currency_numeric
        if answer.currency_numeric != concert_request.currency_numeric:
            notes.append(
                f"terminal currency {answer.currency_numeric} differs from"
                f" {concert_request.currency_numeric}"
            )
        return TransactionResult(
            outcome=_OUTCOMES[answer.status],
            amount=answer.amount,
            currency=currency,
            brand=answer.brand,
            last4=answer.last4,
            auth_code=None,  # E+ answers carry none
            reference=answer.transaction_id,
            raw_status=answer.status.value,
            detail="; ".join(notes) or None,
            other_pos=f"{answer.pos_number:02d}"
            if answer.pos_number != concert_request.pos_number
            else None,
        )


def _settle(ending: asyncio.Future[TransactionResult], result: TransactionResult) -> None:
    if not ending.done():
        ending.set_result(result)


def _follow(ending: asyncio.Future[TransactionResult],
            worker: asyncio.Future[TransactionResult]) -> None:
    """The worker's own ending, for a transaction whose result was not handed over early
    (nothing sent, unknown, an error); after an early result it is the same one."""
    if worker.cancelled():
        if not ending.done():
            ending.cancel()
        return
    exc = worker.exception()
    if ending.done():
        if exc is not None:  # pragma: no cover  (the session's end catches what it meets)
            logger.debug("concert: after the answer was taken: %s", exc)
        return
    if exc is not None:
        ending.set_exception(exc)
    else:
        ending.set_result(worker.result())


def _consume(future: asyncio.Future[TransactionResult]) -> None:
    """Retrieve the ending of an exchange nobody awaits (it sent nothing)."""
    if not future.cancelled():
        future.exception()
