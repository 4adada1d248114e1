"""The Stripe reader lane's calls: what goes on the wire, and what a failure is taken for.

A Stripe reader lane sends its calls through ``sync/stripe_api/wire.py`` (the SDK's
settings, HTTP client and answer handling, without the SDK's per-request assembly) to save
CPU per payment (issue 22). These tests hold each request to what the SDK's own
``raw_request_async`` sends for it, and each failure to what the SDK raises for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import pytest
import stripe
from aiohttp import web
from multidict import CIMultiDict
from stripe._encode import _api_encode

from sync.core.clock import SystemClock
from sync.core.errors import OutcomeUnknown, TransientError
from sync.core.limiter import TokenBucket, TokenBucketSettings
from sync.stripe_api.calls import StripeRefusal, StripeRefusalKind, stripe_call
from sync.stripe_api.sdk import StripeSdk
from sync.stripe_api.terminal import READER_EXPAND
from sync.stripe_api.wire import encode
from tests.helpers import serve_any

KEY = "sk_test_wire"  # a test key


class Recorder:
    """An HTTP server on 127.0.0.1 that keeps each request and answers ``answer``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, CIMultiDict[str], bytes]] = []
        self.status = 200
        self.answer: dict[str, Any] = {"id": "rdr_1", "object": "terminal.reader"}

    async def handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        self.seen.append((req.method, req.path_qs, CIMultiDict(req.headers), body))
        return web.json_response(self.answer, status=self.status,
                                 headers={"Request-Id": "req_1"})


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    async with serve_any(rec.handle) as base:
        yield rec, base


# the lane's calls: (method, path, params, idempotency key), as sync/stripe_api/terminal.py
CALLS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("post", "/v1/payment_intents",
     {"amount": 1234, "currency": "eur", "allowed_payment_method_types": ["card_present"],
      "capture_method": "automatic", "metadata": {"edged_payment_id": "pay_1 & co"},
      "description": "Lane 1: 2 × coffee"}, "edged-pay_1-pi"),  # noqa: RUF001 (not ASCII)
    ("post", "/v1/terminal/readers/tmr_1/process_payment_intent",
     {"payment_intent": "pi_1"}, "edged-pay_1-process"),
    ("get", "/v1/terminal/readers/tmr_1", {"expand": [READER_EXPAND]}, None),
    ("get", "/v1/payment_intents/pi_1", {"expand": ["latest_charge"]}, None),
    ("get", "/v1/payment_intents/search",
     {"query": "metadata['edged_payment_id']:'pay_1'", "limit": 10,
      "expand": ["data.latest_charge"]}, None),
    ("post", "/v1/terminal/readers/tmr_1/cancel_action", {}, "edged-pay_1-cancel"),
    ("post", "/v1/payment_intents/pi_1/cancel", {}, "edged-pay_1-pi-cancel"),
]


@pytest.mark.parametrize(("method", "path", "params", "key"), CALLS)
async def test_each_lane_call_goes_out_as_the_sdk_sends_it(
        recorder: tuple[Recorder, str], method: str, path: str, params: dict[str, Any],
        key: str | None) -> None:
    """Stripe authenticates by ``Authorization: Bearer`` with the secret key, pins the API
    version by ``Stripe-Version``, takes v1 parameters form-encoded (nested objects as
    ``a[b]``, lists as ``a[0]``) in the query of a GET and the body of a POST, and dedupes
    a POST by its ``Idempotency-Key`` (Stripe API reference: Authentication, Versioning,
    Idempotent requests): the wire's request is the SDK's ``raw_request_async``'s, byte
    for byte in path, query and body, header for header in those."""
    rec, base = recorder
    sdk = StripeSdk(base, 5.0)
    client = sdk.client(KEY)
    options = {"idempotency_key": key} if key else {}
    sdk_answer = await client.raw_request_async(method, path, **params, **options)
    wire_answer = await sdk.wire(KEY).request(method, path, params, key)
    await sdk.close()
    assert wire_answer == sdk_answer.data == rec.answer
    (m1, p1, h1, b1), (m2, p2, h2, b2) = rec.seen
    assert (m2, p2, b2) == (m1, p1, b1)
    assert m2 == method.upper()
    names = ["Authorization", "Stripe-Version", "User-Agent", "Content-Type"]
    names += ["Idempotency-Key"] if key else []
    for name in names:
        assert h2.get(name) == h1.get(name), name
    assert h2["Authorization"] == f"Bearer {KEY}"
    assert json.loads(h2["X-Stripe-Client-User-Agent"]).items() <= \
        json.loads(h1["X-Stripe-Client-User-Agent"]).items()
    if method == "post":
        assert h2["Idempotency-Key"] == key


def test_the_form_encoding_is_the_sdks() -> None:
    """The SDK's encoder (``stripe._encode._api_encode``, then ``urlencode`` with the
    brackets left readable) and the wire's agree on every shape a lane's call has."""
    for _, _, params, _ in CALLS + [("post", "", {"flag": True, "off": False, "none": None,
                                                  "deep": {"a": {"b": [1, {"c": "d"}]}}},
                                     None)]:
        sdk = urlencode(list(_api_encode(params))).replace("%5B", "[").replace("%5D", "]")
        assert encode(params) == sdk, params


def _refused(refusal: StripeRefusal) -> Exception:
    return RuntimeError(f"{refusal.kind.value}: {refusal.text}")


async def _sorted(base: str, timeout: float = 5.0) -> Any:
    clock = SystemClock()
    bucket = TokenBucket(TokenBucketSettings(100, 100), clock)
    sdk = StripeSdk(base, timeout)
    try:
        return await stripe_call(
            "create the PaymentIntent",
            lambda: sdk.wire(KEY).request("post", "/v1/payment_intents", {"amount": 1},
                                          "k1"),
            bucket, clock, _refused)
    finally:
        await sdk.close()


async def test_a_decline_is_the_sdks_card_error(recorder: tuple[Recorder, str]) -> None:
    """Stripe answers a declined card with 402 and an ``error`` of type ``card_error``
    (Stripe API reference: Errors): the wire raises the SDK's ``CardError``, which the lane
    sorts as a decline with Stripe's codes."""
    rec, base = recorder
    rec.status = 402
    rec.answer = {"error": {"type": "card_error", "code": "card_declined",
                            "decline_code": "insufficient_funds",
                            "message": "Your card has insufficient funds."}}
    sdk = StripeSdk(base, 5.0)
    with pytest.raises(stripe.CardError) as raised:
        await sdk.wire(KEY).request("post", "/v1/payment_intents", {"amount": 1}, "k1")
    await sdk.close()
    assert raised.value.code == "card_declined"
    with pytest.raises(RuntimeError, match=f"^{StripeRefusalKind.CARD.value}: Your card"):
        await _sorted(base)


async def test_a_server_error_leaves_the_outcome_unknown(
        recorder: tuple[Recorder, str]) -> None:
    """A 5xx says nothing about whether Stripe acted: unknown, never a refusal."""
    rec, base = recorder
    rec.status = 500
    rec.answer = {"error": {"type": "api_error", "message": "boom"}}
    with pytest.raises(OutcomeUnknown, match="answered 500"):
        await _sorted(base)


async def test_no_connection_means_nothing_was_sent() -> None:
    """Nothing listens: the call never left the box (``TransientError``, nothing sent)."""
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(0), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(TransientError, match="nothing was sent"):
        await _sorted(f"http://127.0.0.1:{port}")


async def test_a_connection_closed_after_the_request_leaves_the_outcome_unknown() -> None:
    """The request reached Stripe and the connection dropped before its answer: the
    PaymentIntent may exist, so the outcome is unknown."""
    got: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(OutcomeUnknown):
            await _sorted(f"http://127.0.0.1:{port}")
    finally:
        server.close()
    assert len(got) == 1 and b"Idempotency-Key: k1" in got[0]
