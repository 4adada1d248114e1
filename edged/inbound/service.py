"""Shopify talking back, assembled: webhooks and catch-up polling into one inbox, its
worker, and the catalogue pulled as a bulk operation.

Everything reads through the Shopify destination's client (its cost bucket) and breaker,
so the outbox worker, the inbox worker, the poll and the bulk pull share one budget and one
view of the link. The tasks run under the sync engine's supervisor (``/v1/sync`` shows
them): ``shopify-inbox`` (:mod:`edged.inbound.worker`), ``shopify-poll``
(:mod:`edged.inbound.poll`), ``shopify-catalogue`` (:mod:`edged.inbound.catalog_bulk`, unless
``[shopify] catalogue_pull = "paged"``) and ``shopify-link``, which polls and wakes the
others at once when the breaker closes (the link is back).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from edged.config import Config
from edged.events import EventBus
from edged.inbound import inbox, pickups
from edged.inbound.catalog_bulk import BulkCatalogue
from edged.inbound.poll import CatchUpPoller
from edged.inbound.webhook import WebhookReceiver, WebhookSecrets
from edged.inbound.worker import InboxWorker
from edged.store import Database
from sync.core.breaker import CircuitBreaker
from sync.core.clock import Clock
from sync.shopify_admin.bulk import BulkRunner
from sync.shopify_admin.gateway import ShopifyGateway
from sync.shopify_admin.reads import ShopifyReads

log = logging.getLogger(__name__)


@dataclass
class ShopifyInbound:
    cfg: Config
    db: Database
    bus: EventBus
    breaker: CircuitBreaker
    reads: ShopifyReads
    worker: InboxWorker
    poller: CatchUpPoller
    webhooks: WebhookReceiver
    bulk: BulkCatalogue | None

    def link_back(self) -> None:
        """The breaker closed: catch up now."""
        self.poller.trigger()
        self.worker.wake()
        if self.bulk is not None:
            self.bulk.wake()

    async def status(self) -> dict[str, Any]:
        """What ``/v1/sync`` and the status page show of the inbound side."""
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            last = conn.execute("SELECT id, status, started_at, applied_at, items, error FROM"
                                " shopify_bulk_operations ORDER BY started_at DESC"
                                " LIMIT 1").fetchone()
            return {"inbox": inbox.counts(conn), "pickups": pickups.counts(conn),
                    "catalogue": None if last is None else {
                        "bulk_operation": last[0], "status": last[1], "started_at": last[2],
                        "applied_at": last[3], "items": last[4], "error": last[5]}}

        body = await self.db.read(read)
        poll = self.poller.status
        body["poll"] = {"interval_seconds": self.poller.interval, "polls": poll.polls,
                        "last_poll_at": poll.last_poll_at, "last_error": poll.last_error,
                        "last_new": poll.last_new}
        body["worker"] = {"processed": self.worker.processed,
                          "last_error": self.worker.last_error}
        body["webhooks"] = {"refused": self.webhooks.refused}
        if self.bulk is not None and body["catalogue"] is not None:
            body["catalogue"]["last_error"] = self.bulk.last_error
        return body


def build(cfg: Config, db: Database, bus: EventBus, clock: Clock,
          gateway: ShopifyGateway, breaker: CircuitBreaker) -> ShopifyInbound:
    shop = cfg.shopify
    assert shop is not None
    reads = ShopifyReads(gateway.client, shop.location_id, breaker)
    bulk: BulkCatalogue | None = None
    if shop.catalogue_pull == "bulk":
        bulk = BulkCatalogue(BulkRunner(reads), db, bus, clock, data_dir=cfg.data_dir,
                             full_pull_hours=shop.full_pull_hours,
                             poll_seconds=shop.bulk_poll_seconds)
    worker = InboxWorker(reads, db, bus, clock, breaker, location_id=shop.location_id,
                         source_name=gateway.settings.source_name,
                         bulk_notice=bulk.notice if bulk is not None else None,
                         in_doubt_retry=shop.in_doubt_retry_seconds)
    poller = CatchUpPoller(reads, db, clock, shop.poll_interval_seconds, worker.wake)
    webhooks = WebhookReceiver(cfg, db, clock, WebhookSecrets(cfg, db, clock), worker.wake)
    return ShopifyInbound(cfg, db, bus, breaker, reads, worker, poller, webhooks, bulk)


async def _watch_link(inbound: ShopifyInbound) -> None:
    sub = inbound.bus.subscribe(frozenset({"sync"}))
    try:
        while True:
            event = await sub.queue.get()
            data = event.data
            if data.get("event") == "breaker" and data.get("destination") == "shopify" \
                    and data.get("to") == "closed":
                log.info("the Shopify link is back: catching up")
                inbound.link_back()
    finally:
        inbound.bus.unsubscribe(sub)


async def start(inbound: ShopifyInbound, supervise: Any) -> None:
    """Start the tasks under ``supervise`` (the engine's ``Supervisor.start``)."""
    await inbound.webhooks.secrets.refresh()
    supervise("shopify-inbox", inbound.worker.run, stop=inbound.worker.stop)
    supervise("shopify-poll", inbound.poller.run, stop=inbound.poller.stop)
    if inbound.bulk is not None:
        supervise("shopify-catalogue", inbound.bulk.run, stop=inbound.bulk.stop)

    async def watch() -> None:
        await _watch_link(inbound)

    supervise("shopify-link", watch)


__all__ = ["ShopifyInbound", "build", "start"]
