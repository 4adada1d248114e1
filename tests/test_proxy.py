"""A store whose box reaches the internet only through a proxy: Stripe and Shopify too.

The environment names it as curl, httpx and requests read it: ``HTTPS_PROXY`` /
``HTTP_PROXY`` for a scheme (the loopback doubles here speak ``http``), ``NO_PROXY`` for
the hosts that stay direct. Through a proxy a request goes in HTTP's absolute form
(RFC 9112 3.2.2), the proxy's credentials as ``Proxy-Authorization`` (RFC 9110 11.7.1).
The Square lane's own test of the same is in ``test_square_wire.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sync.core.clock import SystemClock
from sync.core.proxy import proxy_for
from sync.shopify_admin.bulk import BulkRunner
from sync.shopify_admin.client import ShopifyClient, ShopifySettings
from sync.shopify_admin.reads import ShopifyReads
from sync.stripe_api.sdk import StripeSdk
from tests.helpers import serve_any

CREDENTIALS = "edged:s3cret"
PROXY_AUTH = f"Basic {base64.b64encode(CREDENTIALS.encode()).decode()}"

READER = {"id": "tmr_1", "object": "terminal.reader", "status": "online"}
# a GraphQL answer as Shopify gives it: data, and the query's cost with the bucket's state
SHOP = {"data": {"shop": {"currencyCode": "EUR"}},
        "extensions": {"cost": {"requestedQueryCost": 1, "actualQueryCost": 1,
                                "throttleStatus": {"maximumAvailable": 2000.0,
                                                   "currentlyAvailable": 1999,
                                                   "restoreRate": 100.0}}}}


class Proxy:
    """A forward proxy on 127.0.0.1 that answers every request itself with ``answer``
    and keeps each request's head."""

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self.answer = answer
        self.heads: list[list[str]] = []
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next((int(h.split(":")[1]) for h in head
                       if h.lower().startswith("content-length:")), 0)
        await reader.readexactly(length)
        self.heads.append(head)
        body = self.answer()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Request-Id: req_proxy\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    def request_line(self, n: int) -> str:
        return self.heads[n][0]

    def header(self, n: int, name: str) -> str | None:
        return next((h.split(":", 1)[1].strip() for h in self.heads[n]
                     if h.lower().startswith(name.lower() + ":")), None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                 "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextlib.asynccontextmanager
async def _proxy(answer: Callable[[], bytes]) -> AsyncIterator[Proxy]:
    proxy = Proxy(answer)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy.url = f"http://{CREDENTIALS}@127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        server.close()


def test_the_environment_names_the_proxy_and_what_stays_direct(
        clean_env: pytest.MonkeyPatch) -> None:
    assert proxy_for("https://api.stripe.com/v1/x") is None
    clean_env.setenv("HTTPS_PROXY", "http://proxy.store:3128")
    assert proxy_for("https://api.stripe.com/v1/x") == "http://proxy.store:3128"
    assert proxy_for("http://api.stripe.com/v1/x") is None  # no HTTP_PROXY
    clean_env.setenv("NO_PROXY", "localhost,.internal,127.0.0.1")
    assert proxy_for("https://shop.internal/admin") is None
    assert proxy_for("https://127.0.0.1:8443/") is None
    assert proxy_for("https://edged-test.myshopify.com/admin") == "http://proxy.store:3128"


async def test_stripe_calls_go_through_the_proxy_unless_no_proxy_names_the_host(
        clean_env: pytest.MonkeyPatch) -> None:
    direct: list[str] = []

    async def stripe_double(req: web.Request) -> web.Response:
        direct.append(req.path)
        return web.json_response(READER, headers={"Request-Id": "req_1"})

    async with serve_any(stripe_double) as base:
        async with _proxy(lambda: json.dumps(READER).encode()) as proxy:
            clean_env.setenv("HTTP_PROXY", proxy.url)
            sdk = StripeSdk(base, 5.0)
            try:
                answer = await sdk.wire("sk_test_proxy").request(
                    "get", "/v1/terminal/readers/tmr_1", {})
            finally:
                await sdk.close()
            assert answer["id"] == "tmr_1"
            assert proxy.request_line(0) == f"GET {base}/v1/terminal/readers/tmr_1 HTTP/1.1"
            assert proxy.header(0, "Proxy-Authorization") == PROXY_AUTH
            assert proxy.header(0, "Authorization") == "Bearer sk_test_proxy"  # Stripe's own
            assert direct == []

            clean_env.setenv("NO_PROXY", "127.0.0.1")
            sdk = StripeSdk(base, 5.0)
            try:
                await sdk.wire("sk_test_proxy").request("get", "/v1/terminal/readers/tmr_1", {})
            finally:
                await sdk.close()
            assert len(proxy.heads) == 1
            assert direct == ["/v1/terminal/readers/tmr_1"]


def _shopify(base: str) -> ShopifyClient:
    return ShopifyClient(ShopifySettings(shop="edged-test.myshopify.com",
                                         api_version="2026-04", location_id="gid://l",
                                         admin_url=f"{base}/admin/api", timeout=5.0),
                         lambda: "shpat_proxy", SystemClock())


async def test_shopify_queries_and_the_bulk_download_go_through_the_proxy(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    direct: list[str] = []
    jsonl = b'{"id":"gid://shopify/ProductVariant/1"}\n'

    async def shopify_double(req: web.Request) -> web.Response:
        direct.append(req.path)
        return web.json_response(SHOP)

    answers: dict[str, Any] = {}
    async with serve_any(shopify_double) as base:
        async with _proxy(lambda: answers["next"]) as proxy:
            clean_env.setenv("HTTP_PROXY", proxy.url)
            client = _shopify(base)
            runner = BulkRunner(ShopifyReads(client, "gid://l"))
            try:
                answers["next"] = json.dumps(SHOP).encode()
                assert await runner.currency() == "EUR"
                answers["next"] = jsonl
                size = await runner.download(f"{base}/bulk/result.jsonl",
                                             tmp_path / "bulk.jsonl", 1 << 20)
            finally:
                await client.close()
            assert size == len(jsonl) and (tmp_path / "bulk.jsonl").read_bytes() == jsonl
            assert proxy.request_line(0) == \
                f"POST {base}/admin/api/2026-04/graphql.json HTTP/1.1"
            assert proxy.header(0, "X-Shopify-Access-Token") == "shpat_proxy"
            assert proxy.request_line(1) == f"GET {base}/bulk/result.jsonl HTTP/1.1"
            assert [proxy.header(n, "Proxy-Authorization") for n in (0, 1)] == [PROXY_AUTH] * 2
            assert direct == []

            clean_env.setenv("NO_PROXY", "127.0.0.1")
            client = _shopify(base)
            try:
                assert await BulkRunner(ShopifyReads(client, "gid://l")).currency() == "EUR"
            finally:
                await client.close()
            assert len(proxy.heads) == 2
            assert direct == ["/admin/api/2026-04/graphql.json"]
