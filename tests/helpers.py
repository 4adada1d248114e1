"""Test helpers: a real daemon in-process on 127.0.0.1 with a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edged import config
from edged.app import Daemon
from edged.config import ApiConfig, Config, ShopifyConfig, StoreConfig, TerminalConfig
from edged.lan import tokens
from edged.lanes.factory import check_terminals
from sync.core.clock import Clock, SystemClock


def load_config(path: Path | None) -> Config:
    """A file (or the embedded default) as `edged run` and `edged check-config` read it:
    parsed by the config, then every lane's options checked by the driver that runs it."""
    return check_terminals(config.load(path))


def make_config(data_dir: Path, *, sim: dict[str, Any] | None = None,
                shopify: bool = False, **extra: Any) -> Config:
    options = {"delay": 0.05} if sim is None else sim
    cfg = Config(
        store=StoreConfig(data_dir=str(data_dir)),
        api=ApiConfig(listen="127.0.0.1:0", rate_per_second=1000.0, rate_burst=2000,
                      payment_rate_per_second=1000.0, payment_rate_burst=2000),
        terminals=(TerminalConfig(id="sim-1", kind="sim", options=options),),
        shopify=ShopifyConfig(shop="test.myshopify.com", location_id="gid://shopify/Location/1",
                              catalogue_pull="paged") if shopify else None,
    )
    return replace(cfg, **extra)


_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_key() -> str:
    """A random Idempotency-Key without digits: a random UUID's digit groups look like a
    card number to the daemon's guard often enough (about 1 in 270) to make tests flaky."""
    return "k-" + uuid.uuid4().hex.translate(_NO_DIGITS)


@dataclass
class Api:
    """A client of one running daemon, with a register token and a manager token."""

    daemon: Daemon
    session: aiohttp.ClientSession
    token: str
    manager_token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def headers(self, key: str | None = None, token: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {token or self.token}",
             "Content-Type": "application/json"}
        if key is not None:
            h["Idempotency-Key"] = key
        return h

    async def post(self, path: str, body: Any, key: str | None = None,
                   token: str | None = None) -> tuple[int, Any]:
        key = key if key is not None else new_key()
        async with self.session.post(self.base + path, json=body,
                                     headers=self.headers(key, token)) as r:
            return r.status, await r.json()

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        async with self.session.get(self.base + path, headers=self.headers(None, token)) as r:
            return r.status, await r.json()

    def count(self, table: str, where: str = "1=1") -> int:
        conn = sqlite3.connect(self.daemon.db.path)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}")  # noqa: S608
                       .fetchone()[0])
        finally:
            conn.close()


async def start_daemon(cfg: Config, clock: Clock | None = None) -> tuple[Daemon, str, str]:
    daemon = Daemon(cfg, clock or SystemClock(), shutdown_grace=0.5)
    await daemon.start()
    token = await daemon.db.write(lambda c: tokens.create(c, "register-1"))
    manager = await daemon.db.write(lambda c: tokens.create(c, "manager-1", "manager"))
    return daemon, token, manager


class running:  # noqa: N801  (reads as a statement: async with running(cfg) as api)
    """Start a daemon for ``cfg`` (on ``clock``, the system's by default) and stop it
    cleanly at the end."""

    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.api: Api | None = None

    async def __aenter__(self) -> Api:
        daemon, token, manager = await start_daemon(self.cfg, self.clock)
        if daemon.shopify is not None:  # its start-up catch-up poll ends before the test
            await asyncio.wait_for(daemon.shopify.poller.first_attempt.wait(), 20.0)
        session = aiohttp.ClientSession()
        self.api = Api(daemon, session, token, manager)
        return self.api

    async def __aexit__(self, *exc: object) -> None:
        assert self.api is not None
        await self.api.session.close()
        await self.api.daemon.stop()


CATALOGUE_CSV = """sku,barcode,title,price,variant_id,inventory_item_id,quantity
TEA-1,4006381333931,Green tea,450,1001,2001,40
MUG-1,4006381333948,Mug,1200,gid://shopify/ProductVariant/1002,gid://shopify/InventoryItem/2002,10
"""


def seed_catalogue(db_path: Path, csv_text: str = CATALOGUE_CSV) -> None:
    from edged.stock import catalog_import
    from edged.store.database import open_sync

    src = db_path.parent / "catalogue.csv"
    src.write_text(csv_text)
    conn = open_sync(db_path)
    conn.execute("BEGIN IMMEDIATE")
    catalog_import.apply(conn, catalog_import.parse(src), str(src))
    conn.execute("COMMIT")
    conn.close()


@contextlib.asynccontextmanager
async def serve_any(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    ) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 answering every method and path with ``handler``;
    yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
