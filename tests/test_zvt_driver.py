"""The ZVT driver against the terminal simulator, on TCP and on a pty (serial framing).

Each test drives :class:`ZvtTerminal` directly and checks what the terminal received and
booked (the simulator's log and journal): the facts of ``docs/facts/zvt.md``
decide what each ending must be. Timers are small settings; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from drivers.base import (
    CancelTooLate,
    InterruptedTransaction,
    NothingSent,
    Outcome,
    TerminalBusy,
    TerminalState,
    TerminalUnavailable,
    TransactionKind,
    TransactionRequest,
    TransactionResult,
)
from drivers.simulators.zvt import TEST_CARD, Behaviour, ZvtSimulator
from drivers.zvt import messages as m
from drivers.zvt.adapter import ZvtTerminal
from drivers.zvt.session import ZvtSettings

PASSWORD = "123456"


@pytest.fixture(params=["tcp", "pty"])
def sim(request: pytest.FixtureRequest) -> Iterator[ZvtSimulator]:
    kwargs = {"password": PASSWORD, "slow_delay": 2.0, "ack_timeout": 1.0,
              "link_timeout": 0.3}
    simulator = ZvtSimulator(tcp_port=0, **kwargs) if request.param == "tcp" else \
        ZvtSimulator(pty=True, **kwargs)  # type: ignore[arg-type]
    simulator.start()
    yield simulator
    simulator.stop()


def settings_for(sim: ZvtSimulator, **overrides: float) -> ZvtSettings:
    values = {"ack_timeout": 1.0, "link_timeout": 0.3, "completion_timeout": 0.5,
              "customer_timeout": 4.0, "poll_interval": 0.02, **overrides}
    return ZvtSettings(address=sim.address, password=PASSWORD, **values)  # type: ignore[arg-type]


@asynccontextmanager
async def opened(sim: ZvtSimulator, **overrides: float) -> AsyncIterator[ZvtTerminal]:
    terminal = ZvtTerminal("lane-z", settings_for(sim, **overrides))
    await terminal.open()
    try:
        yield terminal
    finally:
        await terminal.close()


@pytest.fixture
async def lane(sim: ZvtSimulator) -> AsyncIterator[ZvtTerminal]:
    async with opened(sim) as terminal:
        yield terminal


#: A dropped serial line is silence, not an end of file: on the pty the ECR knows the sale is
#: lost only when the customer's time is up. The tests of lost lines wait 1 s for it, not 4.
LOST_LINE = {"customer_timeout": 1.0}


def sale(amount: int, pid: str = "pay-1") -> TransactionRequest:
    return TransactionRequest(pid, amount, "EUR")


async def _slow_sale_under_way(lane: ZvtTerminal, sim: ZvtSimulator,
                               amount: int) -> asyncio.Task[TransactionResult]:
    """A sale whose customer takes their time, once the PT has its command."""
    sim.push(Behaviour.SLOW)
    running = asyncio.create_task(lane.collect(sale(amount)))
    while not sim.transactions():
        await asyncio.sleep(0.01)
    return running


async def test_registration_then_status_enquiry(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    assert sim.registrations == 1
    assert lane.pt_terminal_id == "52001233"
    status = await lane.status()
    assert status.state is TerminalState.ONLINE
    commands = [r.command.cmd for r in sim.requests]
    assert commands == [m.Cmd.REGISTRATION, m.Cmd.STATUS_ENQUIRY]
    registration = sim.requests[0].command
    assert (registration.password, registration.config, registration.currency) == \
        (PASSWORD, m.DEFAULT_CONFIG, "EUR")
    assert registration.config & m.CONFIG_INTERMEDIATE_STATUS
    assert registration.config & m.CONFIG_ECR_PRINTS_PAYMENT


async def test_approval_carries_the_receipt_and_only_the_last_four(
        lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    result = await lane.collect(sale(1250))
    assert result.outcome is Outcome.APPROVED
    assert (result.amount, result.currency, result.last4, result.brand) == \
        (1250, "EUR", TEST_CARD[-4:], "visa")
    (booked,) = sim.journal
    assert result.reference == f"{booked.receipt:04d}"
    assert result.receipt is not None and "Kartenzahlung" in result.receipt
    assert TEST_CARD not in repr(result)
    # The PT counts a Completion once it read our 80 00 00, which may be just after collect()
    # returned; it reads it before the next command, so count after one.
    await lane.status()
    assert sim.completions_sent == 1


async def test_decline_and_aborts_are_not_approved(lane: ZvtTerminal,
                                                    sim: ZvtSimulator) -> None:
    declined = await lane.collect(sale(1313))
    assert (declined.outcome, declined.raw_status) == (Outcome.DECLINED, "05")
    unreadable = await lane.collect(sale(1314))
    assert (unreadable.outcome, unreadable.raw_status) == (Outcome.DECLINED, "64")
    assert "card not readable" in (unreadable.detail or "")
    sim.push(Behaviour.ABORT)
    aborted = await lane.collect(sale(500))
    assert (aborted.outcome, aborted.raw_status) == (Outcome.CANCELED, "6C")
    sim.push(Behaviour.ABORT_HOST)
    host = await lane.collect(sale(500))
    assert (host.outcome, host.raw_status) == (Outcome.DECLINED, "9B")
    assert sim.journal == []  # nothing was booked


async def test_a_refused_command_is_nothing_sent(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.REFUSE)
    with pytest.raises(NothingSent, match="84 83"):
        await lane.collect(sale(900))
    sim.push(Behaviour.BUSY)
    with pytest.raises(TerminalBusy):
        await lane.collect(sale(900))
    after = await lane.collect(sale(900))
    assert after.outcome is Outcome.APPROVED


async def test_cancel_before_the_customer_commits(lane: ZvtTerminal,
                                                  sim: ZvtSimulator) -> None:
    running = await _slow_sale_under_way(lane, sim, 2000)
    await lane.cancel()
    result = await running
    assert (result.outcome, result.raw_status) == (Outcome.CANCELED, "6C")
    assert sim.abort_commands == 1
    assert sim.journal == []


async def test_cancel_once_committed_is_too_late(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.NO_COMPLETION)  # approved and booked, the PT keeps master rights
    running = asyncio.create_task(lane.collect(sale(2100)))
    while not sim.journal:
        await asyncio.sleep(0.01)
    with pytest.raises(CancelTooLate):
        await lane.cancel()
    result = await running
    assert result.outcome is Outcome.UNKNOWN  # approved without Completion: never approved
    assert "never sent its Completion" in (result.detail or "")


async def test_a_line_dropped_after_acceptance_is_unknown_then_settled(
        sim: ZvtSimulator) -> None:
    async with opened(sim, **LOST_LINE) as lane:
        await _dropped_after_acceptance(lane, sim)


async def _dropped_after_acceptance(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    first = await lane.collect(sale(1000, "pay-0"))
    assert first.reference is not None
    sim.push(Behaviour.DROP)  # accepted, booked approved, line gone
    lost = await lane.collect(sale(1500))
    assert lost.outcome is Outcome.UNKNOWN
    settled = await lane.recover(InterruptedTransaction(
        "pay-1", 1500, "EUR", TransactionKind.SALE, "t0",
        {"previous_receipt": first.reference}))
    assert settled is not None and settled.outcome is Outcome.APPROVED
    assert settled.reference == f"{sim.journal[-1].receipt:04d}"
    assert [r.command.cmd for r in sim.requests].count(m.Cmd.REPEAT_RECEIPT) == 1


async def test_an_unbooked_lost_sale_is_settled_declined(sim: ZvtSimulator) -> None:
    async with opened(sim, **LOST_LINE) as lane:
        await _unbooked_lost_sale(lane, sim)


async def _unbooked_lost_sale(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    first = await lane.collect(sale(1000, "pay-0"))
    sim.push(Behaviour.DROP_UNBOOKED)
    lost = await lane.collect(sale(1600))
    assert lost.outcome is Outcome.UNKNOWN
    settled = await lane.recover(InterruptedTransaction(
        "pay-1", 1600, "EUR", TransactionKind.SALE, "t0",
        {"previous_receipt": first.reference or ""}))
    assert settled is not None and settled.outcome is Outcome.DECLINED
    # without knowing the receipt before it, the terminal's record cannot be matched
    unknown = await lane.recover(InterruptedTransaction(
        "pay-1", 1600, "EUR", TransactionKind.SALE, "t0", {}))
    assert unknown is None


async def test_a_prepared_sale_goes_out_at_start_and_an_abandoned_one_never(
        lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    """The service prepares a sale while its payment is written, and starts it once the
    write is durable, or abandons it when the write failed: the PT must then get nothing
    (the facts' money rule: nothing may be charged for a payment the daemon did not keep).
    """
    dropped = sale(1210, "pay-dropped")
    await lane.prepare(dropped)
    lane.abandon(dropped)
    kept = sale(1220, "pay-kept")
    await lane.prepare(kept)
    await lane.start(kept)
    result = await lane.collect(kept)
    assert (result.outcome, result.amount) == (Outcome.APPROVED, 1220)
    assert [t.command.amount for t in sim.transactions()] == [1220]
    assert [b.amount for b in sim.journal] == [1220]


async def test_a_sale_prepared_as_the_lane_stops_is_never_sent(
        lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    """The daemon stops while a payment is being written: the lane closes before the write
    is durable, and the sale's command must not go out after it (nothing to charge; the
    payment is failed, not unknown)."""
    late = sale(1230, "pay-late")
    await lane.prepare(late)
    await lane.close()
    await lane.start(late)
    with pytest.raises(NothingSent):
        await lane.collect(late)
    assert sim.transactions() == []


async def test_closing_the_lane_mid_sale_ends_it_unknown(lane: ZvtTerminal,
                                                         sim: ZvtSimulator) -> None:
    """A stop while the customer is at the terminal: the ECR cannot know how it ends, so
    the sale is ``unknown`` (never declined; the next start asks the PT), and the close
    returns with the line shut."""
    running = await _slow_sale_under_way(lane, sim, 2300)
    await lane.close()
    result = await running
    assert result.outcome is Outcome.UNKNOWN
    assert "driver closed" in (result.detail or "")
    assert (await lane.status()).state is TerminalState.OFFLINE


async def test_a_terminal_that_falls_silent_after_accepting_is_unknown(
        sim: ZvtSimulator) -> None:
    """The PT accepted the Authorisation (``80 00 00``) and then says nothing: the ECR cannot
    know whether the card was charged, so the sale is ``unknown`` once the customer's time
    is up (facts: anything lost after the command was accepted), never declined."""
    async with opened(sim, **LOST_LINE) as lane:
        sim.push(Behaviour.SILENT)
        result = await lane.collect(sale(1240))
        assert result.outcome is Outcome.UNKNOWN
        assert "no end of the authorisation" in (result.detail or "")
        after = await lane.collect(sale(1250, "pay-2"))  # the line still serves the next
        assert after.outcome is Outcome.APPROVED


async def test_repeated_frames_change_nothing(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.REPEAT)
    result = await lane.collect(sale(1700))
    assert result.outcome is Outcome.APPROVED
    assert result.receipt is not None
    assert len(sim.journal) == 1


async def test_other_amount_is_handed_on(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.OTHER_AMOUNT)
    result = await lane.collect(sale(1800))
    assert (result.outcome, result.amount) == (Outcome.APPROVED, 1799)


async def test_a_leaky_receipt_is_cut(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.LEAKY_RECEIPT)
    result = await lane.collect(sale(1900))
    assert result.receipt is not None
    assert TEST_CARD not in result.receipt
    assert "************8807" in result.receipt


async def test_reversal_refund_and_end_of_day(lane: ZvtTerminal, sim: ZvtSimulator) -> None:
    paid = await lane.collect(sale(3000, "pay-a"))
    kept = await lane.collect(sale(1000, "pay-b"))
    voided = await lane.refund(TransactionRequest("ref-1", 3000, "EUR",
                                                  TransactionKind.REVERSAL,
                                                  original=paid.reference))
    assert voided.outcome is Outcome.APPROVED
    refunded = await lane.refund(TransactionRequest("ref-2", 400, "EUR",
                                                    TransactionKind.REFUND))
    assert refunded.outcome is Outcome.APPROVED
    reversal, refund = [r.command for r in sim.transactions()][2:]
    assert (reversal.cmd, reversal.receipt, reversal.password) == \
        (m.Cmd.REVERSAL, int(paid.reference or "0"), PASSWORD)
    assert (refund.cmd, refund.amount) == (m.Cmd.REFUND, 400)
    again = await lane.refund(TransactionRequest("ref-3", 3000, "EUR",
                                                 TransactionKind.REVERSAL,
                                                 original=paid.reference))
    assert again.outcome is Outcome.DECLINED  # a sale is reversed once
    totals = await lane.end_of_day()
    assert (totals.total, totals.currency) == (1000 - 400, "EUR")
    assert totals.receipt is not None and "Kassenschnitt" in totals.receipt
    assert kept.outcome is Outcome.APPROVED


@pytest.fixture
async def tcp_sim() -> AsyncIterator[ZvtSimulator]:
    simulator = ZvtSimulator(tcp_port=0, password=PASSWORD, ack_timeout=1.0)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
async def pty_sim() -> AsyncIterator[ZvtSimulator]:
    simulator = ZvtSimulator(pty=True, password=PASSWORD, ack_timeout=1.0, link_timeout=0.3)
    simulator.start()
    yield simulator
    simulator.stop()


async def test_reconnects_and_registers_again(tcp_sim: ZvtSimulator) -> None:
    """A TCP line the PT closed is found before the next command, opened again and
    registered again: the sale is an ordinary one, not an unknown."""
    sim = tcp_sim
    lane = ZvtTerminal("lane-z", settings_for(sim))
    await lane.open()
    sim.drop()
    while sim.connections < 1 or sim._ch is not None:  # the PT closed it
        await asyncio.sleep(0.01)
    try:
        result = await lane.collect(sale(1200))
    finally:
        await lane.close()
    assert result.outcome is Outcome.APPROVED
    assert sim.registrations == 2


async def test_a_wrong_password_keeps_the_lane_offline(sim: ZvtSimulator) -> None:
    terminal = ZvtTerminal("lane-z", ZvtSettings(address=sim.address, password="000000",
                                                 ack_timeout=1.0, link_timeout=0.3))
    try:
        with pytest.raises(TerminalUnavailable, match="84 83"):
            await terminal.open()
        assert (await terminal.status()).state is TerminalState.OFFLINE
    finally:
        await terminal.close()


async def test_serial_nak_and_bad_crc_are_repeated(pty_sim: ZvtSimulator) -> None:
    sim = pty_sim
    lane = ZvtTerminal("lane-z", settings_for(sim))
    await lane.open()
    sim.push(Behaviour.NAK_FIRST)
    try:
        first = await lane.collect(sale(1100))
        sim.push(Behaviour.CORRUPT_CRC)
        second = await lane.collect(sale(1200))
    finally:
        await lane.close()
    assert first.outcome is Outcome.APPROVED
    assert sim.naks_sent == 1  # our command frame was NAKed once and sent again
    assert second.outcome is Outcome.APPROVED
    assert sim.naks_received == 1  # we NAKed the corrupt result frame; the PT repeated it
    assert len(sim.journal) == 2
