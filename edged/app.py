"""The whole daemon, assembled: store, events, terminals, services, HTTP, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edged.api import page
from edged.api.http import allowed_hosts, bind
from edged.api.middleware import edge_middleware
from edged.api.routes import ROUTES
from edged.api.server import (
    GUARD,
    ConnectionGuard,
    GuardedSite,
    connection_limit,
    handler_args,
)
from edged.api.wire import DRAINING, SERVICES
from edged.config import Config
from edged.events import EventBus
from edged.inbound.pickups import PickupService
from edged.lan.ratelimit import ClientBuckets
from edged.lan.stream_registry import StreamRegistry
from edged.lan.token_cache import PrincipalCache, ensure_stamp, stamp_path
from edged.lanes.terminals import TerminalManager
from edged.ops import manager, status_metrics, systemd_notify
from edged.ops.metrics import Metrics
from edged.payments.service import PaymentService
from edged.services import Services
from edged.stock.inventory import InventoryService
from edged.store import Database, audit
from edged.upkeep.tasks import Upkeep, replica_credentials
from edged.upstream import sync_setup
from edged.upstream.sync_hooks import StoreHooks

if TYPE_CHECKING:
    from edged.inbound.service import ShopifyInbound
    from edged.lan.discovery import Advertiser
    from edged.lan.tls import CertKeeper
from sync.core import outbox
from sync.core.clock import Clock, SystemClock
from sync.core.outbox import OutboxStore
from sync.core.preload import preload
from sync.core.supervisor import TaskState
from sync.square_api import sdk as square_sdk
from sync.stripe_api import sdk as stripe_sdk

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0


def build_web_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[edge_middleware],
                          client_max_size=services.cfg.api.max_body_bytes)
    app[SERVICES] = services
    api = services.cfg.api
    app[GUARD] = ConnectionGuard(connection_limit(api.max_connections),
                                 api.max_connections_per_address,
                                 api.max_unauthenticated_per_address)
    app[DRAINING] = [False]
    for route in ROUTES:
        app.router.add_route(route.method, route.path, bind(route))
    page.add_routes(app)
    return app


@dataclass
class Daemon:
    cfg: Config
    clock: Clock
    shutdown_grace: float = SHUTDOWN_GRACE
    replace_lost_audit_key: bool = False
    """``edged run --replace-lost-audit-key`` (edged.store.audit.ensure_keyed)."""

    def __post_init__(self) -> None:
        self.db = Database(self.cfg.data_dir / "edged.db",
                           wal_max_bytes=int(self.cfg.storage.wal_max_mb * 1024 * 1024),
                           replicated=self.cfg.replica is not None)
        self.upkeep = Upkeep(self.cfg, self.db, self.clock)
        self.bus = EventBus()
        self.db.on_full = self._store_full
        self.metrics = Metrics()
        self.sync = sync_setup.build(self.cfg, self.db, self.bus, self.clock)
        self.links = sync_setup.cloud_links(self.sync, self.cfg, self.clock)
        self.terminals = TerminalManager(self.cfg.terminals, self.bus, self.clock, self.links,
                                         currency=self.cfg.store.currency)
        self.payments = PaymentService(self.cfg, self.db, self.bus, self.terminals, self.clock)
        self.inventory = InventoryService(self.cfg, self.db, self.bus, self.clock)
        if self.sync is not None:
            self.payments.tokens.link_down = self.sync.link_down
        self.outbox = self.sync.engine.store if self.sync is not None else OutboxStore(
            self.db, self.clock, StoreHooks(self.clock), publish=self.bus.publish)
        self.shopify = self._shopify_inbound()
        self.services = Services(
            cfg=self.cfg, clock=self.clock, db=self.db, bus=self.bus, metrics=self.metrics,
            terminals=self.terminals, payments=self.payments, inventory=self.inventory,
            limits=ClientBuckets(self.cfg.api.rate_per_second, self.cfg.api.rate_burst,
                                 self.clock),
            payment_limits=ClientBuckets(self.cfg.api.payment_rate_per_second,
                                         self.cfg.api.payment_rate_burst, self.clock),
            anonymous_limits=ClientBuckets(self.cfg.api.anonymous_rate_per_second,
                                           self.cfg.api.anonymous_rate_burst, self.clock),
            sync_status=self.sync_status,
            outbox=self.outbox,
            manager=manager.build(self.cfg, self.clock, self.db, self.bus, self.terminals,
                                  self.sync_status),
            principals=PrincipalCache(stamp_path(self.db.path)),
            streams=StreamRegistry(self.cfg.api.max_streams_per_token,
                                   max(1, connection_limit(self.cfg.api.max_connections) // 4)),
            upkeep=self.upkeep,
            pickups=PickupService(self.db, self.bus, self.clock, self.cfg.shopify is not None),
            shopify=self.shopify,
        )
        self.services.manager.alerts.extra.append(self.upkeep.conditions)
        self.app = build_web_app(self.services)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self.tls: CertKeeper | None = None
        if self.cfg.api.tls:
            from edged.lan.tls import CertKeeper  # noqa: PLC0415  (cryptography's x509 only for TLS)

            self.tls = CertKeeper(self.cfg, self.clock)
        self._tasks: list[asyncio.Task[None]] = []
        self.advertiser: Advertiser | None = None

    def _shopify_inbound(self) -> ShopifyInbound | None:
        """Webhooks, the inbox and the catch-up poll, on the Shopify destination's client."""
        worker = self.sync.engine.workers.get("shopify") if self.sync is not None else None
        if worker is None:
            return None
        from edged.inbound import service as inbound  # noqa: PLC0415  (only with [shopify])
        from sync.shopify_admin.gateway import ShopifyGateway  # noqa: PLC0415

        assert isinstance(worker.gateway, ShopifyGateway)
        return inbound.build(self.cfg, self.db, self.bus, self.clock, worker.gateway,
                                     worker.breaker)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    async def start(self) -> None:
        await self.db.open()
        ensure_stamp(stamp_path(self.db.path))  # kept open from the first call on
        await self._audit_head()
        self.services.allowed_hosts = allowed_hosts(self.services)
        if self.tls is not None:
            cert = self.tls.start()
            self.services.allowed_hosts |= cert.names
            keeper = self.tls
            self.services.own_fingerprint = lambda: keeper.info.fingerprint \
                if keeper.info is not None else ""
            self._tasks.append(asyncio.create_task(self.tls.run(), name="tls-renewal"))
        await self.upkeep.start(await replica_credentials(self.cfg, self.db))
        self.metrics.collector(self._collect)
        self.metrics.collector(self.upkeep.collect)
        self.metrics.async_collector(status_metrics.collector(
            self.cfg, self.db, self.terminals, self.sync_status))
        if self.sync is not None:  # cloud lanes and their recovery need the credentials
            await self.sync.secrets.refresh()
        await self.terminals.start()
        settled = await self.payments.recover_interrupted()
        if settled:
            log.warning("%d payments were interrupted by the last stop", settled)
        if self.sync is not None:
            await sync_setup.start(self.sync, self.cfg, self.db, self.bus, self.clock,
                                   self.payments.tokens.store_pending)
            if self.shopify is not None:
                from edged.inbound import service as inbound  # noqa: PLC0415  (only with [shopify])

                await inbound.start(self.shopify, self.sync.engine.supervisor.start)
            # token payments: the bounded wait for the processor, the offline maximum age
            self._tasks.append(asyncio.create_task(self.payments.tokens.run_deadlines(),
                                                   name="token-deadlines"))
        self.services.manager.start()
        self._runner = web.AppRunner(self.app, access_log=None,
                                     shutdown_timeout=self.shutdown_grace)
        await self._runner.setup()
        guard = self.app[GUARD]
        self._site = GuardedSite(self._runner, self.cfg.api.host, self.cfg.api.port,
                                 guard=guard, reuse_address=True,
                                 handler_args=handler_args(self.cfg.api),
                                 ssl_context=self.tls.context if self.tls else None,
                                 handshake_timeout=self.cfg.api.header_timeout)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.api.port
        log.info("edged ready on %s://%s:%d (data %s)", self.scheme, self.cfg.api.host,
                 self.port, self.db.path)
        if self.cfg.api.metrics_public and not self.cfg.on_loopback:
            log.warning("[api] metrics_public = true: GET /metrics answers anyone who reaches"
                        " %s without a token (sales volume by method, terminal ids, pairing"
                        " failures); set it to false and give Prometheus a monitor token",
                        self.cfg.api.listen)
        if self.cfg.stripe is not None or self.cfg.square is not None:
            self._tasks.append(asyncio.create_task(self._preload_sdks(), name="sdk-preload"))
        if self.cfg.advertise:
            from edged.lan.discovery import announce  # noqa: PLC0415  (zeroconf only when used)

            self.advertiser = await announce(self.cfg, self.port, self.tls)

    async def _audit_head(self) -> None:
        """Start the keyed part of the audit chain if it has none; the head to the journal
        (``edged audit verify --expect-head`` proves later that no tail was cut)."""
        started = await self.db.write(partial(audit.ensure_keyed,
                                              replace_lost_key=self.replace_lost_audit_key))
        head = await self.db.read(audit.head)
        if head is not None:
            log.info("audit chain: %d entries, head %s%s", head.entries, head,
                     " (keyed by this key from here on)" if started else "")

    async def _preload_sdks(self) -> None:
        """Import the processors' SDKs now that the API answers (sync.core.preload)."""
        names = ", ".join(n for n, on in (("stripe", self.cfg.stripe is not None),
                                          ("squareup", self.cfg.square is not None)) if on)
        try:
            seconds = await preload(
                ([stripe_sdk.warm] if self.cfg.stripe is not None else [])
                + ([square_sdk.warm] if self.cfg.square is not None else []))
        except Exception:  # the first call that needs them will say what is wrong
            log.exception("loading the processors' SDKs (%s) failed", names)
            return
        log.info("the processors' SDKs are loaded (%s, %.2f s)", names, seconds)

    async def stop(self) -> None:
        """Refuse new requests, finish those in flight, close the lines and the database."""
        self.app[DRAINING][0] = True
        self.services.stopping.set()
        if self.advertiser is not None:  # registers stop finding a daemon that is leaving
            await self.advertiser.stop()
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.services.manager.stop()
        if self.sync is not None:
            await self.sync.stop(min(self.shutdown_grace, sync_setup.STOP_GRACE))
        await self.terminals.stop(self.shutdown_grace)
        await self.links.close()
        await self.upkeep.stop()
        await self.db.close()
        self.services.principals.close()
        log.info("edged stopped cleanly")

    def _store_full(self, full: bool) -> None:
        """An alert on the bus (the alerts table cannot take it while the disk is full)."""
        self.bus.publish("alert", {"event": "raised" if full else "cleared", "alert": {
            "key": "store.full", "kind": "store_full", "severity": "critical",
            "subject": str(self.db.path.parent),
            "message": "the store cannot write: the disk is full" if full
            else "the store writes again"}})

    async def sync_status(self) -> dict[str, Any]:
        depths = await self.db.read(lambda c: outbox.depths(c, self.cfg.destinations))
        now = self.clock.now()
        workers = self.sync.engine.workers if self.sync is not None else {}
        tasks = {t.name: t for t in self.sync.engine.supervisor.status()} \
            if self.sync is not None else {}
        tasks.update({t.name: t for t in self.upkeep.tasks()})
        out = []
        for d in depths:
            entry: dict[str, Any] = {
                "destination": d.destination, "pending": d.pending, "inflight": d.inflight,
                "dead": d.dead, "oldest_pending_at": d.oldest_pending_at,
                "oldest_pending_age_seconds": _age(d.oldest_pending_at, now),
                "breaker": None, "worker": None, "last_error": None}
            worker = workers.get(d.destination)
            if worker is not None:
                status = worker.status()
                snap = status.breaker
                entry["breaker"] = {"state": snap.state.value,
                                    "failure_ratio": round(snap.failure_ratio, 3),
                                    "calls": snap.calls, "failures": snap.failures,
                                    "retry_after_seconds": round(snap.retry_after, 3)}
                entry["worker"] = status.state.value
                entry["last_error"] = status.last_error
                task = tasks.get(f"sync-{d.destination}")
                if task is not None and task.state is TaskState.RESTARTING:
                    entry["worker"] = task.state.value
                    entry["last_error"] = task.last_error
            out.append(entry)
        shopify = await self.shopify.status() if self.shopify is not None else None
        return {"destinations": out, "offline": await self._offline_summary(now),
                "shopify": shopify,
                "tasks": [{"name": t.name, "state": t.state.value, "restarts": t.restarts,
                           "last_error": t.last_error,
                           "retry_in_seconds": None if t.retry_in is None
                           else round(t.retry_in, 3)} for t in tasks.values()]}

    async def _offline_summary(self, now: datetime) -> dict[str, Any]:
        """Token payments accepted while the link was down, against their caps."""
        offline = self.cfg.offline

        def read(conn: Any) -> list[Any]:
            return list(conn.execute(
                "SELECT currency, count(*), sum(amount), min(created_at) FROM payments"
                " WHERE state = 'stored' GROUP BY currency").fetchall())

        stored = []
        for currency, count, total, oldest in await self.db.read(read):
            age = _age(oldest, now) or 0.0
            stored.append({"currency": currency, "count": count, "total": total,
                           "cap": offline.max_stored_total, "oldest_at": oldest,
                           "oldest_age_seconds": age,
                           "over_max_age": age > offline.max_age_hours * 3600})
        return {"enabled": offline.enabled, "max_payment": offline.max_payment,
                "max_stored_total": offline.max_stored_total,
                "max_age_hours": offline.max_age_hours, "stored": stored}

    async def status_line(self) -> str:
        """One line for systemd's STATUS=: terminals, queues, what needs a person."""
        views = self.terminals.views()
        online = sum(1 for v in views if v.state != "offline")
        parts = [f"terminals {online}/{len(views)} online"]
        sync = await self.sync_status()
        for d in sync["destinations"]:
            breaker = (d["breaker"] or {}).get("state", "idle")
            parts.append(f"{d['destination']} {d['pending'] + d['inflight']} waiting"
                         f" ({breaker}{', ' + str(d['dead']) + ' dead' if d['dead'] else ''})")
        unknown = await self.db.read(self.payments.unknown_count())
        parts.append(f"{unknown} unknown payments")
        return "; ".join(parts)

    def _collect(self, metrics: Metrics) -> None:
        stats = self.db.stats
        metrics.set("edged_db_commits", "Group commits since start", stats.commits)
        metrics.set("edged_db_writes", "Write transactions since start", stats.writes)
        metrics.set("edged_db_largest_group", "Most writes in one commit", stats.largest_group)
        for view in self.terminals.views():
            metrics.set("edged_terminal_up", "1 when the terminal answers", 0 if
                        view.state == "offline" else 1, terminal=view.id)
        metrics.set("edged_event_subscribers", "Open event streams", self.bus.subscribers)
        metrics.set("edged_gc_frozen_objects", "Objects from start-up the garbage collector"
                    " skips", gc.get_freeze_count())
        if self.sync is not None:
            for name, worker in self.sync.engine.workers.items():
                snap = worker.breaker.snapshot()
                for state in ("closed", "open", "half_open"):
                    metrics.set("edged_breaker_state", "1 for the breaker's current state",
                                1 if snap.state.value == state else 0, destination=name,
                                state=state)
                metrics.set("edged_sync_sent", "Rows applied upstream since start",
                            worker.sent, destination=name)
                metrics.set("edged_sync_failed", "Failed attempts since start", worker.failed,
                            destination=name)


def _age(stamp: str | None, now: datetime) -> float | None:
    if stamp is None:
        return None
    then = datetime.fromisoformat(stamp)
    return round((now - then).total_seconds(), 3)


async def serve(cfg: Config, clock: Clock | None = None, *,
                replace_lost_audit_key: bool = False) -> int:
    """Run until SIGTERM or SIGINT; return the exit status."""
    clock = clock or SystemClock()
    daemon = Daemon(cfg, clock, replace_lost_audit_key=replace_lost_audit_key)
    notifier = systemd_notify.Notifier(os.environ)
    await daemon.start()
    # What start-up built (modules, settings, routes, SDKs) lives as long as the daemon:
    # frozen, the collector no longer walks it, which shortens its pauses on the hot path.
    gc.collect()
    gc.freeze()
    if daemon.tls is not None and daemon.tls.info is not None:
        print(f"TLS certificate SHA-256 fingerprint: {daemon.tls.info.fingerprint}", flush=True)
    print(f"edged ready on {daemon.scheme}://{cfg.api.host}:{daemon.port}", flush=True)
    watchdog: asyncio.Task[None] | None = None
    if notifier.enabled:
        notifier.send("READY=1", f"STATUS=ready; {await daemon.status_line()}",
                      f"MAINPID={os.getpid()}")
        check = systemd_notify.HealthCheck(
            lambda: daemon.db.write(systemd_notify.beat(clock)), clock)
        watchdog = asyncio.create_task(systemd_notify.run(notifier, check, daemon.status_line,
                                                          clock), name="systemd-watchdog")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing requests in flight")
    notifier.send("STOPPING=1", "STATUS=stopping: finishing requests in flight")
    if watchdog is not None:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
    await daemon.stop()
    notifier.close()
    return 0
