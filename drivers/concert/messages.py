"""Concert (Ingenico Telium E+) messages: the 34-character request, the 80/25-character answer.

Layouts from ``docs/facts/concert.md`` (public sources: PayXpert "USB/RS232 -
Specifications" and "Concert V2/V3" pages; the ECR-side libraries pyteliummanager and
pypostelium agree byte for byte). Only facts were taken from those sources, no code.

Request (34 characters): POS number (2), amount in minor units (8), answer flag (1, ``1``
full / ``0`` short), mode (1, ``1`` card), type (1, ``0`` debit, ``1`` credit), ISO 4217
numeric currency (3), private field (10, spaces), delay (4, ``A010``), authorisation (4,
``B010``).

Answer: POS number (2), status (1), amount (8), mode (1), report (55, full answer only),
currency (3), private field (10: the terminal's transaction identifier).

Decisions made here:

- Status ``0`` approved, ``7`` declined. Status ``9`` ("not verified"; one library calls it
  a timeout) is kept as :attr:`AnswerStatus.NOT_VERIFIED`: the terminal answered without a
  verified outcome, so the driver reports ``Outcome.UNKNOWN`` with ``raw_status='9'`` rather
  than ``DECLINED`` — a "declined" that was in fact charged would lead the cashier to charge
  the customer twice, while an "unknown" is resolved by a manager. Any other status byte is
  a :class:`MessageError`.
- Type ``2`` is read as cancel by the V3 documents and as refund by one library. It can be
  encoded and decoded (:attr:`TransactionType.TYPE_2`, to keep the vectors testable), but
  the driver never sends it.
- The report field of a full answer starts with the card number. The decoder cuts it to its
  last four digits (and a brand guessed from the first digits) at once: an
  :class:`ConcertAnswer` never holds a PAN, and the report itself is not kept. No error
  raised here carries any part of the report.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from drivers.base import NothingSent, ProtocolError

REQUEST_LENGTH = 34
ANSWER_FULL_LENGTH = 80
ANSWER_SHORT_LENGTH = 25
REPORT_LENGTH = 55
PRIVATE_LENGTH = 10
MAX_AMOUNT = 99_999_999
"""Eight digits of minor units."""

MODE_CARD = "1"
MODE_CHEQUE = "C"
DELAY_AT_END = "A010"
DELAY_AT_ONCE = "A011"
AUTH_NORMAL = "B010"
AUTH_FORCE_ONLINE = "B011"

CURRENCY_NUMERIC: Mapping[str, str] = MappingProxyType(
    {
        "EUR": "978",
        "USD": "840",
        "GBP": "826",
        "CHF": "756",
        "SEK": "752",
        "DKK": "208",
        "NOK": "578",
        "PLN": "985",
        "CZK": "203",
        "HUF": "348",
        "CAD": "124",
        "AUD": "036",
        "JPY": "392",
    }
)
"""ISO 4217 alpha → numeric, for the currencies the driver accepts."""

CURRENCY_ALPHA: Mapping[str, str] = MappingProxyType(
    {numeric: alpha for alpha, numeric in CURRENCY_NUMERIC.items()}
)

_DIGITS2 = re.compile(rb"[0-9]{2}")
_DIGITS3 = re.compile(rb"[0-9]{3}")
_DIGITS8 = re.compile(rb"[0-9]{8}")


class MessageError(ProtocolError):
    """A frame arrived intact but its content is not a valid Concert message."""


class RequestError(NothingSent, ValueError):
    """A request that cannot be put on the wire (amount, currency, POS number…)."""


class UnsupportedCurrency(RequestError):
    """The currency has no ISO 4217 numeric code known to this driver."""


def currency_numeric(alpha: str) -> str:
    """ISO 4217 numeric code of ``alpha`` (``EUR`` → ``978``)."""
    try:
        return CURRENCY_NUMERIC[alpha.upper()]
    except KeyError:
        raise UnsupportedCurrency(f"currency {alpha!r} is not supported by Concert") from None


def currency_alpha(numeric: str) -> str | None:
    """ISO 4217 alpha code of ``numeric`` (``978`` → ``EUR``), ``None`` if unknown here."""
    return CURRENCY_ALPHA.get(numeric)


class TransactionType(enum.StrEnum):
    DEBIT = "0"
    """A sale."""
    CREDIT = "1"
    """A refund."""
    TYPE_2 = "2"
    """Cancel (V3 documents) or refund (one library): ambiguous, never sent by the driver."""


class AnswerStatus(enum.StrEnum):
    APPROVED = "0"
    DECLINED = "7"
    NOT_VERIFIED = "9"


def _check_printable(value: str, name: str, length: int) -> None:
    if len(value) != length or not all(" " <= ch <= "~" for ch in value):
        raise RequestError(f"{name} must be {length} printable ASCII characters")


@dataclass(frozen=True, slots=True)
class ConcertRequest:
    """The ECR's request. ``amount`` in minor units, ``currency`` ISO 4217 alpha."""

    pos_number: int
    amount: int
    currency: str
    transaction_type: TransactionType = TransactionType.DEBIT
    full_answer: bool = True
    mode: str = MODE_CARD
    private: str = " " * PRIVATE_LENGTH
    delay: str = DELAY_AT_END
    authorization: str = AUTH_NORMAL

    def __post_init__(self) -> None:
        if not 1 <= self.pos_number <= 99:
            raise RequestError(f"POS number {self.pos_number} is not within 1..99")
        if not 0 <= self.amount <= MAX_AMOUNT:
            raise RequestError(f"amount {self.amount} is not within 0..{MAX_AMOUNT} minor units")
        currency_numeric(self.currency)
        _check_printable(self.mode, "mode", 1)
        _check_printable(self.private, "private field", PRIVATE_LENGTH)
        if self.delay not in (DELAY_AT_END, DELAY_AT_ONCE):
            raise RequestError(f"delay {self.delay!r} is neither A010 nor A011")
        if self.authorization not in (AUTH_NORMAL, AUTH_FORCE_ONLINE):
            raise RequestError(f"authorisation {self.authorization!r} is neither B010 nor B011")

    @property
    def currency_numeric(self) -> str:
        return currency_numeric(self.currency)

    def encode(self) -> bytes:
        """The 34 characters that go inside the frame."""
        text = (
            f"{self.pos_number:02d}{self.amount:08d}{'1' if self.full_answer else '0'}"
            f"{self.mode}{self.transaction_type.value}{self.currency_numeric}"
            f"{self.private}{self.delay}{self.authorization}"
        )
        return text.encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> ConcertRequest:
        """Read a request (the terminal side: the simulator)."""
        if len(data) != REQUEST_LENGTH:
            raise MessageError(f"a request has {REQUEST_LENGTH} characters, not {len(data)}")
        if not _DIGITS2.fullmatch(data[0:2]) or not _DIGITS8.fullmatch(data[2:10]):
            raise MessageError("request POS number or amount is not numeric")
        if not _DIGITS3.fullmatch(data[13:16]):
            raise MessageError("request currency is not numeric")
        text = data.decode("ascii", errors="replace")
        flag = text[10]
        if flag not in ("0", "1"):
            raise MessageError(f"answer flag {flag!r} is neither 0 nor 1")
        try:
            transaction_type = TransactionType(text[12])
        except ValueError:
            raise MessageError(f"transaction type {text[12]!r} is not supported") from None
        alpha = currency_alpha(text[13:16])
        if alpha is None:
            raise MessageError(f"currency {text[13:16]} is not supported")
        try:
            return cls(
                pos_number=int(text[0:2]),
                amount=int(text[2:10]),
                currency=alpha,
                transaction_type=transaction_type,
                full_answer=flag == "1",
                mode=text[11],
                private=text[16:26],
                delay=text[26:30],
                authorization=text[30:34],
            )
        except RequestError as exc:
            raise MessageError(str(exc)) from None


def card_brand(leading_digits: str) -> str | None:
    """A brand from the first digits of a card number (IIN), ``None`` when unsure."""
    if len(leading_digits) < 6 or not leading_digits[:6].isdigit():
        return None
    two = int(leading_digits[:2])
    four = int(leading_digits[:4])
    if leading_digits[0] == "4":
        return "visa"
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    return None


def _card_from_report(report: bytes) -> tuple[str | None, str | None]:
    """(last4, brand) from the report field. The report is dropped by the caller at once."""
    tokens = report.split()
    if not tokens:
        return None, None
    card = tokens[0]
    if len(card) < 12 or not card[-4:].isdigit():
        return None, None
    text = card.decode("ascii", errors="replace")
    return text[-4:], card_brand(text)


@dataclass(frozen=True, slots=True)
class ConcertAnswer:
    """The terminal's answer. ``last4``/``brand`` only: no card number is ever held."""

    pos_number: int
    status: AnswerStatus
    amount: int
    mode: str
    currency_numeric: str
    private: str
    full: bool
    last4: str | None = None
    brand: str | None = None

    @property
    def currency(self) -> str | None:
        """ISO 4217 alpha code, ``None`` if the numeric code is not known here."""
        return currency_alpha(self.currency_numeric)

    @property
    def transaction_id(self) -> str | None:
        """The private field without its padding: the reference E+ gives, if any."""
        value = self.private.strip()
        return value or None

    @classmethod
    def decode(cls, data: bytes) -> ConcertAnswer:
        """Read the data of an answer frame; the card number is cut to last4 right here."""
        if len(data) == ANSWER_FULL_LENGTH:
            full = True
            report_end = 12 + REPORT_LENGTH
            last4, brand = _card_from_report(data[12:report_end])
        elif len(data) == ANSWER_SHORT_LENGTH:
            full = False
            report_end = 12
            last4, brand = None, None
        else:
            raise MessageError(
                f"an answer has {ANSWER_FULL_LENGTH} or {ANSWER_SHORT_LENGTH} characters,"
                f" not {len(data)}"
            )
        head = data[:12]
        tail = data[report_end:]
        if not _DIGITS2.fullmatch(head[0:2]) or not _DIGITS8.fullmatch(head[3:11]):
            raise MessageError("answer POS number or amount is not numeric")
        if not _DIGITS3.fullmatch(tail[0:3]):
            raise MessageError("answer currency is not numeric")
        if not all(0x20 <= b <= 0x7E for b in head + tail):
            raise MessageError("answer holds non-printable characters")
        head_text = head.decode("ascii")
        tail_text = tail.decode("ascii")
        try:
            status = AnswerStatus(head_text[2])
        except ValueError:
            raise MessageError(f"answer status {head_text[2]!r} is not 0, 7 or 9") from None
        return cls(
            pos_number=int(head_text[0:2]),
            status=status,
            amount=int(head_text[3:11]),
            mode=head_text[11],
            currency_numeric=tail_text[0:3],
            private=tail_text[3:13],
            full=full,
            last4=last4,
            brand=brand,
        )

    def encode(self, card_number: str | None = None) -> bytes:
        """The answer's characters (the terminal side). ``card_number`` fills the report."""
        if not 0 <= self.amount <= MAX_AMOUNT:
            raise MessageError(f"amount {self.amount} does not fit in 8 digits")
        if len(self.private) != PRIVATE_LENGTH or len(self.currency_numeric) != 3:
            raise MessageError("private field must have 10 characters, currency 3")
        head = f"{self.pos_number:02d}{self.status.value}{self.amount:08d}{self.mode}"
        report = ""
        if self.full:
            report = (card_number or "").ljust(REPORT_LENGTH)
            if len(report) != REPORT_LENGTH:
                raise MessageError(f"report longer than {REPORT_LENGTH} characters")
        text = f"{head}{report}{self.currency_numeric}{self.private}"
        try:
            return text.encode("ascii")
        except UnicodeEncodeError:
            raise MessageError("answer fields must be ASCII") from None
