"""The ZVT TCP line as the event loop reads it (:meth:`TcpLink.receive_on_loop`).

A terminal's TCP stack may hand an APDU over in pieces (a long receipt line, a busy
network), and the loop's reads wait in slices so that a cancel or a stop is seen: these
tests feed a real socket pair in pieces and check that every byte arrives once, whole,
however the waits fall (facts: an APDU is its length-prefixed bytes, docs/facts/zvt.md).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from drivers.zvt import messages as m
from drivers.zvt.framing import encode_apdu, parse_apdu
from drivers.zvt.session import Aborted, LineLost, TcpLink
from sync.core.clock import SystemClock


@pytest.fixture
def pair() -> Iterator[tuple[TcpLink, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    link = TcpLink(ours, SystemClock(), threading.Event(), 0.02, "lane-t")
    yield link, theirs
    link.close()
    theirs.close()


async def test_an_apdu_in_pieces_arrives_whole_and_a_timed_out_wait_loses_nothing(
        pair: tuple[TcpLink, socket.socket]) -> None:
    link, pt = pair
    receipt = encode_apdu(0x06, 0xD1, b"\xff" + b"Beleg-Nr. 0042".ljust(300, b" "))
    clock = SystemClock()
    pt.sendall(receipt[:3])  # inside the length field
    assert await link.receive_on_loop(clock.monotonic() + 0.05) is None
    pt.sendall(receipt[3:40])
    assert await link.receive_on_loop(clock.monotonic() + 0.05) is None
    loop = asyncio.get_running_loop()
    for i in range(40, len(receipt), 50):  # the rest while the loop waits
        loop.call_later(0.005 * (i // 50), pt.sendall, receipt[i:i + 50] + (
            m.ACK_APDU if i + 50 >= len(receipt) else b""))
    whole = await link.receive_on_loop(clock.monotonic() + 2.0)
    assert whole == parse_apdu(receipt)
    assert await link.receive_on_loop(clock.monotonic() + 2.0) == parse_apdu(m.ACK_APDU)


async def test_the_terminal_closing_the_line_and_a_stop_are_told_apart(
        pair: tuple[TcpLink, socket.socket]) -> None:
    link, pt = pair
    link.abort.set()
    with pytest.raises(Aborted):
        await link.receive_on_loop(SystemClock().monotonic() + 1.0)
    link.abort.clear()
    pt.close()
    with pytest.raises(LineLost):
        await link.receive_on_loop(SystemClock().monotonic() + 1.0)


async def test_bytes_left_on_an_idle_line_are_dropped_before_the_next_exchange(
        pair: tuple[TcpLink, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    """A PT may repeat its Completion or send a status late, after the register's last
    answer: such bytes, whole or cut short, must not be read as the answer to the next
    command (each exchange begins with :meth:`TcpLink.discard_input`)."""
    link, pt = pair
    late = encode_apdu(0x06, 0x0F, b"\x27\x00")  # a repeated Completion
    pt.sendall(late[:2])
    assert await link.receive_on_loop(SystemClock().monotonic() + 0.05) is None  # half read
    pt.sendall(late[2:] + encode_apdu(0x04, 0xFF, b"\x0e")[:2])  # and a status, cut short
    link.discard_input()  # (a socket pair: what was sent is there to read)
    assert "discarding 7 stale bytes" in caplog.text  # 5 whole, 2 of the cut one
    pt.sendall(m.ACK_APDU)  # the next command's acknowledgement
    assert await link.receive_on_loop(SystemClock().monotonic() + 1.0) == \
        parse_apdu(m.ACK_APDU)
    pt.close()
    with pytest.raises(LineLost):  # a line the PT closed while idle is found out then too
        link.discard_input()
