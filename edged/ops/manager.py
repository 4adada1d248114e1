"""What the manager's side of the daemon holds: report limits, alerts, page sessions."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from edged.config import Config
from edged.events import EventBus
from edged.lan.ratelimit import ClientBuckets
from edged.lan.sessions import SessionStore
from edged.lanes.terminals import TerminalManager
from edged.ops.alerts import AlertCenter, SyncStatus
from edged.store import Database
from sync.core.clock import Clock

REPORTS_PER_MINUTE = 5
SIGN_INS_PER_MINUTE = 10  # per client address, right or wrong


@dataclass
class ManagerParts:
    report_limits: ClientBuckets
    alerts: AlertCenter
    sessions: SessionStore
    sign_in_limits: ClientBuckets
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.alerts.run(), name="alerts"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


def build(cfg: Config, clock: Clock, db: Database, bus: EventBus, terminals: TerminalManager,
          sync_status: SyncStatus) -> ManagerParts:
    return ManagerParts(
        report_limits=ClientBuckets(REPORTS_PER_MINUTE / 60.0, REPORTS_PER_MINUTE, clock),
        alerts=AlertCenter(cfg, db, bus, clock, terminals, sync_status),
        sessions=SessionStore(db, clock, cfg.manager.session_minutes),
        sign_in_limits=ClientBuckets(SIGN_INS_PER_MINUTE / 60.0, SIGN_INS_PER_MINUTE, clock),
    )
