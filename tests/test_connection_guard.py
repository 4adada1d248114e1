"""The connection guard (issue 17, point 1): per-address limits, held connections, body
deadlines. A real daemon on 127.0.0.1 with small limits; clients on 127.0.0.1 and 127.0.0.2.

- A connection counts for good only once its request is authenticated or its body is in:
  slow unauthenticated bodies from one address are closed to make room for that address's
  next connection, and never keep out another address.
- A held connection (an authenticated request running) is never closed to make room.
- At most ``max_unauthenticated_per_address`` requests without a token are in flight per
  address: the next is 429 ERR-1021 at once, its body unread.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edged.api.server import GUARD
from tests.helpers import Api, make_config, new_key, running

SLOW_PAIR = (b"POST /v1/pair HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100\r\n\r\n{")


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Api]:
    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, max_connections=16, max_connections_per_address=4,
                                   max_unauthenticated_per_address=2, body_timeout=0.5,
                                   header_timeout=30.0))
    async with running(cfg) as api:
        yield api


async def _connect(api: Api, source: str, first: bytes = b"") -> socket.socket:
    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10,
                                        source_address=(source, 0))
        if first:
            sock.sendall(first)
        return sock

    return await asyncio.to_thread(connect)


def _closed(sock: socket.socket) -> bool:
    """Whether the daemon closed it (EOF or reset), without waiting for it."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


async def _until(check: object, what: str) -> None:
    assert callable(check)
    for _ in range(200):  # bounded: a failure, not a wait, when it never happens
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def _pay(api: Api, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
            api.base + "/v1/payments", json={"amount": 100, "currency": "EUR",
                                             "method": "cash"},
            headers=api.headers(new_key())) as r:
        return r.status


async def test_slow_bodies_make_room_for_their_own_address_and_never_block_another(
        small: Api) -> None:
    guard = small.daemon.app[GUARD]
    slow = [await _connect(small, "127.0.0.1", SLOW_PAIR) for _ in range(2)]
    idle = [await _connect(small, "127.0.0.1") for _ in range(2)]
    await _until(lambda: guard.from_peer("127.0.0.1") == 4, "four connections in")
    # the address is at its limit: its next connection closes its oldest idle one...
    fresh = await _connect(small, "127.0.0.1")
    await _until(lambda: _closed(idle[0]), "the oldest idle connection closed")
    assert not _closed(slow[0])
    # ...and then its oldest unauthenticated slow body
    more = await _connect(small, "127.0.0.1")
    await _until(lambda: _closed(idle[1]) or _closed(slow[0]), "another closed for room")
    assert guard.from_peer("127.0.0.1") == 4
    # a register on another address pays at once, and from the flooded address too
    assert await _pay(small, "127.0.0.2") == 201
    assert await _pay(small, "127.0.0.1") == 201
    for sock in (*slow, *idle, fresh, more):
        sock.close()


async def test_a_held_request_is_never_closed_to_make_room(small: Api) -> None:
    guard = small.daemon.app[GUARD]
    # four event streams from one address: authenticated, so held while they run
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), limit=10)
    async with aiohttp.ClientSession(connector=connector) as session:
        streams = [await session.get(small.base + "/v1/events", headers=small.headers())
                   for _ in range(4)]
        assert [r.status for r in streams] == [200] * 4
        assert guard.from_peer("127.0.0.1") == 4
        # the next connection from that address finds none to close: it is refused...
        late = await _connect(small, "127.0.0.1", b"GET /healthz HTTP/1.1\r\n"
                                                  b"Host: 127.0.0.1\r\n\r\n")
        await _until(lambda: _closed(late), "the fifth connection refused")
        assert guard.refused >= 1
        # ...and the held ones were left alone; another address is not affected
        small.daemon.bus.publish("terminal", {"id": "sim-1", "state": "online"})
        for response in streams:
            assert b"event: terminal" in await asyncio.wait_for(
                response.content.readuntil(b"event: terminal"), 5)
        assert await _pay(small, "127.0.0.2") == 201
        for response in streams:
            response.close()


async def test_unauthenticated_requests_in_flight_are_limited_per_address(small: Api) -> None:
    slow = [await _connect(small, "127.0.0.1", SLOW_PAIR) for _ in range(2)]
    guard = small.daemon.app[GUARD]
    await _until(lambda: guard._unauthenticated.get("127.0.0.1") == 2, "two in flight")
    third = await _connect(small, "127.0.0.1", SLOW_PAIR)
    answer = await asyncio.to_thread(third.recv, 4096)
    assert answer.startswith(b"HTTP/1.1 429"), answer[:80]
    assert b"ERR-1021" in answer and b"Retry-After: 1" in answer
    # another address has its own count
    other = await _connect(small, "127.0.0.2", SLOW_PAIR)
    await _until(lambda: guard._unauthenticated.get("127.0.0.2") == 1, "its own count")
    for sock in (*slow, third, other):
        sock.close()
