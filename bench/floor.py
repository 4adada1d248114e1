"""The floor of the register API bench: what any Python daemon pays for a durable payment.

A bare aiohttp app on the same loop and JSON library as the daemon (uvloop, orjson) whose
one handler parses the body, inserts one row into SQLite (``journal_mode=WAL``,
``synchronous=FULL``) and commits before answering 201 with a small JSON body. No auth, no
idempotency, no audit, no rate limits, no group commit: the commit runs on the loop's own
thread, so each request pays one flush. ``bench/api.py`` starts it as a process of its own
and drives it with the same client as the daemon; the daemon's CPU per payment is printed
against this one's.

    python bench/floor.py --db PATH --port PORT      # prints "floor ready on http://..."
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
import uuid

import orjson
from aiohttp import web


def make_app(db: str) -> web.Application:
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS payments (n INTEGER PRIMARY KEY,"
                 " id TEXT NOT NULL UNIQUE, amount INTEGER NOT NULL, currency TEXT NOT NULL,"
                 " method TEXT NOT NULL, created_at TEXT NOT NULL)")

    async def pay(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        row = (f"pay_{uuid.uuid4().hex[:20]}", int(body["amount"]), str(body["currency"]),
               str(body["method"]), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO payments (id, amount, currency, method, created_at)"
                     " VALUES (?, ?, ?, ?, ?)", row)
        conn.execute("COMMIT")
        answer = {"id": row[0], "amount": row[1], "currency": row[2], "method": row[3],
                  "state": "approved", "created_at": row[4]}
        return web.Response(status=201, body=orjson.dumps(answer),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/payments", pay)
    app.router.add_get("/healthz", lambda _: asyncio.sleep(0, web.Response(text="ok")))
    return app


async def serve(db: str, port: int) -> None:
    runner = web.AppRunner(make_app(db), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"floor ready on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        import uvloop  # noqa: PLC0415
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.db, args.port))


if __name__ == "__main__":
    main()
