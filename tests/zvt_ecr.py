"""An ECR written apart from ``drivers.zvt``, to check the simulator from outside.

The ECR library the issue names, ecrterm (Wirelane), is not published on PyPI (``pip
download ecrterm`` finds no version; the registry's package list has no ``ecrterm`` nor
``py3-ecrterm``), and no other ZVT ECR is packaged on a registry this machine reaches. So
this module plays ecrterm's part with nothing of ``drivers.zvt``: its own CRC (bit by bit,
not the driver's table), its own framing, and the published BMP table of the ZVT
specification's "summary of utilised BMPs". It behaves as ecrterm's transports do:

- TCP (``SocketTransport``): read 3 bytes; a length byte ``FF`` is followed by two bytes,
  low first; then the data;
- serial (``SerialTransport``): 9600 8N2; write the frame, read one byte that must be ACK;
  read ``DLE STX``, unstuff up to ``DLE ETX``, read the 2 CRC bytes, answer ACK;
- every PT message is answered ``80 00 00``; the exchange ends on ``06 0F`` (Completion)
  or ``06 1E`` (Abort); a Completion may hold only BMPs 19, 29, 49 and 06 (ecrterm's
  ``Completion.ALLOWED_BITMAPS``: it raises on any other), every other message only BMPs of
  the table (ecrterm raises ``Invalid bitmap`` on an unknown one).

The commands sent are ecrterm's own bytes as captured in its test suite where there are
some (Registration with config byte 0xFE and a TLV, Authorisation with BMPs 02 and 19).

The ``ECRTERM_*`` sequences are what ecrterm's ECR API puts on the line, taken from running
ecrterm's code unchanged against ``edged simulate zvt`` (outside this repo, see the issue 20
check script): ``ECR.register(config_byte=…, cc=CurrencyCode.EUR)`` with password
``123456``, ``ECR.payment(amount_cent=1234)`` (BMP 04, BMP 49 and an empty TLV ``06 00``),
``ECR.end_of_day()``, and ``StatusEnquiry()`` without a password, which ecrterm's
``detect_pt`` sends (``05 01 00``).
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass, field

DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15

# The specification's summary of BMPs: fixed length, or "LL"/"LLL"/"TLV".
SPEC_BMPS: dict[int, int | str] = {
    0x01: 1, 0x02: 1, 0x03: 1, 0x04: 6, 0x05: 1, 0x06: "TLV", 0x0B: 3, 0x0C: 3, 0x0D: 2,
    0x0E: 2, 0x17: 2, 0x19: 1, 0x22: "LL", 0x23: "LL", 0x24: "LLL", 0x27: 1, 0x29: 4,
    0x2A: 15, 0x2D: "LL", 0x2E: "LLL", 0x37: 3, 0x3A: 2, 0x3B: 8, 0x3C: "LLL", 0x3D: 3,
    0x49: 2, 0x60: "LLL", 0x87: 2, 0x88: 3, 0x8A: 1, 0x8B: "LL", 0x8C: 1, 0x9A: "LLL",
    0xA0: 1, 0xA7: "LL", 0xAA: 3, 0xAF: "LLL", 0xBA: 5,
}
COMPLETION_BMPS = {0x19, 0x29, 0x49, 0x06}

ECR_REGISTRATION = bytes.fromhex(
    "06 00 63 00 00 00 FE 09 78 03 00 06 59 10 02 16 02 12 01 40 1A 02 10 00 26 28 0A 02 04 0F"
    " 0A 02 06 0F 0A 02 06 1E 0A 02 04 FF 0A 02 06 D8 0A 02 06 DB 0A 02 06 D9 0A 02 06 DA 0A"
    " 02 06 DD 0A 02 06 D3 27 03 14 01 FF 28 10 15 02 44 45 15 02 45 4E 15 02 46 52 15 02 49"
    " 54 40 02 C0 00 1F 04 02 F1 00 1F 05 01 00".replace(" ", ""))
ECR_AUTHORISATION_10_EUR = bytes.fromhex("06010E02010400000000100019444909 78".replace(" ", ""))
ECR_END_OF_DAY = bytes.fromhex("065003000000")
ECR_STATUS_ENQUIRY = bytes.fromhex("050103000000")

ECRTERM_PASSWORD = "123456"
ECRTERM_CONFIG_DEFAULT = 0xBA
"""ecrterm's ``ConfigByte.DEFAULT`` (``ALL_BUT_ADMIN_RECEIPT``): payment receipts as Print
Line, the administration receipts (end of day) stay on the PT."""
ECRTERM_PAYMENT_12_34 = bytes.fromhex("06010C04000000001234490978 0600".replace(" ", ""))
ECRTERM_END_OF_DAY = bytes.fromhex("065003123456")
ECRTERM_STATUS_ENQUIRY_NO_PASSWORD = bytes.fromhex("050100")


def ecrterm_registration(config: int) -> bytes:
    """``ECR('…', password='123456').register(config_byte=config, cc=CurrencyCode.EUR)``."""
    return bytes.fromhex("060006123456") + bytes((config,)) + bytes.fromhex("0978")


def crc_bitwise(data: bytes) -> int:
    """CRC-CCITT reflected (poly 0x1021 → 0x8408), init 0, no final XOR, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


class EcrError(AssertionError):
    pass


def parse_bmps(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        spec = SPEC_BMPS.get(tag)
        if spec is None:
            raise EcrError(f"Invalid bitmap 0x{tag:02X}")
        if spec == "TLV":
            size = data[pos]
            pos += 1
            if size & 0x80:
                count = size & 0x7F
                size = int.from_bytes(data[pos:pos + count], "big")
                pos += count
        elif spec in ("LL", "LLL"):
            digits = len(str(spec))
            head = data[pos:pos + digits]
            if any(b >> 4 != 0xF or b & 0xF > 9 for b in head):
                raise EcrError("L*VAR length header invalid")
            size = int("".join(str(b & 0xF) for b in head))
            pos += digits
        else:
            assert isinstance(spec, int)
            size = spec
        if pos + size > len(data):
            raise EcrError(f"BMP 0x{tag:02X} cut short")
        out[tag] = data[pos:pos + size]
        pos += size
    return out


@dataclass
class Message:
    control: tuple[int, int]
    data: bytes
    bmps: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Transcript:
    """Every message of one exchange after the PT's ``80 00 00``."""

    answer: tuple[int, int]
    messages: list[Message] = field(default_factory=list)

    @property
    def end(self) -> Message:
        return self.messages[-1]

    def of(self, cls: int, instr: int) -> list[Message]:
        return [msg for msg in self.messages if msg.control == (cls, instr)]


class Ecr:
    """ecrterm's behaviour on ``socket://host:port`` or a serial device."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        if address.startswith("tcp://"):
            host, port = address[6:].rsplit(":", 1)
            self._sock = socket.create_connection((host, int(port)), timeout=timeout)
        else:
            import serial

            self._port = serial.Serial(address.removeprefix("serial://"), baudrate=9600,
                                       bytesize=8, parity="N", stopbits=2, timeout=timeout)
            self._fd = self._port.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        else:
            self._port.close()

    # -- bytes ---------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        out = b""
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EcrError(f"timed out waiting for {n - len(out)} more bytes")
            if self._sock is not None:
                chunk = self._sock.recv(n - len(out))
            else:
                assert self._fd is not None
                ready, _, _ = select.select([self._fd], [], [], remaining)
                chunk = os.read(self._fd, n - len(out)) if ready else b""
                if not ready:
                    continue
            if not chunk:
                raise EcrError("the PT closed the line")
            out += chunk
        return out

    def _write(self, data: bytes) -> None:
        if self._sock is not None:
            self._sock.sendall(data)
        else:
            assert self._fd is not None
            os.write(self._fd, data)

    # -- APDUs ---------------------------------------------------------------------------

    def send(self, apdu: bytes) -> None:
        if self._sock is not None:
            self._write(apdu)
            return
        crc = crc_bitwise(apdu + bytes((ETX,)))
        frame = bytes((DLE, STX)) + apdu.replace(b"\x10", b"\x10\x10") + \
            bytes((DLE, ETX, crc & 0xFF, crc >> 8))
        self._write(frame)
        answer = self._read(1)
        if answer != bytes((ACK,)):
            raise EcrError(f"the PT answered {answer.hex()} to a frame, not ACK")

    def receive(self) -> tuple[tuple[int, int], bytes]:
        if self._sock is not None:
            head = self._read(3)
            size = head[2]
            if size == 0xFF:
                low_high = self._read(2)
                size = low_high[0] | low_high[1] << 8
            return (head[0], head[1]), self._read(size)
        if self._read(2) != bytes((DLE, STX)):
            raise EcrError("frame header is not DLE STX")
        apdu = bytearray()
        while True:
            byte = self._read(1)[0]
            if byte == DLE:
                nxt = self._read(1)[0]
                if nxt == ETX:
                    break
                if nxt != DLE:
                    raise EcrError("DLE without sense detected")
            apdu.append(byte)
        crc = self._read(2)
        if crc_bitwise(bytes(apdu) + bytes((ETX,))) != crc[0] | crc[1] << 8:
            self._write(bytes((NAK,)))
            raise EcrError("CRC error")
        self._write(bytes((ACK,)))
        size, start = apdu[2], 3
        if size == 0xFF:
            size, start = apdu[3] | apdu[4] << 8, 5
        if len(apdu) != start + size:
            raise EcrError("APDU length does not match the frame")
        return (apdu[0], apdu[1]), bytes(apdu[start:])

    def transmit(self, command: bytes) -> Transcript:
        """Send ``command`` and follow it as ecrterm's Transmission does."""
        self.send(command)
        control, data = self.receive()
        transcript = Transcript(control)
        if control[0] == 0x84 and control[1] != 0x00:
            return transcript
        if control != (0x80, 0x00):
            raise EcrError(f"expected 80 00, got {control[0]:02X} {control[1]:02X}")
        while True:
            control, data = self.receive()
            msg = Message(control, data)
            if control == (0x06, 0x0F):
                msg.bmps = self._completion_bmps(data)
            elif control == (0x04, 0x0F):
                msg.bmps = parse_bmps(data)
            elif control == (0x04, 0xFF) and len(data) > 2:
                parse_bmps(data[2:] if data[1] != 0x06 else data[1:])
            transcript.messages.append(msg)
            self.send(bytes((0x80, 0x00, 0x00)))
            if control in ((0x06, 0x0F), (0x06, 0x1E)):
                return transcript

    @staticmethod
    def _completion_bmps(data: bytes) -> dict[int, bytes]:
        if len(data) >= 3 and all(b >> 4 == 0xF for b in data[:3]):
            size = int("".join(str(b & 0xF) for b in data[:3]))
            data = data[3 + size + 1:]  # software version, terminal status
        bmps = parse_bmps(data)
        if not set(bmps) <= COMPLETION_BMPS:
            raise EcrError(f"Completion holds BMPs {sorted(bmps)}: only 19 29 49 06 allowed")
        return bmps


def bcd_int(raw: bytes) -> int:
    return int(raw.hex())
