"""The listening socket: aiohttp's request handler behind a connection guard.

- At most :func:`connection_limit` connections are open at once; the limit is also kept
  under the process's open-file limit (``RLIMIT_NOFILE``) with room left for the database,
  the terminal lines and the logs. At the limit the oldest connection that is not inside a
  request (idle keep-alive, or one that never sent a complete request) is closed to make
  room for the new one; when every connection is inside a request, the new one is closed.
  So a flood of idle sockets cannot use up the file descriptors the API needs.
- A connection that does not complete a request within ``header_timeout`` seconds, new or
  kept alive, is closed (aiohttp's keep-alive timer, which trickled bytes do not reset);
  a body has ``body_timeout`` (:mod:`edged.api.http`).
- aiohttp's own refusals (a malformed request line or header, TLS on the plain port) are
  answered in the JSON error shape (ERR-1020) and logged as one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from edged.cardnumbers import mask
from edged.config import ApiConfig
from edged.errors import ApiError

log = logging.getLogger(__name__)

FD_RESERVE = 128
"""File descriptors kept for everything but client connections."""

GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")


LINGER = 2.0
"""Seconds the rest of an unread body is read and dropped after the answer (aiohttp's
lingering close: lets a client that is still sending see the answer), then it is closed."""


def handler_args(api: ApiConfig) -> dict[str, Any]:
    """aiohttp's per-connection settings: idle and header timeout, short linger, no log."""
    return {"access_log": None, "keepalive_timeout": api.header_timeout,
            "lingering_time": LINGER}


def connection_limit(configured: int) -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(8, min(configured, soft - FD_RESERVE))


class _Guarded(asyncio.Protocol):
    """Passes everything to aiohttp's handler; tells the guard when it opens and closes."""

    def __init__(self, guard: ConnectionGuard, inner: web.RequestHandler) -> None:
        self._guard = guard
        self._inner = inner
        self._admitted = False
        self.transport: asyncio.Transport | None = None
        self.active = 0  # requests running on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._guard.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._admitted:
            self._inner.eof_received()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        if self._admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class ConnectionGuard:
    """The open connections, oldest first, and which of them are inside a request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[_Guarded, None] = {}  # insertion order: oldest first
        self._by_transport: dict[int, _Guarded] = {}
        self.evicted = 0
        self.refused = 0

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, conn: _Guarded) -> bool:
        if len(self._open) >= self.limit:
            victim = next((c for c in self._open if c.active == 0), None)
            if victim is None:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("refused a connection: %d open, all inside requests"
                                " (limit %d)", len(self._open), self.limit)
                return False
            self._drop(victim)
            self.evicted += 1
            if self.evicted == 1 or self.evicted % 1000 == 0:
                log.warning("closed an idle connection to make room: %d open (limit %d);"
                            " %d closed so far", len(self._open) + 1, self.limit,
                            self.evicted)
            if victim.transport is not None:
                victim.transport.abort()
        self._open[conn] = None
        if conn.transport is not None:
            self._by_transport[id(conn.transport)] = conn
        return True

    def _drop(self, conn: _Guarded) -> None:
        self._open.pop(conn, None)
        if conn.transport is not None and \
                self._by_transport.get(id(conn.transport)) is conn:
            del self._by_transport[id(conn.transport)]

    def release(self, conn: _Guarded) -> None:
        self._drop(conn)

    def enter(self, transport: asyncio.BaseTransport | None) -> _Guarded | None:
        conn = self._by_transport.get(id(transport)) if transport is not None else None
        if conn is not None:
            conn.active += 1
        return conn

    @staticmethod
    def leave(conn: _Guarded | None) -> None:
        if conn is not None:
            conn.active -= 1


class JsonRequestHandler(web.RequestHandler):
    """aiohttp's handler, answering its own refusals in the daemon's error shape."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info("refused a malformed request from %s: %d %s", request.remote, status,
                     mask(str(message or exc or ""))[:200])
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed")
        if status >= 500:
            err = ApiError("ERR-1099", "internal error; nothing is lost, retry with the same"
                           " Idempotency-Key")
        else:
            err = ApiError("ERR-1020", "the request is not valid HTTP/1.1 (request line,"
                           " header syntax or size)")
        resp = web.Response(status=err.status, text=_json(err.body()),
                            content_type="application/json")
        resp.force_close()
        return resp


def _json(body: dict[str, Any]) -> str:
    import json  # noqa: PLC0415

    return json.dumps(body, separators=(",", ":"))


class GuardedSite(web.TCPSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 guard: ConnectionGuard, handler_args: dict[str, Any],
                 ssl_context: ssl.SSLContext | None = None,
                 reuse_address: bool | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self._guard = guard
        self._handler_args = handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard, args = self._guard, self._handler_args

        def factory() -> asyncio.Protocol:
            return _Guarded(guard, JsonRequestHandler(server, loop=loop, **args))

        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
