"""Hostile input (issue 7, defect 18): every request below is a 4xx with a code, never a
500 and never a traceback in the log; nothing is written."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from tests.helpers import Api

PAY = "/v1/payments"
CASH = b'{"amount": 100, "currency": "EUR", "method": "cash"}'
PAN = "4111111111111111"


async def _raw(api: Api, data: bytes, headers: dict[str, str], path: str = PAY,
               method: str = "POST") -> tuple[int, Any, dict[str, str]]:
    async with api.session.request(method, api.base + path, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def _sock_request(api: Api, raw: bytes) -> bytes:
    """Send raw bytes on a fresh socket and read the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b'"error"' in b"".join(chunks):
                break
    return b"".join(chunks)


@pytest.fixture
def no_traceback(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def _clean(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert "unhandled error" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("depth", [40, 330, 900, 5000])
async def test_deeply_nested_json_is_refused(api: Api, no_traceback: pytest.LogCaptureFixture,
                                             depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    body = f'{{"amount": 100, "currency": "EUR", "method": "cash", "reference": {nested}}}'
    status, answer, _ = await _raw(api, body.encode(), api.headers("deep"))
    assert status == 400
    assert answer["error"]["code"] == "ERR-1017"
    assert api.count("payments") == 0
    _clean(no_traceback)


@pytest.mark.parametrize("where", ["value", "key", "idempotency"])
async def test_a_lone_surrogate_is_refused(api: Api, no_traceback: pytest.LogCaptureFixture,
                                           where: str) -> None:
    if where == "value":
        body = b'{"amount": 100, "currency": "EUR", "method": "cash", "reference": "a\\ud800"}'
    elif where == "key":
        body = b'{"amount": 100, "currency": "EUR", "method": "cash", "\\udfff": 1}'
    else:
        body = b'{"amount": 100, "currency": "EUR", "method": "cash", "reference": "\\ud83d"}'
    status, answer, _ = await _raw(api, body, api.headers("surrogate"))
    assert status == 400
    assert answer["error"]["code"] == "ERR-1001"
    assert api.count("payments") == 0
    assert api.count("idempotency") == 0
    _clean(no_traceback)


async def test_a_non_utf8_authorization_header(api: Api,
                                               no_traceback: pytest.LogCaptureFixture) -> None:
    raw = (b"GET /v1/terminals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Authorization: Bearer edg_\xff\xfe\xc3\x28\r\nConnection: close\r\n\r\n")
    answer = await asyncio.to_thread(_sock_request, api, raw)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"ERR-5002" in answer
    _clean(no_traceback)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(api: Api, scheme: str) -> None:
    headers = {"Authorization": f"{scheme}  {api.token}"}
    status, body, _ = await _raw(api, b"", headers, path="/v1/terminals", method="GET")
    assert status == 200, body


def _cursor(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    _cursor("n:" + "9" * 30), _cursor("n:9223372036854775808"), _cursor("n:-" + "9" * 30),
    _cursor("n:" + "1" * 6000), _cursor("n:\u0661\u0662"), "%00%ff", _cursor("n:\xff"),
])
async def test_a_cursor_holding_a_huge_number(api: Api, no_traceback: pytest.LogCaptureFixture,
                                              cursor: str) -> None:
    status, body = await api.get(f"{PAY}?cursor={cursor}")
    assert (status, body["error"]["code"]) == (400, "ERR-1013")
    _clean(no_traceback)


@pytest.mark.parametrize("job", ["١٢", "²", "9" * 19, "9223372036854775808", "1e3", "-1",
                                 "0x10", " 1", "0" * 400 + "1"])
async def test_a_sync_job_id_that_is_not_a_plain_int64(
        api: Api, no_traceback: pytest.LogCaptureFixture, job: str) -> None:
    from urllib.parse import quote

    status, body = await api.post(f"/v1/sync/jobs/{quote(job)}/retry", {},
                                  token=api.manager_token)
    assert (status, body["error"]["code"]) == (404, "ERR-6001")
    assert job not in body["error"]["message"] or len(job) < 40
    _clean(no_traceback)


async def test_a_client_disconnecting_mid_body(api: Api,
                                               no_traceback: pytest.LogCaptureFixture) -> None:
    head = (f"POST {PAY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {api.token}\r\nIdempotency-Key: gone\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n").encode()

    def send_and_vanish() -> None:
        with socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10) as sock:
            sock.sendall(head + b'{"amount": 100, "curr')
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    await asyncio.to_thread(send_and_vanish)
    # the daemon still answers, and nothing about the vanished client is a 500
    for _ in range(50):
        status, _body = await api.get("/v1/terminals")
        assert status == 200
        if api.daemon.metrics.value("edged_http_requests_total", route="/v1/payments",
                                    method="POST", status="499") is not None:
            break
        await asyncio.sleep(0.05)
    assert api.daemon.metrics.value("edged_http_requests_total", route="/v1/payments",
                                    method="POST", status="500") is None
    assert api.count("payments") == 0
    _clean(no_traceback)


@pytest.mark.parametrize("reference", [
    "4111.1111.1111.1111", "4111/1111/1111/1111", "4111 1111-1111.1111",
    "order 99" + PAN + "77",  # inside a longer run of digits
    "ref:" + PAN + "0000000",
])
async def test_the_card_guard_catches_split_and_embedded_numbers(
        api: Api, no_traceback: pytest.LogCaptureFixture, reference: str) -> None:
    status, body = await api.post(PAY, {"amount": 100, "currency": "EUR", "method": "cash",
                                        "reference": reference})
    assert (status, body["error"]["code"]) == (422, "ERR-1010")
    assert "1111" not in body["error"]["message"]
    assert api.count("payments") == 0
    assert "1111" not in no_traceback.text


async def test_a_card_number_in_the_idempotency_key(api: Api,
                                                    no_traceback: pytest.LogCaptureFixture
                                                    ) -> None:
    for key in (PAN, f"sale-{PAN}", "4111-1111-1111-1111"):
        status, body, _ = await _raw(api, CASH, api.headers(key))
        assert (status, body["error"]["code"]) == (422, "ERR-1010")
        assert "1111" not in body["error"]["message"]
    assert api.count("payments") == 0
    assert api.count("idempotency") == 0
    assert "1111" not in no_traceback.text


async def test_a_uuid_without_dashes_is_a_key_not_a_card_number(api: Api) -> None:
    """Python's ``uuid4().hex`` is a common Idempotency-Key; about 0.36 % of them hold a
    digit run that passes Luhn (here 43642324387840819) and were refused with ERR-1010."""
    key = "43642324387840819ef1d9788cc52c86"
    status, body, _ = await _raw(api, CASH, api.headers(key))
    assert status == 201, body
    status, again, _ = await _raw(api, CASH, api.headers(key))
    assert (status, again["id"]) == (201, body["id"])
    assert api.count("payments") == 1


async def test_a_timestamped_key_and_receipt_number_are_not_card_numbers(api: Api) -> None:
    """A key made of a lane and a millisecond timestamp passes Luhn one time in ten
    (1765000000007 does), as receipt numbers do but starts like no card brand's number: not a card number."""
    body = json.dumps({"amount": 100, "currency": "EUR", "method": "cash",
                       "reference": "0012026000000019"}).encode()
    status, answer, _ = await _raw(api, body, api.headers("lane-2-1765000000007"))
    assert status == 201, answer
    assert answer["reference"] == "0012026000000019"


async def test_no_error_message_echoes_a_card_number(api: Api) -> None:
    # fields whose own validation would quote the value back
    for body in ({"amount": 100, "currency": PAN[:3], "method": "cash"},
                 {"amount": 100, "currency": "EUR", "method": PAN},
                 {"amount": 100, "currency": "EUR", "method": "cash", PAN: 1}):
        status, answer = await api.post(PAY, body)
        assert status == 422
        assert PAN not in answer["error"]["message"]
    status, answer = await api.get(f"{PAY}?state={PAN}")
    assert status == 400
    assert PAN not in answer["error"]["message"]
    status, answer = await api.get(f"/v1/nothing/{PAN}")
    assert status == 404
    assert PAN not in answer["error"]["message"]


async def test_a_405_names_the_allowed_methods(api: Api) -> None:
    status, body, headers = await _raw(api, b"", api.headers(), path="/v1/terminals",
                                       method="DELETE")
    assert (status, body["error"]["code"]) == (405, "ERR-1012")
    assert headers["Allow"] == "GET"
    status, body, headers = await _raw(api, b"", api.headers(), path=PAY, method="PUT")
    assert status == 405
    assert set(headers["Allow"].split(", ")) == {"GET", "POST"}


@pytest.mark.parametrize("raw", [
    b"GET /v1/terminals HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    b"GET /v1/terminals HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS on the plain port
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
])
async def test_aiohttps_own_400s_have_the_json_error_shape(
        api: Api, no_traceback: pytest.LogCaptureFixture, raw: bytes) -> None:
    answer = await asyncio.to_thread(_sock_request, api, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1][:1] == b"4", head
    assert b"application/json" in head
    import json

    error = json.loads(body)["error"]
    assert error["code"].startswith("ERR-1")
    assert error["retryable"] is False
    _clean(no_traceback)


# -- defect 15: bounded metric labels, anonymous calls limited per address ----------------


WEBDAV = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH",
          "PURGE", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY", "SUBSCRIBE",
          "UNSUBSCRIBE", "LINK", "UNLINK", "BIND", "REBIND", "UNBIND", "ACL")


async def test_unknown_methods_are_one_metric_label(api: Api) -> None:
    for method in WEBDAV:  # methods the HTTP parser knows and the API does not
        async with api.session.request(method, api.base + "/v1/terminals",
                                       headers=api.headers()) as r:
            assert r.status == 405
            assert (await r.json())["error"]["code"] == "ERR-1012"
    for i in range(20):  # invented ones: the parser refuses them, in the JSON shape
        async with api.session.request(f"FOO{chr(65 + i)}", api.base + "/v1/terminals",
                                       headers=api.headers()) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "ERR-1020"
    text = api.daemon.metrics.render()
    assert not [m for m in (*WEBDAV, "FOO") if m in text], text
    assert api.daemon.metrics.value("edged_http_requests_total", route="unmatched",
                                    method="other", status="405") == len(WEBDAV)


async def test_anonymous_calls_are_rate_limited_per_address(api: Api) -> None:
    burst = api.daemon.cfg.api.anonymous_rate_burst
    statuses = []
    for _ in range(burst + 5):
        status, body, headers = await _raw(api, b"", {"Authorization": "Bearer edg_guess"},
                                           path="/v1/terminals", method="GET")
        statuses.append(status)
    assert statuses[:burst] == [401] * burst
    assert statuses[-1] == 429
    assert body["error"]["code"] == "ERR-1015"
    assert body["error"]["retryable"] is True
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Limit"] == str(burst)
    assert headers["X-RateLimit-Remaining"] == "0"
    assert "X-RateLimit-Reset" in headers
    # a caller with a valid token is not held back by the guesser
    status, _ = await api.get("/v1/terminals")
    assert status == 200


# -- defect 18: connections that never finish ---------------------------------------------


@pytest.fixture
async def quick_api(tmp_path: Any) -> Any:
    from dataclasses import replace

    from tests.helpers import make_config, running

    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, header_timeout=0.5, body_timeout=0.5))
    async with running(cfg) as client:
        yield client


def _closed_within(port: int, first: bytes, bound: float = 10.0) -> bytes:
    """Send ``first`` and then nothing; return what the server sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=bound) as sock:
        if first:
            sock.sendall(first)
        out = b""
        while True:
            chunk = sock.recv(65536)  # socket.timeout (a failure) if never closed
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize("first", [
    b"",  # connects and says nothing
    b"GET /v1/terminals HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a",  # headers never end
])
async def test_a_request_that_never_completes_its_headers_is_closed(
        quick_api: Api, first: bytes) -> None:
    out = await asyncio.to_thread(_closed_within, quick_api.daemon.port, first)
    assert out == b""


async def test_a_body_that_never_arrives_is_a_408(quick_api: Api) -> None:
    head = (f"POST {PAY} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {quick_api.token}\r\nIdempotency-Key: slow\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()
    out = await asyncio.to_thread(_closed_within, quick_api.daemon.port, head)
    assert out.startswith(b"HTTP/1.1 408"), out[:100]
    assert b"ERR-1018" in out
    assert quick_api.count("payments") == 0


async def test_a_sign_in_body_that_never_arrives_is_a_408(quick_api: Api) -> None:
    """POST /session read its body with no deadline at all (issue 17, point 1)."""
    base = quick_api.base
    head = (f"POST /session HTTP/1.1\r\nHost: 127.0.0.1:{quick_api.daemon.port}\r\n"
            f"Origin: {base}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{").encode()
    out = await asyncio.to_thread(_closed_within, quick_api.daemon.port, head)
    assert out.startswith(b"HTTP/1.1 408"), out[:100]
    assert b"ERR-1018" in out
