"""Idempotency-Key handling: the first answer is stored with the change it answers.

A key is scoped by the token that used it. The same key with the same body replays the
first answer (status and body) and never starts a second action, also after a restart; the
same key with another body is refused. Concurrent requests with one key are serialised by
a per-key lock, so the second sees the first one's stored answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edged import jsoncodec
from edged.errors import EdgedError
from sync.core.clock import utc_iso

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class IdemRecord:
    """Where and under which key a mutating call is answered."""

    scope: str
    key: str
    method: str
    path: str
    body_hash: str
    at: str | None = None
    """When the call came, on the daemon's clock (retention counts from it); None: now."""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    body_hash: str
    path: str
    status: int
    body: dict[str, Any]


class Replayed(EdgedError):
    """The key already holds an answer: raised inside the write, which it undoes."""

    def __init__(self, stored: StoredAnswer) -> None:
        super().__init__(f"already answered {stored.status} for {stored.path}")
        self.stored = stored


def body_hash(method: str, path: str, body: Any) -> str:
    canonical = jsoncodec.canonical(body)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def lookup(conn: sqlite3.Connection, scope: str, key: str) -> StoredAnswer | None:
    row = conn.execute(
        "SELECT body_hash, path, status, response FROM idempotency WHERE scope = ? AND key = ?",
        (scope, key),
    ).fetchone()
    if row is None:
        return None
    return StoredAnswer(row["body_hash"], row["path"], row["status"],
                        jsoncodec.loads(row["response"]))


def save(conn: sqlite3.Connection, record: IdemRecord, status: int, body: dict[str, Any]) -> None:
    """Store the answer; call inside the write transaction of the change it answers.

    The key's row is the claim: should the key already hold an answer (a route that looks
    the key up in this very transaction instead of beforehand), :class:`Replayed` carries
    that answer and undoes the write (its savepoint is rolled back).
    """
    try:
        conn.execute(
            "INSERT INTO idempotency (scope, key, method, path, body_hash, status, response,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.scope, record.key, record.method, record.path, record.body_hash, status,
             jsoncodec.dumps_text(body), record.at or utc_iso(datetime.now(UTC))),
        )
    except sqlite3.IntegrityError:
        stored = lookup(conn, record.scope, record.key)
        if stored is None:
            raise
        raise Replayed(stored) from None


def update(conn: sqlite3.Connection, record: IdemRecord, body: dict[str, Any]) -> None:
    """Bring a stored answer up to date with what the same request made next (the
    processor's id of a payment answered before that id was stored)."""
    conn.execute("UPDATE idempotency SET response = ? WHERE scope = ? AND key = ?",
                 (jsoncodec.dumps_text(body), record.scope, record.key))


def forget(conn: sqlite3.Connection, record: IdemRecord) -> None:
    """Drop a stored answer the change it answered has undone (a terminal that refused)."""
    conn.execute("DELETE FROM idempotency WHERE scope = ? AND key = ?",
                 (record.scope, record.key))


class KeyLocks:
    """One holder per key at a time, the others queued in arrival order.

    An entry lives only while its key is held, and an uncontended key costs no lock and no
    wait: the first holder just marks the key; a second one queues a future that the
    holder's release hands the key to.
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], deque[asyncio.Future[None]]] = {}

    def hold(self, scope: str, key: str) -> _KeyHold:
        return _KeyHold(self._held, (scope, key))


class _KeyHold:
    __slots__ = ("_held", "_ident")

    def __init__(self, held: dict[tuple[str, str], deque[asyncio.Future[None]]],
                 ident: tuple[str, str]) -> None:
        self._held = held
        self._ident = ident

    async def __aenter__(self) -> None:
        queue = self._held.get(self._ident)
        if queue is None:
            self._held[self._ident] = deque()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed the key as it was cancelled
                self._release()
            else:
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    queue.remove(waiter)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        queue = self._held[self._ident]
        while queue:
            waiter = queue.popleft()
            if not waiter.done():  # a cancelled waiter has left
                waiter.set_result(None)  # the key is its now
                return
        del self._held[self._ident]
