"""The daemon's own accept loop: each connection is seen, with its address, before anything
is read from it or any TLS handshake is made (:mod:`edged.api.server` decides whether to
keep it).

asyncio's ``create_server`` makes the TLS handshake before the protocol hears of a
connection, so a flood of sockets that never finish one would hold file descriptors
unseen (and each that did would cost the daemon a handshake before it could be refused).
Here the listening sockets are read by :meth:`asyncio.AbstractEventLoop.add_reader`; an
admitted socket is handed to ``loop.connect_accepted_socket`` (with TLS when configured),
a refused one is closed at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

BATCH = 256
"""Connections accepted per wake-up of a listening socket (then other work gets a turn)."""
BACKLOG = 1024
"""Connections the kernel completes and queues for accept (capped by net.core.somaxconn).
Deep on purpose: while one address floods the daemon with connections, a register's SYN
must find room in the queue, or it is dropped and retried by the register's kernel only a
second later (aiohttp's default is 128)."""
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE = 0.5
"""Seconds accepting pauses when the process is out of file descriptors and nothing can be
closed to make room (asyncio's own server pauses a second)."""

Accept = Callable[[socket.socket, str], None]
MakeRoom = Callable[[], bool]


def bind(host: str, port: int, *, backlog: int = BACKLOG,
         reuse_address: bool = True) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the name resolves to)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(
                (i[0], i[1], i[2], i[3], i[4]) for i in infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


class Acceptor(asyncio.AbstractServer):
    """Accepts on ``sockets`` and hands each new socket with its peer address to ``accept``."""

    def __init__(self, sockets: list[socket.socket], accept: Accept,
                 make_room: MakeRoom) -> None:
        self._sockets = sockets
        self._accept = accept
        self._make_room = make_room
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving = False
        self._paused: asyncio.TimerHandle | None = None
        self._starved = 0

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listen()

    async def serve_forever(self) -> None:  # pragma: no cover  (aiohttp's runner serves)
        raise NotImplementedError

    def _listen(self) -> None:
        assert self._loop is not None
        self._paused = None
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._ready, sock)

    def _ready(self, listener: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_FILES:
                    log.debug("accept failed: %s", exc)  # the client gave up (ECONNABORTED)
                    continue
                self._out_of_files(exc)
                return
            self._accept(sock, str(address[0]))

    def _out_of_files(self, exc: OSError) -> None:
        """Close a connection that may be closed, or pause accepting for a moment."""
        self._starved += 1
        if self._starved == 1 or self._starved % 1000 == 0:
            log.warning("cannot accept a connection (%s); %d times so far", exc.strerror,
                        self._starved)
        if self._make_room():
            return
        assert self._loop is not None
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(PAUSE, self._listen)

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._loop is not None and not self._loop.is_closed():
            for sock in self._sockets:
                if sock.fileno() >= 0:
                    self._loop.remove_reader(sock.fileno())
        for sock in self._sockets:
            sock.close()
        self._serving = False

    async def wait_closed(self) -> None:
        return None
