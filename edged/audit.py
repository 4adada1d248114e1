"""The hash-chained audit table: every money movement, override and configuration change.

Each entry's hash covers its content and the previous entry's hash, so an edited or
deleted entry breaks the chain; ``edged audit verify`` walks it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edged import jsoncodec
from sync.clock import utc_iso

GENESIS = "0" * 64


def _digest(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> str:
    material = "\x1f".join((prev, at, actor, action, subject, data)).encode("utf-8")
    return hashlib.sha256(material).hexdigest()


def append(conn: sqlite3.Connection, actor: str, action: str, subject: str,
           data: dict[str, Any], at: datetime | None = None) -> None:
    """Append one entry; call inside the write transaction of the change it records.

    Reading the last hash and inserting must be one transaction, or two writers could
    chain onto the same entry (the unique index on ``prev_hash`` refuses that anyway).
    """
    if not conn.in_transaction:
        raise RuntimeError("audit.append needs the caller's write transaction")
    row = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev = row[0] if row else GENESIS
    stamp = utc_iso(at or datetime.now(UTC))
    body = jsoncodec.canonical(data)  # hashed as stored: verify never re-encodes it
    conn.execute(
        "INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (stamp, actor, action, subject, body, prev,
         _digest(prev, stamp, actor, action, subject, body)),
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    entries: int
    broken_at: int | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


Entry = tuple[int, str, str, str, str, str, str, str]
"""seq, at, actor, action, subject, data, prev_hash, hash: one row of the chain."""


def entries(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[Entry]:
    """The chain's entries in ``conn`` (the database or an archive) in order."""
    yield from conn.execute(
        "SELECT seq, at, actor, action, subject, data, prev_hash, hash FROM audit"
        " WHERE seq > ? ORDER BY seq", (after_seq,))


def chained(conn: sqlite3.Connection,
            archive: sqlite3.Connection | None = None) -> Iterator[Entry]:
    """The whole chain: the entries ``edged archive`` moved out first, then the live ones
    after them (an entry in both, from an archive run cut short, is read once)."""
    last = 0
    if archive is not None:
        for entry in entries(archive):
            last = entry[0]
            yield entry
    yield from entries(conn, last)


def verify_entries(items: Iterable[Entry]) -> VerifyResult:
    """Walk the chain from its first entry: each links to the one before and hashes right."""
    prev = GENESIS
    count = 0
    for seq, at, actor, action, subject, data, prev_hash, digest in items:
        if prev_hash != prev or _digest(prev, at, actor, action, subject, data) != digest:
            return VerifyResult(count, seq)
        prev = digest
        count += 1
    return VerifyResult(count, None)


def verify(conn: sqlite3.Connection, archive: sqlite3.Connection | None = None) -> VerifyResult:
    """The chain of a database, through its archive when there is one."""
    return verify_entries(chained(conn, archive))
