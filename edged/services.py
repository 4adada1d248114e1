"""What the HTTP layer can reach: one value holding the daemon's parts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edged.config import Config
from edged.events import EventBus
from edged.inbound.pickups import PickupService
from edged.lan import tokens
from edged.lan.pairing import PairingGuard
from edged.lan.ratelimit import ClientBuckets
from edged.lan.stream_registry import StreamRegistry
from edged.lan.token_cache import PrincipalCache
from edged.lanes.terminals import TerminalManager
from edged.ops.manager import ManagerParts
from edged.ops.metrics import Metrics
from edged.payments.service import PaymentService
from edged.stock.inventory import InventoryService
from edged.store import Database
from edged.store.idempotency import KeyLocks
from edged.upkeep.tasks import Upkeep
from sync.core.clock import Clock
from sync.core.outbox import OutboxStore

if TYPE_CHECKING:
    from edged.inbound.service import ShopifyInbound

SyncStatus = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Services:
    cfg: Config
    clock: Clock
    db: Database
    bus: EventBus
    metrics: Metrics
    terminals: TerminalManager
    payments: PaymentService
    inventory: InventoryService
    limits: ClientBuckets
    payment_limits: ClientBuckets
    anonymous_limits: ClientBuckets
    sync_status: SyncStatus
    outbox: OutboxStore
    manager: ManagerParts
    principals: PrincipalCache
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    allowed_hosts: frozenset[str] = frozenset()
    key_locks: KeyLocks = field(default_factory=KeyLocks)
    pair_guard: PairingGuard | None = None  # made on the first pairing code tried
    streams: StreamRegistry = field(default_factory=lambda: StreamRegistry(8, 128))
    own_fingerprint: Callable[[], str] = field(default=lambda: "")
    """The SHA-256 fingerprint of the certificate served now ("" without TLS): pairing
    proofs are checked against it."""
    upkeep: Upkeep | None = None  # retention, the file's size, backups, the replica
    pickups: PickupService | None = None
    shopify: ShopifyInbound | None = None
    """Webhooks, the inbox, the catch-up poll and the bulk catalogue (with [shopify])."""

    def pairing_guard(self) -> PairingGuard:
        """The one wrong-code counter shared by ``POST /v1/pair`` and the page's sign-in."""
        if self.pair_guard is None:
            self.pair_guard = PairingGuard(self.clock)
        return self.pair_guard

    async def principal(self, token: str) -> tokens.Principal | None:
        """The token's owner; a token revoked by any process fails on its next call.

        Kept in memory once read (:mod:`edged.lan.token_cache`: the revocation stamp is read on
        every call instead of the table). The last use is written at most once a minute per
        token.
        """
        digest = tokens.hash_token(token)
        stamp = self.principals.check()
        found = self.principals.get(digest, self.clock.monotonic())
        if found is None:
            read_at = self.clock.monotonic()
            found = await self.db.read_inline(lambda c: tokens.lookup_digest(c, digest))
            if found is None:
                return None
            self.principals.put(digest, found, stamp, read_at)
        now = self.clock.now()
        if tokens.touch_due(found, now):
            used = found
            found = await self.db.write(lambda c: tokens.touch(c, used, now), inline=True)
            self.principals.update(digest, found)
        return found
