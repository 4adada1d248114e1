"""Concert request and answer codecs: the facts file's vectors, and no PAN kept anywhere."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DriverError, ProtocolError
from drivers.concert.framing import encode_frame
from drivers.concert.messages import (
    CURRENCY_NUMERIC,
    AnswerStatus,
    ConcertAnswer,
    ConcertRequest,
    MessageError,
    RequestError,
    TransactionType,
    UnsupportedCurrency,
    card_brand,
    currency_alpha,
    currency_numeric,
)

PAN = "4711690463168807"
REQUEST_FULL_DATA = bytes.fromhex(
    "3031 3030303031323530 31 31 30 393738 20202020202020202020 41303130 42303130"
)
REQUEST_TYPE2_DATA = b"0100001250012978" + b" " * 10 + b"A010B010"
DECLINED_SHORT_DATA = bytes.fromhex("3031 37 3030303031333133 31 393738 30303030303030303432")
APPROVED_FULL_DATA = b"".join(
    [b"01", b"0", b"00001250", b"1", PAN.encode(), b" " * 39, b"978", b"0000000042"]
)


def test_request_12_50_eur_debit_full_answer() -> None:
    request = ConcertRequest(pos_number=1, amount=1250, currency="EUR")
    assert request.encode() == REQUEST_FULL_DATA
    assert encode_frame(request.encode())[-1] == 0x01
    assert ConcertRequest.decode(REQUEST_FULL_DATA) == request


def test_request_type2_short_answer_vector() -> None:
    request = ConcertRequest(
        pos_number=1,
        amount=1250,
        currency="EUR",
        transaction_type=TransactionType.TYPE_2,
        full_answer=False,
    )
    assert request.encode() == REQUEST_TYPE2_DATA
    assert encode_frame(request.encode())[-1] == 0x02
    assert ConcertRequest.decode(REQUEST_TYPE2_DATA) == request


def test_refund_request_is_type_1() -> None:
    request = ConcertRequest(
        pos_number=7, amount=99, currency="usd", transaction_type=TransactionType.CREDIT
    )
    data = request.encode()
    assert data[0:2] == b"07"
    assert data[2:10] == b"00000099"
    assert data[12:13] == b"1"
    assert data[13:16] == b"840"


@pytest.mark.parametrize(
    ("alpha", "numeric"),
    [
        ("EUR", "978"),
        ("USD", "840"),
        ("GBP", "826"),
        ("CHF", "756"),
        ("SEK", "752"),
        ("DKK", "208"),
        ("NOK", "578"),
        ("PLN", "985"),
        ("CZK", "203"),
        ("HUF", "348"),
        ("CAD", "124"),
        ("AUD", "036"),
        ("JPY", "392"),
    ],
)
def test_currencies(alpha: str, numeric: str) -> None:
    assert currency_numeric(alpha) == numeric
    assert currency_numeric(alpha.lower()) == numeric
    assert currency_alpha(numeric) == alpha


def test_currency_table_is_read_only_and_unknowns_are_refused() -> None:
    with pytest.raises(TypeError):
        CURRENCY_NUMERIC["XXX"] = "999"  # type: ignore[index]
    with pytest.raises(UnsupportedCurrency):
        currency_numeric("XTS")
    assert currency_alpha("999") is None
    with pytest.raises(UnsupportedCurrency):
        ConcertRequest(pos_number=1, amount=100, currency="BTC")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pos_number": 0},
        {"pos_number": 100},
        {"amount": -1},
        {"amount": 100_000_000},
        {"private": "short"},
        {"mode": "\x01"},
        {"delay": "A012"},
        {"authorization": "B012"},
    ],
)
def test_request_field_bounds(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"pos_number": 1, "amount": 1250, "currency": "EUR"}
    base.update(kwargs)
    with pytest.raises(RequestError) as info:
        ConcertRequest(**base)  # type: ignore[arg-type]
    assert isinstance(info.value, DriverError)


@pytest.mark.parametrize(
    "data",
    [
        REQUEST_FULL_DATA[:-1],
        b"x" + REQUEST_FULL_DATA[1:],
        REQUEST_FULL_DATA[:10] + b"2" + REQUEST_FULL_DATA[11:],  # answer flag
        REQUEST_FULL_DATA[:12] + b"5" + REQUEST_FULL_DATA[13:],  # type
        REQUEST_FULL_DATA[:13] + b"999" + REQUEST_FULL_DATA[16:],  # currency
        REQUEST_FULL_DATA[:26] + b"A099" + REQUEST_FULL_DATA[30:],  # delay
    ],
)
def test_bad_requests_are_message_errors(data: bytes) -> None:
    with pytest.raises(MessageError):
        ConcertRequest.decode(data)


def test_approved_full_answer_keeps_only_last4() -> None:
    answer = ConcertAnswer.decode(APPROVED_FULL_DATA)
    assert answer.status is AnswerStatus.APPROVED
    assert answer.amount == 1250
    assert answer.currency == "EUR"
    assert answer.currency_numeric == "978"
    assert answer.private == "0000000042"
    assert answer.transaction_id == "0000000042"
    assert answer.full
    assert answer.last4 == "8807"
    assert answer.brand == "visa"
    # The dataclass never holds the card number, in any field or in its repr.
    assert PAN not in repr(answer)
    for value in dataclasses.asdict(answer).values():
        assert PAN not in str(value)
    assert {f.name for f in dataclasses.fields(answer)} == {
        "pos_number",
        "status",
        "amount",
        "mode",
        "currency_numeric",
        "private",
        "full",
        "last4",
        "brand",
    }


def test_approved_full_answer_encodes_to_the_vector() -> None:
    answer = ConcertAnswer.decode(APPROVED_FULL_DATA)
    data = answer.encode(card_number=PAN)
    assert data == APPROVED_FULL_DATA
    assert encode_frame(data)[-1] == 0x18


def test_declined_short_answer_vector() -> None:
    answer = ConcertAnswer.decode(DECLINED_SHORT_DATA)
    assert answer == ConcertAnswer(
        pos_number=1,
        status=AnswerStatus.DECLINED,
        amount=1313,
        mode="1",
        currency_numeric="978",
        private="0000000042",
        full=False,
    )
    assert answer.encode() == DECLINED_SHORT_DATA
    assert encode_frame(DECLINED_SHORT_DATA)[-1] == 0x34


def test_status_9_is_not_verified() -> None:
    data = DECLINED_SHORT_DATA[:2] + b"9" + DECLINED_SHORT_DATA[3:]
    assert ConcertAnswer.decode(data).status is AnswerStatus.NOT_VERIFIED


@pytest.mark.parametrize(
    ("report", "last4", "brand"),
    [
        (b"", None, None),
        (b"471169******8807", "8807", "visa"),
        (b"5412751234123456 EXP 1226", "3456", "mastercard"),
        (b"371449635398431", "8431", "amex"),
        (b"CHEQUE", None, None),
        (b"12345", None, None),
    ],
)
def test_report_field_variants(report: bytes, last4: str | None, brand: str | None) -> None:
    data = APPROVED_FULL_DATA[:12] + report.ljust(55) + APPROVED_FULL_DATA[67:]
    answer = ConcertAnswer.decode(data)
    assert answer.last4 == last4
    assert answer.brand == brand
    if len(report) >= 12:
        assert report.split()[0].decode() not in repr(answer)


def test_errors_in_a_full_answer_never_show_the_pan() -> None:
    bad_status = APPROVED_FULL_DATA[:2] + b"X" + APPROVED_FULL_DATA[3:]
    with pytest.raises(MessageError) as info:
        ConcertAnswer.decode(bad_status)
    assert PAN not in str(info.value)
    bad_currency = APPROVED_FULL_DATA[:67] + b"ABC" + APPROVED_FULL_DATA[70:]
    with pytest.raises(MessageError) as info:
        ConcertAnswer.decode(bad_currency)
    assert PAN not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        DECLINED_SHORT_DATA[:-1],
        APPROVED_FULL_DATA + b"0",
        DECLINED_SHORT_DATA[:3] + b"0000013X" + DECLINED_SHORT_DATA[11:],
        b"AB" + DECLINED_SHORT_DATA[2:],
    ],
)
def test_bad_answers_are_message_errors(data: bytes) -> None:
    with pytest.raises(MessageError):
        ConcertAnswer.decode(data)


def test_card_brand() -> None:
    assert card_brand("411111") == "visa"
    assert card_brand("222100") == "mastercard"
    assert card_brand("601100") is None
    assert card_brand("4111") is None


@given(st.binary(max_size=100))
def test_answer_decoder_raises_only_protocol_errors(data: bytes) -> None:
    try:
        ConcertAnswer.decode(data)
    except ProtocolError as exc:
        assert isinstance(exc, MessageError)


@given(st.binary(min_size=34, max_size=34))
def test_request_decoder_raises_only_protocol_errors(data: bytes) -> None:
    try:
        ConcertRequest.decode(data)
    except ProtocolError as exc:
        assert isinstance(exc, MessageError)


@given(
    status=st.sampled_from(list(AnswerStatus)),
    amount=st.integers(min_value=0, max_value=99_999_999),
    currency=st.sampled_from(sorted(CURRENCY_NUMERIC.values())),
    private=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=10, max_size=10
    ),
    full=st.booleans(),
)
def test_answer_round_trip(
    status: AnswerStatus, amount: int, currency: str, private: str, full: bool
) -> None:
    answer = ConcertAnswer(
        pos_number=1,
        status=status,
        amount=amount,
        mode="1",
        currency_numeric=currency,
        private=private,
        full=full,
        last4="8807" if full else None,
        brand="visa" if full else None,
    )
    assert ConcertAnswer.decode(answer.encode(PAN if full else None)) == answer
