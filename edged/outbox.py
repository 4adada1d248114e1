"""The write side of the outbox (DESIGN §2): rows committed with the business change.

Each row names its destination and what it carries, holds the complete payload the sender
needs (so a resend is identical), and an idempotency key fixed here, forever.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sync.clock import utc_iso

# What each destination receives (destination, kind):
#   shopify  order.create      a sale, with its transactions (decrements stock once)
#   shopify  inventory.adjust  one stock delta; batched at send time (<= 250 a call)
#   stripe / square  payment.forward, refund.create   processor work (token payments)
ORDER_CREATE = "order.create"
INVENTORY_ADJUST = "inventory.adjust"
PAYMENT_FORWARD = "payment.forward"
REFUND_CREATE = "refund.create"


def new_key() -> str:
    """35 characters: inside every upstream's limit (Square refunds: 45)."""
    return "ed-" + secrets.token_hex(16)


def enqueue(conn: sqlite3.Connection, destination: str, kind: str, subject_id: str,
            payload: dict[str, Any]) -> int:
    now = utc_iso(datetime.now(UTC))
    cur = conn.execute(
        "INSERT INTO outbox (destination, kind, subject_id, idempotency_key, payload,"
        " created_at, updated_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (destination, kind, subject_id, new_key(),
         json.dumps(payload, sort_keys=True, separators=(",", ":")), now, now, now),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


@dataclass(frozen=True, slots=True)
class QueueDepth:
    destination: str
    pending: int
    inflight: int
    dead: int
    oldest_pending_at: str | None


def depths(conn: sqlite3.Connection, destinations: tuple[str, ...]) -> list[QueueDepth]:
    counts: dict[tuple[str, str], int] = {}
    for row in conn.execute(
        "SELECT destination, state, count(*) FROM outbox"
        " WHERE state IN ('pending', 'inflight', 'dead') GROUP BY destination, state"
    ):
        counts[(row[0], row[1])] = row[2]
    oldest = dict(conn.execute(
        "SELECT destination, min(created_at) FROM outbox"
        " WHERE state IN ('pending', 'inflight') GROUP BY destination"
    ).fetchall())
    names = sorted(set(destinations) | {d for d, _ in counts})
    return [QueueDepth(d, counts.get((d, "pending"), 0), counts.get((d, "inflight"), 0),
                       counts.get((d, "dead"), 0), oldest.get(d)) for d in names]
