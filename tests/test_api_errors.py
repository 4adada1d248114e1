"""Bad input: a 4xx with its code and an actionable message, nothing written, no traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.helpers import Api

PAY = "/v1/payments"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"currency": "EUR", "method": "cash"}, 422, "ERR-1003"),
    ({"amount": "12.50", "currency": "EUR", "method": "cash"}, 422, "ERR-1004"),
    ({"amount": 12.5, "currency": "EUR", "method": "cash"}, 422, "ERR-2001"),
    ({"amount": 0, "currency": "EUR", "method": "cash"}, 422, "ERR-2001"),
    ({"amount": -100, "currency": "EUR", "method": "cash"}, 422, "ERR-2001"),
    ({"amount": 10**20, "currency": "EUR", "method": "cash"}, 422, "ERR-2001"),
    ({"amount": True, "currency": "EUR", "method": "cash"}, 422, "ERR-1004"),
    ({"amount": 100, "currency": "XYZ", "method": "cash"}, 422, "ERR-2002"),
    ({"amount": 100, "currency": "eur", "method": "cash"}, 422, "ERR-2002"),
    ({"amount": 100, "currency": "EUR", "method": "cheque"}, 422, "ERR-1005"),
    ({"amount": 100, "currency": "EUR", "method": "cash", "tip": 1}, 422, "ERR-1006"),
    ({"amount": 100, "currency": "EUR", "method": "card_present", "terminal": "lane-9"},
     422, "ERR-3001"),
    ({"amount": 100, "currency": "EUR", "method": "cash",
      "reference": "card 4111 1111 1111 1111"}, 422, "ERR-1010"),
    ({"amount": 100, "currency": "EUR", "method": "token"}, 422, "ERR-2004"),
])
async def test_bad_payment_bodies(api: Api, caplog: pytest.LogCaptureFixture,
                                  body: dict[str, Any], status: int, code: str) -> None:
    caplog.set_level(logging.DEBUG)
    got, answer = await api.post(PAY, body)
    assert (got, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"]
    assert answer["error"]["retryable"] is False
    assert api.count("payments") == 0
    assert api.count("idempotency") == 0
    assert "Traceback" not in caplog.text
    assert "4111" not in caplog.text


async def _raw(api: Api, data: bytes, headers: dict[str, str],
               path: str = PAY, method: str = "POST") -> tuple[int, Any]:
    async with api.session.request(method, api.base + path, data=data, headers=headers) as r:
        return r.status, await r.json()


async def test_malformed_json(api: Api) -> None:
    status, body = await _raw(api, b'{"amount": 12', api.headers("k"))
    assert (status, body["error"]["code"]) == (400, "ERR-1001")
    status, body = await _raw(api, b"[1, 2]", api.headers("k"))
    assert (status, body["error"]["code"]) == (400, "ERR-1002")
    assert api.count("payments") == 0


async def test_oversize_body(api: Api) -> None:
    big = b'{"reference": "' + b"x" * 200_000 + b'"}'
    status, body = await _raw(api, big, api.headers("k"))
    assert (status, body["error"]["code"]) == (413, "ERR-1007")
    assert api.count("payments") == 0


async def test_missing_idempotency_key(api: Api) -> None:
    status, body = await _raw(api, b'{"amount": 100, "currency": "EUR", "method": "cash"}',
                              api.headers(None))
    assert (status, body["error"]["code"]) == (400, "ERR-1008")
    assert api.count("payments") == 0


async def test_form_encoded_body_is_refused(api: Api) -> None:
    headers = api.headers("k") | {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await _raw(api, b"amount=100", headers)
    assert (status, body["error"]["code"]) == (415, "ERR-1014")


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "ERR-5001"),
    ({"Authorization": "Bearer edg_not-a-token"}, 401, "ERR-5002"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "ERR-5001"),
])
async def test_auth_is_required(api: Api, headers: dict[str, str], status: int,
                                code: str) -> None:
    got, body = await _raw(api, b"", headers, path="/v1/payments", method="GET")
    assert (got, body["error"]["code"]) == (status, code)


async def test_a_token_revoked_by_another_process_fails_on_its_next_call(api: Api) -> None:
    import sqlite3

    from edged.lan.token_cache import announce_revocation
    from edged.lan.tokens import hash_token

    status, _ = await api.get("/v1/payments")
    assert status == 200
    other = sqlite3.connect(api.daemon.db.path, isolation_level=None)  # as the CLI does:
    try:
        other.execute("UPDATE tokens SET revoked_at = '2026-01-01T00:00:00Z'"
                      " WHERE token_hash = ?", (hash_token(api.token),))
    finally:
        other.close()
    announce_revocation(api.daemon.db.path)  # the commit, then the stamp
    got, body = await api.get("/v1/payments")
    assert (got, body["error"]["code"]) == (401, "ERR-5002")
    got, body = await api.post(PAY, {"amount": 100, "currency": "EUR", "method": "cash"})
    assert (got, body["error"]["code"]) == (401, "ERR-5002")
    assert api.count("payments") == 0


async def test_foreign_host_header_is_refused(api: Api) -> None:
    headers = api.headers() | {"Host": "attacker.example:8731"}
    status, body = await _raw(api, b"", headers, path="/v1/terminals", method="GET")
    assert (status, body["error"]["code"]) == (421, "ERR-5004")
    status, body = await _raw(api, b"", {"Host": "evil.example"}, path="/healthz",
                              method="GET")
    assert status == 421


async def test_no_cors(api: Api) -> None:
    headers = api.headers() | {"Origin": "http://evil.example"}
    async with api.session.get(api.base + "/v1/terminals", headers=headers) as r:
        assert r.status == 200
        assert "Access-Control-Allow-Origin" not in r.headers
    async with api.session.options(api.base + "/v1/payments", headers=headers) as r:
        assert r.status == 405
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_unknown_route_and_method(api: Api) -> None:
    status, body = await _raw(api, b"", api.headers(), path="/v1/nothing", method="GET")
    assert (status, body["error"]["code"]) == (404, "ERR-1011")
    status, body = await _raw(api, b"", api.headers(), path="/v1/terminals", method="DELETE")
    assert (status, body["error"]["code"]) == (405, "ERR-1012")


async def test_unknown_payment(api: Api) -> None:
    status, body = await api.get("/v1/payments/pay_nothing")
    assert (status, body["error"]["code"]) == (404, "ERR-2003")
    status, body = await api.get("/v1/payments/pay_nothing?wait=abc")
    assert (status, body["error"]["code"]) == (400, "ERR-1013")


async def test_every_code_in_answers_is_in_the_generated_table(api: Api) -> None:
    from pathlib import Path

    from edged.docgen.errors_doc import render
    from edged.errors import CODES

    table = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    assert table == render()
    for code in CODES:
        assert f"| {code} |" in table
