"""Concert (Ingenico Telium E+) framing: control bytes, ``STX data ETX LRC`` frames.

Facts (see ``docs/facts/concert.md``; public sources: PayXpert "USB/RS232 -
Specifications" and "Concert V2/V3" pages, and what the ECR-side libraries pyteliummanager
and pypostelium agree on):

- control bytes STX 0x02, ETX 0x03, EOT 0x04, ENQ 0x05, ACK 0x06, NAK 0x15;
- a frame is ``STX <data> ETX <LRC>``, the LRC being the XOR of every data byte and of ETX
  (STX excluded);
- data is printable ASCII (0x20-0x7E), so there is no byte stuffing;
- at most 512 bytes a frame. Here that bound covers the whole frame, STX and LRC included,
  so a frame carries at most :data:`MAX_DATA` (509) data bytes.

:class:`FrameParser` is incremental and pull-based: :meth:`FrameParser.feed` stores bytes,
:meth:`FrameParser.next_event` hands back the next :class:`Frame` or :class:`Control` byte,
``None`` when it needs more bytes, or raises a :class:`FrameError` for a broken frame. After
an error the parser has already resynchronised, so the caller just asks again. Every call
consumes at least one byte except the one that raises for a frame cut short by a control
byte (that byte is then read on the next call): the work is bounded by twice the input.

Frame data may hold a card number (the report field of a full answer), so :class:`Frame`
does not show its bytes in ``repr`` and no error message here carries frame data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import reduce
from operator import xor

from drivers.base import ProtocolError

STX = 0x02
ETX = 0x03
EOT = 0x04
ENQ = 0x05
ACK = 0x06
NAK = 0x15

MAX_FRAME = 512
"""Bytes in a whole frame, STX, ETX and LRC included."""
MAX_DATA = MAX_FRAME - 3
"""Data bytes in one frame."""


class Control(enum.IntEnum):
    """A control byte seen outside a frame."""

    EOT = 0x04
    ENQ = 0x05
    ACK = 0x06
    NAK = 0x15


@dataclass(frozen=True, slots=True)
class Frame:
    """The data of one frame whose LRC checked. ``repr`` hides the bytes (may hold a PAN)."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Frame(<{len(self.data)} bytes>)"


class FrameError(ProtocolError):
    """A frame on the line was broken; the parser has resynchronised."""


class BadLrc(FrameError):
    """The frame completed but its LRC did not match: ask for it again (NAK)."""

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(f"bad LRC: computed 0x{expected:02x}, received 0x{received:02x}")
        self.expected = expected
        self.received = received


class FrameTooLong(FrameError):
    """More than :data:`MAX_DATA` data bytes without an ETX."""


class NonPrintable(FrameError):
    """A byte outside printable ASCII inside a frame."""


class UnterminatedFrame(FrameError):
    """A new STX (or a control byte) arrived before the ETX of the frame in progress."""


def is_printable(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E


def lrc(data: bytes) -> int:
    """XOR of ``data`` and ETX: the LRC of a frame carrying ``data``."""
    return reduce(xor, data, ETX)


def encode_frame(data: bytes) -> bytes:
    """``STX data ETX LRC``. Raises :class:`FrameError` for data that cannot be framed."""
    if len(data) > MAX_DATA:
        raise FrameTooLong(f"{len(data)} data bytes, at most {MAX_DATA} in a frame")
    for byte in data:
        if not is_printable(byte):
            raise NonPrintable(f"byte 0x{byte:02x} is not printable ASCII")
    return bytes((STX, *data, ETX, lrc(data)))


class _State(enum.Enum):
    IDLE = enum.auto()
    DATA = enum.auto()
    LRC = enum.auto()
    SKIP = enum.auto()  # after an oversize frame: drop bytes up to its ETX
    SKIP_LRC = enum.auto()  # … and the LRC that follows it


_CONTROL_BYTES = frozenset(int(c) for c in Control)


class FrameParser:
    """Incremental reader of the line: frames, control bytes and errors, in line order.

    Bytes outside a frame that are neither STX nor a control byte are noise; they are
    dropped and counted in :attr:`discarded`.
    """

    def __init__(self) -> None:
        self._input = bytearray()
        self._pos = 0
        self._state = _State.IDLE
        self._data = bytearray()
        self.discarded = 0

    @property
    def in_frame(self) -> bool:
        """True while a frame has started (STX seen) and not completed."""
        return self._state in (_State.DATA, _State.LRC)

    @property
    def pending(self) -> int:
        """Bytes fed and not read yet."""
        return len(self._input) - self._pos

    def feed(self, chunk: bytes) -> None:
        if self._pos:
            del self._input[: self._pos]
            self._pos = 0
        self._input += chunk

    def reset(self) -> None:
        """Forget the frame in progress and every unread byte (a timeout, a new session)."""
        self._input.clear()
        self._pos = 0
        self._data.clear()
        self._state = _State.IDLE

    def abandon_frame(self) -> None:
        """Drop the frame in progress (it did not complete in time); keep unread bytes."""
        self._data.clear()
        if self._state in (_State.DATA, _State.LRC):
            self._state = _State.IDLE

    def next_event(self) -> Frame | Control | None:
        """The next frame or control byte, ``None`` if more bytes are needed.

        Raises a :class:`FrameError` subclass for a broken frame, and nothing else.
        """
        while self._pos < len(self._input):
            byte = self._input[self._pos]
            state = self._state
            if state is _State.IDLE:
                self._pos += 1
                if byte == STX:
                    self._data.clear()
                    self._state = _State.DATA
                elif byte in _CONTROL_BYTES:
                    return Control(byte)
                else:
                    self.discarded += 1
            elif state is _State.DATA:
                if byte == ETX:
                    self._pos += 1
                    self._state = _State.LRC
                elif is_printable(byte):
                    self._pos += 1
                    if len(self._data) >= MAX_DATA:
                        self._data.clear()
                        self._state = _State.SKIP
                        raise FrameTooLong(f"frame longer than {MAX_FRAME} bytes")
                    self._data.append(byte)
                elif byte == STX or byte in _CONTROL_BYTES:
                    # Not consumed: read again from IDLE (a new frame, or the peer's ENQ).
                    self._data.clear()
                    self._state = _State.IDLE
                    raise UnterminatedFrame(f"frame cut short by byte 0x{byte:02x}")
                else:
                    self._pos += 1
                    self._data.clear()
                    self._state = _State.IDLE
                    raise NonPrintable(f"byte 0x{byte:02x} inside a frame")
            elif state is _State.LRC:
                self._pos += 1
                data = bytes(self._data)
                self._data.clear()
                self._state = _State.IDLE
                expected = lrc(data)
                if byte != expected:
                    raise BadLrc(expected, byte)
                return Frame(data)
            elif state is _State.SKIP:
                self._pos += 1
                self.discarded += 1
                if byte == ETX:
                    self._state = _State.SKIP_LRC
                elif byte == STX:
                    self._data.clear()
                    self._state = _State.DATA
            else:  # SKIP_LRC
                self._pos += 1
                self.discarded += 1
                self._state = _State.IDLE
        return None

    def events(self) -> list[Frame | Control]:
        """Every event available now; raises at the first broken frame (later bytes stay)."""
        out: list[Frame | Control] = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out
