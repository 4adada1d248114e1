"""Inbound limits per client: a token bucket on every call, a stricter one on payments."""

from __future__ import annotations

import math
from typing import NamedTuple

from sync.core.clock import Clock


class Verdict(NamedTuple):
    """A bucket's answer (a tuple: made on every call, cheaper than a frozen dataclass)."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit),
               "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset_seconds)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class ClientBuckets:
    """One bucket per client key; refills continuously at ``rate`` up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Clock, max_clients: int = 10000) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> Verdict:
        now = self._clock.monotonic()
        tokens, stamp = self._buckets.get(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - stamp) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self._max_clients and client not in self._buckets:
            self._buckets.clear()  # bounded memory; clients just get a fresh bucket
        self._buckets[client] = (tokens, now)
        missing = max(0.0, 1.0 - tokens)
        return Verdict(allowed, self._burst, int(tokens),
                       math.ceil((self._burst - tokens) / self._rate),
                       max(1, math.ceil(missing / self._rate)))
