"""The ZVT simulator driven by an ECR that is not ours (see :mod:`tests.zvt_ecr`).

It must let an ECR complete Registration, a Status enquiry, an Authorisation and End of day
unchanged, on TCP and on a pty with the serial framing. The ECR replays the command bytes
ecrterm sends (captured in ecrterm's own tests) and checks every answer against the
specification's BMP table and ecrterm's acceptance rules; its CRC and framing share no code
with ``drivers.zvt``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from drivers.simulators.zvt import TEST_CARD, ZvtSimulator
from tests.zvt_ecr import (
    ECR_AUTHORISATION_10_EUR,
    ECR_END_OF_DAY,
    ECR_REGISTRATION,
    ECR_STATUS_ENQUIRY,
    ECRTERM_CONFIG_DEFAULT,
    ECRTERM_END_OF_DAY,
    ECRTERM_PAYMENT_12_34,
    ECRTERM_STATUS_ENQUIRY_NO_PASSWORD,
    Ecr,
    bcd_int,
    ecrterm_registration,
)


@pytest.fixture(params=["tcp", "pty"])
def sim(request: pytest.FixtureRequest) -> Iterator[ZvtSimulator]:
    simulator = ZvtSimulator(tcp_port=0) if request.param == "tcp" else \
        ZvtSimulator(pty=True)
    simulator.start()
    yield simulator
    simulator.stop()


def test_an_independent_ecr_registers_pays_and_closes_the_day(sim: ZvtSimulator) -> None:
    ecr = Ecr(sim.address)
    try:
        registration = ecr.transmit(ECR_REGISTRATION)
        assert registration.answer == (0x80, 0x00)
        assert registration.end.control == (0x06, 0x0F)
        assert bcd_int(registration.end.bmps[0x29]) > 0  # ecrterm reads the TID from it

        enquiry = ecr.transmit(ECR_STATUS_ENQUIRY)
        assert enquiry.end.control == (0x06, 0x0F)

        sale = ecr.transmit(ECR_AUTHORISATION_10_EUR)
        assert sale.answer == (0x80, 0x00)
        assert sale.of(0x04, 0xFF), "config 0xFE asks for intermediate status"
        (result,) = sale.of(0x04, 0x0F)
        assert result.bmps[0x27] == b"\x00"
        assert bcd_int(result.bmps[0x04]) == 1000
        assert result.bmps[0x49] == bytes.fromhex("0978")
        assert TEST_CARD.encode() not in result.data
        assert sale.of(0x06, 0xD1), "config 0xFE has the ECR print (Print Line)"
        assert sale.end.control == (0x06, 0x0F)  # ecrterm's payment() returns True

        day = ecr.transmit(ECR_END_OF_DAY)
        (totals,) = day.of(0x04, 0x0F)
        assert bcd_int(totals.bmps[0x04]) == 1000
        assert 0x60 in totals.bmps
        assert day.end.control == (0x06, 0x0F)
    finally:
        ecr.close()
    assert sim.registrations == 1
    assert [(t.command.amount, t.behaviour) for t in sim.transactions()] == [
        (1000, "approve")]


@pytest.mark.parametrize("transport", [["--tcp", "0"], ["--pty"]])
def test_edged_simulate_zvt_serves_an_ecr(transport: list[str]) -> None:
    """``edged simulate zvt`` as a technician starts it: it prints the lane's address and
    serves an ECR there until it is stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "edged", "simulate", "zvt", *transport,
                             "--password", "000000"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:" if transport[0] == "--tcp"
                                  else "serial:///dev/pts/"), address
        ecr = Ecr(address)
        try:
            assert ecr.transmit(ECR_REGISTRATION).end.control == (0x06, 0x0F)
            sale = ecr.transmit(ECR_AUTHORISATION_10_EUR)
            (result,) = sale.of(0x04, 0x0F)
            assert result.bmps[0x27] == b"\x00"
        finally:
            ecr.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_a_status_enquiry_without_password_is_answered(sim: ZvtSimulator) -> None:
    """ecrterm's ``detect_pt`` sends ``05 01 00``; the specification's summary of commands
    gives Status enquiry's data as ``[<password> [03 <service byte>] [06 <TLV>]]``, all
    optional. A PT answers it like any status enquiry: ``80 00 00``, then a Completion with
    its software version and terminal status (the simulator used to refuse it ``84 9A``)."""
    ecr = Ecr(sim.address)
    try:
        enquiry = ecr.transmit(ECRTERM_STATUS_ENQUIRY_NO_PASSWORD)
    finally:
        ecr.close()
    assert enquiry.answer == (0x80, 0x00)
    assert enquiry.end.control == (0x06, 0x0F)
    assert enquiry.end.data[:3] == bytes((0xF0, 0xF1, 0xF7))  # LLLVAR: the 17-byte version
    assert sim.requests[-1].command.password is None


@pytest.mark.parametrize(("config", "sale_lines", "day_lines"), [
    (ECRTERM_CONFIG_DEFAULT, True, False),  # 1xxx x01x: payment receipts on the ECR
    (0xB8, False, False),  # 1xxx x00x: the PT prints every receipt
    (0xBE, True, True),  # 1xxx x11x: the ECR prints every receipt, as Print Line
    (0xBC, False, True),  # 1xxx x10x: administration receipts on the ECR
    (0x3E, False, False),  # 0xxx x11x: the ECR composes receipts from Status-Information
])
def test_print_lines_only_for_the_receipts_the_config_byte_gives_the_ecr(
        config: int, sale_lines: bool, day_lines: bool) -> None:
    """The config byte's table (ZVT specification, Registration; Portalum.Zvt's
    ``RegistrationConfig`` sets the bits alike): a receipt goes to the ECR as Print Line
    (``06 D1``) only if the ECR prints that kind (0x02 payment, 0x04 administration) and
    its print type is Print Line (0x80); else the PT prints it and nothing is sent.

    Registered as ecrterm does by default (0xBA), the simulator used to send the end of
    day's receipt as Print Lines too, and ecrterm's ``end_of_day()`` then failed where a
    real terminal, printing that receipt itself, lets it finish (a PT that returns no
    Print Line at end of day is what ecrterm's users report, mathiasfrey/ecrterm#3)."""
    with ZvtSimulator(tcp_port=0) as sim:
        ecr = Ecr(sim.address)
        try:
            assert ecr.transmit(ecrterm_registration(config)).end.control == (0x06, 0x0F)
            sale = ecr.transmit(ECRTERM_PAYMENT_12_34)
            (result,) = sale.of(0x04, 0x0F)
            assert result.bmps[0x27] == b"\x00"
            assert bool(sale.of(0x06, 0xD1)) is sale_lines
            assert sale.end.control == (0x06, 0x0F)

            day = ecr.transmit(ECRTERM_END_OF_DAY)
            (totals,) = day.of(0x04, 0x0F)
            assert bcd_int(totals.bmps[0x04]) == 1234  # the totals come all the same
            assert bool(day.of(0x06, 0xD1)) is day_lines
            assert day.end.control == (0x06, 0x0F)
        finally:
            ecr.close()
