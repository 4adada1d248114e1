"""The ZVT lane: :class:`ZvtTerminal`, one command at a time on a TCP or serial line.

The protocol and the money rule are described in :mod:`drivers.zvt`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from drivers.base import (
    CancelTooLate,
    Capabilities,
    DriverError,
    EndOfDayTotals,
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
from drivers.hold import HANDOFF_SECONDS, Hold
from drivers.zvt import messages as m
from drivers.zvt.framing import Apdu
from drivers.zvt.session import (
    Aborted,
    LineLost,
    Link,
    NotDelivered,
    SerialLink,
    TcpLink,
    Unconfirmed,
    ZvtSettings,
)
from drivers.zvt.steps import LoopCommand, Receive, Send, Step, follow_blocking
from sync.core.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

BUSY_CODE = 0x9C
"""``84 9C``: the PT is busy, "repeat later"."""

_WHAT = {TransactionKind.SALE: "authorisation", TransactionKind.REFUND: "refund",
         TransactionKind.REVERSAL: "reversal"}


class CommandRefused(NothingSent):
    """The PT answered ``84 xx``: it did not start the command, nothing was charged."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"the terminal refused the {what} (84 {code:02X}: "
                         f"{m.result_text(code)}); nothing was done")
        self.code = code


@dataclass
class _Exchange:
    """What the PT said after a command was accepted."""

    status: m.StatusInformation | None = None
    completion: m.Completion | None = None
    abort: m.Abort | None = None
    lines: list[str] = field(default_factory=list)
    lost: str | None = None
    """Why the exchange ended without Completion or Abort (the outcome is unknown)."""

    @property
    def receipt(self) -> str | None:
        return "\n".join(self.lines) if self.lines else None


@dataclass
class _Running:
    """The transaction on the worker, as the event loop sees it (for cancel)."""

    cancel: threading.Event = field(default_factory=threading.Event)
    answer: concurrent.futures.Future[bool] = field(default_factory=concurrent.futures.Future)
    """True: the PT accepted the Abort command; False: it refused it, or the transaction
    ended first."""


class _Abandoned(NothingSent):
    """The payment was not written: the held command was never sent."""


@dataclass(slots=True)
class _Opened:
    """A sale prepared on the worker thread while its payment was being committed."""

    payment_id: str
    hold: Hold
    running: _Running
    future: asyncio.Future[TransactionResult]


@dataclass(slots=True)
class _OnLoop:
    """A transaction the event loop drives on an open TCP line (:class:`LoopCommand`)."""

    request: TransactionRequest
    link: TcpLink
    apdu: bytes
    running: _Running | None
    command: LoopCommand[_Exchange] | None = None
    error: Exception | None = None
    """Why the command could not be sent (raised to whoever collects the transaction)."""


class ZvtTerminal(Terminal):
    """A ZVT terminal. Sale, refund, reversal, cancel (06 B0), repeat receipt, end of day."""

    kind = "zvt"

    def __init__(self, terminal_id: str, settings: ZvtSettings, *,
                 clock: Clock | None = None) -> None:
        super().__init__(terminal_id)
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self._executor: ThreadPoolExecutor | None = None
        self._link: Link | None = None  # owned by the worker thread
        self._abort = threading.Event()
        self._busy = False
        self._closed = False
        self._running: _Running | None = None
        self._opened: _Opened | _OnLoop | None = None
        self._worker_jobs = 0
        """Jobs handed to the worker thread and not yet over (counted on the loop)."""
        self._loop_idle = asyncio.Event()
        """Clear from the moment a transaction's command goes out on the loop until it is over
        (:meth:`close` waits for that)."""
        self._loop_idle.set()
        self.phase = "idle"
        """Where the worker is (tests, logs): idle, registering, command, customer…"""
        self.pt_terminal_id: str | None = None
        self.last_receipt: int | None = None
        """The receipt number of the last booked transaction seen on this line."""
        self.registrations = 0

    # -- the interface -------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(refund=True, cancel=True, recover=True, reversal=True,
                            end_of_day=True, settle_unknown=True)

    async def open(self) -> None:
        self._closed = False
        await self._run(self._ready_link)

    async def status(self) -> TerminalStatus:
        if self._busy:
            return TerminalStatus(TerminalState.BUSY, "transaction in progress")
        if self._closed:
            return TerminalStatus(TerminalState.OFFLINE, "closed")
        try:
            return await self._run(self._probe_blocking)
        except Exception as exc:  # status never raises for an absent terminal
            logger.warning("zvt %s: status enquiry failed: %s", self.terminal_id, exc)
            return TerminalStatus(TerminalState.OFFLINE, f"status enquiry failed: {exc}")

    async def prepare(self, request: TransactionRequest) -> str | None:
        """While the payment is being committed, the worker readies the line (reconnects
        and registers if needed) and holds the Authorisation until :meth:`start`."""
        if request.kind is not TransactionKind.SALE or self._closed or self._busy:
            return None
        try:
            apdu = m.authorisation(request.amount, request.currency)
        except m.RequestError:
            return None  # collect refuses it as before
        running = _Running()
        self._busy = True
        self._running = running
        link = self._loop_link()
        if link is not None:  # sent by start itself, the moment the payment is durable
            self._opened = _OnLoop(request, link, apdu, running)
            return None
        hold = Hold()
        future = self._submit(lambda: self._transact_blocking(request, apdu, running, hold))
        self._opened = _Opened(request.payment_id, hold, running, future)
        return None

    async def start(self, request: TransactionRequest) -> None:
        """The payment is durable: the held Authorisation goes out now."""
        opened = self._opened
        if isinstance(opened, _OnLoop):
            if opened.request.payment_id == request.payment_id:
                await self._send_on_loop(opened)
            return
        if opened is None or opened.payment_id != request.payment_id:
            return
        opened.hold.release()
        # the interpreter lock released while waiting: the worker sends at once rather than
        # after the loop has answered the register
        opened.hold.gone.wait(HANDOFF_SECONDS)

    def abandon(self, request: TransactionRequest) -> None:
        opened = self._opened
        if isinstance(opened, _OnLoop):
            if opened.request.payment_id != request.payment_id:
                return
        else:
            if opened is None or opened.payment_id != request.payment_id:
                return
            opened.hold.drop()
            opened.future.add_done_callback(_consume)
        self._opened = None
        self._busy = False
        self._running = None

    async def collect(self, request: TransactionRequest) -> TransactionResult:
        opened, self._opened = self._opened, None
        if isinstance(opened, _OnLoop):
            if opened.request.payment_id == request.payment_id:
                return await self._finish(request, self._follow_on_loop(opened),
                                          opened.running, on_loop=True)
            self._busy = False  # not expected: a prepared sale was never collected
            self._loop_idle.set()
        elif opened is not None:
            if opened.payment_id == request.payment_id:
                opened.hold.release()
                return await self._finish(request, opened.future, opened.running)
            opened.hold.drop()  # not expected: a prepared sale was never started
            opened.future.add_done_callback(_consume)
            self._busy = False
        return await self._transact(request, m.authorisation(request.amount, request.currency),
                                    cancellable=True)

    async def refund(self, request: TransactionRequest) -> TransactionResult:
        password = self.settings.password
        if request.kind is TransactionKind.REVERSAL:
            if not (request.original or "").isdigit():
                raise m.RequestError("a reversal needs the sale's receipt number")
            apdu = m.reversal(password, int(request.original or "0"))
        else:
            apdu = m.refund(password, request.amount, request.currency)
        return await self._transact(request, apdu, cancellable=False)

    async def cancel(self) -> None:
        """Abort command (``06 B0``) while the customer has not committed.

        Returns once the PT accepted it (the transaction then ends ``canceled``); raises
        :class:`CancelTooLate` when the PT refused it or the transaction ended first.
        """
        running = self._running
        if running is None:
            raise CancelTooLate(f"zvt terminal {self.terminal_id} is running nothing to cancel")
        running.cancel.set()
        accepted = await asyncio.wrap_future(running.answer)
        if not accepted:
            raise CancelTooLate(f"zvt terminal {self.terminal_id}: the customer has already"
                                " committed; the payment goes on")

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        """Repeat receipt (``06 20``): the PT's last receipt says how the transaction ended.

        Ours when its amount is ours and its receipt number differs from the last one the
        daemon knew before (``interrupted.extra['previous_receipt']``); not booked (declined,
        nothing charged) when the last receipt *is* that previous one; ``None`` otherwise.
        """
        if self._busy:
            raise TerminalBusy(f"zvt terminal {self.terminal_id} is running a transaction")
        self._busy = True
        try:
            exchange = await self._run(self._repeat_receipt_blocking)
        finally:
            self._busy = False
        return self._judge_receipt(interrupted, exchange)

    async def end_of_day(self) -> EndOfDayTotals:
        if self._busy:
            raise TerminalBusy(f"zvt terminal {self.terminal_id} is running a transaction")
        self._busy = True
        try:
            return await self._run(self._end_of_day_blocking)
        finally:
            self._busy = False

    async def close(self) -> None:
        self._closed = True
        self._abort.set()
        if isinstance(self._opened, _Opened):
            self._opened.hold.drop()
        # a transaction on the loop sees the stop at its next look (``poll_interval``)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.poll_interval * 4 + 1.0):
                await self._loop_idle.wait()
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_blocking)
        finally:
            executor.shutdown(wait=False)
            self._executor = None
            self._abort = threading.Event()

    # -- event-loop side -----------------------------------------------------------------

    def _submit(self, func: Callable[[], _T]) -> asyncio.Future[_T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix=f"zvt-{self.terminal_id}")
        future = asyncio.get_running_loop().run_in_executor(self._executor, func)
        self._worker_jobs += 1
        future.add_done_callback(self._worker_done)
        return future

    def _worker_done(self, _: object) -> None:
        self._worker_jobs -= 1

    def _loop_link(self) -> TcpLink | None:
        """The TCP line, if the event loop may drive a transaction on it now: open (and so
        registered), with no stop asked and the worker idle. The worker thread keeps
        connecting, registering, the heartbeat and the other commands, and serial lines."""
        link = self._link
        if not isinstance(link, TcpLink) or self._worker_jobs or link.abort.is_set():
            return None
        try:
            link.discard_input()  # also finds a connection the PT closed while idle
        except LineLost as exc:
            self._drop_link(str(exc))  # the worker connects and registers again
            return None
        return link

    async def _send_on_loop(self, opened: _OnLoop) -> None:
        """Put the command on the line; a failure is kept for :meth:`_follow_on_loop`."""
        if self._closed or opened.link.abort.is_set():  # stopping: send nothing
            opened.error = TerminalUnavailable(f"zvt terminal {self.terminal_id}: stopped")
            return
        self._loop_idle.clear()  # set again once the transaction is over (_finish)
        deadline = self._clock.monotonic() + self.settings.customer_timeout
        opened.command = LoopCommand(opened.link, self._exchange(
            opened.apdu, _WHAT[opened.request.kind], deadline, opened.running, None))
        try:
            await opened.command.send()
        except Exception as exc:  # TerminalUnavailable: nothing sent
            opened.error = exc

    async def _follow_on_loop(self, opened: _OnLoop) -> TransactionResult:
        if opened.command is None:
            await self._send_on_loop(opened)
        if opened.error is not None:
            raise opened.error
        assert opened.command is not None
        exchange = await opened.command.finish()
        return self._ended(opened.request, exchange, opened.running)

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await self._submit(func)

    async def _transact(self, request: TransactionRequest, apdu: bytes, *,
                        cancellable: bool) -> TransactionResult:
        if self._closed:
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id} is closed")
        if self._busy:
            raise TerminalBusy(f"zvt terminal {self.terminal_id} is running a transaction")
        self._busy = True
        running = _Running() if cancellable else None
        self._running = running
        link = self._loop_link()
        if link is not None:
            opened = _OnLoop(request, link, apdu, running)
            return await self._finish(request, self._follow_on_loop(opened), running,
                                      on_loop=True)
        future = self._submit(lambda: self._transact_blocking(request, apdu, running))
        return await self._finish(request, future, running)

    async def _finish(self, request: TransactionRequest,
                      ending: Awaitable[TransactionResult],
                      running: _Running | None, *, on_loop: bool = False) -> TransactionResult:
        try:
            result = await ending
        except asyncio.CancelledError:
            if not on_loop:  # the worker stops at its next read; the outcome is unknown
                self._abort.set()
            raise
        finally:
            self._busy = False
            self._running = None
            if on_loop:
                self._loop_idle.set()
            if running is not None and not running.answer.done():
                running.answer.set_result(False)  # ended before the PT took the cancel
        (logger.debug if result.outcome is Outcome.APPROVED and not result.detail
         else logger.info)("zvt %s: %s %s %s (result %s, receipt %s)%s", self.terminal_id,
                           request.kind.value, request.payment_id, result.outcome.value,
                           result.raw_status, result.reference,
                           f": {result.detail}" if result.detail else "")
        return result

    # -- worker thread: the line ----------------------------------------------------------

    def _ready_link(self) -> Link:
        """The open, registered line; :class:`TerminalUnavailable` if it cannot be had."""
        link = self._link
        if link is not None:
            try:
                link.discard_input()  # also finds a connection the PT closed while idle
                return link
            except LineLost as exc:
                self._drop_link(str(exc))
        if self._abort.is_set():
            self._abort = threading.Event()
        settings = self.settings
        try:
            if settings.is_tcp:
                link = TcpLink.connect(settings, self._clock, self._abort, self.terminal_id)
            else:
                link = SerialLink.open(settings, self._clock, self._abort, self.terminal_id)
        except LineLost as exc:
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: {exc}") from exc
        self._link = link
        try:
            self._register(link)
        except BaseException:
            self._drop_link("registration failed")
            raise
        logger.info("zvt %s: registered on %s (PT terminal id %s)", self.terminal_id,
                    settings.address, self.pt_terminal_id)
        return link

    def _register(self, link: Link) -> None:
        self.phase = "registering"
        settings = self.settings
        try:
            exchange = self._command(link, m.registration(
                settings.password, settings.currency, settings.config_byte), "registration",
                self._clock.monotonic() + settings.ack_timeout * 2)
        except NothingSent as exc:
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: {exc}") from exc
        if exchange.lost is not None or exchange.completion is None:
            reason = exchange.lost or (exchange.abort.text if exchange.abort else "no Completion")
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: registration did not"
                                      f" complete ({reason})")
        self.pt_terminal_id = exchange.completion.terminal_id or self.pt_terminal_id
        self.registrations += 1
        self.phase = "idle"

    def _drop_link(self, reason: str) -> None:
        link, self._link = self._link, None
        if link is not None:
            logger.warning("zvt %s: line lost: %s", self.terminal_id, reason)
            link.close()

    def _close_blocking(self) -> None:
        link, self._link = self._link, None
        self.phase = "idle"
        if link is not None:
            link.close()

    def _command(self, link: Link, apdu: bytes, what: str, deadline: float,
                 running: _Running | None = None,
                 sent: threading.Event | None = None) -> _Exchange:
        """Send a command and follow it to Completion or Abort, on the worker thread
        (:meth:`_exchange` says what each message means)."""
        if isinstance(link, SerialLink):
            link.forget_last()
        return follow_blocking(link, self._exchange(apdu, what, deadline, running, sent))

    def _exchange(self, apdu: bytes, what: str, deadline: float, running: _Running | None,
                  sent: threading.Event | None) -> Generator[Step, Apdu | None, _Exchange]:
        """A command and its exchange to Completion or Abort, as the steps it takes on the
        line (:mod:`drivers.zvt.steps`), so that the worker thread and the event loop follow
        it alike (:meth:`_command`, :class:`~drivers.zvt.steps.LoopCommand`).

        Raises :class:`CommandRefused` / :class:`TerminalBusy` (``84 xx``) and
        :class:`TerminalUnavailable` (the line failed before the PT can have taken it); an
        exchange whose end was lost comes back with :attr:`_Exchange.lost` set.
        """
        settings = self.settings
        self.phase = "command"
        try:
            yield Send(apdu)
        except NotDelivered as exc:
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: {exc}") from exc
        except Unconfirmed as exc:
            return _Exchange(lost=f"the {what} was not acknowledged on the line ({exc}); the"
                             " terminal may have taken it")
        except LineLost as exc:
            self._drop_link(str(exc))
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: {exc}") from exc
        if sent is not None:
            sent.set()
        exchange = _Exchange()
        reply_by = self._clock.monotonic() + settings.ack_timeout
        accepted = False
        cancel_sent = False
        try:
            while True:
                if running is not None and running.cancel.is_set() and not cancel_sent \
                        and exchange.status is not None:
                    cancel_sent = True  # the result is in: the customer has committed
                    _answer(running, False)
                if running is not None and running.cancel.is_set() and not cancel_sent:
                    cancel_sent = True
                    logger.info("zvt %s: abort command (06 B0) sent", self.terminal_id)
                    try:
                        yield Send(m.abort_command())
                    except (NotDelivered, Unconfirmed):
                        _answer(running, False)
                real_deadline = deadline if accepted else min(deadline, reply_by)
                wait_until = real_deadline
                if running is not None and not cancel_sent:  # look at the cancel flag often
                    wait_until = min(real_deadline,
                                     self._clock.monotonic() + settings.poll_interval * 2)
                raw = yield Receive(wait_until)
                if raw is None:
                    if self._clock.monotonic() < real_deadline:
                        continue
                    if not accepted:
                        exchange.lost = (f"no answer to the {what} within"
                                         f" {settings.ack_timeout:g} s; the terminal may have"
                                         " taken it")
                    elif exchange.status is not None and exchange.status.result_code == 0:
                        exchange.lost = ("the terminal approved but never sent its Completion"
                                         f" (waited {settings.completion_timeout:g} s)")
                    else:
                        exchange.lost = f"no end of the {what} from the terminal in time"
                    return exchange
                try:
                    msg = m.decode_pt(raw)
                except DriverError as exc:  # intact but unreadable: acknowledge, note it
                    logger.warning("zvt %s: message %r not understood: %s", self.terminal_id,
                                   raw, exc)
                    yield Send(m.ACK_APDU)
                    continue
                if isinstance(msg, m.Refused):
                    if cancel_sent and accepted and running is not None:
                        _answer(running, False)
                        continue
                    if msg.code == BUSY_CODE:
                        raise TerminalBusy(f"zvt terminal {self.terminal_id} is busy (84 9C)")
                    raise CommandRefused(msg.code, what)
                if isinstance(msg, m.Accepted):
                    if cancel_sent and accepted and running is not None:
                        _answer(running, True)
                    accepted = True
                    continue
                accepted = True  # a PT that skips 80 00 00 and goes on has accepted
                yield Send(m.ACK_APDU)
                if isinstance(msg, m.IntermediateStatus):
                    self.phase = f"customer: {msg.text}"
                elif isinstance(msg, m.StatusInformation):
                    if msg != exchange.status:  # a repeated copy changes nothing
                        exchange.status = msg
                        if msg.receipt is not None and msg.result_code == 0:
                            self.last_receipt = msg.receipt
                        deadline = min(deadline, self._clock.monotonic()
                                       + settings.completion_timeout)
                elif isinstance(msg, m.PrintText):
                    exchange.lines.extend(msg.lines)
                elif isinstance(msg, m.Completion):
                    exchange.completion = msg
                    return exchange
                elif isinstance(msg, m.Abort):
                    exchange.abort = msg
                    return exchange
        except LineLost as exc:
            self._drop_link(str(exc))
            if not accepted:
                exchange.lost = f"line lost before the terminal answered the {what}: {exc}"
            else:
                exchange.lost = f"line lost during the {what}: {exc}"
            return exchange
        except (NotDelivered, Unconfirmed) as exc:
            self._drop_link(str(exc))
            exchange.lost = f"the line failed during the {what}: {exc}"
            return exchange
        except Aborted:
            exchange.lost = f"stopped during the {what} (driver closed)"
            return exchange
        finally:
            self.phase = "idle"

    # -- worker thread: the commands ------------------------------------------------------

    def _transact_blocking(self, request: TransactionRequest, apdu: bytes,
                           running: _Running | None, hold: Hold | None = None
                           ) -> TransactionResult:
        try:
            link = self._ready_link()  # TerminalUnavailable: nothing sent
            if hold is not None:
                while not hold.wait(self.settings.poll_interval):
                    if self._abort.is_set():
                        raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: stopped")
                if not hold.send:
                    raise _Abandoned(f"zvt terminal {self.terminal_id}: the payment was not"
                                     " recorded; its Authorisation was never sent")
            deadline = self._clock.monotonic() + self.settings.customer_timeout
            exchange = self._command(link, apdu, _WHAT[request.kind], deadline, running,
                                     sent=hold.gone if hold is not None else None)
            return self._ended(request, exchange, running)
        finally:
            if hold is not None:
                hold.gone.set()

    def _ended(self, request: TransactionRequest, exchange: _Exchange,
               running: _Running | None) -> TransactionResult:
        result = self._result(request, exchange)
        if running is not None and running.answer.done() and running.answer.result() \
                and result.outcome is Outcome.CANCELED:
            result = replace(result, detail=f"canceled from the register (Abort command"
                             f" 06 B0); {result.detail}")
        return result

    def _result(self, request: TransactionRequest, exchange: _Exchange) -> TransactionResult:
        status = exchange.status
        amount, currency, receipt = request.amount, request.currency, exchange.receipt
        reference = _receipt_ref(status)
        if exchange.abort is not None:
            code = exchange.abort.result_code
            return TransactionResult(
                Outcome.CANCELED if code in m.CUSTOMER_ABORTS else Outcome.DECLINED,
                amount, currency, last4=status.last4 if status else None,
                reference=reference, raw_status=f"{code:02X}", receipt=receipt,
                detail=f"ZVT {code:02X}: {exchange.abort.text}")
        if exchange.lost is not None or exchange.completion is None or status is None:
            return TransactionResult(
                Outcome.UNKNOWN, amount, currency, reference=reference, receipt=receipt,
                detail=exchange.lost or "Completion without a result (Status-Information)")
        result_code = status.result_code
        if result_code != 0:
            return TransactionResult(
                Outcome.CANCELED if result_code in m.CUSTOMER_ABORTS else Outcome.DECLINED,
                amount, currency, last4=status.last4, reference=reference,
                raw_status=f"{result_code:02X}" if result_code is not None else None,
                receipt=receipt, detail=m.result_text(result_code) if result_code is not None
                else "no result code")
        return TransactionResult(
            Outcome.APPROVED,
            status.amount if status.amount is not None else amount,
            status.currency or currency,
            brand=status.card_name.lower() if status.card_name else None,
            last4=status.last4, auth_code=status.auth_code, reference=reference,
            raw_status="00", receipt=receipt,
            detail=None if status.amount is not None else "the result names no amount")

    def _probe_blocking(self) -> TerminalStatus:
        self.phase = "probing"
        try:
            try:
                link = self._ready_link()
            except TerminalUnavailable as exc:
                return TerminalStatus(TerminalState.OFFLINE, str(exc))
            try:
                exchange = self._command(
                    link, m.password_command(m.Cmd.STATUS_ENQUIRY, self.settings.password),
                    "status enquiry", self._clock.monotonic() + self.settings.ack_timeout * 2)
            except TerminalBusy:
                return TerminalStatus(TerminalState.BUSY, "the terminal is busy (84 9C)")
            except NothingSent as exc:
                return TerminalStatus(TerminalState.OFFLINE, str(exc))
            if exchange.lost is not None:
                self._drop_link(exchange.lost)
                return TerminalStatus(TerminalState.OFFLINE, exchange.lost)
            return TerminalStatus(TerminalState.ONLINE)
        finally:
            self.phase = "idle"

    def _repeat_receipt_blocking(self) -> _Exchange:
        link = self._ready_link()
        try:
            exchange = self._command(
                link, m.password_command(m.Cmd.REPEAT_RECEIPT, self.settings.password),
                "repeat receipt", self._clock.monotonic() + self.settings.customer_timeout)
        except CommandRefused as exc:
            return _Exchange(lost=str(exc))
        if exchange.lost is not None:
            raise TerminalUnavailable(f"zvt terminal {self.terminal_id}: {exchange.lost}")
        return exchange

    def _judge_receipt(self, interrupted: InterruptedTransaction,
                       exchange: _Exchange) -> TransactionResult | None:
        status = exchange.status
        name = self.terminal_id
        if status is None or exchange.abort is not None or status.receipt is None:
            logger.info("zvt %s: the terminal has no receipt to repeat; %s stays unknown",
                        name, interrupted.payment_id)
            return None
        previous = interrupted.extra.get("previous_receipt")
        known = int(previous) if previous and previous.isdigit() else None
        if known is not None and status.receipt == known:
            logger.info("zvt %s: the last receipt (%04d) is the one before %s: it was not"
                        " booked", name, status.receipt, interrupted.payment_id)
            return TransactionResult(
                Outcome.DECLINED, interrupted.amount, interrupted.currency,
                detail=f"not booked: the terminal's last receipt ({status.receipt:04d}) is"
                " the transaction before it (Repeat receipt)")
        if known is None or status.amount != interrupted.amount:
            logger.info("zvt %s: the last receipt (%04d, %s) cannot be matched to %s", name,
                        status.receipt, status.amount, interrupted.payment_id)
            return None
        self.last_receipt = status.receipt
        result = self._result(
            TransactionRequest(interrupted.payment_id, interrupted.amount,
                               interrupted.currency, interrupted.kind),
            _Exchange(status=status, completion=m.Completion(), lines=exchange.lines))
        note = "settled by Repeat receipt"
        return TransactionResult(
            result.outcome, result.amount, result.currency, result.brand, result.last4,
            result.auth_code, result.reference, result.raw_status, result.receipt,
            f"{result.detail}; {note}" if result.detail else note)

    def _end_of_day_blocking(self) -> EndOfDayTotals:
        link = self._ready_link()
        exchange = self._command(
            link, m.password_command(m.Cmd.END_OF_DAY, self.settings.password), "end of day",
            self._clock.monotonic() + self.settings.message_timeout)
        if exchange.abort is not None:
            raise CommandRefused(exchange.abort.result_code, "end of day")
        status = exchange.status
        if exchange.lost is not None or status is None or status.result_code not in (0, None):
            raise DriverError(exchange.lost or "the end of day ended without its totals;"
                              " check the terminal's printout")
        totals = status.totals
        groups = totals.groups if totals else ()
        return EndOfDayTotals(
            total=status.amount or 0, currency=status.currency or self.settings.currency,
            count=sum(g[1] for g in groups) if totals else None, groups=groups,
            receipt_from=totals.receipt_from if totals else None,
            receipt_to=totals.receipt_to if totals else None,
            reference=f"{status.trace:06d}" if status.trace is not None else None,
            receipt=exchange.receipt)


def _receipt_ref(status: m.StatusInformation | None) -> str | None:
    if status is None or status.receipt is None:
        return None
    return f"{status.receipt:04d}"


def _consume(future: asyncio.Future[TransactionResult]) -> None:
    """Retrieve the ending of an exchange nobody awaits (it sent nothing)."""
    if not future.cancelled():
        future.exception()


def _answer(running: _Running, accepted: bool) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        running.answer.set_result(accepted)
