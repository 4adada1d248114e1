"""ConcertTerminal against the Concert simulator, over a real pty.

Timers are small settings (or a manual clock); no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.base import (
    CancelNotSupported,
    InterruptedTransaction,
    Outcome,
    TerminalBusy,
    TerminalState,
    TerminalUnavailable,
    TransactionKind,
    TransactionRequest,
)
from drivers.concert.adapter import ConcertTerminal
from drivers.concert.messages import (
    ConcertRequest,
    RequestError,
    TransactionType,
    UnsupportedCurrency,
)
from drivers.concert.session import ConcertConfigError, ConcertSettings, Phase
from drivers.simulators.concert import TEST_CARD, Behaviour, ConcertSimulator, main, run_cli
from tests.clock import ManualClock

FAST = {"ack_timeout": 0.3, "frame_timeout": 0.5, "customer_timeout": 2.0, "poll_interval": 0.02}


def sale(
    amount: int = 1250, currency: str = "EUR", payment_id: str = "pay-1"
) -> TransactionRequest:
    return TransactionRequest(payment_id=payment_id, amount=amount, currency=currency)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[ConcertSimulator]:
    simulator = ConcertSimulator(
        link=str(tmp_path / "concert0"), ack_timeout=0.3, frame_timeout=0.5, late_delay=0.1
    )
    simulator.start()
    yield simulator
    simulator.stop()


async def make_terminal(
    sim: ConcertSimulator, clock: ManualClock | None = None, **overrides: object
) -> ConcertTerminal:
    options: dict[str, object] = {**FAST, **overrides}
    settings = ConcertSettings(port=sim.path, **options)  # type: ignore[arg-type]
    terminal = ConcertTerminal("lane-1", settings, clock=clock)
    await terminal.open()
    return terminal


@pytest.fixture
async def terminal(sim: ConcertSimulator) -> AsyncIterator[ConcertTerminal]:
    term = await make_terminal(sim)
    yield term
    await term.close()


def exists(path: str) -> bool:
    return os.path.exists(path)


async def wait_for_phase(terminal: ConcertTerminal, phase: Phase) -> None:
    """Wait (bounded) until the worker thread reaches ``phase``; it sets no asyncio event."""

    async def poll() -> None:
        while terminal.phase is not phase:  # noqa: ASYNC110 - written by the worker thread
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5.0)


async def until_true(check: Callable[[], bool], what: str) -> None:
    """Poll a simulator counter (bounded); the simulator thread sets no asyncio event."""

    async def poll() -> None:
        while not check():  # noqa: ASYNC110 - a counter of the simulator thread
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), 5.0)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_approved_sale(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    before = time.monotonic()
    result = await terminal.collect(sale(1250))
    assert result.outcome is Outcome.APPROVED
    assert result.amount == 1250
    assert result.currency == "EUR"
    assert result.raw_status == "0"
    assert result.last4 == TEST_CARD[-4:]
    assert result.brand == "visa"
    assert result.reference == "0000000001"
    assert result.auth_code is None
    (received,) = sim.requests
    assert received.request == ConcertRequest(pos_number=1, amount=1250, currency="EUR")
    assert received.copies == 1
    assert before <= received.first_byte_at <= received.received_at
    # the result is handed over once the answer is ACKed, as the terminal reads that ACK
    await until_true(lambda: sim.answers_sent == 1, "the terminal to read the ACK")


async def test_declined_sale(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    result = await terminal.collect(sale(1313))
    assert result.outcome is Outcome.DECLINED
    assert result.raw_status == "7"
    sim.push(Behaviour.DECLINE)
    assert (await terminal.collect(sale(500))).outcome is Outcome.DECLINED


async def test_nak_then_success(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.NAK_FIRST)
    result = await terminal.collect(sale())
    assert result.outcome is Outcome.APPROVED
    assert sim.requests[0].copies == 2
    assert sim.naks_sent == 1


async def test_request_refused_every_time_is_unavailable(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim, max_retransmissions=0)
    try:
        sim.push(Behaviour.NAK_FIRST)
        with pytest.raises(TerminalUnavailable, match="NAK"):
            await terminal.collect(sale())
        assert sim.requests == ()
    finally:
        await terminal.close()


async def test_corrupt_answer_lrc_is_naked_then_read(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    sim.push(Behaviour.CORRUPT_LRC)
    result = await terminal.collect(sale())
    assert result.outcome is Outcome.APPROVED
    assert sim.naks_received == 1
    await until_true(lambda: sim.answers_sent == 1, "the terminal to read the ACK")


async def test_noise_before_the_answer(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.NOISE)
    assert (await terminal.collect(sale())).outcome is Outcome.APPROVED


async def test_late_answer(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.LATE)
    assert (await terminal.collect(sale())).outcome is Outcome.APPROVED


async def test_status_9_is_unknown(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.NOT_VERIFIED)
    result = await terminal.collect(sale())
    assert result.outcome is Outcome.UNKNOWN
    assert result.raw_status == "9"
    assert result.reference is not None


async def test_silence_is_unknown_with_a_manual_clock(sim: ConcertSimulator) -> None:
    clock = ManualClock()
    terminal = await make_terminal(sim, clock=clock, customer_timeout=120.0)
    try:
        sim.push(Behaviour.SILENT)
        task = asyncio.create_task(terminal.collect(sale()))
        await wait_for_phase(terminal, Phase.AWAITING_ANSWER)
        # The event loop runs while the customer "pays": the terminal is busy.
        assert (await terminal.status()).state is TerminalState.BUSY
        with pytest.raises(TerminalBusy):
            await terminal.collect(sale(payment_id="pay-2"))
        clock.advance(121.0)
        result = await asyncio.wait_for(task, 5.0)
        assert result.outcome is Outcome.UNKNOWN
        assert result.amount == 1250
        assert result.detail is not None
        assert "no answer" in result.detail
    finally:
        await terminal.close()


async def wait_for_enqs(sim: ConcertSimulator, count: int) -> None:
    async def poll() -> None:
        while sim.enqs_sent < count:  # noqa: ASYNC110 - counted by the simulator thread
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5.0)


@pytest.mark.parametrize("loop", [Behaviour.ENQ_LOOP, Behaviour.ENQ_EOT_LOOP])
async def test_a_looping_enq_cannot_hold_the_lane_past_the_customer_timeout(
    sim: ConcertSimulator, loop: Behaviour
) -> None:
    """Defect 9: ENQ after ENQ restarted the frame timer, so the lane stayed busy forever."""
    clock = ManualClock()
    terminal = await make_terminal(sim, clock=clock, customer_timeout=120.0, frame_timeout=3.0)
    try:
        sim.push(loop)
        task = asyncio.create_task(terminal.collect(sale()))
        await wait_for_enqs(sim, 5)  # the line keeps talking while the customer "pays"
        assert not task.done()
        clock.advance(120.0 + 3.0 + 0.1)  # past the one bound, ENQs still arriving
        await wait_for_enqs(sim, sim.enqs_sent + 3)
        result = await asyncio.wait_for(task, 5.0)
        assert result.outcome is Outcome.UNKNOWN
        assert terminal.phase is Phase.IDLE
    finally:
        sim.release()
        await terminal.close()


async def test_a_looping_enq_ends_in_real_time_and_the_lane_works_again(
    sim: ConcertSimulator,
) -> None:
    # NAKs are not what ends it: with ten allowed, the customer deadline still does.
    terminal = await make_terminal(sim, customer_timeout=1.0, max_retransmissions=10)
    try:
        sim.push(Behaviour.ENQ_LOOP)
        result = await asyncio.wait_for(terminal.collect(sale()), 10.0)
        assert result.outcome is Outcome.UNKNOWN
        assert sim.enqs_sent > 3
        sim.release()
        result = await asyncio.wait_for(terminal.collect(sale(payment_id="pay-2")), 10.0)
        assert result.outcome is Outcome.APPROVED
    finally:
        sim.release()
        await terminal.close()


async def test_silence_is_unknown_with_a_short_timeout(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim, customer_timeout=0.2)
    try:
        sim.push(Behaviour.SILENT)
        result = await terminal.collect(sale())
        assert result.outcome is Outcome.UNKNOWN
        # The next transaction works normally.
        assert (await terminal.collect(sale(payment_id="pay-2"))).outcome is Outcome.APPROVED
    finally:
        await terminal.close()


async def test_drop_mid_transaction_is_unknown(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    sim.push(Behaviour.DROP)
    result = await terminal.collect(sale())
    assert result.outcome is Outcome.UNKNOWN
    assert result.detail is not None
    assert "line lost" in result.detail
    assert not sim.plugged
    assert (await terminal.status()).state is TerminalState.OFFLINE
    sim.plug()
    assert (await terminal.status()).state is TerminalState.ONLINE


async def test_the_result_is_handed_over_before_the_terminal_closes_the_session(
    sim: ConcertSimulator,
) -> None:
    # On a clock that never moves, a wait for the terminal's EOT never times out: the sale
    # ends only because its result does not wait for that EOT.
    terminal = await make_terminal(sim, ManualClock(), ack_timeout=60.0)
    try:
        sim.push(Behaviour.NO_EOT)
        result = await asyncio.wait_for(terminal.collect(sale()), 5.0)
        assert (result.outcome, result.last4) == (Outcome.APPROVED, TEST_CARD[-4:])
        assert terminal.phase is Phase.RECEIVING_ANSWER  # its worker still waits for the EOT
    finally:  # and stops waiting when the driver closes
        await terminal.close()


async def test_a_line_lost_after_the_answer_keeps_the_answer(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    sim.push(Behaviour.DROP_AFTER_ANSWER)
    result = await terminal.collect(sale())
    assert (result.outcome, result.reference) == (Outcome.APPROVED, "0000000001")
    await until_true(lambda: not sim.plugged, "the unplug")
    assert (await terminal.status()).state is TerminalState.OFFLINE
    sim.plug()
    assert (await terminal.status()).state is TerminalState.ONLINE
    assert (await terminal.collect(sale(payment_id="pay-2"))).outcome is Outcome.APPROVED


async def test_no_ack_to_enq_is_unavailable(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    sim.push(Behaviour.NO_ACK)
    with pytest.raises(TerminalUnavailable, match="no ACK"):
        await terminal.collect(sale())
    assert sim.requests == ()
    assert sim.enqs_refused == 1
    # Busy terminal for every ENQ: status says offline, never raises.
    sim.default = Behaviour.NO_ACK
    status = await terminal.status()
    assert status.state is TerminalState.OFFLINE
    assert status.detail is not None
    sim.default = Behaviour.AUTO
    assert (await terminal.collect(sale())).outcome is Outcome.APPROVED


async def test_unplug_offline_replug_online(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    assert (await terminal.status()).state is TerminalState.ONLINE
    link = sim.path
    sim.unplug()
    assert not exists(link)
    assert (await terminal.status()).state is TerminalState.OFFLINE
    assert (await terminal.status()).state is TerminalState.OFFLINE
    with pytest.raises(TerminalUnavailable):
        await terminal.collect(sale())
    assert sim.plug() == link
    assert exists(link)
    assert (await terminal.status()).state is TerminalState.ONLINE
    assert (await terminal.collect(sale())).outcome is Outcome.APPROVED


async def test_missing_port(tmp_path: Path) -> None:
    settings = ConcertSettings(port=str(tmp_path / "nothing"), **FAST)  # type: ignore[arg-type]
    terminal = ConcertTerminal("lane-9", settings)
    with pytest.raises(TerminalUnavailable):
        await terminal.open()
    assert (await terminal.status()).state is TerminalState.OFFLINE
    with pytest.raises(TerminalUnavailable):
        await terminal.collect(sale())
    await terminal.close()


async def test_cancel_is_not_supported(terminal: ConcertTerminal) -> None:
    with pytest.raises(CancelNotSupported, match="on the terminal"):
        await terminal.cancel()
    assert not terminal.capabilities.cancel


async def test_recover_cannot_tell(terminal: ConcertTerminal) -> None:
    interrupted = InterruptedTransaction(
        payment_id="pay-1",
        amount=1250,
        currency="EUR",
        kind=TransactionKind.SALE,
        started_at="2026-11-26T12:00:00.000Z",
    )
    assert await terminal.recover(interrupted) is None
    assert not terminal.capabilities.recover


async def test_refund_approved(terminal: ConcertTerminal, sim: ConcertSimulator) -> None:
    assert terminal.capabilities.refund
    request = TransactionRequest(
        payment_id="pay-1", amount=700, currency="GBP", kind=TransactionKind.REFUND
    )
    result = await terminal.refund(request)
    assert result.outcome is Outcome.APPROVED
    assert result.currency == "GBP"
    assert sim.requests[0].request.transaction_type is TransactionType.CREDIT


async def test_short_answer(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim, answer_full=False)
    try:
        result = await terminal.collect(sale())
        assert result.outcome is Outcome.APPROVED
        assert result.last4 is None
        assert not sim.requests[0].request.full_answer
    finally:
        await terminal.close()


async def test_unsupported_currency_sends_nothing(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    with pytest.raises(UnsupportedCurrency):
        await terminal.collect(sale(currency="XTS"))
    assert sim.requests == ()


async def test_close_during_the_transaction_is_unknown(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim, customer_timeout=60.0)
    sim.push(Behaviour.SILENT)
    task = asyncio.create_task(terminal.collect(sale()))
    await wait_for_phase(terminal, Phase.AWAITING_ANSWER)
    await terminal.close()
    result = await asyncio.wait_for(task, 5.0)
    assert result.outcome is Outcome.UNKNOWN
    assert (await terminal.status()).state is TerminalState.OFFLINE


async def test_cancelled_caller_frees_the_terminal(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim, customer_timeout=60.0)
    try:
        sim.push(Behaviour.SILENT)
        task = asyncio.create_task(terminal.collect(sale()))
        await wait_for_phase(terminal, Phase.AWAITING_ANSWER)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker gives the abandoned exchange up; the next sale runs normally.
        result = await asyncio.wait_for(terminal.collect(sale(payment_id="pay-2")), 5.0)
        assert result.outcome is Outcome.APPROVED
    finally:
        await terminal.close()


async def test_non_positive_amount_sends_nothing(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    with pytest.raises(RequestError):
        await terminal.collect(sale(amount=0))
    assert sim.requests == ()


async def test_no_pan_in_any_log(
    terminal: ConcertTerminal, sim: ConcertSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.push(Behaviour.CORRUPT_LRC, Behaviour.NOISE)
    await terminal.collect(sale())
    await terminal.collect(sale())
    assert caplog.records
    for record in caplog.records:
        assert TEST_CARD not in record.getMessage()


def test_settings_validation() -> None:
    assert ConcertSettings(port="/dev/ttyACM0").bytesize == 8
    seven = ConcertSettings(port="/dev/ttyS0", line="7E1")
    assert (seven.bytesize, seven.parity, seven.stopbits) == (7, "E", 1)
    for bad in (
        {"line": "8E2"},
        {"ack_timeout": 0},
        {"pos_number": 0},
        {"max_retransmissions": -1},
        {"baudrate": 0},
    ):
        with pytest.raises(ConcertConfigError):
            ConcertSettings(port="/dev/ttyACM0", **bad)


def test_run_cli_rejects_unknown_behaviour() -> None:
    assert run_cli(None, "explode") == 2
    with pytest.raises(SystemExit):
        main(["--behaviour", "explode"])


def test_simulator_command_prints_the_link_and_stops_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "concert-cli"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "drivers.simulators.concert", "--pty", "--link", str(link)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        assert os.path.islink(link)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not os.path.exists(link)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- a sale opened while its payment is committed (prepare, then start or abandon) --------


async def test_a_prepared_sale_holds_its_request_until_started(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    """The ENQ goes out at prepare (it commits the terminal to nothing); the request
    frame only once start() says the payment is committed."""
    request = sale(1250)
    assert await terminal.prepare(request) is None
    await wait_for_phase(terminal, Phase.HELD)  # the terminal ACKed the ENQ
    assert sim.sessions_opened == 1
    assert sim.requests == ()  # nothing it could charge
    assert (await terminal.status()).state is TerminalState.BUSY
    await terminal.start(request)
    result = await terminal.collect(request)
    assert result.outcome is Outcome.APPROVED
    (received,) = sim.requests
    assert received.request.amount == 1250 and received.copies == 1
    assert sim.sessions_opened == 1  # the frame went out in the session the ENQ opened


async def test_an_abandoned_sale_sends_nothing_and_the_next_one_runs(
    terminal: ConcertTerminal, sim: ConcertSimulator
) -> None:
    """The payment's first commit failed: EOT, no request, the terminal is free."""
    first = sale(1250, payment_id="pay-1")
    await terminal.prepare(first)
    await wait_for_phase(terminal, Phase.HELD)
    terminal.abandon(first)
    await until_true(lambda: sim.sessions_closed_empty == 1, "the EOT closing the session")
    await wait_for_phase(terminal, Phase.IDLE)
    assert sim.requests == ()
    result = await terminal.collect(sale(1400, payment_id="pay-2"))
    assert result.outcome is Outcome.APPROVED
    (received,) = sim.requests
    assert received.request.amount == 1400


async def test_a_slow_commit_closes_the_session_and_opens_another(
    sim: ConcertSimulator,
) -> None:
    """The terminal never waits for a frame past hold_timeout: EOT, and once the payment
    is committed a new ENQ before the request (sent once)."""
    clock = ManualClock()
    terminal = await make_terminal(sim, clock, hold_timeout=0.5)
    try:
        request = sale(1250)
        await terminal.prepare(request)
        await wait_for_phase(terminal, Phase.HELD)
        clock.advance(0.6)
        await until_true(lambda: sim.sessions_closed_empty == 1, "the EOT of the held session")
        assert sim.requests == ()
        await terminal.start(request)
        result = await terminal.collect(request)
        assert result.outcome is Outcome.APPROVED
        assert sim.sessions_opened == 2
        (received,) = sim.requests
        assert received.copies == 1
    finally:
        await terminal.close()


async def test_a_held_request_is_never_sent_after_close(sim: ConcertSimulator) -> None:
    terminal = await make_terminal(sim)
    request = sale()
    await terminal.prepare(request)
    await wait_for_phase(terminal, Phase.HELD)
    await terminal.close()
    with pytest.raises(TerminalUnavailable):
        await terminal.collect(request)
    assert sim.requests == ()


class _Relay:
    """A TCP port relaying to the simulator's pty: a terminal behind a serial server."""

    def __init__(self, device: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.device = device
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.server.accept()
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([conn, fd], [], [], 0.05)
                if conn in ready:
                    data = conn.recv(4096)
                    if not data:
                        return
                    os.write(fd, data)
                if fd in ready:
                    conn.sendall(os.read(fd, 4096))
        finally:
            os.close(fd)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(5.0)


async def test_a_sale_over_a_socket_url_goes_through_pyserial(sim: ConcertSimulator) -> None:
    """socket:// ports have no descriptor of their own: the line uses pyserial's calls."""
    relay = _Relay(sim.path)
    settings = ConcertSettings(port=f"socket://127.0.0.1:{relay.port}", **FAST)  # type: ignore[arg-type]
    terminal = ConcertTerminal("lane-1", settings)
    try:
        await terminal.open()
        request = sale(1250)
        await terminal.prepare(request)
        await wait_for_phase(terminal, Phase.HELD)
        await terminal.start(request)
        result = await terminal.collect(request)
        assert result.outcome is Outcome.APPROVED
        (received,) = sim.requests
        assert received.request.amount == 1250
    finally:
        await terminal.close()
        relay.close()
