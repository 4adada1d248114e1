"""Signing in to the status page: a manager token for an HttpOnly, SameSite=Strict cookie
that expires, stored hashed, dead with its token; actions need this daemon's Origin."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edged.app import Daemon
from edged.config import ManagerConfig
from edged.lan import pairing, tokens
from tests.clock import ManualClock
from tests.helpers import Api, make_config
from tests.lan_register import pair_body


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Api, ManualClock]]:
    cfg = make_config(tmp_path / "data", manager=ManagerConfig(session_minutes=60))
    clock = ManualClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    daemon = Daemon(cfg, clock, shutdown_grace=0.5)
    await daemon.start()
    token = await daemon.db.write(lambda c: tokens.create(c, "register-1"))
    manager = await daemon.db.write(lambda c: tokens.create(c, "manager-1", "manager"))
    # a browser-like client: keeps cookies for 127.0.0.1 (unsafe: an IP address host)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Api(daemon, session, token, manager), clock
    await daemon.stop()


def origin(api: Api) -> dict[str, str]:
    return {"Origin": api.base}


async def sign_in(api: Api, token: str, headers: dict[str, str] | None = None,
                  ) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with api.session.post(api.base + "/session", json={"token": token},
                                headers=origin(api) if headers is None else headers) as r:
        return r.status, await r.json(), r


async def as_page(api: Api, method: str, path: str, headers: dict[str, str] | None = None,
                  json: Any = None) -> tuple[int, Any]:
    """A request carrying only the cookie (no Authorization header), as the page sends it."""
    async with api.session.request(method, api.base + path, headers=headers or {},
                                   json=json) as r:
        return r.status, await r.json()


def _db(api: Api) -> sqlite3.Connection:
    return sqlite3.connect(api.daemon.db.path)


async def test_sign_in_sets_a_strict_httponly_cookie_stored_hashed(
        setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    status, body, response = await sign_in(api, api.manager_token)
    assert status == 200, body
    assert body == {"name": "manager-1", "scope": "manager", "actions": True,
                    "expires_at": "2026-11-26T13:00:00.000Z"}
    raw = response.headers.getall("Set-Cookie")
    assert len(raw) == 1
    cookie = SimpleCookie(raw[0])["edged_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "3600"
    assert not cookie["secure"]  # plain HTTP on loopback; Secure under TLS
    sid = cookie.value
    conn = _db(api)
    rows = conn.execute("SELECT id_hash FROM sessions").fetchall()
    audit = conn.execute("SELECT action FROM audit WHERE action = 'session.signed_in'")\
        .fetchall()
    conn.close()
    assert rows == [(hashlib.sha256(sid.encode()).hexdigest(),)]
    assert len(audit) == 1
    for part in ("", "-wal"):  # the session id itself is nowhere in the files
        path = Path(str(api.daemon.db.path) + part)
        if path.exists():
            assert sid.encode() not in path.read_bytes()

    status, who = await as_page(api, "GET", "/session")
    assert (status, who["name"]) == (200, "manager-1")
    status, page = await as_page(api, "GET", "/v1/status")
    assert status == 200 and page["viewer"] == {"name": "manager-1", "scope": "manager",
                                                "actions": True}
    assert [t["id"] for t in page["terminals"]] == ["sim-1"]


async def test_who_may_sign_in(setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    status, body, _ = await sign_in(api, api.token)
    assert (status, body["error"]["code"]) == (403, "ERR-5003")
    status, body, _ = await sign_in(api, "edg_not-a-token")
    assert (status, body["error"]["code"]) == (401, "ERR-5002")
    status, body, _ = await sign_in(api, api.manager_token, headers={})  # no Origin
    assert (status, body["error"]["code"]) == (403, "ERR-5020")
    status, body, _ = await sign_in(api, api.manager_token,
                                    headers={"Origin": "http://evil.example"})
    assert (status, body["error"]["code"]) == (403, "ERR-5020")
    assert api.count("sessions") == 0
    # the token never goes in a URL: a query string authenticates nothing
    status, body = await as_page(api, "GET", f"/v1/status?token={api.manager_token}")
    assert (status, body["error"]["code"]) == (401, "ERR-5001")


async def test_actions_need_this_daemons_origin(setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    await sign_in(api, api.manager_token)
    conn = _db(api)
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, created_at,"
                 " updated_at) VALUES ('pay_u', 'card_present', 'unknown', 500, 'EUR',"
                 " '2026-11-26T11:00:00.000Z', '2026-11-26T11:00:00.000Z')")
    conn.commit()
    conn.close()
    resolve = {"outcome": "declined", "note": "journal: no transaction"}
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"https://127.0.0.1:{api.daemon.port}"}):
        status, body = await as_page(api, "POST", "/v1/payments/pay_u/resolve",
                                     {**headers, "Idempotency-Key": "k-csrf"}, resolve)
        assert (status, body["error"]["code"]) == (403, "ERR-5020"), headers
    assert api.count("payments", "state = 'unknown'") == 1
    status, body = await as_page(api, "POST", "/v1/payments/pay_u/resolve",
                                 {**origin(api), "Idempotency-Key": "k-page"}, resolve)
    assert (status, body["state"]) == (200, "declined")
    conn = _db(api)
    actor = conn.execute("SELECT actor FROM audit WHERE action = 'payment.resolved'")\
        .fetchone()
    conn.close()
    assert actor == ("token:manager-1",)


async def test_sessions_expire_and_die_with_their_token(setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    await sign_in(api, api.manager_token)
    clock.advance(59 * 60)
    assert (await as_page(api, "GET", "/v1/status"))[0] == 200
    clock.advance(61)
    status, body = await as_page(api, "GET", "/v1/status")
    assert (status, body["error"]["code"]) == (401, "ERR-5021")
    assert (await as_page(api, "GET", "/session"))[0] == 401

    await sign_in(api, api.manager_token)
    assert (await as_page(api, "GET", "/v1/status"))[0] == 200
    conn = _db(api)
    conn.execute("UPDATE tokens SET revoked_at = '2026-11-26T13:02:00.000Z'"
                 " WHERE name = 'manager-1'")
    conn.commit()
    conn.close()
    status, body = await as_page(api, "GET", "/v1/status")
    assert (status, body["error"]["code"]) == (401, "ERR-5021")
    status, body = await as_page(api, "GET", "/v1/events")
    assert status == 401


async def test_sign_out_and_sign_in_attempts_are_limited(
        setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    await sign_in(api, api.manager_token)
    async with api.session.delete(api.base + "/session", headers=origin(api)) as r:
        assert r.status == 200
    assert api.count("sessions") == 0
    assert (await as_page(api, "GET", "/v1/status"))[0] == 401
    codes = [(await sign_in(api, "edg_wrong"))[0] for _ in range(9)]
    assert codes == [401] * 9  # 10 a minute per address, right or wrong: one used above
    status, body, response = await sign_in(api, api.manager_token)
    assert (status, body["error"]["code"]) == (429, "ERR-1015")
    assert int(response.headers["Retry-After"]) >= 1


async def test_page_files_are_served_with_a_strict_policy(
        setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    for path, kind in (("/", "text/html"), ("/report", "text/html"),
                       ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css"),
                       ("/static/report.js", "text/javascript")):
        async with api.session.get(api.base + path) as r:
            assert (r.status, r.content_type) == (200, kind), path
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
            text = await r.text()
            assert "http://" not in text and "https://" not in text, path  # no CDN
    for path in ("/static/../edged.db", "/static/secret.key", "/static/nothing.js"):
        async with api.session.get(api.base + path) as r:
            assert r.status == 404, path
    async with api.session.get(api.base + "/", headers={"Host": "evil.example"}) as r:
        assert r.status == 421  # DNS rebinding: the Host check covers the page too


async def test_under_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, tls=True))
    daemon = Daemon(cfg, ManualClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC)),
                    shutdown_grace=0.5)
    await daemon.start()
    try:
        manager = await daemon.db.write(lambda c: tokens.create(c, "manager-1", "manager"))
        assert daemon.tls is not None and daemon.tls.info is not None
        pin = aiohttp.Fingerprint(bytes.fromhex(daemon.tls.info.fingerprint))
        base = f"https://127.0.0.1:{daemon.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(base + "/session", json={"token": manager}, ssl=pin,
                              headers={"Origin": "http://127.0.0.1:%d" % daemon.port}) as r:
                assert r.status == 403  # the page's origin is https now
            async with s.post(base + "/session", json={"token": manager}, ssl=pin,
                              headers={"Origin": base}) as r:
                assert r.status == 200
                jar = SimpleCookie(r.headers["Set-Cookie"])
                # __Host-: the browser keeps it only Secure, for path / and without a Domain,
                # so no other host of the LAN can set or shadow it (issue 17, point 7)
                assert list(jar) == ["__Host-edged_session"]
                cookie = jar["__Host-edged_session"]
                assert cookie["secure"] is True and cookie["httponly"] is True
                assert cookie["path"] == "/" and not cookie["domain"]
                sid = cookie.value
            async with s.get(base + "/v1/status", ssl=pin) as r:
                assert r.status == 200
            # the same session id under the old name is no sign-in under TLS
            async with aiohttp.ClientSession() as bare, bare.get(
                    base + "/v1/status", ssl=pin,
                    headers={"Cookie": f"edged_session={sid}"}) as r:
                assert r.status == 401
            async with s.delete(base + "/session", ssl=pin, headers={"Origin": base}) as r:
                assert r.status == 200
                gone = SimpleCookie(r.headers["Set-Cookie"])["__Host-edged_session"]
                assert gone["secure"] is True and gone.value == ""
    finally:
        await daemon.stop()


def _unknown_payment(api: Api) -> None:
    conn = _db(api)
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, created_at,"
                 " updated_at) VALUES ('pay_u', 'card_present', 'unknown', 500, 'EUR',"
                 " '2026-11-26T11:00:00.000Z', '2026-11-26T11:00:00.000Z')")
    conn.commit()
    conn.close()


async def _code(api: Api, clock: ManualClock, scope: str, name: str | None) -> str:
    now = clock.now()
    return await api.daemon.db.write(lambda c: pairing.create(c, scope, name, now))


async def code_sign_in(api: Api, body: dict[str, Any]) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with api.session.post(api.base + "/session", json=body, headers=origin(api)) as r:
        return r.status, await r.json(), r


async def test_a_monitor_signs_in_and_only_looks(setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    monitor = await api.daemon.db.write(lambda c: tokens.create(c, "wall-1", "monitor"))
    _unknown_payment(api)
    status, body, _ = await sign_in(api, monitor)
    assert status == 200, body
    assert (body["scope"], body["actions"]) == ("monitor", False)
    status, page = await as_page(api, "GET", "/v1/status")
    assert status == 200 and page["viewer"] == {"name": "wall-1", "scope": "monitor",
                                                "actions": False}
    assert (await as_page(api, "GET", "/session"))[1]["actions"] is False
    resolve = {"outcome": "declined", "note": "journal: no transaction"}
    status, body = await as_page(api, "POST", "/v1/payments/pay_u/resolve",
                                 {**origin(api), "Idempotency-Key": "k-mon"}, resolve)
    assert (status, body["error"]["code"]) == (403, "ERR-5003")
    status, body = await as_page(api, "POST", "/v1/sync/jobs/1/retry",
                                 {**origin(api), "Idempotency-Key": "k-mon2"}, {})
    assert (status, body["error"]["code"]) == (403, "ERR-5003")
    assert api.count("payments", "state = 'unknown'") == 1
    assert api.count("audit", "action = 'payment.resolved'") == 0


async def test_a_manager_pairing_code_signs_in_once_bound_to_a_new_token(
        setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    _unknown_payment(api)
    code = await _code(api, clock, "manager", "alice-phone")
    status, body, response = await code_sign_in(api, pair_body(code.lower(), ""))
    assert status == 200, body
    assert body == {"name": "alice-phone", "scope": "manager", "actions": True,
                    "expires_at": "2026-11-26T13:00:00.000Z"}
    assert "edg_" not in await response.text()  # the new token never reaches the browser
    sid = SimpleCookie(response.headers["Set-Cookie"])["edged_session"].value
    conn = _db(api)
    token_id, scope = conn.execute("SELECT id, scope FROM tokens WHERE name = 'alice-phone'"
                                   " AND revoked_at IS NULL").fetchone()
    used = conn.execute("SELECT used_at, token_id FROM pairing_codes").fetchone()
    session = conn.execute("SELECT token_id FROM sessions WHERE id_hash = ?",
                           (hashlib.sha256(sid.encode()).hexdigest(),)).fetchone()
    actions = [r[0] for r in conn.execute(
        "SELECT action FROM audit WHERE action IN ('token.paired', 'session.signed_in')"
        " ORDER BY rowid")]
    conn.close()
    assert scope == "manager"
    assert used == ("2026-11-26T12:00:00.000Z", token_id)
    assert session == (token_id,)
    assert actions == ["token.paired", "session.signed_in"]

    status, page = await as_page(api, "GET", "/v1/status")
    assert (status, page["viewer"]["name"]) == (200, "alice-phone")
    status, paid = await as_page(api, "POST", "/v1/payments/pay_u/resolve",
                                 {**origin(api), "Idempotency-Key": "k-pair"},
                                 {"outcome": "declined", "note": "journal: none"})
    assert (status, paid["state"]) == (200, "declined")

    status, body, _ = await code_sign_in(api, pair_body(code, ""))  # once only
    assert (status, body["error"]["code"]) == (403, "ERR-5010")
    late = await _code(api, clock, "manager", "bob-phone")
    clock.advance(5 * 60 + 1)  # the same five minutes as POST /v1/pair
    status, body, _ = await code_sign_in(api, pair_body(late, ""))
    assert (status, body["error"]["code"]) == (403, "ERR-5010")
    assert api.count("tokens", "name = 'bob-phone'") == 0

    await api.daemon.db.write(lambda c: tokens.revoke(c, "alice-phone"))
    status, body = await as_page(api, "GET", "/v1/status")
    assert (status, body["error"]["code"]) == (401, "ERR-5021")


async def test_a_register_code_does_not_sign_in_and_stays_unused(
        setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    code = await _code(api, clock, "register", "till-2")
    status, body, _ = await code_sign_in(api, pair_body(code, ""))
    assert (status, body["error"]["code"]) == (403, "ERR-5003")
    assert api.count("sessions") == 0
    assert api.count("tokens", "name = 'till-2'") == 0
    assert api.count("pairing_codes", "used_at IS NULL") == 1
    async with api.session.post(api.base + "/v1/pair", json=pair_body(code, "")) as r:
        assert r.status == 201  # the register still pairs with it
        assert (await r.json())["scope"] == "register"


async def test_code_sign_in_shares_the_wrong_code_limit_with_pairing(
        setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    code = await _code(api, clock, "manager", None)
    status, body, _ = await code_sign_in(api, pair_body(code, ""))
    assert (status, body["error"]["code"]) == (422, "ERR-1003")  # a name is needed
    assert api.count("pairing_codes", "used_at IS NULL") == 1
    for _ in range(3):
        status, body, _ = await code_sign_in(api, pair_body("AAAAA-AAAAA", "", "x"))
        assert (status, body["error"]["code"]) == (403, "ERR-5010")
    for _ in range(2):
        async with api.session.post(api.base + "/v1/pair", json=pair_body("BBBBB-BBBBB", "",
                                                                           "x")) as r:
            assert r.status == 403
    status, body, response = await code_sign_in(api, pair_body(code, "", "carol"))
    assert (status, body["error"]["code"]) == (429, "ERR-5011")
    assert int(response.headers["Retry-After"]) >= 1
    assert api.count("sessions") == 0 and api.count("pairing_codes", "used_at IS NULL") == 1


async def test_the_code_itself_does_not_sign_in(setup: tuple[Api, ManualClock]) -> None:
    """The page's sign-in takes a proof like POST /v1/pair (issue 17, point 5)."""
    api, clock = setup
    code = await _code(api, clock, "manager", "alice-phone")
    status, body, _ = await code_sign_in(api, {"code": code})
    assert (status, body["error"]["code"]) == (422, "ERR-5030")
    assert api.count("sessions") == 0 and api.count("pairing_codes", "used_at IS NULL") == 1
    status, body, _ = await code_sign_in(api, pair_body(code, ""))
    assert status == 200, body
