"""Pairing: a one-time code from `edged pair` traded for a token over the real API.

The register proves the code with the fingerprint it pinned (tests/lan_register.py's
pair_body, written from the README: HMAC-SHA256 keyed by the code over the fingerprint);
the daemon here has no TLS, so the fingerprint is empty, as on the box's own loopback.
"""

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

from edged.app import Daemon
from edged.lan import pairing, tokens
from edged.store.database import open_sync
from tests.clock import ManualClock
from tests.daemon_process import DaemonProcess, run_cli, write_config
from tests.helpers import make_config
from tests.lan_register import pair_body

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

    def count_tokens(self, name: str) -> int:
        conn = sqlite3.connect(self.daemon.db.path)
        try:
            return int(conn.execute("SELECT count(*) FROM tokens WHERE name = ?",
                                    (name,)).fetchone()[0])
        finally:
            conn.close()

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
    status, _, body = await box.pair(pair_body(code.lower(), "", "lane-2"))
    assert status == 201
    assert (body["name"], body["scope"]) == ("lane-2", "register")
    token = body["token"]
    assert await box.terminals(token) == 200
    # the same code again: used up
    status, _, again = await box.pair(pair_body(code, "", "lane-3"))
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
    status, _, body = await box.pair(pair_body(code, "", "ignored"))
    assert status == 201 and (body["name"], body["scope"]) == ("manager-tablet", "manager")
    async with box.session.get(box.url + "/v1/reports/day", headers={
            "Authorization": f"Bearer {body['token']}"}) as r:
        assert r.status == 200
    # a code without a name needs one in the body; a taken name is refused, code kept
    code = box.code(name=None)
    status, _, err = await box.pair(pair_body(code, ""))
    assert (status, err["error"]["code"]) == (422, "ERR-1003")
    status, _, err = await box.pair(pair_body(code, "", "manager-tablet"))
    assert (status, err["error"]["code"]) == (409, "ERR-5013")
    status, _, body = await box.pair(pair_body(code, "", "lane-9"))
    assert status == 201 and body["name"] == "lane-9"


async def test_a_code_expires_after_five_minutes(box: Box) -> None:
    stale = box.code(name="lane-2")
    box.clock.advance(pairing.CODE_TTL.total_seconds() - 1)
    fresh = box.code(name="lane-3")
    box.clock.advance(2)
    status, _, err = await box.pair(pair_body(stale, ""))
    assert (status, err["error"]["code"]) == (403, "ERR-5010")
    status, _, _ = await box.pair(pair_body(fresh, ""))
    assert status == 201


async def test_five_wrong_codes_lock_the_address_out_and_not_the_others(box: Box) -> None:
    code = box.code(name="lane-2")
    for i in range(pairing.MAX_WRONG):
        status, _, err = await box.pair(pair_body(f"WRONG-{i:05d}", ""))
        assert (status, err["error"]["code"]) == (403, "ERR-5010"), i
    # the sixth try is refused before the code is even looked at, right or not
    status, headers, err = await box.pair(pair_body(code, ""))
    assert (status, err["error"]["code"]) == (429, "ERR-5011")
    assert 0 < int(headers["Retry-After"]) <= pairing.WINDOW_SECONDS
    # another address on the box is not locked out (the whole of 127/8 is loopback)
    other = box.code(name="lane-3")
    status, _, _ = await box.pair(pair_body(other, ""), source="127.0.0.2")
    assert status == 201
    # near the end of the window still locked; once it has passed a right code works
    box.clock.advance(pairing.WINDOW_SECONDS - 2)
    status, headers, _ = await box.pair(pair_body(code, ""))
    assert status == 429 and int(headers["Retry-After"]) <= 2
    box.clock.advance(2)
    status, _, body = await box.pair(pair_body(box.code(name="lane-4"), ""))
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
    for body, code in (({}, "ERR-1003"), ({"proof": 12}, "ERR-1004"),
                       ({"proof": "ab" * 32, "admin": True}, "ERR-1006"),
                       ({"proof": "xy" * 32}, "ERR-1005")):
        status, _, err = await box.pair(body)
        assert (status, err["error"]["code"]) == (422, code), body
    assert box.daemon.services.pair_guard is None or \
        box.daemon.services.pair_guard.retry_after("127.0.0.1") is None


def test_edged_pair_prints_the_code_alone_on_the_last_line_and_the_fingerprint(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "edged.toml", api={"tls": True})
    out = run_cli(data, "pair", "--name", "lane-4", config=config).stdout.splitlines()
    assert CODE_RE.match(out[-1]), out
    bad = run_cli(data, "pair", "--scope", "monitor", config=config, check=False)
    assert bad.returncode == 2
    fp = run_cli(data, "tls", "fingerprint", config=config).stdout.splitlines()[-1]
    short = ":".join(fp[i:i + 2] for i in range(0, 16, 2)).upper()
    assert f"fingerprint {short}   code {out[-1]}" in out  # beside the code, for the cashier
    with DaemonProcess(data, config=config) as daemon:
        assert fp in "".join(daemon.stdout_lines)

        async def trade(body: dict[str, str]) -> tuple[int, Any]:
            async with aiohttp.ClientSession() as session, session.post(
                    f"https://127.0.0.1:{daemon.port}/v1/pair",
                    json=body, ssl=aiohttp.Fingerprint(bytes.fromhex(fp))) as r:
                return r.status, await r.json()

        async def info() -> Any:
            async with aiohttp.ClientSession() as session, session.get(
                    f"https://127.0.0.1:{daemon.port}/v1/pair",
                    ssl=aiohttp.Fingerprint(bytes.fromhex(fp))) as r:
                return await r.json()

        assert asyncio.run(info()) == {"fingerprint": fp, "short_fingerprint": short,
                                       "tls": True}
        # a proof for another fingerprint (what a fake answerer would receive) is wrong
        status, body = asyncio.run(trade(pair_body(out[-1], "ab" * 32)))
        assert (status, body["error"]["code"]) == (403, "ERR-5010")
        status, body = asyncio.run(trade(pair_body(out[-1], fp)))
        assert status == 201 and body["name"] == "lane-4"
        listed = run_cli(data, "token", "list", config=config).stdout
        assert "lane-4" in listed and body["token"] not in listed
    conn = open_sync(data / "edged.db")
    stored = [tuple(r) for r in conn.execute("SELECT code_hash, salt, fingerprint FROM"
                                             " pairing_codes")]
    conn.close()
    assert all(pairing.normalize(out[-1]) not in "".join(r) for r in stored)
    assert all(pair_body(out[-1], fp)["proof"] not in "".join(r) for r in stored)
    assert stored[0][2] == fp
    assert tokens.hash_token(body["token"]) != stored[0][0]


# -- issue 17, points 4 and 5 -------------------------------------------------------------


async def test_a_fake_answerer_cannot_replay_what_the_register_sent(box: Box) -> None:
    """A device answered mDNS first: the register pinned *its* certificate and sent it
    what it sends to pair. Replayed verbatim at the real daemon, it gets no token; the code
    stays good for the register that pins the real fingerprint (here: none, no TLS)."""
    code = box.code(name="lane-2")
    fake_fingerprint = "5e" * 32
    sent_to_the_fake = pair_body(code, fake_fingerprint, "lane-2")
    assert code.replace("-", "") not in json.dumps(sent_to_the_fake).upper()
    status, _, err = await box.pair(sent_to_the_fake, source="127.0.0.9")
    assert (status, err["error"]["code"]) == (403, "ERR-5010")
    assert box.count_tokens("lane-2") == 0
    status, _, body = await box.pair(pair_body(code, "", "lane-2"))
    assert (status, body["name"]) == (201, "lane-2")


async def test_the_code_itself_is_refused_and_stays_unused(box: Box) -> None:
    code = box.code(name="lane-2")
    for _ in range(pairing.MAX_WRONG + 1):
        status, _, err = await box.pair({"code": code, "name": "lane-2"})
        assert (status, err["error"]["code"]) == (422, "ERR-5030")
        assert "proof" in err["error"]["message"] and "README" in err["error"]["message"]
    # neither used up nor counted as a wrong code
    status, _, body = await box.pair(pair_body(code, ""))
    assert status == 201, body


async def test_200_wrong_codes_at_once_from_one_address_are_counted_before_any_is_checked(
        box: Box) -> None:
    results = await asyncio.gather(*(box.pair(pair_body(f"WRONG-{i:05d}", ""))
                                     for i in range(200)), return_exceptions=True)
    # answered: 403 for a code checked, 429 for those held back; the rest were closed at the
    # door (at most 64 connections from one address)
    codes = [r[2]["error"]["code"] for r in results if isinstance(r, tuple)]
    assert codes.count("ERR-5010") <= pairing.MAX_WRONG, codes
    assert set(codes) <= {"ERR-5010", "ERR-5011", "ERR-5031", "ERR-1021"}, set(codes)
    assert all(isinstance(r, tuple | aiohttp.ClientError) for r in results)
    # one address cannot pause pairing for the store: another pairs at once
    status, _, body = await box.pair(pair_body(box.code(name="lane-3"), ""),
                                     source="127.0.0.2")
    assert status == 201, body


async def test_fifty_wrong_codes_from_one_address_never_pause_the_store(box: Box) -> None:
    for i in range(50):
        await box.pair(pair_body(f"WRONG-{i:05d}", ""))
        box.clock.advance(1)
    status, _, body = await box.pair(pair_body(box.code(name="lane-3"), ""),
                                     source="127.0.0.2")
    assert status == 201, body


async def test_the_losers_of_a_race_for_one_valid_code_are_not_wrong_codes(box: Box) -> None:
    code = box.code(name="lane-2")
    results = await asyncio.gather(*(box.pair(pair_body(code, ""), source=f"127.0.0.{10 + i}")
                                     for i in range(20)))
    assert sorted(s for s, _, _ in results) == [201] + [403] * 19
    losers = [err for s, _, err in results if s == 403]
    assert all("already used" in err["error"]["message"] for err in losers)
    guard = box.daemon.services.pairing_guard()
    for i in range(20):  # none of them lost a try
        assert guard.retry_after(f"127.0.0.{10 + i}") is None
    for i in range(pairing.MAX_WRONG - 1):
        status, _, _ = await box.pair(pair_body(f"WRONG-{i:05d}", ""), source="127.0.0.10")
        assert status == 403
    status, _, _ = await box.pair(pair_body(box.code(name="lane-5"), ""), source="127.0.0.10")
    assert status == 201


async def test_a_proof_whose_hex_holds_a_card_like_run_still_pairs(box: Box) -> None:
    """About one proof in a hundred holds 13+ digits in a row that pass Luhn; the card guard
    takes 64 hex digits for the digest they are (it refused them: ERR-1010)."""
    from edged.payments.cardnumbers import text_has_pan

    now = box.clock.now()

    def find(conn: sqlite3.Connection) -> str:
        for i in range(5000):  # each code is random: one fits within a few hundred
            code = pairing.create(conn, "register", f"lane-{i}", now)
            proof = pair_body(code, "")["proof"]
            if text_has_pan(re.sub("[a-f]", "x", proof)):  # as the guard read it before
                return code
        raise AssertionError("no proof with a card-like run in 5000 codes")

    code = await box.daemon.db.write(find)
    status, _, body = await box.pair(pair_body(code, ""))
    assert status == 201, body
