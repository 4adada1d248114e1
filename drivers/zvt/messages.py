"""ZVT APDUs: the ECR's commands, the terminal's messages, their BMPs and TLV containers.

Facts only (``docs/facts/zvt.md``; the specification's summary tables of BMPs,
result codes and intermediate status codes as the ECR libraries ecrterm and Portalum.Zvt
publish them, and the PT packets captured in ecrterm's test suite, used as test vectors):

- BCD: amounts 6 bytes in minor units, currency 2 bytes (``09 78`` EUR), password 3 bytes,
  receipt number 2 bytes, trace number 3 bytes, time ``HHMMSS`` 3 bytes, date ``MMDD`` 2;
- BMP lengths (chapter "summary of utilised BMPs"): fixed, or LLVAR/LLLVAR whose length
  digits are sent as ``F0+n`` bytes; BMP 06 is a TLV container (BER tags and lengths);
- the card number (BMP 22) is LLVAR BCD, masked digits sent as ``E``, padded with ``F``:
  :func:`decode_pt` keeps its last four digits and nothing else;
- the config byte of Registration: 0x02 ECR prints payment receipts, 0x04 ECR prints
  administration receipts, 0x08 PT sends intermediate status, 0x10 ECR controls payment,
  0x20 ECR controls administration, 0x80 the ECR's print type: set, the receipts the ECR
  prints (0x02, 0x04) come as Print Line (``06 D1``); clear, the ECR composes them from the
  Status-Information. A receipt whose bit (0x02 or 0x04) is clear stays on the PT's own
  printer and is never sent to the ECR (the specification's config-byte table: ``1xxx x01x``
  payment receipts as Print Line, the PT prints the administration receipts; ``1xxx x00x``
  the PT prints everything; Portalum.Zvt's ``RegistrationConfig`` sets the bits the same
  way). (The facts file's example ``0x86`` lacks 0x08; ecrterm's and Portalum's tables agree
  on 0x08.)
- Status enquiry (``05 01``): ``[<password> [03 <service byte>] [06 <TLV>]]``, all of it
  optional (the specification's summary of commands); ecrterm's ``detect_pt`` sends
  ``05 01 00``.
- End-of-day individual totals (BMP 60): receipt number from and to (2 + 2 BCD), then for
  each card group (girocard/ec, JCB, Eurocard/Mastercard, Amex, Visa, Diners, others) a
  count (1 byte binary) and a turnover (6 bytes BCD).

The simulator uses the encoders of the terminal's side; the tests check both sides against
captured bytes, so that this module is not the only witness of itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from drivers.base import NothingSent, ProtocolError
from drivers.concert.messages import CURRENCY_ALPHA, CURRENCY_NUMERIC
from drivers.zvt.framing import Apdu, encode_apdu
from drivers.zvt.receipt import scrub

MAX_AMOUNT = 999_999_999_999
"""Twelve BCD digits of minor units."""


class MessageError(ProtocolError):
    """An APDU arrived whole but its content is not valid ZVT."""


class RequestError(NothingSent, ValueError):
    """A command that cannot be put on the wire (amount, currency, password…)."""


# -- commands ---------------------------------------------------------------------------


class Cmd(tuple[int, int], enum.Enum):
    """Control fields (class, instruction) of the APDUs this package speaks."""

    ACK = (0x80, 0x00)
    REFUSED = (0x84, 0x00)  # 84 xx: the instruction byte is the error code
    STATUS_INFORMATION = (0x04, 0x0F)
    INTERMEDIATE_STATUS = (0x04, 0xFF)
    STATUS_ENQUIRY = (0x05, 0x01)
    REGISTRATION = (0x06, 0x00)
    AUTHORISATION = (0x06, 0x01)
    LOG_OFF = (0x06, 0x02)
    COMPLETION = (0x06, 0x0F)
    ABORT = (0x06, 0x1E)
    REPEAT_RECEIPT = (0x06, 0x20)
    REVERSAL = (0x06, 0x30)
    REFUND = (0x06, 0x31)
    END_OF_DAY = (0x06, 0x50)
    ABORT_COMMAND = (0x06, 0xB0)
    PRINT_LINE = (0x06, 0xD1)
    PRINT_TEXT_BLOCK = (0x06, 0xD3)


CONFIG_ECR_PRINTS_PAYMENT = 0x02
CONFIG_ECR_PRINTS_ADMIN = 0x04
CONFIG_INTERMEDIATE_STATUS = 0x08
CONFIG_ECR_CONTROLS_PAYMENT = 0x10
CONFIG_ECR_CONTROLS_ADMIN = 0x20
CONFIG_PRINT_LINES = 0x80
DEFAULT_CONFIG = (CONFIG_ECR_PRINTS_PAYMENT | CONFIG_ECR_PRINTS_ADMIN
                  | CONFIG_INTERMEDIATE_STATUS | CONFIG_ECR_CONTROLS_PAYMENT
                  | CONFIG_ECR_CONTROLS_ADMIN | CONFIG_PRINT_LINES)
"""0xBE: the register prints every receipt (sent as Print Line), the PT sends intermediate
status, and neither payments nor administration can be started on the PT's own keys."""


def ecr_gets_print_lines(config: int, *, administration: bool) -> bool:
    """Whether a PT registered with ``config`` sends a receipt to the ECR as Print Line:
    the ECR prints that kind (0x02 payment, 0x04 administration, e.g. end of day) and its
    print type is Print Line (0x80). Otherwise the PT prints it itself, or (0x80 clear) the
    ECR composes it from the Status-Information."""
    kind = CONFIG_ECR_PRINTS_ADMIN if administration else CONFIG_ECR_PRINTS_PAYMENT
    return bool(config & CONFIG_PRINT_LINES and config & kind)

ACK_APDU = encode_apdu(0x80, 0x00)
"""``80 00 00``: received and accepted (either direction)."""


# -- BCD and friends --------------------------------------------------------------------


def bcd(value: int, size: int) -> bytes:
    """``value`` as ``size`` bytes of BCD (``bcd(1250, 6)`` → ``00 00 00 00 12 50``)."""
    digits = f"{value:0{size * 2}d}"
    if value < 0 or len(digits) != size * 2:
        raise ValueError(f"{value} does not fit in {size} BCD bytes")
    return bytes.fromhex(digits)


def bcd_digits(raw: bytes) -> str:
    """The nibbles of ``raw`` as hex characters (``E`` masked digit, ``F`` padding)."""
    return raw.hex().upper()


def from_bcd(raw: bytes) -> int:
    text = raw.hex()
    if not text.isdigit():
        raise MessageError("a BCD number holds a non-decimal nibble")
    return int(text or "0")


def password_bytes(password: str) -> bytes:
    if len(password) != 6 or not password.isascii() or not password.isdigit():
        raise RequestError("the ZVT password is six digits")
    return bytes.fromhex(password)


def currency_code(alpha: str) -> bytes:
    """``EUR`` → ``09 78``."""
    numeric = CURRENCY_NUMERIC.get(alpha.upper())
    if numeric is None:
        raise RequestError(f"currency {alpha!r} has no ISO 4217 numeric code known here")
    return bcd(int(numeric), 2)


def currency_of(raw: bytes) -> str | None:
    """``09 78`` → ``EUR`` (``None`` if unknown here)."""
    try:
        return CURRENCY_ALPHA.get(f"{from_bcd(raw):03d}")
    except MessageError:
        return None


def amount_bytes(amount: int) -> bytes:
    if isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise RequestError(f"amount {amount} must be from 1 to {MAX_AMOUNT} minor units")
    return bcd(amount, 6)


def lvar(value: bytes, digits: int) -> bytes:
    """An LLVAR (``digits=2``) or LLLVAR (3) field: ``F0+n`` length bytes, then the value."""
    if len(value) >= 10 ** digits:
        raise ValueError(f"{len(value)} bytes do not fit an L{'L' * digits}VAR")
    text = f"{len(value):0{digits}d}"
    return bytes(0xF0 | int(ch) for ch in text) + value


# -- BMPs -------------------------------------------------------------------------------

LL = -2
LLL = -3
TLV = -1
BMP_LENGTHS: Mapping[int, int] = MappingProxyType({
    0x01: 1, 0x02: 1, 0x03: 1, 0x04: 6, 0x05: 1, 0x06: TLV, 0x0B: 3, 0x0C: 3, 0x0D: 2,
    0x0E: 2, 0x17: 2, 0x19: 1, 0x22: LL, 0x23: LL, 0x24: LLL, 0x27: 1, 0x29: 4, 0x2A: 15,
    0x2D: LL, 0x2E: LLL, 0x37: 3, 0x3A: 2, 0x3B: 8, 0x3C: LLL, 0x3D: 3, 0x49: 2, 0x60: LLL,
    0x87: 2, 0x88: 3, 0x8A: 1, 0x8B: LL, 0x8C: 1, 0x92: LLL, 0x9A: LLL, 0xA0: 1, 0xA7: LL,
    0xAA: 3, 0xAF: LLL, 0xBA: 5, 0xD0: 1, 0xD1: LL, 0xD2: 1, 0xD3: 1, 0xE0: 1, 0xE1: LL,
    0xE2: LL, 0xE3: LL, 0xE4: LL, 0xE5: LL, 0xE6: LL, 0xE7: LL, 0xE8: LL, 0xE9: 1, 0xEA: 1,
    0xEB: 8, 0xF0: 1, 0xF1: LL, 0xF2: LL, 0xF3: LL, 0xF4: LL, 0xF5: LL, 0xF6: LL, 0xF7: LL,
    0xF8: LL, 0xF9: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFD: 1,
})
"""Every BMP of the specification's summary table: its fixed length, or LL / LLL / TLV."""


def tlv_length(data: bytes, pos: int) -> tuple[int, int]:
    """A BER length at ``pos``: (length, position after it)."""
    if pos >= len(data):
        raise MessageError("a TLV length is missing")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count not in (1, 2) or pos + 1 + count > len(data):
        raise MessageError("a TLV length is malformed")
    return int.from_bytes(data[pos + 1:pos + 1 + count], "big"), pos + 1 + count


def encode_tlv_length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    if size <= 0xFF:
        return bytes((0x81, size))
    return bytes((0x82, size >> 8, size & 0xFF))


def read_bmps(data: bytes) -> list[tuple[int, bytes]]:
    """The BMPs of ``data`` in order; :class:`MessageError` for an unknown tag or a cut."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        spec = BMP_LENGTHS.get(tag)
        if spec is None:
            raise MessageError(f"unknown BMP 0x{tag:02X}")
        if spec == TLV:
            size, pos = tlv_length(data, pos)
        elif spec in (LL, LLL):
            digits = -spec
            head = data[pos:pos + digits]
            if len(head) != digits or any(b & 0xF0 != 0xF0 or b & 0x0F > 9 for b in head):
                raise MessageError(f"BMP 0x{tag:02X}: bad L*VAR length")
            size = int("".join(str(b & 0x0F) for b in head))
            pos += digits
        else:
            size = spec
        if pos + size > len(data):
            raise MessageError(f"BMP 0x{tag:02X} is cut short")
        out.append((tag, data[pos:pos + size]))
        pos += size
    return out


def encode_bmp(tag: int, value: bytes) -> bytes:
    spec = BMP_LENGTHS[tag]
    if spec == TLV:
        return bytes((tag,)) + encode_tlv_length(len(value)) + value
    if spec in (LL, LLL):
        return bytes((tag,)) + lvar(value, -spec)
    if len(value) != spec:
        raise ValueError(f"BMP 0x{tag:02X} takes {spec} bytes, not {len(value)}")
    return bytes((tag,)) + value


def read_tlv(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level TLV objects of a container: (tag as an integer, value)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:  # the tag continues while bit 8 is set
            while True:
                if pos >= len(data):
                    raise MessageError("a TLV tag is cut short")
                tag = tag << 8 | data[pos]
                pos += 1
                if not data[pos - 1] & 0x80:
                    break
        size, pos = tlv_length(data, pos)
        if pos + size > len(data):
            raise MessageError("a TLV value is cut short")
        out.append((tag, data[pos:pos + size]))
        pos += size
    return out


def encode_tlv(items: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for tag, value in items:
        out += tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
        out += encode_tlv_length(len(value)) + value
    return bytes(out)


def _text(raw: bytes) -> str:
    """ZVT text (7-bit ASCII or the PT's 8-bit set, code page 437), NULs dropped."""
    return raw.replace(b"\x00", b"").decode("cp437", errors="replace")


# -- ECR -> PT --------------------------------------------------------------------------


def _apdu(cmd: Cmd, data: bytes) -> bytes:
    return encode_apdu(cmd.value[0], cmd.value[1], data)


def registration(password: str, currency: str, config: int = DEFAULT_CONFIG,
                 service_byte: int | None = None) -> bytes:
    data = password_bytes(password) + bytes((config,)) + currency_code(currency)
    if service_byte is not None:
        data += encode_bmp(0x03, bytes((service_byte,)))
    return _apdu(Cmd.REGISTRATION, data)


def authorisation(amount: int, currency: str) -> bytes:
    return _apdu(Cmd.AUTHORISATION, encode_bmp(0x04, amount_bytes(amount))
                       + encode_bmp(0x49, currency_code(currency)))


def refund(password: str, amount: int, currency: str) -> bytes:
    return _apdu(Cmd.REFUND, password_bytes(password)
                       + encode_bmp(0x04, amount_bytes(amount))
                       + encode_bmp(0x49, currency_code(currency)))


def reversal(password: str, receipt: int) -> bytes:
    if not 0 <= receipt <= 9999:
        raise RequestError(f"receipt number {receipt} is not four digits")
    return _apdu(Cmd.REVERSAL, password_bytes(password) + encode_bmp(0x87, bcd(receipt, 2)))


def password_command(cmd: Cmd, password: str) -> bytes:
    """End of day, repeat receipt, status enquiry: the password and nothing else."""
    return _apdu(cmd, password_bytes(password))


def abort_command() -> bytes:
    return _apdu(Cmd.ABORT_COMMAND, b"")


@dataclass(frozen=True, slots=True)
class EcrCommand:
    """A command as the terminal reads it (the simulator's side)."""

    cmd: Cmd | None
    control: tuple[int, int]
    password: str | None = None
    config: int | None = None
    currency: str | None = None
    amount: int | None = None
    receipt: int | None = None
    bmps: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)


_WITH_PASSWORD = frozenset({Cmd.REGISTRATION, Cmd.REVERSAL, Cmd.REFUND, Cmd.END_OF_DAY,
                            Cmd.REPEAT_RECEIPT, Cmd.STATUS_ENQUIRY, Cmd.LOG_OFF})
_BY_CONTROL = {c.value: c for c in Cmd if c is not Cmd.REFUSED}


def decode_ecr(apdu: Apdu) -> EcrCommand:
    """Read a command from the ECR; :class:`MessageError` when its data is not valid."""
    cmd = _BY_CONTROL.get(apdu.command)
    data = apdu.data
    password = config = None
    currency: str | None = None
    if cmd is Cmd.STATUS_ENQUIRY and not data:
        pass  # the password is optional: 05 01 00 asks the status all the same
    elif cmd in _WITH_PASSWORD and cmd is not Cmd.LOG_OFF:
        if len(data) < 3:
            raise MessageError(f"{cmd.name} without its password")
        password, data = data[:3].hex(), data[3:]
    if cmd is Cmd.REGISTRATION:
        if not data:
            raise MessageError("REGISTRATION without its config byte")
        config, data = data[0], data[1:]
        if len(data) >= 2:
            try:
                if data[0] not in (0x03, 0x06):
                    raise MessageError("not BMPs")
                read_bmps(data)
            except MessageError:
                currency = currency_of(data[:2]) or f"#{data[:2].hex()}"
                data = data[2:]
    bmps = tuple(read_bmps(data)) if cmd is not None else ()
    values = dict(bmps)
    amount = from_bcd(values[0x04]) if 0x04 in values else None
    if 0x49 in values:
        currency = currency_of(values[0x49]) or f"#{values[0x49].hex()}"
    receipt = from_bcd(values[0x87]) if 0x87 in values else None
    return EcrCommand(cmd, apdu.command, password, config, currency, amount, receipt, bmps)


# -- PT -> ECR --------------------------------------------------------------------------

RESULT_TEXTS: Mapping[int, str] = MappingProxyType({
    0x00: "approved", 0x05: "declined by the card issuer", 0x64: "card not readable",
    0x65: "card data not present", 0x66: "processing error",
    0x67: "function not permitted for ec and Maestro cards",
    0x68: "function not permitted for credit and tank cards", 0x6A: "turnover file full",
    0x6B: "function deactivated (PT not registered)",
    0x6C: "aborted (timeout or abort key)", 0x6E: "card in blocked list",
    0x6F: "wrong currency", 0x71: "credit not sufficient (chip card)", 0x72: "chip error",
    0x73: "card data incorrect", 0x77: "end-of-day batch not possible",
    0x78: "card expired", 0x79: "card not yet valid", 0x7A: "card unknown",
    0x7D: "communication error", 0x83: "function not possible", 0x85: "key missing",
    0x89: "PIN pad defective", 0x9A: "ZVT protocol error",
    0x9B: "error from dial-up / communication fault", 0x9C: "please wait (repeat later)",
    0xA0: "receiver not ready", 0xB1: "no receipt to repeat",
    0xF0: "open end-of-day batch present", 0xFE: "register unknown", 0xFF: "system error",
})
"""Result codes of the specification's error table (01-63 come from the card issuer)."""


def result_text(code: int) -> str:
    text = RESULT_TEXTS.get(code)
    if text is not None:
        return text
    if 0x01 <= code <= 0x63:
        return f"declined by the card issuer (code {code:02X})"
    return f"result code {code:02X}"


CUSTOMER_ABORTS = frozenset({0x6C})
"""Result codes that mean the transaction was stopped (abort key, timeout, 06 B0):
``canceled``; every other non-zero code is ``declined``."""

INTERMEDIATE_TEXTS: Mapping[int, str] = MappingProxyType({
    0x00: "waiting for amount confirmation", 0x01: "please watch PIN pad",
    0x02: "please watch PIN pad", 0x03: "not accepted", 0x04: "waiting for the host",
    0x05: "sending auto-reversal", 0x06: "sending post-bookings", 0x07: "card not admitted",
    0x08: "card unknown", 0x09: "card expired", 0x0A: "insert card",
    0x0B: "please remove card", 0x0C: "card not readable", 0x0D: "processing error",
    0x0E: "please wait", 0x0F: "automatic end-of-day batch", 0x10: "invalid card",
    0x15: "incorrect PIN", 0x17: "please wait", 0x1D: "declined",
})


@dataclass(frozen=True, slots=True)
class Totals:
    """End-of-day individual totals (BMP 60)."""

    receipt_from: int | None
    receipt_to: int | None
    groups: tuple[tuple[str, int, int], ...]
    """(card group, count, turnover in minor units), groups with a count only."""


TOTAL_GROUPS = ("girocard", "jcb", "mastercard", "amex", "visa", "diners", "other")


def decode_totals(raw: bytes) -> Totals:
    if len(raw) < 4:
        raise MessageError("BMP 60 holds fewer than 4 bytes")
    groups = []
    body = raw[4:]
    for i, name in enumerate(TOTAL_GROUPS):
        chunk = body[i * 7:i * 7 + 7]
        if len(chunk) < 7:
            break
        if chunk[0]:
            groups.append((name, chunk[0], from_bcd(chunk[1:])))
    return Totals(from_bcd(raw[0:2]), from_bcd(raw[2:4]), tuple(groups))


def encode_totals(receipt_from: int, receipt_to: int,
                  counts: Mapping[str, tuple[int, int]]) -> bytes:
    out = bytearray(bcd(receipt_from, 2) + bcd(receipt_to, 2))
    for name in TOTAL_GROUPS:
        count, total = counts.get(name, (0, 0))
        out += bytes((min(count, 255),)) + bcd(total, 6)
    return bytes(out)


def _last4(raw: bytes) -> str | None:
    """The last four digits of a BMP 22 card number; the rest is dropped here."""
    digits = bcd_digits(raw).rstrip("F").split("D", 1)[0]  # track-2 style: PAN D expiry…
    tail = digits[-4:]
    return tail if len(tail) == 4 and tail.isdigit() else None


@dataclass(frozen=True, slots=True)
class StatusInformation:
    """``04 0F``: a transaction's result, or the end-of-day totals. Never a whole PAN."""

    result_code: int | None = None
    amount: int | None = None
    currency: str | None = None
    trace: int | None = None
    receipt: int | None = None
    turnover: int | None = None
    time: str | None = None
    date: str | None = None
    last4: str | None = None
    card_type: int | None = None
    card_name: str | None = None
    terminal_id: str | None = None
    auth_code: str | None = None
    additional_text: str | None = None
    totals: Totals | None = None


@dataclass(frozen=True, slots=True)
class IntermediateStatus:
    code: int
    timeout: int | None = None

    @property
    def text(self) -> str:
        return INTERMEDIATE_TEXTS.get(self.code, f"status {self.code:02X}")


@dataclass(frozen=True, slots=True)
class Completion:
    """``06 0F``: master rights go back to the ECR."""

    sw_version: str | None = None
    terminal_status: int | None = None
    terminal_id: str | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Abort:
    """``06 1E``: the transaction failed or was aborted."""

    result_code: int

    @property
    def text(self) -> str:
        return result_text(self.result_code)


@dataclass(frozen=True, slots=True)
class Accepted:
    """``80 00 00`` (or ``84 00``): the command was received and accepted."""


@dataclass(frozen=True, slots=True)
class Refused:
    """``84 xx``: the command was refused, nothing was done."""

    code: int

    @property
    def text(self) -> str:
        return result_text(self.code)


@dataclass(frozen=True, slots=True)
class PrintText:
    """``06 D1`` or ``06 D3``: receipt lines, card numbers already cut."""

    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Other:
    """Any other APDU: answered ``80 00 00`` and otherwise ignored."""

    control: tuple[int, int]


PtMessage = (StatusInformation | IntermediateStatus | Completion | Abort | Accepted
             | Refused | PrintText | Other)


def decode_pt(apdu: Apdu) -> PtMessage:
    """Read one message from the PT; raises :class:`MessageError` for invalid data."""
    control = apdu.command
    data = apdu.data
    if control in ((0x80, 0x00), (0x84, 0x00)):
        return Accepted()
    if apdu.cls == 0x84:
        return Refused(apdu.instr)
    if control == Cmd.STATUS_INFORMATION.value:
        return _status_information(read_bmps(data))
    if control == Cmd.INTERMEDIATE_STATUS.value:
        if not data:
            raise MessageError("intermediate status without its status byte")
        timeout = data[1] if len(data) > 1 and data[1] != 0x06 else None
        return IntermediateStatus(data[0], timeout)
    if control == Cmd.COMPLETION.value:
        return _completion(data)
    if control == Cmd.ABORT.value:
        return Abort(data[0] if data else 0xFF)
    if control == Cmd.PRINT_LINE.value:
        if not data:
            raise MessageError("print line without its attribute")
        return PrintText((scrub(_text(data[1:])),))
    if control == Cmd.PRINT_TEXT_BLOCK.value:
        return PrintText(tuple(_text_block(read_bmps(data))))
    return Other(control)


def _text_block(bmps: list[tuple[int, bytes]]) -> list[str]:
    lines: list[str] = []
    for tag, value in bmps:
        if tag != 0x06:
            continue
        stack = read_tlv(value)
        while stack:
            inner, content = stack.pop(0)
            if inner == 0x07:
                lines.append(scrub(_text(content)))
            elif inner in (0x25, 0x24):  # print-texts / display-texts containers
                stack[0:0] = read_tlv(content)
    return lines


def _status_information(bmps: list[tuple[int, bytes]]) -> StatusInformation:
    v = dict(bmps)

    def num(tag: int) -> int | None:
        return from_bcd(v[tag]) if tag in v else None

    def hexa(tag: int) -> str | None:
        return v[tag].hex() if tag in v else None

    auth = _text(v[0x3B]).strip() if 0x3B in v else None
    return StatusInformation(
        result_code=v[0x27][0] if 0x27 in v else None,
        amount=num(0x04),
        currency=currency_of(v[0x49]) if 0x49 in v else None,
        trace=num(0x0B), receipt=num(0x87), turnover=num(0x88),
        time=hexa(0x0C), date=hexa(0x0D),
        last4=_last4(v[0x22]) if 0x22 in v else None,
        card_type=v[0x8A][0] if 0x8A in v else None,
        card_name=_text(v[0x8B]).strip() or None if 0x8B in v else None,
        terminal_id=hexa(0x29), auth_code=auth or None,
        additional_text=scrub(_text(v[0x3C])) if 0x3C in v else None,
        totals=decode_totals(v[0x60]) if 0x60 in v else None,
    )


def _completion(data: bytes) -> Completion:
    sw_version = None
    status = None
    # Optional fixed fields first (after a Status enquiry): an LLLVAR software version
    # and the terminal status byte; then BMPs 19, 29, 49, 06.
    if len(data) >= 3 and all(b & 0xF0 == 0xF0 and b & 0x0F <= 9 for b in data[:3]):
        size = int("".join(str(b & 0x0F) for b in data[:3]))
        sw_version = _text(data[3:3 + size])
        data = data[3 + size:]
        if data:
            status, data = data[0], data[1:]
    try:
        bmps = dict(read_bmps(data))
    except MessageError:
        bmps = {}
    if status is None and 0x19 in bmps:
        status = bmps[0x19][0]
    return Completion(sw_version=sw_version, terminal_status=status,
                      terminal_id=bmps[0x29].hex() if 0x29 in bmps else None,
                      currency=currency_of(bmps[0x49]) if 0x49 in bmps else None)


# -- PT -> ECR, the terminal's side (simulator) ------------------------------------------


def refused(code: int) -> bytes:
    return encode_apdu(0x84, code)


def intermediate_status(code: int, timeout: int | None = None) -> bytes:
    extra = bytes((timeout,)) if timeout is not None else b""
    return _apdu(Cmd.INTERMEDIATE_STATUS, bytes((code,)) + extra)


def completion(*, sw_version: str | None = None, terminal_status: int | None = None,
               terminal_id: str | None = None, currency: str | None = None) -> bytes:
    data = b""
    if sw_version is not None:
        data += lvar(sw_version.encode("ascii"), 3) + bytes((terminal_status or 0,))
    elif terminal_status is not None:
        data += encode_bmp(0x19, bytes((terminal_status,)))
    if terminal_id is not None:
        data += encode_bmp(0x29, bytes.fromhex(terminal_id))
    if currency is not None:
        data += encode_bmp(0x49, currency_code(currency))
    return _apdu(Cmd.COMPLETION, data)


def abort(result_code: int) -> bytes:
    return _apdu(Cmd.ABORT, bytes((result_code,)))


def print_line(text: str, attribute: int = 0x00) -> bytes:
    return _apdu(Cmd.PRINT_LINE, bytes((attribute,)) + text.encode("cp437", errors="replace"))


def status_information(bmps: Iterable[tuple[int, bytes]]) -> bytes:
    return _apdu(Cmd.STATUS_INFORMATION, b"".join(encode_bmp(tag, value) for tag, value in bmps))


def masked_pan(pan: str) -> bytes:
    """A card number as BMP 22 sends it masked: first six and last four digits kept."""
    digits = pan[:6] + "E" * (len(pan) - 10) + pan[-4:]
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)
