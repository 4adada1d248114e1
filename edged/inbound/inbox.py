"""The inbox: one table for everything Shopify tells the daemon, and what became of it.

Rows come three ways (``via``): a ``webhook`` delivery (verified, then stored before it is
answered), a ``poll`` observation of the catch-up poll, and ``daemon`` rows the daemon adds
itself (read a few stock levels again after a new pick-up). Each row is written in one
transaction with the keys that deduplicate it:

- a delivery is unique by its webhook id (``delivery_id``): a replay of it stores nothing;
- one change delivered under several webhook ids, or observed twice by overlapping polls,
  shares an ``event_key``: only the first row of a key is processed, the others are
  ``duplicate`` with ``duplicate_of`` naming it;
- across the two ways, ``shopify_versions`` keeps the version (Shopify's ``updated_at``) and a
  digest of the state last applied per subject: a poll observation of a state already
  applied is not stored again (the row that applied it counts it in ``seen_again``), a
  webhook whose state turns out already applied ends ``duplicate`` of that row, and an
  older state than the one applied is ``ignored`` (deliveries come out of order).

States: ``pending`` (to process; ``next_attempt_at`` after a failed attempt), ``done``,
``duplicate``, ``ignored`` (nothing to do, said why), ``failed`` (gave up; the error says
why). The worker (:mod:`edged.inbound.worker`) processes ``pending`` rows in order.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SOURCE = "shopify"
STATES = ("pending", "done", "duplicate", "ignored", "failed")
VIAS = ("webhook", "poll", "daemon")

#: Topics of the rows the poll and the daemon add (webhook rows keep Shopify's topic).
POLL_PICKUPS = "poll:fulfillment_orders"
POLL_PRODUCTS = "poll:products"
POLL_DELETIONS = "poll:deletions"
POLL_LEVELS = "poll:inventory_levels"
REFRESH_LEVELS = "daemon:inventory_levels"


@dataclass(frozen=True, slots=True)
class InboxRow:
    id: int
    via: str
    topic: str
    subject: str | None
    version: str | None
    data: Mapping[str, Any]
    attempts: int
    received_at: str


def _row(r: sqlite3.Row) -> InboxRow:
    try:
        data = json.loads(bytes(r["body"]).decode("utf-8")) if r["body"] else {}
    except ValueError:
        data = {}
    return InboxRow(r["id"], r["via"], r["topic"], r["subject"], r["version"],
                    data if isinstance(data, dict) else {}, r["attempts"], r["received_at"])


def _body(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


# -- applied versions ---------------------------------------------------------------------


class Seen(enum.Enum):
    NEW = "new"
    SAME = "same"
    """This very state was applied already."""
    OLDER = "older"
    """A later state was applied already."""


@dataclass(frozen=True, slots=True)
class Applied:
    version: str
    digest: str
    inbox_id: int | None


def applied(conn: sqlite3.Connection, subject: str) -> Applied | None:
    row = conn.execute("SELECT version, digest, inbox_id FROM shopify_versions"
                       " WHERE subject = ?", (subject,)).fetchone()
    return None if row is None else Applied(row[0], row[1], row[2])


def seen(conn: sqlite3.Connection, subject: str, version: str | None,
         digest: str | None) -> tuple[Seen, Applied | None]:
    """Whether the state (``version``, ``digest``) of ``subject`` is new to the daemon."""
    last = applied(conn, subject)
    if last is None or version is None:
        return Seen.NEW, last
    if version < last.version:
        return Seen.OLDER, last
    if version == last.version and digest is not None and digest == last.digest:
        return Seen.SAME, last
    return Seen.NEW, last


def record(conn: sqlite3.Connection, subject: str, version: str, digest: str,
           inbox_id: int | None, now: str) -> None:
    conn.execute("INSERT INTO shopify_versions (subject, version, digest, inbox_id, applied_at)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET"
                 " version = excluded.version, digest = excluded.digest,"
                 " inbox_id = excluded.inbox_id, applied_at = excluded.applied_at",
                 (subject, version, digest, inbox_id, now))


# -- cursors ------------------------------------------------------------------------------


def cursor(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM shopify_cursors WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def set_cursor(conn: sqlite3.Connection, name: str, value: str, now: str) -> None:
    conn.execute("INSERT INTO shopify_cursors (name, value, updated_at) VALUES (?, ?, ?)"
                 " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                 " updated_at = excluded.updated_at", (name, value, now))


def pull_cursor_back(conn: sqlite3.Connection, name: str, value: str, now: str) -> None:
    """Move ``name`` back to ``value`` if it is later (or unset)."""
    current = cursor(conn, name)
    if current is None or value < current:
        set_cursor(conn, name, value, now)


# -- writing rows -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    id: int
    new: bool
    """False: a replay of a delivery already stored (nothing written)."""
    state: str


def receive_webhook(conn: sqlite3.Connection, *, webhook_id: str, topic: str,
                    event_id: str | None, triggered_at: str | None, subject: str | None,
                    version: str | None, event_key: str | None, data: Mapping[str, Any],
                    now: str, ignored: str | None = None) -> Received:
    """Store a verified delivery in the caller's transaction, deduplicated.

    ``ignored``: why the delivery is kept but has nothing to do (unreadable payload, another
    shop); it is stored ``ignored`` with that outcome.
    """
    known = conn.execute("SELECT id, state FROM webhook_inbox WHERE source = ? AND"
                         " delivery_id = ?", (SOURCE, webhook_id)).fetchone()
    if known is not None:
        conn.execute("UPDATE webhook_inbox SET seen_again = seen_again + 1 WHERE id = ?",
                     (known[0],))
        return Received(known[0], False, known[1])
    state, outcome, duplicate_of = "pending", None, None
    if ignored is not None:
        state, outcome, event_key = "ignored", ignored, None
    elif event_key is not None:
        first = conn.execute("SELECT id FROM webhook_inbox WHERE source = ? AND event_key = ?"
                             " AND state != 'duplicate'", (SOURCE, event_key)).fetchone()
        if first is not None:
            state, duplicate_of = "duplicate", first[0]
            outcome = f"the same change as #{first[0]} (delivered again under another id)"
    if state == "pending" and subject is not None and version is not None:
        last = applied(conn, subject)
        if last is not None and version < last.version:
            state, duplicate_of = "ignored", last.inbox_id
            outcome = (f"older ({version}) than the state applied by #{last.inbox_id}"
                       f" ({last.version}): delivered out of order")
    cur = conn.execute(
        "INSERT INTO webhook_inbox (source, delivery_id, topic, body, received_at, via,"
        " event_id, triggered_at, subject, version, event_key, state, outcome, duplicate_of,"
        " processed_at) VALUES (?, ?, ?, ?, ?, 'webhook', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (SOURCE, webhook_id, topic, _body(data), now, event_id, triggered_at, subject,
         version, event_key, state, outcome, duplicate_of, None if state == "pending" else now))
    assert cur.lastrowid is not None
    return Received(cur.lastrowid, True, state)


def observe(conn: sqlite3.Connection, *, topic: str, subject: str, version: str | None,
            digest: str, data: Mapping[str, Any], now: str) -> int | None:
    """Store a poll observation unless that state is known; the new row's id, or None."""
    key = f"{topic}:{subject}:{version or ''}:{digest}"
    verdict, last = seen(conn, subject, version, digest)
    if verdict is Seen.SAME and last is not None:
        if last.inbox_id is not None:
            conn.execute("UPDATE webhook_inbox SET seen_again = seen_again + 1 WHERE id = ?",
                         (last.inbox_id,))
        return None
    if verdict is Seen.OLDER:
        return None
    first = conn.execute("SELECT id FROM webhook_inbox WHERE source = ? AND event_key = ?"
                         " AND state != 'duplicate'", (SOURCE, key)).fetchone()
    if first is not None:
        return None  # the poll's overlap: this observation is already in the inbox
    cur = conn.execute(
        "INSERT INTO webhook_inbox (source, delivery_id, topic, body, received_at, via,"
        " subject, version, event_key, state) VALUES (?, ?, ?, ?, ?, 'poll', ?, ?, ?,"
        " 'pending')", (SOURCE, key, topic, _body(data), now, subject, version, key))
    return cur.lastrowid


def add_daemon_row(conn: sqlite3.Connection, topic: str, subject: str | None,
                   data: Mapping[str, Any], now: str, reason: str) -> int:
    """A row of the daemon's own (read stock again after a new pick-up), processed like the
    others and shown with them; ``reason`` keeps it unique."""
    cur = conn.execute(
        "INSERT INTO webhook_inbox (source, delivery_id, topic, body, received_at, via,"
        " subject, state) VALUES (?, ?, ?, ?, ?, 'daemon', ?, 'pending')",
        (SOURCE, f"daemon:{reason}", topic, _body(data), now, subject))
    assert cur.lastrowid is not None
    return cur.lastrowid


# -- the worker's side --------------------------------------------------------------------


def claim(conn: sqlite3.Connection, now: str) -> InboxRow | None:
    row = conn.execute("SELECT * FROM webhook_inbox WHERE state = 'pending' AND"
                       " coalesce(next_attempt_at, '') <= ? ORDER BY id LIMIT 1",
                       (now,)).fetchone()
    return None if row is None else _row(row)


def next_due(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT min(coalesce(next_attempt_at, '')) FROM webhook_inbox"
                       " WHERE state = 'pending'").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def finish(conn: sqlite3.Connection, row_id: int, state: str, outcome: str, now: str, *,
           duplicate_of: int | None = None) -> None:
    if state not in STATES or state == "pending":
        raise ValueError(f"an inbox row cannot end {state!r}")
    conn.execute("UPDATE webhook_inbox SET state = ?, outcome = ?, duplicate_of = ?,"
                 " processed_at = ?, error = NULL, next_attempt_at = NULL WHERE id = ?"
                 " AND state = 'pending'", (state, outcome[:500], duplicate_of, now, row_id))


def retry_later(conn: sqlite3.Connection, row_id: int, error: str, next_at: str, *,
                counts: bool = True, outcome: str | None = None) -> None:
    conn.execute("UPDATE webhook_inbox SET attempts = attempts + ?, error = ?,"
                 " next_attempt_at = ?, outcome = coalesce(?, outcome) WHERE id = ?"
                 " AND state = 'pending'", (1 if counts else 0, error[:500], next_at, outcome,
                                            row_id))


def fail(conn: sqlite3.Connection, row_id: int, error: str, now: str) -> None:
    conn.execute("UPDATE webhook_inbox SET state = 'failed', attempts = attempts + 1,"
                 " error = ?, processed_at = ?, next_attempt_at = NULL WHERE id = ?"
                 " AND state = 'pending'", (error[:500], now, row_id))


# -- reading ------------------------------------------------------------------------------

_FIELDS = ("id", "via", "topic", "subject", "version", "state", "outcome", "error",
           "attempts", "next_attempt_at", "duplicate_of", "seen_again", "received_at",
           "processed_at", "event_id", "triggered_at")


def row_dict(r: sqlite3.Row) -> dict[str, Any]:
    out = {f: r[f] for f in _FIELDS}
    out["webhook_id"] = r["delivery_id"] if r["via"] == "webhook" else None
    return out


def list_rows(conn: sqlite3.Connection, state: str | None, limit: int,
              before: int | None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM webhook_inbox WHERE source = ?"
    args: list[Any] = [SOURCE]
    if state is not None:
        sql += " AND state = ?"
        args.append(state)
    if before is not None:
        sql += " AND id < ?"
        args.append(before)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    return [row_dict(r) for r in conn.execute(sql, args).fetchall()]


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    """Rows per state and per way in, the oldest pending and the last received."""
    by_state = dict.fromkeys(STATES, 0)
    for state, n in conn.execute("SELECT state, count(*) FROM webhook_inbox WHERE source = ?"
                                 " GROUP BY state", (SOURCE,)):
        by_state[state] = n
    by_via = dict.fromkeys(VIAS, 0)
    for via, n in conn.execute("SELECT via, count(*) FROM webhook_inbox WHERE source = ?"
                               " GROUP BY via", (SOURCE,)):
        by_via[via] = n
    oldest = conn.execute("SELECT min(received_at) FROM webhook_inbox WHERE source = ? AND"
                          " state = 'pending'", (SOURCE,)).fetchone()[0]
    last = conn.execute("SELECT max(received_at) FROM webhook_inbox WHERE source = ? AND"
                        " via = 'webhook'", (SOURCE,)).fetchone()[0]
    return {**by_state, "by_via": by_via, "oldest_pending_at": oldest,
            "last_webhook_at": last}


__all__ = [
    "POLL_DELETIONS",
    "POLL_LEVELS",
    "POLL_PICKUPS",
    "POLL_PRODUCTS",
    "REFRESH_LEVELS",
    "SOURCE",
    "STATES",
    "Applied",
    "InboxRow",
    "Received",
    "Seen",
    "add_daemon_row",
    "applied",
    "claim",
    "counts",
    "cursor",
    "fail",
    "finish",
    "list_rows",
    "next_due",
    "observe",
    "pull_cursor_back",
    "receive_webhook",
    "record",
    "retry_later",
    "row_dict",
    "seen",
    "set_cursor",
]
