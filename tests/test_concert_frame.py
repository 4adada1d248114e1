"""Concert framing: byte-exact vectors from the facts file, and a parser that cannot hang."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import ProtocolError
from drivers.concert.framing import (
    ACK,
    ENQ,
    EOT,
    ETX,
    MAX_DATA,
    MAX_FRAME,
    NAK,
    STX,
    BadLrc,
    Control,
    Frame,
    FrameError,
    FrameParser,
    FrameTooLong,
    NonPrintable,
    UnterminatedFrame,
    encode_frame,
    lrc,
)

# Vectors from docs/facts/concert.md.
REQUEST_FULL = bytes.fromhex(
    "02 3031 3030303031323530 31 31 30 393738 20202020202020202020 41303130 42303130 03 01"
)
REQUEST_TYPE2_DATA = b"0100001250012978" + b" " * 10 + b"A010B010"
DECLINED_SHORT = bytes.fromhex("02 3031 37 3030303031333133 31 393738 30303030303030303432 03 34")
APPROVED_FULL_DATA = b"".join(
    [b"01", b"0", b"00001250", b"1", b"4711690463168807", b" " * 39, b"978", b"0000000042"]
)


def parse_all(data: bytes) -> list[Frame | Control | FrameError]:
    parser = FrameParser()
    parser.feed(data)
    out: list[Frame | Control | FrameError] = []
    for _ in range(2 * len(data) + 2):
        try:
            event = parser.next_event()
        except FrameError as exc:
            out.append(exc)
            continue
        if event is None:
            return out
        out.append(event)
    raise AssertionError("the parser did not settle")


def test_control_bytes() -> None:
    assert (STX, ETX, EOT, ENQ, ACK, NAK) == (0x02, 0x03, 0x04, 0x05, 0x06, 0x15)
    assert [int(c) for c in Control] == [EOT, ENQ, ACK, NAK]
    assert MAX_FRAME == 512
    assert MAX_DATA == 509


def test_request_vector_is_byte_exact() -> None:
    data = REQUEST_FULL[1:-2]
    assert len(data) == 34
    assert encode_frame(data) == REQUEST_FULL
    assert lrc(data) == 0x01


def test_type2_short_request_lrc() -> None:
    frame = encode_frame(REQUEST_TYPE2_DATA)
    assert frame[-1] == 0x02
    assert frame == bytes((STX,)) + REQUEST_TYPE2_DATA + bytes((ETX, 0x02))


def test_declined_short_answer_vector() -> None:
    data = DECLINED_SHORT[1:-2]
    assert len(data) == 25
    assert encode_frame(data) == DECLINED_SHORT
    assert DECLINED_SHORT[-1] == 0x34


def test_approved_full_answer_lrc() -> None:
    assert len(APPROVED_FULL_DATA) == 80
    frame = encode_frame(APPROVED_FULL_DATA)
    assert len(frame) == 83
    assert frame[-1] == 0x18


def test_parser_reads_the_vectors_whole_and_byte_by_byte() -> None:
    stream = bytes((ENQ,)) + REQUEST_FULL + bytes((ACK, EOT)) + DECLINED_SHORT + bytes((NAK,))
    expected = [
        Control.ENQ,
        Frame(REQUEST_FULL[1:-2]),
        Control.ACK,
        Control.EOT,
        Frame(DECLINED_SHORT[1:-2]),
        Control.NAK,
    ]
    assert parse_all(stream) == expected
    parser = FrameParser()
    seen: list[Frame | Control] = []
    for byte in stream:
        parser.feed(bytes((byte,)))
        seen.extend(parser.events())
    assert seen == expected


def test_bad_lrc_is_reported_and_the_next_frame_still_reads() -> None:
    broken = DECLINED_SHORT[:-1] + bytes((0x35,))
    events = parse_all(broken + DECLINED_SHORT)
    assert isinstance(events[0], BadLrc)
    assert events[0].expected == 0x34
    assert events[0].received == 0x35
    assert events[1] == Frame(DECLINED_SHORT[1:-2])


def test_error_messages_never_carry_frame_data() -> None:
    pan = b"4711690463168807"
    broken = encode_frame(b"01000001250" + pan)[:-1] + b"\x00"
    (error,) = parse_all(broken)
    assert isinstance(error, BadLrc)
    assert pan.decode() not in str(error)
    assert pan.decode() not in repr(Frame(pan))


def test_oversize_frame_is_skipped_to_its_end() -> None:
    data = b"A" * (MAX_DATA + 1)
    oversize = bytes((STX,)) + data + bytes((ETX, lrc(data)))
    events = parse_all(oversize + bytes((ENQ,)))
    assert isinstance(events[0], FrameTooLong)
    assert events[1:] == [Control.ENQ]


def test_largest_frame_is_accepted() -> None:
    data = b"Z" * MAX_DATA
    frame = encode_frame(data)
    assert len(frame) == MAX_FRAME
    assert parse_all(frame) == [Frame(data)]


def test_oversize_skip_does_not_read_the_lrc_as_a_control_byte() -> None:
    # Data chosen so that the LRC of the oversize frame is ENQ (0x05).
    data = b"A" * (MAX_DATA + 1)
    data = data[:-1] + bytes((lrc(data[:-1]) ^ ETX ^ ENQ ^ ETX,))
    assert lrc(data) == ENQ
    oversize = bytes((STX,)) + data + bytes((ETX, lrc(data)))
    events = parse_all(oversize)
    assert len(events) == 1
    assert isinstance(events[0], FrameTooLong)


def test_non_printable_byte_inside_a_frame() -> None:
    events = parse_all(b"\x0201\x0123\x03\x00" + DECLINED_SHORT)
    assert isinstance(events[0], NonPrintable)
    assert events[-1] == Frame(DECLINED_SHORT[1:-2])


def test_control_byte_cuts_a_frame_short_and_is_still_seen() -> None:
    events = parse_all(b"\x02half a fr" + bytes((ENQ,)) + DECLINED_SHORT)
    assert isinstance(events[0], UnterminatedFrame)
    assert events[1:] == [Control.ENQ, Frame(DECLINED_SHORT[1:-2])]


def test_new_stx_restarts_the_frame() -> None:
    events = parse_all(b"\x02partial" + DECLINED_SHORT)
    assert isinstance(events[0], UnterminatedFrame)
    assert events[1:] == [Frame(DECLINED_SHORT[1:-2])]


def test_noise_outside_frames_is_counted_and_dropped() -> None:
    parser = FrameParser()
    parser.feed(b"\x00\xffjunk\x13" + bytes((ACK,)))
    assert parser.events() == [Control.ACK]
    assert parser.discarded == 7


def test_in_frame_and_abandon() -> None:
    parser = FrameParser()
    parser.feed(b"\x0201000")
    assert parser.next_event() is None
    assert parser.in_frame
    parser.abandon_frame()
    assert not parser.in_frame
    parser.feed(DECLINED_SHORT)
    assert parser.events() == [Frame(DECLINED_SHORT[1:-2])]


def test_encode_frame_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(NonPrintable):
        encode_frame(b"01\x03")
    with pytest.raises(FrameTooLong):
        encode_frame(b"A" * (MAX_DATA + 1))
    assert issubclass(FrameError, ProtocolError)


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=1, max_value=64), max_size=64))
def test_parser_raises_only_frame_errors_and_settles(data: bytes, cuts: list[int]) -> None:
    parser = FrameParser()
    calls = 0
    pos = 0
    chunks: list[bytes] = []
    for cut in cuts:
        chunks.append(data[pos : pos + cut])
        pos += cut
    chunks.append(data[pos:])
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            calls += 1
            # Bounded work: at most two results per byte, plus one "need more" per chunk.
            assert calls <= 2 * len(data) + len(chunks) + 1
            try:
                event = parser.next_event()
            except ProtocolError as exc:
                assert isinstance(exc, FrameError)
                continue
            if event is None:
                break
            assert isinstance(event, Frame | Control)
            if isinstance(event, Frame):
                assert len(event.data) <= MAX_DATA
                assert all(0x20 <= b <= 0x7E for b in event.data)
    assert parser.pending == 0


_printable = st.binary(min_size=0, max_size=MAX_DATA).map(
    lambda b: bytes(0x20 + (x % 0x5F) for x in b)
)
_noise = st.binary(max_size=16).map(
    lambda b: bytes(x for x in b if x not in (STX, ETX, EOT, ENQ, ACK, NAK))
)


@given(st.lists(st.tuples(_noise, _printable), max_size=8))
def test_frames_survive_noise_between_them(items: list[tuple[bytes, bytes]]) -> None:
    stream = b"".join(noise + encode_frame(data) for noise, data in items)
    assert parse_all(stream) == [Frame(data) for _, data in items]
