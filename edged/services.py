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
from edged.payments import PaymentService
from edged.store import Database
from edged.terminals import TerminalManager
from sync.clock import Clock
from sync.outbox import OutboxStore

TOKEN_CACHE_SECONDS = 10.0

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
    _tokens: dict[str, tuple[tokens.Principal, float]] = field(default_factory=dict)

    async def principal(self, token: str) -> tokens.Principal | None:
        """The token's owner; valid tokens are cached briefly to spare the database."""
        digest = tokens.hash_token(token)
        cached = self._tokens.get(digest)
        now = self.clock.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await self.db.read(lambda c: tokens.lookup(c, token))
        if found is not None:
            if len(self._tokens) > 1000:
                self._tokens.clear()
            self._tokens[digest] = (found, now + TOKEN_CACHE_SECONDS)
        return found
