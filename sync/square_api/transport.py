"""The Square SDK's requests carried by aiohttp, the daemon's own HTTP client.

The SDK (``AsyncSquare``) speaks through an ``httpx.AsyncClient`` it is handed; httpx's own
transport (httpcore on anyio) cost about 1.3 ms of CPU a request on the bench's box, half of
a Square Terminal lane's time per payment (bench/README.md, issue 22). This transport keeps
httpx's client (what the SDK builds: URL, headers, body, timeouts) and hands each request to
one ``aiohttp.ClientSession`` (its connection pool kept between calls), about a third of
that.

What a failure means is the point: :func:`sync.square_api.calls.square_call` reads an
``httpx.ConnectError`` / ``ConnectTimeout`` as *nothing was sent* (the payment may be
failed, nothing charged) and every other ``httpx.TransportError`` as *the outcome is
unknown*. So only what fails before a connection exists maps to the former: aiohttp's
``ClientConnectorError`` (refused, no route, DNS, the TLS handshake) and its connect timeout.
A connection lost after the request went out (``ServerDisconnectedError``, a reset, a read
timeout, a short body) is a ``ReadError`` / ``ReadTimeout``. (The ``httpx-aiohttp`` package
maps every ``ClientConnectionError``, a disconnect after sending among them, to
``ConnectTimeout``: for a checkout that would tell the register nothing was charged while
the Terminal shows the sale. Hence these few lines of our own.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import httpx

from sync.core.proxy import ProxyLookup

if TYPE_CHECKING:
    from collections.abc import Mapping

RawHeaders = tuple[tuple[bytes, bytes], ...]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (made on the first request)."""

    def __init__(self, *, max_connections: int = 10) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._proxy = ProxyLookup()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=False)  # httpx decodes by Content-Encoding
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        status, reason, headers, content = await self.exchange(
            request.method, str(request.url),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
            await request.aread() or None, _timeout(request.extensions.get("timeout", {})),
            request)
        extensions = {"http_version": b"HTTP/1.1"}
        if reason:
            extensions["reason_phrase"] = reason.encode("latin-1", "replace")
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions=extensions)

    async def exchange(self, method: str, url: str, headers: list[tuple[str, str]],
                       body: bytes | None, timeout: aiohttp.ClientTimeout,
                       request: httpx.Request | None = None
                       ) -> tuple[int, str | None, RawHeaders, bytes]:
        """One request on the session: (status, reason, raw headers, the body as sent, not
        decoded); a failure as the httpx error that says whether anything was sent."""
        try:  # through the proxy of HTTPS_PROXY and friends, as httpx would (NO_PROXY too)
            async with self._client().request(
                    method, url, headers=headers, data=body, allow_redirects=False,
                    compress=None, timeout=timeout, proxy=self._proxy(url)) as answer:
                return answer.status, answer.reason, answer.raw_headers, await answer.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:  # no connection was made: nothing sent
            raise httpx.ConnectError(str(exc), request=request) from exc
        except TimeoutError as exc:  # the answer did not come in time: it may have been done
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientError as exc:  # lost after sending: the outcome is unknown
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def timeout_of(seconds: float | None) -> aiohttp.ClientTimeout:
    """A whole call's timeout as httpx gives it to each phase (connect at most 10 s)."""
    connect = None if seconds is None else min(seconds, 10.0)
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect,
                                 sock_read=seconds)


def _timeout(parts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's per-request timeouts (connect, read, write, pool) as aiohttp's."""
    return aiohttp.ClientTimeout(total=None, connect=parts.get("pool"),
                                 sock_connect=parts.get("connect"),
                                 sock_read=parts.get("read"))
