"""What the HTTP layer can reach: one value holding the daemon's parts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edged import tokens
from edged.api.ratelimit import ClientBuckets
from edged.config import Config
from edged.events import EventBus
from edged.idempotency import KeyLocks
from edged.inventory import InventoryService
from edged.manager import ManagerParts
from edged.metrics import Metrics
from edged.pairing import PairingGuard
from edged.payments import PaymentService
from edged.store import Database
from edged.terminals import TerminalManager
from sync.clock import Clock
from sync.outbox import OutboxStore

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
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    allowed_hosts: frozenset[str] = frozenset()
    key_locks: KeyLocks = field(default_factory=KeyLocks)
    pair_guard: PairingGuard | None = None  # made on the first pairing code tried

    def pairing_guard(self) -> PairingGuard:
        """The one wrong-code counter shared by ``POST /v1/pair`` and the page's sign-in."""
        if self.pair_guard is None:
            self.pair_guard = PairingGuard(self.clock)
        return self.pair_guard

    async def principal(self, token: str) -> tokens.Principal | None:
        """The token's owner, read on every call: a revoked token fails at once.

        No cache (the CLI revokes from another process): an indexed read on the event
        loop's thread costs less than the trip to a reader thread would. The last use is
        written at most once a minute per token.
        """
        found = await self.db.read_inline(lambda c: tokens.lookup(c, token))
        if found is not None:
            now = self.clock.now()
            if tokens.touch_due(found, now):
                await self.db.write(lambda c: tokens.touch(c, found.token_id, now))
        return found
