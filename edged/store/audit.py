"""The audit chain: every money movement, override and configuration change, keyed.

Each entry's ``hash`` covers its content and the previous entry's hash, so an edited or
deleted entry breaks the chain. Entries carry a ``version``:

* **3** (every entry written since migration 11): HMAC-SHA256 under the audit key, as
  version 2, but compact: ``hash`` is the MAC's 32 raw bytes (a BLOB, not 64 hex digits),
  and the previous entry's hash is not stored (``prev_hash`` is empty): :func:`verify`
  takes it from the entry before, which it has just checked. The MAC also covers the
  entry's ``seq``, and an entry is appended at the next ``seq`` (the table's primary key),
  so one entry only can follow another: two writers chaining onto the same entry collide
  on the key, which is what the unique index on ``prev_hash`` guarded before (dropped by
  migration 11). Formula: ``HMAC(key, "3" US seq US prev US at US actor US action US
  subject US data)``, US the unit separator ``\\x1f``, ``prev`` the previous entry's hash
  in hex (``GENESIS`` for the first), ``seq`` in decimal.
* **2** (entries written from issue 17 until migration 11): HMAC-SHA256 under the audit key
  with ``prev_hash`` and ``hash`` stored as 64 hex digits. The audit key is kept outside the
  database (:mod:`edged.store.audit_key`): whoever holds the database and not the key can
  neither re-hash an edited chain nor add an entry that verifies.
* **1** (entries written before): plain SHA-256, as they were written. They still verify
  (the same formula), but anyone could have recomputed them; the keyed part starts at the
  first keyed entry (the daemon appends an ``audit.keyed`` entry at its first start with
  the key, so an upgraded chain gets one at once) and no plain entry may follow it.

Old chains verify as they were written: entries are never rewritten, and :func:`verify`
walks every version through one loop, each checked by its own formula, the hex of the
entry before (stored or, for version 3, just computed) being the link into the next. A
chain upgraded by migration 11 is versions 1 and/or 2 followed by version 3.

A tail cut off the chain leaves a shorter chain that verifies: the head (``SEQ:HASH`` of the
last entry, the hash in hex whatever the version) and the count are written to the journal
at every start and in the end-of-day report, and ``edged audit verify --expect-head
SEQ:HASH`` proves that the chain still holds that entry. :func:`verify` takes any iterable
of entries (the database's, an archive's followed by the database's), in order.
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
COMPACT: Final = 3
KEYED_VERSIONS: Final = frozenset({KEYED, COMPACT})
KEYED_MARKER: Final = "audit.keyed"


def _material(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> bytes:
    return "\x1f".join((prev, at, actor, action, subject, data)).encode("utf-8")


def _plain(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> str:
    return hashlib.sha256(_material(prev, at, actor, action, subject, data)).hexdigest()


def _keyed(key: bytes, prev: str, at: str, actor: str, action: str, subject: str,
           data: str) -> str:
    material = b"2\x1f" + _material(prev, at, actor, action, subject, data)
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def _compact(key: bytes, seq: int, prev: str, at: str, actor: str, action: str,
             subject: str, data: str) -> bytes:
    material = b"3\x1f" + _material(f"{seq}\x1f{prev}", at, actor, action, subject, data)
    return hmac.new(key, material, hashlib.sha256).digest()


def _hex(value: str | bytes) -> str:
    """A stored hash as hex: version 3 keeps raw bytes, versions 1 and 2 hex text."""
    return value.hex() if isinstance(value, bytes) else value


def key_of(conn: sqlite3.Connection) -> AuditKey:
    """The audit key of the database ``conn`` is open on (made on first use)."""
    if not isinstance(conn, StoreConnection):
        raise RuntimeError("the audit chain needs a connection from edged.store (it knows"
                           " where the audit key is)")
    return conn.audit_key()


def append(conn: sqlite3.Connection, actor: str, action: str, subject: str,
           data: dict[str, Any], at: datetime | None = None) -> None:
    """Append one keyed entry; call inside the write transaction of the change it records.

    Reading the last entry and inserting the next must be one transaction: SQLite runs
    write transactions one at a time (a transaction that read an older snapshot cannot
    write), and the new entry takes the next ``seq``, so two writers can never both chain
    onto the same entry (the second would collide on the primary key).
    """
    if not conn.in_transaction:
        raise RuntimeError("audit.append needs the caller's write transaction")
    key = key_of(conn)
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, _hex(row[1])) if row else (1, GENESIS)
    stamp = utc_iso(at or datetime.now(UTC))
    body = jsoncodec.canonical(data)  # hashed as stored: verify never re-encodes it
    conn.execute(
        "INSERT INTO audit (seq, at, actor, action, subject, data, prev_hash, hash, version)"
        " VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)",
        (seq, stamp, actor, action, subject, body,
         _compact(key.secret, seq, prev, stamp, actor, action, subject, body), COMPACT),
    )


REPLACED_MARKER: Final = "audit.key_replaced"


def ensure_keyed(conn: sqlite3.Connection, *, replace_lost_key: bool = False) -> bool:
    """Start the keyed part of a chain that has none yet (empty, or all plain): one
    ``audit.keyed`` entry. True when it was appended.

    A chain that has keyed entries needs the key they were made with: a box restored
    without its ``audit.key`` would otherwise make a new key at its first write, and every
    keyed entry before it could never be verified again, unseen. So it refuses
    (:class:`AuditKeyError`, the daemon does not start) until the key is put back, unless
    ``replace_lost_key`` (``edged run --replace-lost-audit-key``): a new key, and an
    ``audit.key_replaced`` entry that says from where on the chain is keyed by it.
    """
    row = conn.execute("SELECT seq, version FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is not None and row[1] in KEYED_VERSIONS:
        if not isinstance(conn, StoreConnection) or conn.audit_key(False) is not None:
            return False
        where = conn.data_dir / "audit.key"
        if not replace_lost_key:
            raise AuditKeyError(
                f"the audit chain holds keyed entries (the last is {row[0]}) and its key is"
                f" not there: put back {where} (mode 0600) from where it was backed up, or"
                " the replica's copy (`[replica] include_secrets_key`), then start again."
                " A lost key cannot be made again: `edged run --replace-lost-audit-key`"
                " starts a new one; `edged audit verify` then checks the entries made"
                " before it for their links only")
        append(conn, "daemon", REPLACED_MARKER, "audit",
               {"last_entry_of_the_lost_key": row[0], "key": str(key_of(conn).source)})
        return True
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
    """As stored: empty for version 3 (the previous entry's hash is derived)."""
    hash: str
    """In hex, whatever the version."""
    version: int = PLAIN


def entries(conn: sqlite3.Connection, after_seq: int = 0) -> Iterator[Entry]:
    """The entries of ``conn`` (the database or an archive) after ``after_seq``, oldest
    first."""
    for row in conn.execute("SELECT seq, at, actor, action, subject, data, prev_hash, hash,"
                            " version FROM audit WHERE seq > ? ORDER BY seq", (after_seq,)):
        seq, at, actor, action, subject, data, prev_hash, digest, version = tuple(row)
        yield Entry(seq, at, actor, action, subject, data, _hex(prev_hash), _hex(digest),
                    version)


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    entries: int

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def head(conn: sqlite3.Connection) -> Head | None:
    """The last entry (what the journal and the end-of-day report name) and how many the
    file holds.

    The count is the span of ``seq`` (two lookups, not a walk over every entry): entries
    are appended at the next ``seq`` and only a prefix ever moves to the archive, so in a
    chain that verifies the numbers run without a gap.
    """
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return None
    first = conn.execute("SELECT seq FROM audit ORDER BY seq LIMIT 1").fetchone()[0]
    return Head(row[0], _hex(row[1]), row[0] - first + 1)


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


_NO_KEY = ("keyed entries, and no audit key to check them (the daemon's DATA_DIR/audit.key,"
           " or its systemd credential edged-audit.key in $CREDENTIALS_DIRECTORY)")
_UNLINKED = "it does not follow the entry before it (one was removed, inserted or edited)"


def verify(chain: Iterable[Entry], key: bytes | None,
           expect_head: str | None = None, *, links_without_key: bool = False,
           lost_key_before: int | None = None) -> VerifyResult:
    """Walk ``chain`` (oldest first): every link, every hash or MAC, no plain entry after
    the keyed part began, keyed entries only with the key; with ``expect_head`` (a head the
    journal or a report named), that entry must still be in the chain.

    The link: a version 1 or 2 entry stores the previous entry's hash, which must be the
    hash of the entry before it in the walk; a version 3 entry must come at the next
    ``seq``, and its MAC covers the hash of the entry before it in the walk, so an entry
    removed, inserted or edited before it fails its MAC.

    ``links_without_key`` (a box restored without its key): with no key, keyed entries are
    checked for their links only (version 3: the next ``seq``) and counted in
    ``unchecked``; whoever holds the key checks their MACs later with ``edged audit verify``.

    ``lost_key_before`` (the last ``audit.key_replaced`` entry, :func:`lost_key_at`): the
    keyed entries before it were made with a key that was lost; they are checked for their
    links only and counted in ``unchecked``. The replacing entry's own MAC, under the key
    at hand, covers the hash of the last of them, so none of them can change unseen after.

    With a key at hand, a chain that holds entries but no keyed one fails: the daemon
    starts the keyed part at its first start with the key, so such a chain was rewritten
    without it (or the daemon has not started since the key was made: start it once).
    """
    want_seq, want_hash = parse_head(expect_head) if expect_head else (None, "")
    seen_expected = False
    prev, prev_seq, count, keyed_from, last, unchecked = GENESIS, 0, 0, None, "", 0

    def broken(entry: Entry, why: str) -> VerifyResult:
        return VerifyResult(count, entry.seq, why, last, keyed_from, unchecked)

    for entry in chain:
        if entry.version == COMPACT:
            if entry.seq != prev_seq + 1:
                return broken(entry, _UNLINKED)
        elif entry.prev_hash != prev:
            return broken(entry, _UNLINKED)
        if entry.version == PLAIN:
            if keyed_from is not None:
                return broken(entry, "a plain entry after the keyed part began")
            digest = _plain(entry.prev_hash, entry.at, entry.actor, entry.action,
                            entry.subject, entry.data)
        elif entry.version in KEYED_VERSIONS and (
                (key is None and links_without_key)
                or (lost_key_before is not None and entry.seq < lost_key_before)):
            keyed_from = entry.seq if keyed_from is None else keyed_from
            unchecked += 1
            digest = entry.hash
        elif entry.version in KEYED_VERSIONS:
            if key is None:
                return broken(entry, _NO_KEY)
            keyed_from = entry.seq if keyed_from is None else keyed_from
            digest = (_keyed(key, prev, entry.at, entry.actor, entry.action, entry.subject,
                             entry.data) if entry.version == KEYED else
                      _compact(key, entry.seq, prev, entry.at, entry.actor, entry.action,
                               entry.subject, entry.data).hex())
        else:
            return broken(entry, f"unknown version {entry.version}")
        if not hmac.compare_digest(digest.encode(), entry.hash.encode()):
            return broken(entry, "its content does not match its hash (edited, or hashed"
                                 " again without the key; for a compact entry also: an entry"
                                 " before it removed, inserted or edited)")
        prev, prev_seq, count = entry.hash, entry.seq, count + 1
        last = f"{entry.seq}:{entry.hash}"
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


def lost_key_at(conn: sqlite3.Connection) -> int | None:
    """The ``seq`` of the last ``audit.key_replaced`` entry, if a lost key was replaced."""
    row = conn.execute("SELECT max(seq) FROM audit WHERE action = ?",
                       (REPLACED_MARKER,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def check_file(conn: sqlite3.Connection, archive: sqlite3.Connection | None,
               key: bytes | None) -> VerifyResult:
    """The chain of a copy of the store (a backup, a restored file) with the key given; with
    none, its keyed entries are checked for their links only (``unchecked``)."""
    return verify(chained(conn, archive), key, links_without_key=key is None,
                  lost_key_before=lost_key_at(conn))


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
    return verify(chained(conn, archive), key.secret if key is not None else None, expect_head,
                  lost_key_before=lost_key_at(conn))
