"""Pairing: a one-time code from `edged pair` traded for a token over the real API."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edged import pairing, tokens
from edged.app import Daemon
from edged.store.database import open_sync
from tests.clock import ManualClock
from tests.daemon_process import DaemonProcess, run_cli, write_config
from tests.helpers import make_config

CODE_RE = re.compile(r"^[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}$")


@dataclass
class Box:
    daemon: Daemon
    clock: ManualClock
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def code(self, name: str | None = "lane-2", scope: str = "register") -> str:
        conn = open_sync(self.daemon.db.path)
        conn.execute("BEGIN IMMEDIATE")
        code = pairing.create(conn, scope, name, self.clock.now())
        conn.execute("COMMIT")
        conn.close()
        return code

    async def pair(self, body: dict[str, Any], source: str = "127.0.0.1",
                   ) -> tuple[int, dict[str, str], Any]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.post(self.url + "/v1/pair", json=body) as r:
            return r.status, dict(r.headers), await r.json()

    async def terminals(self, token: str) -> int:
        async with self.session.get(self.url + "/v1/terminals",
                                    headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    clock = ManualClock(datetime.now(UTC))
    daemon = Daemon(make_config(tmp_path / "data"), clock, shutdown_grace=0.5)
    await daemon.start()
    session = aiohttp.ClientSession()
    try:
        yield Box(daemon, clock, session)
    finally:
        await session.close()
        await daemon.stop()


async def test_a_code_is_traded_for_a_token_once(box: Box,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code = box.code(name=None)
    status, _, body = await box.pair({"code": code.lower(), "name": "lane-2"})
    assert status == 201
    assert (body["name"], body["scope"]) == ("lane-2", "register")
    token = body["token"]
    assert await box.terminals(token) == 200
    # the same code again: used up
    status, _, again = await box.pair({"code": code, "name": "lane-3"})
    assert (status, again["error"]["code"]) == (403, "ERR-5010")
    conn = sqlite3.connect(box.daemon.db.path)
    (entry,) = conn.execute("SELECT actor, subject, data FROM audit"
                            " WHERE action = 'token.paired'").fetchall()
    conn.close()
    assert entry[0] == "pairing:127.0.0.1" and entry[1] == "lane-2"
    assert json.loads(entry[2])["scope"] == "register"
    logged = caplog.text
    assert "paired" in logged
    assert token not in logged and pairing.normalize(code) not in logged.upper()


async def test_the_cli_name_and_scope_win_and_a_name_in_use_keeps_the_code(box: Box) -> None:
    code = box.code(name="manager-tablet", scope="manager")
    status, _, body = await box.pair({"code": code, "name": "ignored"})
    assert status == 201 and (body["name"], body["scope"]) == ("manager-tablet", "manager")
    async with box.session.get(box.url + "/v1/reports/day", headers={
            "Authorization": f"Bearer {body['token']}"}) as r:
        assert r.status == 200
    # a code without a name needs one in the body; a taken name is refused, code kept
    code = box.code(name=None)
    status, _, err = await box.pair({"code": code})
    assert (status, err["error"]["code"]) == (422, "ERR-1003")
    status, _, err = await box.pair({"code": code, "name": "manager-tablet"})
    assert (status, err["error"]["code"]) == (409, "ERR-5013")
    status, _, body = await box.pair({"code": code, "name": "lane-9"})
    assert status == 201 and body["name"] == "lane-9"


async def test_a_code_expires_after_five_minutes(box: Box) -> None:
    stale = box.code(name="lane-2")
    box.clock.advance(pairing.CODE_TTL.total_seconds() - 1)
    fresh = box.code(name="lane-3")
    box.clock.advance(2)
    status, _, err = await box.pair({"code": stale})
    assert (status, err["error"]["code"]) == (403, "ERR-5010")
    status, _, _ = await box.pair({"code": fresh})
    assert status == 201


async def test_five_wrong_codes_lock_the_address_out_and_not_the_others(box: Box) -> None:
    code = box.code(name="lane-2")
    for i in range(pairing.MAX_WRONG):
        status, _, err = await box.pair({"code": f"WRONG-{i:05d}"})
        assert (status, err["error"]["code"]) == (403, "ERR-5010"), i
    # the sixth try is refused before the code is even looked at, right or not
    status, headers, err = await box.pair({"code": code})
    assert (status, err["error"]["code"]) == (429, "ERR-5011")
    assert 0 < int(headers["Retry-After"]) <= pairing.WINDOW_SECONDS
    # another address on the box is not locked out (the whole of 127/8 is loopback)
    other = box.code(name="lane-3")
    status, _, _ = await box.pair({"code": other}, source="127.0.0.2")
    assert status == 201
    # near the end of the window still locked; once it has passed a right code works
    box.clock.advance(pairing.WINDOW_SECONDS - 2)
    status, headers, _ = await box.pair({"code": code})
    assert status == 429 and int(headers["Retry-After"]) <= 2
    box.clock.advance(2)
    status, _, body = await box.pair({"code": box.code(name="lane-4")})
    assert status == 201 and body["name"] == "lane-4"


async def test_wrong_codes_from_many_addresses_pause_pairing_for_all(box: Box) -> None:
    guard = pairing.PairingGuard(box.clock)
    for i in range(pairing.MAX_WRONG_TOTAL):
        assert guard.retry_after(f"10.0.{i // 250}.{i % 250}") is None
        guard.wrong(f"10.0.{i // 250}.{i % 250}")
    assert guard.retry_after("10.9.9.9") == int(pairing.WINDOW_SECONDS)
    box.clock.advance(pairing.WINDOW_SECONDS)
    assert guard.retry_after("10.9.9.9") is None


async def test_pair_needs_no_bearer_but_a_well_formed_body(box: Box) -> None:
    for body, code in (({}, "ERR-1003"), ({"code": 12}, "ERR-1004"),
                       ({"code": "x", "admin": True}, "ERR-1006")):
        status, _, err = await box.pair(body)
        assert (status, err["error"]["code"]) == (422, code), body
    assert box.daemon.services.pair_guard is None or \
        box.daemon.services.pair_guard.retry_after("127.0.0.1") is None


def test_edged_pair_prints_the_code_alone_on_the_last_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "edged.toml", api={"tls": True})
    out = run_cli(data, "pair", "--name", "lane-4", config=config).stdout.splitlines()
    assert CODE_RE.match(out[-1]), out
    bad = run_cli(data, "pair", "--scope", "monitor", config=config, check=False)
    assert bad.returncode == 2
    with DaemonProcess(data, config=config) as daemon:
        fp = next(line for line in daemon.stdout_lines if "fingerprint" in line).split()[-1]
        async def trade() -> tuple[int, Any]:
            async with aiohttp.ClientSession() as session, session.post(
                    f"https://127.0.0.1:{daemon.port}/v1/pair",
                    json={"code": out[-1]}, ssl=aiohttp.Fingerprint(bytes.fromhex(fp))) as r:
                return r.status, await r.json()

        status, body = asyncio.run(trade())
        assert status == 201 and body["name"] == "lane-4"
        listed = run_cli(data, "token", "list", config=config).stdout
        assert "lane-4" in listed and body["token"] not in listed
    conn = open_sync(data / "edged.db")
    stored = [tuple(r) for r in conn.execute("SELECT code_hash, salt FROM pairing_codes")]
    conn.close()
    assert all(pairing.normalize(out[-1]) not in "".join(r) for r in stored)
    assert tokens.hash_token(body["token"]) != stored[0][0]
