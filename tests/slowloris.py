"""A slow client on the store LAN, as issue 17 found it: what the slow-connection test runs.

    python -m tests.slowloris URL --source ADDR --count N [--sessions N] --seconds S
        [--monitor-token T --streams M]

From the address ``--source`` it keeps ``--count`` connections open that each send the
headers of ``POST /v1/pair`` (and ``--sessions`` more of ``POST /session``) with
``Content-Length: 100`` and one byte of body, then wait; a connection the daemon closes is opened again at once, for
``--seconds``. With a monitor token it also opens up to ``--streams`` event streams
(``GET /v1/events``) and holds those it gets. Bounded in time and count; loopback only (the
caller picks addresses in 127/8). At the end it prints one JSON object: what it managed.

It runs in a process of its own, so that its CPU is not the measuring register's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Stats:
    opened: int = 0
    """Connections the daemon accepted (the TCP handshake, and TLS if any, completed)."""
    refused: int = 0
    """Attempts that failed to connect."""
    closed_by_daemon: int = 0
    most_open: int = 0
    bytes_sent: int = 0
    answers: dict[str, int] | None = None
    streams_held: int = 0
    streams_refused: dict[str, int] | None = None


class Attack:
    def __init__(self, url: str, source: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.source = source
        self.tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.tls = ssl.create_default_context()
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE  # a slow client does not care who answers
        self.stats = Stats(answers={}, streams_refused={})
        self.open = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0), ssl=self.tls), 10)

    async def slow(self, path: str, until: float) -> None:
        scheme = "https" if self.tls is not None else "http"
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n"
                f"Origin: {scheme}://{self.host}:{self.port}\r\n\r\n{{").encode()
        while time.monotonic() < until:
            try:
                reader, writer = await self._connect()
            except (OSError, TimeoutError, ssl.SSLError):
                self.stats.refused += 1
                await asyncio.sleep(0.01)  # the attempt failed before it reached the daemon
                continue
            self.stats.opened += 1
            self.open += 1
            self.stats.most_open = max(self.stats.most_open, self.open)
            try:
                writer.write(head)
                self.stats.bytes_sent += len(head)
                left = until - time.monotonic()
                first = await asyncio.wait_for(reader.read(12), max(0.0, left))
                if first:
                    status = first[9:12].decode("ascii", "replace")
                    assert self.stats.answers is not None
                    self.stats.answers[status] = self.stats.answers.get(status, 0) + 1
                    while await asyncio.wait_for(reader.read(65536), max(0.01, left)):
                        pass
                self.stats.closed_by_daemon += 1
            except (OSError, ssl.SSLError):
                self.stats.closed_by_daemon += 1
            except TimeoutError:
                pass  # held until the end
            finally:
                self.open -= 1
                writer.transport.abort()

    async def stream(self, token: str, until: float) -> None:
        try:
            reader, writer = await self._connect()
        except (OSError, TimeoutError, ssl.SSLError):
            return
        writer.write((f"GET /v1/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      f"Authorization: Bearer {token}\r\n\r\n").encode())
        try:
            head = await asyncio.wait_for(reader.read(12), 10)
            status = head[9:12].decode("ascii", "replace")
            if status != "200":
                assert self.stats.streams_refused is not None
                self.stats.streams_refused[status] = \
                    self.stats.streams_refused.get(status, 0) + 1
                return
            self.stats.streams_held += 1
            while time.monotonic() < until:
                left = until - time.monotonic()
                if not await asyncio.wait_for(reader.read(65536), max(0.01, left)):
                    self.stats.streams_held -= 1
                    return
        except (OSError, TimeoutError, ssl.SSLError):
            return
        finally:
            writer.transport.abort()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    attack = Attack(args.url, args.source)
    until = time.monotonic() + args.seconds
    tasks = []
    if args.monitor_token:
        tasks += [asyncio.create_task(attack.stream(args.monitor_token, until))
                  for _ in range(args.streams)]
        await asyncio.sleep(0.5)  # the streams first: the monitor holds what it can get
    tasks += [asyncio.create_task(attack.slow("/v1/pair", until)) for _ in range(args.count)]
    tasks += [asyncio.create_task(attack.slow("/session", until))
              for _ in range(args.sessions)]
    print("attacking", flush=True)  # the caller starts measuring now
    await asyncio.gather(*tasks)
    return asdict(attack.stats)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="slowloris")
    p.add_argument("url")
    p.add_argument("--source", default="127.0.0.1")
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sessions", type=int, default=0, help="as many on POST /session")
    p.add_argument("--monitor-token")
    p.add_argument("--streams", type=int, default=0)
    args = p.parse_args(argv)
    if not args.source.startswith("127.") or not urlsplit(args.url).hostname.startswith("127."):
        print("slowloris: loopback addresses only", file=sys.stderr)
        return 2
    if args.count + args.sessions + args.streams > 4000 or args.seconds > 600:
        print("slowloris: at most 4000 connections for 600 s", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + args.sessions + args.streams + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
