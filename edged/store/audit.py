"""The audit chain: every money movement, override and configuration change, keyed.

Each entry's ``hash`` covers its content and the previous entry's hash, so an edited or
deleted entry breaks the chain. Entries carry a ``version``:

* **2** (every entry written since issue 17): ``hash`` is HMAC-SHA256 under the audit key,
  which is kept outside the database (:mod:`edged.store.audit_key`). Whoever holds the database
  and not the key can neither re-hash an edited chain nor add an entry that verifies.
* **1** (entries written before): plain SHA-256, as they were written. They still verify
  (the same formula), but anyone could have recomputed them; the keyed part starts at the
  first version-2 entry (the daemon appends an ``audit.keyed`` entry at its first start
  with the key, so an upgraded chain gets one at once) and no plain entry may follow it.

A tail cut off the chain leaves a shorter chain that verifies: the head (``SEQ:HASH`` of the
last entry) and the count are written to the journal at every start and in the end-of-day
report, and ``edged audit verify --expect-head SEQ:HASH`` proves that the chain still holds
that entry. :func:`verify` takes any iterable of entries (the database's, an archive's
followed by the database's), in order.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from edged import jsoncodec
from edged.store.audit_key import AuditKey, AuditKeyError
from edged.store.database import StoreConnection
from sync.core.clock import utc_iso

GENESIS: Final = "0" * 64
PLAIN: Final = 1
KEYED: Final = 2
KEYED_MARKER: Final = "audit.keyed"


def _material(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> bytes:
    return "\x1f".join((prev, at, actor, action, subject, data)).encode("utf-8")


def _plain(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> str:
    return hashlib.sha256(_material(prev, at, actor, action, subject, data)).hexdigest()


def _keyed(key: bytes, prev: str, at: str, actor: str, action: str, subject: str,
           data: str) -> str:
    material = b"2\x1f" + _material(prev, at, actor, action, subject, data)
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def key_of(conn: sqlite3.Connection) -> AuditKey:
    """The audit key of the database ``conn`` is open on (made on first use)."""
    if not isinstance(conn, StoreConnection):
        raise RuntimeError("the audit chain needs a connection from edged.store (it knows"
                           " where the audit key is)")
    return conn.audit_key()


def append(conn: sqlite3.Connection, actor: str, action: str, subject: str,
           data: dict[str, Any], at: datetime | None = None) -> None:
    """Append one keyed entry; call inside the write transaction of the change it records.

    Reading the last hash and inserting must be one transaction, or two writers could
    chain onto the same entry (the unique index on ``prev_hash`` refuses that anyway).
    """
    if not conn.in_transaction:
        raise RuntimeError("audit.append needs the caller's write transaction")
    key = key_of(conn)
    row = conn.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev = row[0] if row else GENESIS
    stamp = utc_iso(at or datetime.now(UTC))
    body = jsoncodec.canonical(data)  # hashed as stored: verify never re-encodes it
    conn.execute(
        "INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash, version)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (stamp, actor, action, subject, body, prev,
         _keyed(key.secret, prev, stamp, actor, action, subject, body), KEYED),
    )


def ensure_keyed(conn: sqlite3.Connection) -> bool:
    """Start the keyed part of a chain that has none yet (empty, or all plain): one
    ``audit.keyed`` entry. True when it was appended."""
    row = conn.execute("SELECT version FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None and row[0] == KEYED:
        return False
    plain = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    append(conn, "daemon", KEYED_MARKER, "audit",
           {"plain_entries": plain, "key": str(key_of(conn).source)})
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    at: str
    actor: str
    action: str
    subject: str
    data: str
    prev_hash: str
    hash: str
    version: int = PLAIN


def entries(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[Entry]:
    """The entries of ``conn`` (the database or an archive) after ``after_seq``, oldest
    first."""
    for row in conn.execute("SELECT seq, at, actor, action, subject, data, prev_hash, hash,"
                            " version FROM audit WHERE seq > ? ORDER BY seq", (after_seq,)):
        yield Entry(*tuple(row))


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    entries: int

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def head(conn: sqlite3.Connection) -> Head | None:
    """The last entry (what the journal and the end-of-day report name) and the count."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return None
    count = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    return Head(row[0], row[1], count)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    entries: int
    broken_at: int | None
    reason: str = ""
    head: str = ""
    """``SEQ:HASH`` of the last entry that verified."""
    keyed_from: int | None = None
    """The first keyed entry (``None``: the chain has none)."""
    unchecked: int = 0
    """Keyed entries checked for their links only (no key at hand, ``links_without_key``)."""

    @property
    def ok(self) -> bool:
        return self.broken_at is None and not self.reason


def parse_head(text: str) -> tuple[int | None, str]:
    """``SEQ:HASH`` or ``HASH`` (64 hex digits) as (seq or None, hash); ValueError if not."""
    seq, _, digest = text.strip().lower().rpartition(":")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(text)
    if seq and not (seq.isascii() and seq.isdigit()):
        raise ValueError(text)
    return (int(seq) if seq else None), digest


def verify(chain: Iterable[Entry], key: bytes | None,
           expect_head: str | None = None, *, links_without_key: bool = False) -> VerifyResult:
    """Walk ``chain`` (oldest first): every link, every hash or MAC, no plain entry after
    the keyed part began, keyed entries only with the key; with ``expect_head`` (a head the
    journal or a report named), that entry must still be in the chain.

    ``links_without_key`` (a box restored without its key): with no key, keyed entries are
    checked for their links only and counted in ``unchecked``; whoever holds the key checks
    their MACs later with ``edged audit verify``.

    With a key at hand, a chain that holds entries but no keyed one fails: the daemon
    starts the keyed part at its first start with the key, so such a chain was rewritten
    without it (or the daemon has not started since the key was made: start it once).
    """
    want_seq, want_hash = parse_head(expect_head) if expect_head else (None, "")
    seen_expected = False
    prev, count, keyed_from, last, unchecked = GENESIS, 0, None, "", 0

    def broken(entry: Entry, why: str) -> VerifyResult:
        return VerifyResult(count, entry.seq, why, last, keyed_from, unchecked)

    for entry in chain:
        if entry.prev_hash != prev:
            return broken(entry, "it does not follow the entry before it (one was removed,"
                                 " inserted or edited)")
        if entry.version == PLAIN:
            if keyed_from is not None:
                return broken(entry, "a plain entry after the keyed part began")
            digest = _plain(entry.prev_hash, entry.at, entry.actor, entry.action,
                            entry.subject, entry.data)
        elif entry.version == KEYED and key is None and links_without_key:
            keyed_from = entry.seq if keyed_from is None else keyed_from
            unchecked += 1
            digest = entry.hash
        elif entry.version == KEYED:
            if key is None:
                return broken(entry, "keyed entries, and no audit key to check them (the"
                                     " daemon's DATA_DIR/audit.key, or its systemd credential"
                                     " edged-audit.key in $CREDENTIALS_DIRECTORY)")
            keyed_from = entry.seq if keyed_from is None else keyed_from
            digest = _keyed(key, entry.prev_hash, entry.at, entry.actor, entry.action,
                            entry.subject, entry.data)
        else:
            return broken(entry, f"unknown version {entry.version}")
        if not hmac.compare_digest(digest, entry.hash):
            return broken(entry, "its content does not match its hash (edited, or hashed"
                                 " again without the key)")
        prev, count, last = entry.hash, count + 1, f"{entry.seq}:{entry.hash}"
        if want_hash and entry.hash == want_hash and want_seq in (None, entry.seq):
            seen_expected = True
    if key is not None and count and keyed_from is None:
        return VerifyResult(count, None, "no entry is keyed although the audit key exists:"
                            " the chain was rewritten without it, or the daemon has not"
                            " started since the key was made (start it once)", last, None)
    if expect_head and not seen_expected:
        return VerifyResult(count, None, f"the chain does not hold the expected head"
                            f" {expect_head}: entries were removed from its end, or it was"
                            " rewritten", last, keyed_from, unchecked)
    return VerifyResult(count, None, "", last, keyed_from, unchecked)


def chained(conn: sqlite3.Connection,
            archive: sqlite3.Connection | None = None) -> Iterator[Entry]:
    """The whole chain: the entries ``edged archive`` moved out first, then the live ones
    after them (an entry in both, from an archive run cut short, is read once)."""
    last = 0
    if archive is not None:
        for entry in entries(archive):
            last = entry.seq
            yield entry
    yield from entries(conn, last)


def check_file(conn: sqlite3.Connection, archive: sqlite3.Connection | None,
               key: bytes | None) -> VerifyResult:
    """The chain of a copy of the store (a backup, a restored file) with the key given; with
    none, its keyed entries are checked for their links only (``unchecked``)."""
    return verify(chained(conn, archive), key, links_without_key=key is None)


def check(conn: sqlite3.Connection, expect_head: str | None = None,
          archive: sqlite3.Connection | None = None) -> VerifyResult:
    """:func:`verify` the database's own chain (through its archive, when there is one)
    with its audit key (if there is one)."""
    if not isinstance(conn, StoreConnection):
        raise RuntimeError("audit.check needs a connection from edged.store")
    try:
        key = conn.audit_key(create=False)
    except AuditKeyError as exc:
        return VerifyResult(0, None, str(exc))
    return verify(chained(conn, archive), key.secret if key is not None else None, expect_head)
