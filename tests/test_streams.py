"""Event streams end when their credential does (issue 17, point 2), and are bounded.

A stream re-checks its token or session at every event and at least every half second of
the daemon's clock: a token revoked the way ``edged token revoke`` does it (commit, then
the stamp beside the database), a sign-out (``DELETE /session``) or a session whose token is
revoked ends the stream within a second, and no event after that reaches it. A token holds
at most ``[api] max_streams_per_token`` streams; a stream ends after ``stream_max_seconds``.
The clock is a manual one: "within a second" is a second of the daemon's clock, not a
sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from edged.app import Daemon
from edged.lan import tokens
from edged.lan.token_cache import announce_revocation
from tests.clock import ManualClock
from tests.helpers import make_config

SECRET = {"amount": 1250, "currency": "EUR", "reference": "R-after", "last4": "4242",
          "auth_code": "A1B2C3", "id": "pay_after"}


@dataclass
class Box:
    daemon: Daemon
    clock: ManualClock
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def token(self, name: str, scope: str = "monitor") -> str:
        return await self.daemon.db.write(lambda c: tokens.create(c, name, scope))

    async def revoke(self, name: str) -> None:
        """As `edged token revoke NAME`: the revocation committed, then announced."""
        await self.daemon.db.write(lambda c: tokens.revoke(c, name))
        announce_revocation(self.daemon.db.path)

    async def ticks(self, seconds: float, step: float = 0.25) -> None:
        """Move the daemon's clock forward, a step at a time, letting the loop run."""
        moved = 0.0
        while moved < seconds:
            await _settle()
            self.clock.advance(step)
            moved += step
            await _settle()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, max_streams_per_token=3, stream_max_seconds=60.0))
    clock = ManualClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    daemon = Daemon(cfg, clock, shutdown_grace=0.5)
    await daemon.start()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Box(daemon, clock, session)
    await daemon.stop()


async def _open(box: Box, headers: dict[str, str]) -> aiohttp.ClientResponse:
    response = await box.session.get(box.base + "/v1/events", headers=headers)
    if response.status == 200:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b": edged events\n\n"
    return response


async def _rest(response: aiohttp.ClientResponse) -> bytes:
    """Everything until the daemon ends the stream (a failure, not a wait, if it never does)."""
    return await asyncio.wait_for(response.content.read(), 5)


async def test_a_revoked_token_ends_its_stream_within_a_second(box: Box) -> None:
    token = await box.token("wall-1")
    response = await _open(box, {"Authorization": f"Bearer {token}"})
    assert response.status == 200
    box.daemon.bus.publish("payment", {"id": "pay_before", "amount": 100})
    assert b"pay_before" in await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    await box.revoke("wall-1")
    box.daemon.bus.publish("payment", SECRET)  # the very next event is not sent
    await box.ticks(1.0)
    rest = await _rest(response)
    assert b"pay_after" not in rest and b"4242" not in rest
    assert len(box.daemon.services.streams) == 0


async def test_a_stream_gets_every_event_in_order_across_its_rechecks(box: Box) -> None:
    """The re-check wakes the stream between events: none may be lost to it."""
    token = await box.token("wall-1")
    response = await _open(box, {"Authorization": f"Bearer {token}"})
    for i in range(6):
        box.daemon.bus.publish("payment", {"id": f"pay_{i}"})
        await box.ticks(0.5)
    got = b""
    while got.count(b"event: payment") < 6:
        got += await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert [f"pay_{i}".encode() in got for i in range(6)] == [True] * 6
    assert got.index(b"pay_0") < got.index(b"pay_5")
    response.close()


async def test_a_revoked_token_ends_a_quiet_stream_within_a_second(box: Box) -> None:
    token = await box.token("wall-1")
    response = await _open(box, {"Authorization": f"Bearer {token}"})
    await box.revoke("wall-1")
    await box.ticks(1.0)  # no event at all: the re-check alone ends it
    assert await _rest(response) == b""
    assert len(box.daemon.services.streams) == 0


async def _sign_in(box: Box, token: str) -> None:
    async with box.session.post(box.base + "/session", json={"token": token},
                                headers={"Origin": box.base}) as r:
        assert r.status == 200, await r.text()


async def test_sign_out_ends_the_pages_stream(box: Box) -> None:
    manager = await box.token("manager-1", "manager")
    await _sign_in(box, manager)
    response = await _open(box, {})  # the cookie only, as the page's EventSource
    assert response.status == 200
    async with box.session.delete(box.base + "/session", headers={"Origin": box.base}) as r:
        assert r.status == 200
    box.daemon.bus.publish("payment", SECRET)
    await box.ticks(1.0)
    rest = await _rest(response)
    assert b"pay_after" not in rest
    assert len(box.daemon.services.streams) == 0


async def test_revoking_the_token_of_a_sign_in_ends_its_stream(box: Box) -> None:
    manager = await box.token("manager-1", "manager")
    await _sign_in(box, manager)
    response = await _open(box, {})
    await box.revoke("manager-1")
    box.daemon.bus.publish("payment", SECRET)
    await box.ticks(1.0)
    assert b"pay_after" not in await _rest(response)


async def test_a_token_holds_at_most_its_streams_and_each_ends_in_time(box: Box) -> None:
    token = await box.token("wall-1")
    other = await box.token("wall-2")
    headers = {"Authorization": f"Bearer {token}"}
    held = [await _open(box, headers) for _ in range(3)]
    assert [r.status for r in held] == [200, 200, 200]
    refused = await _open(box, headers)
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["code"] == "ERR-5032"
    assert int(refused.headers["Retry-After"]) >= 1
    # another token is not held back
    assert (await _open(box, {"Authorization": f"Bearer {other}"})).status == 200
    # one ends: room for one more
    held[0].close()
    await box.ticks(0.5)
    assert (await _open(box, headers)).status == 200
    # every stream ends after stream_max_seconds; the client reconnects with Last-Event-ID
    await box.ticks(61.0, step=5.0)
    for response in held[1:]:
        await _rest(response)
    assert len(box.daemon.services.streams) == 0
