"""What the floors of ``bench/`` share: a bare aiohttp app (uvloop) whose ``POST /pay``
commits one row to SQLite (WAL, ``synchronous=FULL``) on its own event loop, runs the lane's
exchange, commits how it ended and answers with it in the same request. No auth,
idempotency, audit, state table, events or long-poll: what a card payment cannot do without.
``bench/cloud_floor.py`` (Stripe reader, Square Terminal) and ``bench/terminal_floor.py``
(ZVT over TCP) give it their exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

Exchange = Callable[[str, int, str], Awaitable[str]]
"""(payment id, amount, currency) -> how the payment ended, as a state name."""

@dataclass(frozen=True, slots=True)
class _Floor:
    db: sqlite3.Connection
    exchange: Exchange


_FLOOR = web.AppKey("floor", _Floor)


def open_db(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, amount INTEGER,"
               " currency TEXT, state TEXT)")
    return db


def _commit(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute(sql, args)
    db.execute("COMMIT")


async def _pay(request: web.Request) -> web.Response:
    floor = request.app[_FLOOR]
    body = json.loads(await request.read())
    pid = uuid.uuid4().hex
    _commit(floor.db, "INSERT INTO payments (id, amount, currency, state) VALUES"
            " (?, ?, ?, 'in_progress')", (pid, body["amount"], body["currency"]))
    ended = await floor.exchange(pid, body["amount"], body["currency"])
    _commit(floor.db, "UPDATE payments SET state = ? WHERE id = ?", (ended, pid))
    return web.json_response({"id": pid, "state": ended})


async def serve(port: int, db_path: str | Path, exchange: Exchange) -> None:
    """Answer ``POST /pay`` on 127.0.0.1:``port`` until killed; says ``floor ready`` on
    stdout once it listens."""
    app = web.Application()
    app[_FLOOR] = _Floor(open_db(db_path), exchange)
    app.router.add_post("/pay", _pay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"floor ready on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def running(module: str, *args: str) -> Iterator[int]:
    """The bench's side: ``python -m <module> --port P <args>`` started from the repository;
    yields P once the floor says it is ready, stops it afterwards."""
    from tests.daemon_process import free_port  # noqa: PLC0415 (the bench's side only)

    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", module, "--port", str(port), *args],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise SystemExit(f"{module} did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
