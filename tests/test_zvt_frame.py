"""ZVT framing and messages against bytes captured from real terminals.

The vectors are the PT packets published in the test suite of the ECR library ecrterm
(ecrterm/tests/test_parsing.py: a Completion with software version in a serial frame with
its CRC, Status-Information of two real sales, a Completion after Registration, an
Intermediate status with a TLV display text, a Print Line) and an ECR Registration and
Authorisation it sends. The CRC check value 0x2189 of ``123456789`` is CRC-16/KERMIT's in
the published catalogue of CRC parameters. None of them comes from this code.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.zvt import messages as m
from drivers.zvt.framing import (
    ACK,
    NAK,
    ApduReader,
    BadCrc,
    Control,
    Frame,
    FrameParser,
    crc16_kermit,
    encode_apdu,
    encode_frame,
    parse_apdu,
)
from drivers.zvt.receipt import scrub


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


SERIAL_COMPLETION = hx("10 02 06 0F 0B F0 F0 F7 32 2E 31 34 2E 31 35 00 10 03 B1 11")
SALE_1 = hx("04 0F 37 27 00 04 00 00 00 00 40 00 49 09 78 0C 09 38 48 0D 04 25 22 F1 F1 59 66"
            " 66 66 66 D2 00 21 22 01 00 17 00 01 87 01 75 0B 61 39 95 19 40 29 60 09 99 14 0E"
            " 05 12 8A 02")
SALE_2 = hx("040fa12700040000000000014909780c1223060d062922f0f8474843eeeeee77438700023b3838393"
            "1353000000b000732196029420030360e18018a0a8c038bf0f556495341002a343535363030303030"
            "353939202020 3cf0f7f341532d544944203d2031334630303031330d41532d50726f632d436f6465"
            "203d203230203930332030300d436170742e2d5265662e3d20303030300d41494435393a203830393"
            "23538")
REGISTRATION_COMPLETION = hx("06 0F 11 19 00 29 52 00 12 33 49 09 78 06 05 27 03 14 01 FF")
INTERMEDIATE = hx("04 FF 1E 0A 01 06 1A 24 18 07 16 42 69 74 74 65 20 4B 61 72 74 65 20 65 69"
                  " 6E 73 74 65 63 6B 65 6E")
PRINT_LINE = hx("06 D1 17 00 20 20 20 20 20 20 20 20 20 4B 61 73 73 65 6E 73 63 68 6E 69 74 74")
ECR_REGISTRATION = hx(
    "06 00 63 00 00 00 FE 09 78 03 00 06 59 10 02 16 02 12 01 40 1A 02 10 00 26 28 0A 02 04 0F"
    " 0A 02 06 0F 0A 02 06 1E 0A 02 04 FF 0A 02 06 D8 0A 02 06 DB 0A 02 06 D9 0A 02 06 DA 0A"
    " 02 06 DD 0A 02 06 D3 27 03 14 01 FF 28 10 15 02 44 45 15 02 45 4E 15 02 46 52 15 02 49"
    " 54 40 02 C0 00 1F 04 02 F1 00 1F 05 01 00")
ECR_AUTHORISATION = hx("06 01 0E 02 01 04 00 00 00 00 10 00 19 44 49 09 78")


def test_crc_is_kermit() -> None:
    assert crc16_kermit(b"123456789") == 0x2189


def test_a_captured_serial_frame_checks_and_is_rebuilt_byte_for_byte() -> None:
    parser = FrameParser()
    parser.feed(SERIAL_COMPLETION)
    frame = parser.next_event()
    assert isinstance(frame, Frame)
    assert encode_frame(frame.apdu) == SERIAL_COMPLETION
    completion = m.decode_pt(parse_apdu(frame.apdu))
    assert completion == m.Completion(sw_version="2.14.15", terminal_status=0)


def test_a_corrupt_crc_is_reported_and_the_parser_goes_on() -> None:
    parser = FrameParser()
    broken = SERIAL_COMPLETION[:-1] + bytes((SERIAL_COMPLETION[-1] ^ 1,))
    parser.feed(broken + bytes((ACK,)) + SERIAL_COMPLETION)
    with pytest.raises(BadCrc):
        parser.next_event()
    assert parser.next_event() is Control.ACK
    assert isinstance(parser.next_event(), Frame)


@settings(max_examples=300)
@given(st.binary(min_size=3, max_size=400))
def test_dle_stuffing_round_trips_any_apdu(data: bytes) -> None:
    parser = FrameParser()
    parser.feed(b"\x00garbage" + encode_frame(data) + bytes((NAK,)))
    event = parser.next_event()
    assert isinstance(event, Frame)
    assert event.apdu == data
    assert parser.next_event() is Control.NAK


def test_long_apdus_use_ff_and_two_bytes_low_first() -> None:
    apdu = encode_apdu(0x06, 0xD3, bytes(300))
    assert apdu[:5] == bytes((0x06, 0xD3, 0xFF, 0x2C, 0x01))
    reader = ApduReader()
    reader.feed(apdu[:4])
    assert reader.next_apdu() is None
    reader.feed(apdu[4:] + m.ACK_APDU)
    first = reader.next_apdu()
    assert first is not None and len(first.data) == 300
    assert reader.next_apdu() == parse_apdu(m.ACK_APDU)


def test_amounts_and_currency_are_bcd() -> None:
    request = parse_apdu(m.authorisation(1250, "EUR"))
    assert request.data == hx("04 00 00 00 00 12 50 49 09 78")


def test_captured_sales_decode_without_keeping_the_card_number() -> None:
    first = m.decode_pt(parse_apdu(SALE_1))
    assert isinstance(first, m.StatusInformation)
    assert (first.result_code, first.amount, first.currency, first.receipt, first.trace) == \
        (0, 4000, "EUR", 175, 613995)
    assert first.last4 == "6666"  # a girocard's track-2 style field: PAN D expiry…
    second = m.decode_pt(parse_apdu(SALE_2))
    assert isinstance(second, m.StatusInformation)
    assert (second.amount, second.last4, second.card_name, second.auth_code,
            second.terminal_id) == (1, "7743", "VISA", "889150", "42003036")
    assert second.additional_text is not None and "AS-TID" in second.additional_text
    assert "474843" not in repr(second)  # the masked PAN's first digits are dropped too


def test_captured_completion_intermediate_and_print_line() -> None:
    assert m.decode_pt(parse_apdu(REGISTRATION_COMPLETION)) == m.Completion(
        terminal_status=0, terminal_id="52001233", currency="EUR")
    status = m.decode_pt(parse_apdu(INTERMEDIATE))
    assert status == m.IntermediateStatus(0x0A, 1)
    assert status.text == "insert card"
    assert m.decode_pt(parse_apdu(PRINT_LINE)) == m.PrintText(("         Kassenschnitt",))


def test_captured_ecr_commands_decode_on_the_terminal_side() -> None:
    registration = m.decode_ecr(parse_apdu(ECR_REGISTRATION))
    assert (registration.cmd, registration.password, registration.config,
            registration.currency) == (m.Cmd.REGISTRATION, "000000", 0xFE, "EUR")
    authorisation = m.decode_ecr(parse_apdu(ECR_AUTHORISATION))
    assert (authorisation.cmd, authorisation.amount, authorisation.currency) == \
        (m.Cmd.AUTHORISATION, 1000, "EUR")


def test_an_unknown_bmp_is_an_error_not_a_guess() -> None:
    with pytest.raises(m.MessageError):
        m.read_bmps(hx("27 00 FF 01"))
    with pytest.raises(m.MessageError):
        m.read_bmps(hx("22 F1"))  # LLVAR cut short


def test_refusals_and_acks() -> None:
    assert m.decode_pt(parse_apdu(hx("80 00 00"))) == m.Accepted()
    refused = m.decode_pt(parse_apdu(hx("84 9C 00")))
    assert refused == m.Refused(0x9C)


@pytest.mark.parametrize("line, expected", [
    ("Karte 4711690463168807", "Karte ************8807"),
    ("4711 6904 6316 8807", "**** **** **** 8807"),
    ("Karte ************8807", "Karte ************8807"),
    ("TID 52001233 Trace 001001 Beleg 0042", "TID 52001233 Trace 001001 Beleg 0042"),
])
def test_receipt_lines_never_keep_a_card_number(line: str, expected: str) -> None:
    assert scrub(line) == expected


def test_totals_round_trip() -> None:
    raw = m.encode_totals(42, 47, {"visa": (4, 1000), "girocard": (1, 250)})
    totals = m.decode_totals(raw)
    assert (totals.receipt_from, totals.receipt_to) == (42, 47)
    assert totals.groups == (("girocard", 1, 250), ("visa", 4, 1000))
