"""The listening socket: aiohttp's request handler behind a connection guard.

Every connection is admitted by the guard when it is accepted, with its client address,
before anything is read from it and before any TLS handshake (:mod:`edged.api.acceptor`).

- At most :func:`connection_limit` connections are open at once (also kept under the
  process's open-file limit, ``RLIMIT_NOFILE``, with room left for the database, the
  terminal lines and the logs), and at most ``max_connections_per_address`` from one
  client address.
- A connection is *held* only while it is inside a request that is authenticated (a valid
  token or sign-in) or whose body has arrived in full: only held connections count against
  the limits for good. Any other (idle keep-alive, still in its TLS handshake or headers, an
  unauthenticated request waiting for its body) may be closed to make room: at the
  per-address limit the oldest of that address, at the overall limit the oldest of all,
  idle ones first. When every connection in the way is held, the new one is closed.
  So one address holding slow connections cannot keep out a register on another.
- At most ``max_unauthenticated_per_address`` requests without a valid token are in flight
  at once from one address; the next is answered 429 ERR-1021 at once, its body unread
  (:mod:`edged.api.middleware`).
- A TLS handshake and a request's headers have ``header_timeout`` seconds (aiohttp's
  keep-alive timer, which trickled bytes do not reset); a body has ``body_timeout``
  (:mod:`edged.api.http`).
- aiohttp's own refusals (a malformed request line or header, TLS on the plain port) are
  answered in the JSON error shape (ERR-1020) and logged as one line naming the reason only,
  never the bytes refused (they may hold a token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from edged.api.acceptor import Acceptor, bind
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


class Conn(asyncio.Protocol):
    """One accepted connection: passes everything to aiohttp's handler and tells the guard
    when it is made (after TLS) and lost. Made only for a connection the guard admitted."""

    def __init__(self, guard: ConnectionGuard, make_inner: Callable[[], web.RequestHandler],
                 peer: str) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self._inner: web.RequestHandler | None = None
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Task[Any] | None = None  # connect_accepted_socket, TLS
        self.active = 0  # requests running on this connection
        self.held = False  # the running request is authenticated or its body is in
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.gone:  # closed to make room while its handshake was finishing
            transport.abort()  # type: ignore[attr-defined]
            return
        self._guard.made(self)
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def close(self) -> None:
        """Close it now (to make room): abort the socket, or stop its TLS handshake."""
        self.gone = True
        if self.transport is not None:
            self.transport.abort()
        elif self.handshake is not None:
            self.handshake.cancel()

    @property
    def closable(self) -> bool:
        """Whether it may be closed to make room: not inside a held request."""
        return self.active == 0 or not self.held


class ConnectionGuard:
    """The open connections, oldest first, per client address, and which are held."""

    def __init__(self, limit: int, per_address: int | None = None,
                 unauthenticated_per_address: int | None = None) -> None:
        self.limit = limit
        self.per_address = min(per_address or limit, limit)
        self.unauthenticated_per_address = unauthenticated_per_address or limit
        self._open: dict[Conn, None] = {}  # insertion order: oldest first
        self._by_peer: dict[str, dict[Conn, None]] = {}
        self._by_transport: dict[int, Conn] = {}
        self._unauthenticated: dict[str, int] = {}
        self.evicted = 0
        self.refused = 0
        self.busy = 0  # unauthenticated requests refused at the per-address limit

    @property
    def open(self) -> int:
        return len(self._open)

    def from_peer(self, peer: str) -> int:
        return len(self._by_peer.get(peer, ()))

    def admit(self, conn: Conn) -> bool:
        """Count a new connection in, closing another to make room if need be."""
        mine = self._by_peer.get(conn.peer)
        if mine is not None and len(mine) >= self.per_address and \
                not self._make_room(mine, f"from {conn.peer}"):
            self._refuse(f"{len(mine)} open from {conn.peer}, all inside requests"
                         f" (limit {self.per_address} per address)")
            return False
        if len(self._open) >= self.limit and not self._make_room(self._open, "in all"):
            self._refuse(f"{len(self._open)} open, all inside requests (limit {self.limit})")
            return False
        self._open[conn] = None
        self._by_peer.setdefault(conn.peer, {})[conn] = None
        return True

    def make_room(self) -> bool:
        """Close the oldest connection that may be closed (the process is out of files)."""
        return self._make_room(self._open, "out of file descriptors")

    def _make_room(self, among: dict[Conn, None], where: str) -> bool:
        victim = next((c for c in among if c.active == 0), None) or \
            next((c for c in among if c.closable), None)
        if victim is None:
            return False
        self.release(victim)
        victim.close()
        self.evicted += 1
        if self.evicted == 1 or self.evicted % 1000 == 0:
            log.warning("closed an idle or unauthenticated connection of %s to make room (%s):"
                        " %d open (limit %d, %d per address); %d closed so far", victim.peer,
                        where, len(self._open), self.limit, self.per_address, self.evicted)
        return True

    def _refuse(self, why: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("refused a connection: %s; %d refused so far", why, self.refused)

    def made(self, conn: Conn) -> None:
        if conn.transport is not None:
            self._by_transport[id(conn.transport)] = conn

    def release(self, conn: Conn) -> None:
        conn.gone = True
        if self._open.pop(conn, False) is False:
            return
        mine = self._by_peer.get(conn.peer)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_peer[conn.peer]
        if conn.transport is not None and \
                self._by_transport.get(id(conn.transport)) is conn:
            del self._by_transport[id(conn.transport)]

    def enter(self, transport: asyncio.BaseTransport | None) -> Conn | None:
        conn = self._by_transport.get(id(transport)) if transport is not None else None
        if conn is not None:
            conn.active += 1
        return conn

    def of(self, transport: asyncio.BaseTransport | None) -> Conn | None:
        return self._by_transport.get(id(transport)) if transport is not None else None

    @staticmethod
    def hold(conn: Conn | None) -> None:
        """Its request is authenticated, or its body is in: never closed to make room."""
        if conn is not None and conn.active > 0:
            conn.held = True

    @staticmethod
    def leave(conn: Conn | None) -> None:
        if conn is not None:
            conn.active -= 1
            if conn.active <= 0:
                conn.held = False

    def unauthenticated(self, peer: str) -> bool:
        """Count one more unauthenticated request in flight from ``peer``; False (nothing
        counted) when that address already has its maximum."""
        count = self._unauthenticated.get(peer, 0)
        if count >= self.unauthenticated_per_address:
            self.busy += 1
            return False
        self._unauthenticated[peer] = count + 1
        return True

    def unauthenticated_done(self, peer: str) -> None:
        count = self._unauthenticated.get(peer, 0) - 1
        if count > 0:
            self._unauthenticated[peer] = count
        else:
            self._unauthenticated.pop(peer, None)


def body_arrived(request: BaseRequest) -> None:
    """The request's body is in: its connection is held from now on."""
    guard = request.app.get(GUARD) if hasattr(request, "app") else None
    if guard is not None:
        ConnectionGuard.hold(guard.of(request.transport))


class JsonRequestHandler(web.RequestHandler):
    """aiohttp's handler, answering its own refusals in the daemon's error shape."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info("refused a malformed request from %s: %d %s", request.remote, status,
                     reason(exc, message))
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


def reason(exc: BaseException | None, message: str | None = None) -> str:
    """aiohttp's refusal reduced to its reason: the parser's text quotes the bytes it
    refused (a header line, perhaps a token), which must never reach the log."""
    text = str(getattr(exc, "message", None) or message or exc or "")
    first = re.split(r"[:\n]", text, maxsplit=1)[0]
    first = re.split(r"[\"'`]", first, maxsplit=1)[0]  # nothing quoted from the request
    first = "".join(ch for ch in first if ch.isprintable()).strip()[:80]
    name = type(exc).__name__ if exc is not None else "refused"
    return f"{name}: {first}" if first else name


def _json(body: dict[str, Any]) -> str:
    import json  # noqa: PLC0415

    return json.dumps(body, separators=(",", ":"))


class GuardedSite(web.TCPSite):
    """A TCP site on the daemon's own accept loop: every connection passes the guard, with
    its address, before anything is read from it or any TLS handshake is made."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 guard: ConnectionGuard, handler_args: dict[str, Any],
                 ssl_context: ssl.SSLContext | None = None,
                 reuse_address: bool | None = None,
                 handshake_timeout: float = 15.0) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self._guard = guard
        self._handler_args = handler_args
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard, args, tls = self._guard, self._handler_args, self._ssl_context
        extra: dict[str, Any] = {}
        if tls is not None:
            extra = {"ssl": tls, "ssl_handshake_timeout": self._handshake_timeout}

        def accepted(sock: socket.socket, peer: str) -> None:
            conn = Conn(guard, lambda: JsonRequestHandler(server, loop=loop, **args), peer)
            if not guard.admit(conn):
                sock.close()
                return
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.handshake = loop.create_task(
                loop.connect_accepted_socket(lambda: conn, sock, **extra))
            conn.handshake.add_done_callback(lambda task: _handshake_done(guard, conn, task))

        acceptor = Acceptor(bind(self._host or "", self._port,
                                 reuse_address=self._reuse_address is not False),
                            accepted, guard.make_room)
        await acceptor.start_serving()
        self._server = acceptor
        self._bound_port = acceptor.sockets[0].getsockname()[1]


def _handshake_done(guard: ConnectionGuard, conn: Conn, task: asyncio.Task[Any]) -> None:
    conn.handshake = None
    if task.cancelled():
        guard.release(conn)
        return
    exc = task.exception()
    if exc is not None:  # a TLS handshake that failed or took too long
        log.debug("connection from %s closed before its request: %s", conn.peer,
                  type(exc).__name__)
        guard.release(conn)
