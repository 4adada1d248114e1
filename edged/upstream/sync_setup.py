"""Builds the sync engine for the configured destinations, and the catalogue pull.

Every background task of the sync side runs under the engine's supervisor (a crash is
logged once, the task restarted with backoff, its state shown under ``tasks`` in
``/v1/sync``): the workers, the wake-up on new rows, the secrets refresh, the link
watcher, the read-back of what is left unknown (``settle-unknown``), and the catalogue pull
(``shopify-pull``: at start, then every ``[sync] pull_interval_seconds``).

The cloud SDKs and gateways are imported here only for the destinations that are
configured, so a daemon with no cloud account never loads them (idle memory target).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from edged.config import Config
from edged.events import EventBus
from edged.lanes.factory import CloudLinks
from edged.payments.unknown_settler import UnknownSettler
from edged.stock import catalog_import
from edged.store import Database
from edged.upstream.sync_hooks import StoreHooks
from sync.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.engine import EngineSettings, SyncEngine
from sync.core.limiter import CostBucketSettings, ShopifyCostBucket, TokenBucket
from sync.core.outbox import OutboxSettings, OutboxStore
from sync.core.readback import ReadBack

if TYPE_CHECKING:
    from sync.square_api.terminal import SquareTerminalClient
    from sync.stripe_api.terminal import StripeTerminalClient

log = logging.getLogger(__name__)

SECRET_NAMES = {"shopify": "shopify.token", "stripe": "stripe.key", "square": "square.token"}
SECRET_REFRESH_SECONDS = 30.0
STOP_GRACE = 5.0
"""Seconds the sync tasks get to return by themselves at a stop before they are cancelled."""


class SecretCache:
    """Decrypted credentials in memory, re-read now and then so `edged secret set` takes
    effect without a restart. Values never leave through logs or the API."""

    def __init__(self, cfg: Config, db: Database) -> None:
        self._cfg = cfg
        self._db = db
        self._values: dict[str, str] = {}

    async def refresh(self) -> None:
        from edged.store.secrets import SecretError, SecretStore  # noqa: PLC0415

        try:
            store = SecretStore(SecretStore.load_key(self._cfg.data_dir))
        except SecretError as exc:
            log.error("cannot read the secrets key: %s", exc)
            return

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            values = {}
            for name in SECRET_NAMES.values():
                try:
                    value = store.get(conn, name)
                except SecretError as exc:
                    log.error("secret %s cannot be read: %s", name, exc)
                    continue
                if value is not None:
                    values[name] = value
            return values

        self._values = await self._db.read(read)

    def provider(self, name: str) -> Callable[[], str | None]:
        return lambda: self._values.get(name)


@dataclass
class SyncRuntime:
    engine: SyncEngine
    secrets: SecretCache
    readers: dict[str, ReadBack] = field(default_factory=dict)
    """The processors' read-backs, for what is left unknown (edged.payments.unknown_settler)."""
    settler: UnknownSettler | None = None

    def link_down(self, destination: str) -> bool:
        worker = self.engine.workers.get(destination)
        return worker is not None and worker.breaker.state is BreakerState.OPEN

    async def stop(self, grace: float = STOP_GRACE) -> None:
        await self.engine.stop(grace)  # the workers and the tasks below, all supervised
        for reader in self.readers.values():
            await reader.close()


def build(cfg: Config, db: Database, bus: EventBus, clock: Clock) -> SyncRuntime | None:
    if not cfg.destinations:
        return None
    store = OutboxStore(db, clock, StoreHooks(clock),
                        OutboxSettings(lease_seconds=cfg.sync.lease_seconds,
                                       max_attempts=cfg.sync.max_attempts,
                                       backoff_initial=cfg.sync.retry_backoff_seconds),
                        publish=bus.publish)

    def notify(kind: str, event: str, data: dict[str, object]) -> None:
        bus.publish(kind, {"event": event, **data})

    engine = SyncEngine(store, clock, EngineSettings(
                                                     quick_retries=cfg.sync.quick_retries),
                        notify)

    def breaker(name: str, defaults: BreakerSettings) -> CircuitBreaker:
        brk = cfg.sync.breaker_break_seconds
        settings = defaults if brk is None else replace(defaults, break_duration=brk)
        return CircuitBreaker(name, settings, clock)

    secrets = SecretCache(cfg, db)
    if cfg.shopify is not None:
        from sync.shopify_admin.gateway import ShopifyGateway, ShopifySettings  # noqa: PLC0415

        shop = cfg.shopify
        engine.add(ShopifyGateway(ShopifySettings(shop=shop.shop, api_version=shop.api_version,
                                                  location_id=shop.location_id,
                                                  admin_url=shop.admin_url,
                                                  timeout=cfg.sync.request_timeout),
                                  secrets.provider(SECRET_NAMES["shopify"]), clock,
                                  cost_bucket=ShopifyCostBucket(clock, CostBucketSettings(
                                      initial_restore_rate=shop.assumed_restore_rate))),
                   breaker("shopify", BreakerSettings.shopify()))
    if cfg.stripe is not None:
        from sync.stripe_api.gateway import StripeGateway, StripeSettings  # noqa: PLC0415

        engine.add(StripeGateway(StripeSettings(base_url=cfg.stripe.base_url,
                                                timeout=cfg.sync.request_timeout),
                                 secrets.provider(SECRET_NAMES["stripe"]), clock),
                   breaker("stripe", BreakerSettings.processors()))
    if cfg.square is not None:
        from sync.square_api.gateway import SquareGateway, SquareSettings  # noqa: PLC0415

        engine.add(SquareGateway(SquareSettings(base_url=cfg.square.base_url,
                                                location_id=cfg.square.location_id,
                                                timeout=cfg.sync.request_timeout),
                                 secrets.provider(SECRET_NAMES["square"]), clock),
                   breaker("square", BreakerSettings.processors()))
    return SyncRuntime(engine, secrets, _readers(engine, cfg, secrets, clock))


def _readers(engine: SyncEngine, cfg: Config, secrets: SecretCache,
             clock: Clock) -> dict[str, ReadBack]:
    """Each processor's read-back, on its destination's breaker and bucket."""
    readers: dict[str, ReadBack] = {}
    for name, processor in (("stripe", cfg.stripe), ("square", cfg.square)):
        worker = engine.workers.get(name)
        if processor is None or worker is None:
            continue
        bucket = getattr(worker.gateway, "bucket", None)
        assert isinstance(bucket, TokenBucket)
        token = secrets.provider(SECRET_NAMES[name])
        if name == "stripe":
            from sync.stripe_api.readback import StripeReadBack  # noqa: PLC0415

            readers[name] = StripeReadBack(processor.base_url, cfg.sync.request_timeout, token,
                                           clock, worker.breaker, bucket)
        else:
            from sync.square_api.readback import SquareReadBack  # noqa: PLC0415

            readers[name] = SquareReadBack(processor.base_url, cfg.sync.request_timeout,
                                           processor.location_id, token, clock,
                                           worker.breaker, bucket)
    return readers


def cloud_links(runtime: SyncRuntime | None, cfg: Config, clock: Clock) -> CloudLinks:
    """The Terminal clients of the cloud lanes, on their destination's breaker and bucket."""
    links = CloudLinks()
    if runtime is None:
        return links

    def parts(destination: str) -> tuple[CircuitBreaker, TokenBucket]:
        worker = runtime.engine.workers[destination]
        bucket = getattr(worker.gateway, "bucket", None)
        assert isinstance(bucket, TokenBucket)
        return worker.breaker, bucket

    if cfg.stripe is not None and "stripe" in runtime.engine.workers:
        stripe_cfg = cfg.stripe

        def stripe() -> StripeTerminalClient:
            from sync.stripe_api.terminal import (  # noqa: PLC0415
                StripeTerminalClient,
                StripeTerminalSettings,
            )

            breaker, bucket = parts("stripe")
            return StripeTerminalClient(
                StripeTerminalSettings(base_url=stripe_cfg.base_url,
                                       timeout=cfg.sync.request_timeout),
                runtime.secrets.provider(SECRET_NAMES["stripe"]), clock, breaker, bucket)

        links.stripe = stripe
    if cfg.square is not None and "square" in runtime.engine.workers:
        square_cfg = cfg.square

        def square() -> SquareTerminalClient:
            from sync.square_api.terminal import (  # noqa: PLC0415
                SquareTerminalClient,
                SquareTerminalSettings,
            )

            breaker, bucket = parts("square")
            return SquareTerminalClient(
                SquareTerminalSettings(base_url=square_cfg.base_url,
                                       location_id=square_cfg.location_id,
                                       timeout=cfg.sync.request_timeout),
                runtime.secrets.provider(SECRET_NAMES["square"]), clock, breaker, bucket)

        links.square = square
    return links


async def start(runtime: SyncRuntime, cfg: Config, db: Database, bus: EventBus,
                clock: Clock, on_link_down: Callable[[str], Awaitable[object]]) -> None:
    await runtime.secrets.refresh()
    await runtime.engine.start()
    supervise = runtime.engine.supervisor.start
    supervise("sync-wake", partial(_wake_on_writes, runtime.engine, bus))
    supervise("sync-secrets", partial(_refresh_secrets, runtime, clock))
    supervise("sync-links", partial(_watch_links, bus, on_link_down))
    if runtime.readers:  # payments and refunds left unknown, read back (issue 16 item 9)
        runtime.settler = UnknownSettler(cfg, db, bus, clock, runtime.readers)
        supervise("settle-unknown", runtime.settler.run)
    if cfg.shopify is not None and cfg.shopify.catalogue_pull == "paged":
        # the paged catalogue pull: at start, then every pull_interval
        supervise("shopify-pull", partial(_pull_forever, runtime, cfg, db, bus, clock))


async def _wake_on_writes(engine: SyncEngine, bus: EventBus) -> None:
    """New outbox rows, and dead rows a manager retries ("sync"), come with these events:
    wake the workers at once."""
    sub = bus.subscribe(frozenset({"payment", "refund", "order", "inventory", "sync"}))
    try:
        while True:
            await sub.queue.get()
            engine.wake()
    finally:
        bus.unsubscribe(sub)


async def _watch_links(bus: EventBus, on_link_down: Callable[[str], Awaitable[object]]) -> None:
    """Tell the daemon when a destination's breaker opens (its link is down)."""
    sub = bus.subscribe(frozenset({"sync"}))
    try:
        while True:
            event = await sub.queue.get()
            data = event.data
            if data.get("event") == "breaker" and data.get("to") == "open":
                try:
                    await on_link_down(str(data.get("destination")))
                except Exception:  # a failed reaction must not stop the watching
                    log.exception("reacting to %s going down failed", data.get("destination"))
    finally:
        bus.unsubscribe(sub)


async def _refresh_secrets(runtime: SyncRuntime, clock: Clock) -> None:
    while True:
        await clock.sleep(SECRET_REFRESH_SECONDS)
        await runtime.secrets.refresh()
        runtime.engine.wake()


async def _pull_forever(runtime: SyncRuntime, cfg: Config, db: Database, bus: EventBus,
                        clock: Clock) -> None:
    """Pull now, then every ``[sync] pull_interval_seconds`` on the daemon's clock. A pull
    Shopify cannot answer is logged and tried at the next interval; anything else raises
    to the supervisor (logged once, restarted with backoff, shown under ``tasks``)."""
    while True:
        await pull_once(runtime, cfg, db, bus)
        await clock.sleep(cfg.sync.pull_interval_seconds)


async def pull_once(runtime: SyncRuntime, cfg: Config, db: Database, bus: EventBus) -> int:
    """Pull the catalogue and stock from Shopify into the local catalogue.

    The pull replaces the reported quantity only (the first term of local stock), never
    the deltas not yet acknowledged, and never queues anything back to Shopify.
    """
    from sync.core.errors import SyncError  # noqa: PLC0415
    from sync.shopify_admin.pull import pull_catalogue  # noqa: PLC0415

    worker = runtime.engine.workers.get("shopify")
    if worker is None or cfg.shopify is None:
        return 0
    if worker.breaker.state is BreakerState.OPEN:
        log.info("catalogue pull skipped: the Shopify breaker is open")
        return 0
    try:
        pulled = await pull_catalogue(worker.gateway, cfg.shopify.location_id)
    except SyncError as exc:
        log.warning("catalogue pull failed: %s", exc)
        return 0
    entries, pulled_at = pulled.entries, pulled.pulled_at
    rows = [catalog_import.CatalogueRow(
        sku=e.sku, barcode=e.barcode, title=e.title, price=e.price, variant_id=e.variant_id,
        inventory_item_id=e.inventory_item_id, quantity=e.available, product_id=e.product_id)
        for e in entries if e.sku]
    stamp = utc_iso(pulled_at) if isinstance(pulled_at, datetime) else str(pulled_at)
    count = await db.write(lambda c: catalog_import.apply(c, rows, "shopify-pull",
                                                          reported_at=stamp))
    log.info("catalogue pull: %d items from Shopify", count)
    bus.publish("sync", {"event": "pull", "destination": "shopify", "items": count})
    return count
