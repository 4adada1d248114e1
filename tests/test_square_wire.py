"""The Square Terminal lane's calls: what goes on the wire, and what a failure is taken for.

A Square Terminal lane reads its answers as JSON through the SDK's own client
(``sync/square_api/wire.py``) and the SDK's requests go out on aiohttp
(``sync/square_api/transport.py``), both to save CPU per payment (issue 22). These tests
hold them to what the typed SDK call does and to what a lost answer means for money.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from sync.core.clock import SystemClock
from sync.core.errors import OutcomeUnknown, TransientError
from sync.core.limiter import TokenBucket, TokenBucketSettings
from sync.square_api.calls import SquareRefusal, square_call
from sync.square_api.sdk import SquareSdk
from sync.square_api.wire import request
from tests.helpers import serve_any

CHECKOUT = {"id": "chk_1", "status": "PENDING", "note": "edged pay_1",
            "amount_money": {"amount": 1234, "currency": "EUR"},
            "device_options": {"device_id": "DEV1"}}


class Recorder:
    """An HTTP server on 127.0.0.1 that keeps each request and answers a checkout."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, CIMultiDict[str], bytes]] = []
        self.gzip = False

    async def handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        self.seen.append((req.method, req.path, CIMultiDict(req.headers), body))
        raw = json.dumps({"checkout": CHECKOUT}).encode()
        if self.gzip and "gzip" in req.headers.get("Accept-Encoding", ""):  # as HTTP says
            return web.Response(body=gzip.compress(raw), content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        return web.Response(body=raw, content_type="application/json")


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    async with serve_any(rec.handle) as base:
        yield rec, base


def _sdk(base: str, timeout: float = 5.0) -> SquareSdk:
    sdk = SquareSdk(base, timeout)
    sdk.token = "EAAAtest"  # noqa: S105 (a test token)
    return sdk


async def test_a_read_through_the_wire_sends_what_the_typed_sdk_call_sends(
        recorder: tuple[Recorder, str]) -> None:
    """Square authenticates by ``Authorization: Bearer`` and versions every call by its
    ``Square-Version`` header (Square's API reference, "Square API versioning"): the raw
    read must carry the very headers and path the SDK's typed ``checkouts.get`` does."""
    rec, base = recorder
    sdk = _sdk(base)
    client = sdk.client()
    typed = await client.terminal.checkouts.get("chk_1")
    raw = await request(client, sdk.transport(), "v2/terminals/checkouts/chk_1", "GET")
    await sdk.close()
    assert typed.checkout is not None and typed.checkout.id == raw["checkout"]["id"] == "chk_1"
    (m1, p1, h1, _), (m2, p2, h2, _) = rec.seen
    assert (m1, p1) == (m2, p2) == ("GET", "/v2/terminals/checkouts/chk_1")
    for name in ("Authorization", "Square-Version", "User-Agent"):
        assert h1[name] == h2[name], name
    assert h2["Authorization"] == "Bearer EAAAtest"


async def test_a_create_through_the_wire_sends_the_typed_calls_body(
        recorder: tuple[Recorder, str]) -> None:
    """``CreateTerminalCheckout`` takes ``idempotency_key`` and ``checkout`` (Square's
    OpenAPI, tests/fixtures/square/api.json): the raw body is the typed call's, field for
    field, and both go as JSON."""
    rec, base = recorder
    sdk = _sdk(base)
    client = sdk.client()
    body = {"idempotency_key": "edged-pay_1-co",
            "checkout": {"amount_money": {"amount": 1234, "currency": "EUR"},
                         "device_options": {"device_id": "DEV1"}, "note": "edged pay_1",
                         "deadline_duration": "PT60S"}}
    await client.terminal.checkouts.create(idempotency_key=body["idempotency_key"],
                                           checkout=body["checkout"])  # type: ignore[arg-type]
    await request(client, sdk.transport(), "v2/terminals/checkouts", "POST", body=body)
    await sdk.close()
    (_, _, h1, b1), (_, _, h2, b2) = rec.seen
    assert json.loads(b1) == json.loads(b2) == body
    assert h1["Content-Type"].startswith("application/json")
    assert h2["Content-Type"].startswith("application/json")


async def test_a_compressed_answer_is_read(recorder: tuple[Recorder, str]) -> None:
    """An answer sent with ``Content-Encoding: gzip`` (HTTP's own) reads as its JSON, through
    the SDK's typed call (httpx decodes it) as through the raw read (which asks for none)."""
    rec, base = recorder
    rec.gzip = True
    sdk = _sdk(base)
    typed = await sdk.client().terminal.checkouts.get("chk_1")
    assert typed.checkout is not None and typed.checkout.id == "chk_1"
    answer = await request(sdk.client(), sdk.transport(), "v2/terminals/checkouts/chk_1",
                           "GET")
    await sdk.close()
    assert answer == {"checkout": CHECKOUT}


def _refused(refusal: SquareRefusal) -> Exception:
    return RuntimeError(refusal.message)


async def _sorted(sdk: SquareSdk, path: str, method: str = "POST") -> None:
    clock = SystemClock()
    bucket = TokenBucket(TokenBucketSettings(100, 100), clock)
    client = sdk.client()
    await square_call("create the checkout",
                      lambda: request(client, sdk.transport(), path, method,
                                      body={"idempotency_key": "k"} if method == "POST"
                                      else None),
                      bucket, clock, _refused)


async def _tcp_server(serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


async def test_no_connection_means_nothing_was_sent() -> None:
    """Nothing listens: the call never left the box, so the lane may fail the payment
    with nothing charged (``TransientError``, "nothing was sent")."""
    server, base = await _tcp_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()  # the port is free again: a connection is refused
    sdk = _sdk(base)
    with pytest.raises(TransientError, match="nothing was sent"):
        await _sorted(sdk, "v2/terminals/checkouts")
    await sdk.close()


async def test_a_connection_closed_after_the_request_leaves_the_outcome_unknown() -> None:
    """The request reached the processor and the connection dropped before its answer:
    Square may have made the checkout, so the outcome is unknown (never "nothing sent",
    which would tell the register nothing was charged while the Terminal shows the sale)."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await _read_request(reader))
        writer.close()

    server, base = await _tcp_server(serve)
    sdk = _sdk(base)
    try:
        with pytest.raises(OutcomeUnknown):
            await _sorted(sdk, "v2/terminals/checkouts")
    finally:
        await sdk.close()
        server.close()
    assert len(got) == 1 and b'"idempotency_key"' in got[0]


async def test_an_answer_that_does_not_come_in_time_leaves_the_outcome_unknown() -> None:
    """The request went out and no answer came within the timeout: unknown."""
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()
        writer.close()

    server, base = await _tcp_server(serve)
    sdk = _sdk(base, timeout=0.2)
    try:
        with pytest.raises(OutcomeUnknown):
            await _sorted(sdk, "v2/terminals/checkouts")
    finally:
        release.set()
        await sdk.close()
        server.close()


async def test_a_refusal_reads_squares_error_codes() -> None:
    """Square's error body (``errors`` with ``category``, ``code``, ``detail``) reaches the
    refusal through the raw read as through the typed call."""
    answers: dict[str, Any] = {"errors": [{"category": "INVALID_REQUEST_ERROR",
                                           "code": "NOT_FOUND", "detail": "no such checkout"}]}

    async def refuse(req: web.Request) -> web.Response:
        return web.json_response(answers, status=404)

    async with serve_any(refuse) as base:
        sdk = _sdk(base)
        try:
            with pytest.raises(RuntimeError, match=r"no such checkout \(NOT_FOUND\)"):
                await _sorted(sdk, "v2/terminals/checkouts/x", "GET")
        finally:
            await sdk.close()


async def test_a_proxy_from_the_environment_is_used_unless_no_proxy_names_the_host(
        recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose box reaches the internet through a proxy sets ``HTTPS_PROXY`` (and
    ``NO_PROXY`` for what stays local), as httpx, the SDK's own client, honours them: the
    calls go through it, in HTTP's absolute form (RFC 9112 3.2.2), unless ``NO_PROXY``
    names the host."""
    rec, base = recorder
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await _read_request(reader)).split(b"\r\n")[0])
        body = json.dumps({"checkout": CHECKOUT}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server, proxy_url = await _tcp_server(proxy)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    try:
        sdk = _sdk(base)
        answer = await request(sdk.client(), sdk.transport(), "v2/terminals/checkouts/chk_1",
                               "GET")
        await sdk.close()
        assert answer == {"checkout": CHECKOUT}
        assert seen == [f"GET {base}/v2/terminals/checkouts/chk_1 HTTP/1.1".encode()]
        assert rec.seen == []
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        sdk = _sdk(base)
        await request(sdk.client(), sdk.transport(), "v2/terminals/checkouts/chk_1", "GET")
        await sdk.close()
        assert len(seen) == 1 and len(rec.seen) == 1
    finally:
        server.close()
