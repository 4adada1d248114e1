"""What the manager's side of the daemon holds: report limits, alerts, page sessions."""

from __future__ import annotations

from dataclasses import dataclass

from edged.api.ratelimit import ClientBuckets
from edged.config import Config
from sync.clock import Clock

REPORTS_PER_MINUTE = 5


@dataclass
class ManagerParts:
    report_limits: ClientBuckets


def build(cfg: Config, clock: Clock) -> ManagerParts:
    return ManagerParts(
        report_limits=ClientBuckets(REPORTS_PER_MINUTE / 60.0, REPORTS_PER_MINUTE, clock),
    )
