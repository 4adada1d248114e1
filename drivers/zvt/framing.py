"""ZVT framing: APDU length fields, and the serial line's ``DLE STX … DLE ETX CRC`` frames.

Facts (``docs/facts/zvt.md``; the ZVT specification's summary tables as ECR
libraries publish them):

- an APDU is ``CLASS INSTR LEN DATA``; ``LEN`` is one byte below 255, else ``FF`` and two
  bytes, low byte first;
- over TCP the APDUs follow each other raw on one connection;
- on RS-232 (9600 8N2) each APDU travels as ``DLE STX <apdu, each 0x10 doubled> DLE ETX
  CRC-L CRC-H``; the CRC is CRC-16/KERMIT (polynomial 0x1021 reflected, i.e. the 0x8408
  table, initial value 0, no final XOR) over the unstuffed APDU plus ETX, low byte first;
  the receiver answers each frame with one ``ACK`` (0x06) or ``NAK`` (0x15).

:class:`ApduReader` cuts a TCP byte stream into APDUs; :class:`FrameParser` reads a serial
line into frames, ACK/NAK bytes and frame errors (it resynchronises by itself after one).
Frame data may hold card data: no ``repr`` or error message here shows it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from drivers.base import ProtocolError

DLE = 0x10
STX = 0x02
ETX = 0x03
ACK = 0x06
NAK = 0x15

MAX_APDU = 3 + 2 + 0xFFFF
"""The longest APDU the length field can describe."""


def _table() -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        out.append(crc)
    return tuple(out)


_CRC_TABLE = _table()


def crc16_kermit(data: bytes) -> int:
    """CRC-16/KERMIT of ``data`` (``b"123456789"`` → ``0x2189``)."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame_crc(apdu: bytes) -> bytes:
    """The two CRC bytes of a frame carrying ``apdu``, low byte first."""
    crc = crc16_kermit(apdu + bytes((ETX,)))
    return bytes((crc & 0xFF, crc >> 8))


def encode_frame(apdu: bytes) -> bytes:
    """``DLE STX <apdu, DLE doubled> DLE ETX CRC-L CRC-H``."""
    return bytes((DLE, STX)) + apdu.replace(b"\x10", b"\x10\x10") + bytes((DLE, ETX)) \
        + frame_crc(apdu)


def length_field(size: int) -> bytes:
    """The ``LEN`` of an APDU with ``size`` data bytes."""
    if size < 0 or size > 0xFFFF:
        raise ValueError(f"{size} data bytes cannot be described by a ZVT length")
    if size < 0xFF:
        return bytes((size,))
    return bytes((0xFF, size & 0xFF, size >> 8))


def encode_apdu(cls: int, instr: int, data: bytes = b"") -> bytes:
    return bytes((cls, instr)) + length_field(len(data)) + data


@dataclass(frozen=True, slots=True)
class Apdu:
    """One APDU as received. ``repr`` hides the data (it may hold card data)."""

    cls: int
    instr: int
    data: bytes = field(repr=False)

    @property
    def command(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    def encode(self) -> bytes:
        return encode_apdu(self.cls, self.instr, self.data)

    def __repr__(self) -> str:
        return f"Apdu({self.cls:02X} {self.instr:02X}, <{len(self.data)} bytes>)"


class ApduError(ProtocolError):
    """Bytes that are not an APDU."""


def parse_apdu(raw: bytes) -> Apdu:
    """One whole APDU; raises :class:`ApduError` if the length does not match."""
    if len(raw) < 3:
        raise ApduError(f"an APDU has at least 3 bytes, got {len(raw)}")
    size, start = raw[2], 3
    if size == 0xFF:
        if len(raw) < 5:
            raise ApduError("an APDU with a 3-byte length is cut short")
        size, start = raw[3] | raw[4] << 8, 5
    if len(raw) != start + size:
        raise ApduError(f"APDU length says {size} data bytes, {len(raw) - start} given")
    return Apdu(raw[0], raw[1], bytes(raw[start:]))


class ApduReader:
    """Cuts a TCP byte stream into APDUs (the raw transport has no other framing)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()

    def next_apdu(self) -> Apdu | None:
        buf = self._buffer
        if len(buf) < 3:
            return None
        size, start = buf[2], 3
        if size == 0xFF:
            if len(buf) < 5:
                return None
            size, start = buf[3] | buf[4] << 8, 5
        end = start + size
        if len(buf) < end:
            return None
        apdu = Apdu(buf[0], buf[1], bytes(buf[start:end]))
        del buf[:end]
        return apdu


class Control(enum.IntEnum):
    """A link-level byte seen outside a frame (serial only)."""

    ACK = ACK
    NAK = NAK


@dataclass(frozen=True, slots=True)
class Frame:
    """The APDU of one serial frame whose CRC checked. ``repr`` hides the bytes."""

    apdu: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Frame(<{len(self.apdu)} bytes>)"


class FrameError(ProtocolError):
    """A serial frame was broken; the parser has resynchronised."""


class BadCrc(FrameError):
    """The frame completed but its CRC did not match: answer NAK, the sender repeats it."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"bad CRC: computed 0x{expected:04x}, received 0x{received:04x}")
        self.expected = expected
        self.received = received


class BadStuffing(FrameError):
    """A DLE inside a frame followed by something else than DLE or ETX."""


class FrameTooLong(FrameError):
    """More bytes than an APDU can have without a closing ``DLE ETX``."""


class _State(enum.Enum):
    IDLE = enum.auto()
    START = enum.auto()  # DLE seen outside a frame
    DATA = enum.auto()
    DLE = enum.auto()  # DLE seen inside a frame
    CRC1 = enum.auto()
    CRC2 = enum.auto()


class FrameParser:
    """Incremental reader of a serial ZVT line: frames, ACK/NAK bytes and frame errors.

    Bytes outside a frame that are neither ``DLE STX`` nor ACK/NAK are noise, dropped and
    counted in :attr:`discarded`.
    """

    def __init__(self, max_apdu: int = MAX_APDU) -> None:
        self._input = bytearray()
        self._pos = 0
        self._state = _State.IDLE
        self._data = bytearray()
        self._crc_low = 0
        self._max = max_apdu
        self.discarded = 0

    @property
    def pending(self) -> int:
        return len(self._input) - self._pos

    @property
    def in_frame(self) -> bool:
        return self._state not in (_State.IDLE, _State.START)

    def feed(self, chunk: bytes) -> None:
        if self._pos:
            del self._input[: self._pos]
            self._pos = 0
        self._input += chunk

    def reset(self) -> None:
        self._input.clear()
        self._pos = 0
        self._data.clear()
        self._state = _State.IDLE

    def next_event(self) -> Frame | Control | None:
        """The next frame or ACK/NAK, ``None`` when more bytes are needed.

        Raises a :class:`FrameError` for a broken frame (and nothing else).
        """
        while self._pos < len(self._input):
            byte = self._input[self._pos]
            self._pos += 1
            state = self._state
            if state is _State.IDLE:
                if byte == DLE:
                    self._state = _State.START
                elif byte in (ACK, NAK):
                    return Control(byte)
                else:
                    self.discarded += 1
            elif state is _State.START:
                if byte == STX:
                    self._data.clear()
                    self._state = _State.DATA
                elif byte == DLE:
                    self.discarded += 1  # stay: this DLE may open the frame
                else:
                    self.discarded += 2
                    self._state = _State.IDLE
                    if byte in (ACK, NAK):
                        return Control(byte)
            elif state is _State.DATA:
                if byte == DLE:
                    self._state = _State.DLE
                else:
                    self._append(byte)
            elif state is _State.DLE:
                if byte == DLE:
                    self._state = _State.DATA
                    self._append(byte)
                elif byte == ETX:
                    self._state = _State.CRC1
                elif byte == STX:  # a new frame began: the one in progress is lost
                    self._data.clear()
                    self._state = _State.DATA
                    raise BadStuffing("a frame was cut short by the start of another")
                else:
                    self._data.clear()
                    self._state = _State.IDLE
                    raise BadStuffing(f"DLE followed by 0x{byte:02x} inside a frame")
            elif state is _State.CRC1:
                self._crc_low = byte
                self._state = _State.CRC2
            else:  # CRC2
                self._state = _State.IDLE
                apdu = bytes(self._data)
                self._data.clear()
                received = self._crc_low | byte << 8
                expected = crc16_kermit(apdu + bytes((ETX,)))
                if received != expected:
                    raise BadCrc(expected, received)
                return Frame(apdu)
        return None

    def _append(self, byte: int) -> None:
        if len(self._data) >= self._max:
            self._data.clear()
            self._state = _State.IDLE
            raise FrameTooLong(f"frame longer than {self._max} bytes")
        self._data.append(byte)
