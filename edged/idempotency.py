"""Idempotency-Key handling: the first answer is stored with the change it answers.

A key is scoped by the token that used it. The same key with the same body replays the
first answer (status and body) and never starts a second action, also after a restart; the
same key with another body is refused. Concurrent requests with one key are serialised by
a per-key lock, so the second sees the first one's stored answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edged import jsoncodec
from edged.errors import EdgedError
from sync.clock import utc_iso

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class IdemRecord:
    """Where and under which key a mutating call is answered."""

    scope: str
    key: str
    method: str
    path: str
    body_hash: str


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
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
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
             jsoncodec.dumps_text(body), utc_iso(datetime.now(UTC))),
        )
    except sqlite3.IntegrityError:
        stored = lookup(conn, record.scope, record.key)
        if stored is None:
            raise
        raise Replayed(stored) from None


def forget(conn: sqlite3.Connection, record: IdemRecord) -> None:
    """Drop a stored answer the change it answered has undone (a terminal that refused)."""
    conn.execute("DELETE FROM idempotency WHERE scope = ? AND key = ?",
                 (record.scope, record.key))


class KeyLocks:
    """One asyncio lock per key in use; entries vanish when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, scope: str, key: str) -> AsyncIterator[None]:
        ident = (scope, key)
        lock, users = self._locks.get(ident, (asyncio.Lock(), 0))
        self._locks[ident] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[ident]
            if users <= 1:
                del self._locks[ident]
            else:
                self._locks[ident] = (lock, users - 1)
