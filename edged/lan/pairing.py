"""Pairing: a register gets its token with a short one-time code instead of a copied secret.

``edged pair`` (a separate process) makes a code and binds it to the certificate the daemon
serves: it stores, salted and hashed, the *proof* ``HMAC-SHA256(key=code, msg=fingerprint)``
(the code upper case without its dash, the SHA-256 fingerprint as 64 lower-case hex digits;
without TLS the fingerprint is empty) and the fingerprint itself. The register proves the
code together with the fingerprint it pinned: ``POST /v1/pair {"proof", "name"}``. The
daemon takes a proof only for codes bound to the certificate it serves itself, so the code
never travels, and a device that answered mDNS first (its own certificate pinned by the
register) receives a proof that is worthless at the real daemon. A code lives
:data:`CODE_TTL` and works once; ``{"code"}`` (the old shape, replayable by such a device) is
refused with ERR-5030 and leaves the code unused.

Wrong proofs are counted per client address by :class:`PairingGuard` *before* anything is
awaited, one attempt per address at a time: after :data:`MAX_WRONG` in
:data:`WINDOW_SECONDS` that address gets 429 until the window has passed; past
:data:`MAX_WRONG_TOTAL` from all addresses together (each counting at most
:data:`MAX_WRONG`, so no single address can) pairing pauses for everyone. A right code that
lost a race to another redemption is "already used", not a wrong code. With 10 characters
of a 32-letter alphabet (50 bits) guessing is hopeless. Every code made and every pairing
is audited; codes, proofs and tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from edged.errors import EdgedError
from edged.lan import tokens
from edged.store import audit
from sync.core.clock import Clock, utc_iso

ALPHABET: Final = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud safely
CODE_LENGTH: Final = 10
CODE_TTL: Final = timedelta(minutes=5)
PAIR_SCOPES: Final = ("register", "manager")
PROOF_LENGTH: Final = 64  # hex digits of an HMAC-SHA256
MAX_WRONG: Final = 5
MAX_WRONG_TOTAL: Final = 50
WINDOW_SECONDS: Final = 300.0


class PairingError(EdgedError):
    """The code was right but the pairing cannot be done as asked; nothing was used up."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Paired:
    token: str
    name: str
    scope: str


def normalize(code: str) -> str:
    """Upper case without separators: what a person types as ``abcde-fghjk`` still counts."""
    return "".join(ch for ch in code.upper() if ch not in "- \t")


def proof(code: str, fingerprint: str) -> str:
    """What a register sends instead of the code: ``HMAC-SHA256(key=code, msg=fingerprint)``
    in hex, the code normalized (:func:`normalize`), the fingerprint the SHA-256 of the
    certificate it pinned as 64 lower-case hex digits ("" when the daemon has no TLS)."""
    return hmac.new(normalize(code).encode("utf-8"), fingerprint.strip().lower().encode(),
                    hashlib.sha256).hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """The first 8 bytes of a fingerprint as a person compares them: ``3F:2A:…:12``;
    ``"none (no TLS)"`` without one."""
    digits = fingerprint.strip().upper()[:16]
    if not digits:
        return "none (no TLS)"
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def _digest(salt: str, proven: str) -> str:
    return hashlib.sha256(f"{salt}:{proven.lower()}".encode()).hexdigest()


def create(conn: sqlite3.Connection, scope: str, name: str | None, now: datetime,
           actor: str = "cli", fingerprint: str = "") -> str:
    """Store a new code bound to ``fingerprint`` (the certificate the daemon serves, "" for
    none) in the caller's transaction: only a salted hash of its proof is kept. Return the
    code, shown once."""
    if scope not in PAIR_SCOPES:
        raise PairingError("ERR-1005", f"scope must be one of {', '.join(PAIR_SCOPES)}")
    if name is not None and tokens.name_in_use(conn, name):
        raise PairingError("ERR-5013", f"a token named {name!r} is in use; revoke it first"
                           f" (edged token revoke {name}) or choose another name")
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    salt = secrets.token_hex(16)
    expires = now + CODE_TTL
    fingerprint = fingerprint.strip().lower()
    conn.execute(
        "INSERT INTO pairing_codes (salt, code_hash, name, scope, created_at, expires_at,"
        " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (salt, _digest(salt, proof(raw, fingerprint)), name, scope, utc_iso(now),
         utc_iso(expires), fingerprint))
    audit.append(conn, actor, "pairing.code_created", name or "-",
                 {"scope": scope, "expires_at": utc_iso(expires),
                  "fingerprint": fingerprint}, at=now)
    half = CODE_LENGTH // 2
    return f"{raw[:half]}-{raw[half:]}"


@dataclass(frozen=True, slots=True)
class Miss:
    """No live code matched the proof: why, as far as the daemon can tell."""

    used: bool = False
    """The proof is right but its code was already used (a lost race): not a wrong code."""
    other_certificate: bool = False
    """Live codes exist, but for another certificate than the one served (the code was
    made with another configuration, or the certificate was renewed since)."""


def redeem(conn: sqlite3.Connection, proven: str, name: str | None, now: datetime,
           client: str, fingerprint: str = "",
           scopes: tuple[str, ...] = PAIR_SCOPES) -> Paired | Miss:
    """Trade a live code, proven for ``fingerprint`` (the certificate this daemon serves),
    for a new token in the caller's transaction; a :class:`Miss` when none matches.

    Every live code bound to ``fingerprint`` is compared (each has its own salt) with
    :func:`hmac.compare_digest`. A right code whose scope is not in ``scopes`` raises
    :class:`PairingError` (ERR-5003) and stays unused.
    """
    fingerprint = fingerprint.strip().lower()
    rows = conn.execute(
        "SELECT id, salt, code_hash, name, scope, used_at FROM pairing_codes"
        " WHERE expires_at > ? AND fingerprint = ?", (utc_iso(now), fingerprint)).fetchall()
    match = None
    for row in rows:
        if hmac.compare_digest(_digest(row["salt"], proven), row["code_hash"]):
            match = row
    if match is None:
        other = conn.execute(
            "SELECT 1 FROM pairing_codes WHERE used_at IS NULL AND expires_at > ?"
            " AND fingerprint IS NOT NULL AND fingerprint != ? LIMIT 1",
            (utc_iso(now), fingerprint)).fetchone()
        return Miss(other_certificate=other is not None)
    if match["used_at"] is not None:
        return Miss(used=True)
    if match["scope"] not in scopes:
        raise PairingError("ERR-5003", f"a {match['scope']} pairing code cannot sign in to the"
                           " status page; the code is still unused (pair the register with"
                           " it), or make one with edged pair --scope manager")
    token_name = match["name"] or name
    if not token_name:
        raise PairingError("ERR-1003", "body.name is required: the name of this register's"
                           " token (the code was made without edged pair --name)")
    if tokens.name_in_use(conn, token_name):
        raise PairingError("ERR-5013", f"a token named {token_name!r} is in use; pair under"
                           " another name, or revoke that token first")
    token = tokens.create(conn, token_name, match["scope"], now)
    token_id = conn.execute("SELECT id FROM tokens WHERE token_hash = ?",
                            (tokens.hash_token(token),)).fetchone()[0]
    used = conn.execute("UPDATE pairing_codes SET used_at = ?, token_id = ?"
                        " WHERE id = ? AND used_at IS NULL",
                        (utc_iso(now), token_id, match["id"]))
    if used.rowcount != 1:  # pragma: no cover  (one writer, read above in this transaction)
        raise RuntimeError("a pairing code was used twice")
    audit.append(conn, f"pairing:{client}", "token.paired", token_name,
                 {"scope": match["scope"], "client": client, "code_id": match["id"]}, at=now)
    return Paired(token, token_name, match["scope"])


class Busy(EdgedError):
    """This address has a pairing attempt under way (one at a time)."""


@dataclass(eq=False, slots=True)
class Attempt:
    """One pairing attempt, counted as a wrong code until :meth:`PairingGuard.end` says
    otherwise."""

    client: str
    stamp: float


@dataclass
class PairingGuard:
    """Counts wrong codes per client address (and in all) over a sliding window.

    An attempt is counted (as wrong) by :meth:`begin`, before anything is awaited, and
    uncounted by :meth:`end` if it was right or lost a race: so concurrent attempts cannot
    all be checked before the first is counted. One attempt per address at a time.
    """

    clock: Clock
    max_wrong: int = MAX_WRONG
    max_wrong_total: int = MAX_WRONG_TOTAL
    window: float = WINDOW_SECONDS
    max_clients: int = 10000
    _wrong: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[tuple[float, str]] = field(default_factory=deque)
    _trying: set[str] = field(default_factory=set)

    def _trim(self, now: float) -> None:
        while self._all and self._all[0][0] <= now - self.window:
            self._all.popleft()
        for client in [c for c, s in self._wrong.items() if not s or s[-1] <= now - self.window]:
            del self._wrong[client]

    def _stamps(self, client: str, now: float) -> deque[float]:
        stamps = self._wrong.get(client, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def retry_after(self, client: str) -> int | None:
        """Seconds this client must wait before trying a code, or None if it may try now."""
        now = self.clock.monotonic()
        self._trim(now)
        waits = []
        if len(self._all) >= self.max_wrong_total:
            waits.append(self._all[0][0] + self.window - now)
        stamps = self._stamps(client, now)
        if len(stamps) >= self.max_wrong:
            waits.append(stamps[0] + self.window - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def begin(self, client: str) -> Attempt:
        """Count an attempt from ``client`` as a wrong code now; raise :class:`Busy` while
        it has one under way. Call :meth:`retry_after` first."""
        if client in self._trying:
            raise Busy(client)
        now = self.clock.monotonic()
        if len(self._wrong) >= self.max_clients and client not in self._wrong:
            self._wrong.clear()  # bounded memory; the store-wide count still holds
        stamps = self._wrong.setdefault(client, self._stamps(client, now))
        stamps.append(now)
        if len(stamps) <= self.max_wrong:  # one address counts at most max_wrong in all
            self._all.append((now, client))
        self._trying.add(client)
        return Attempt(client, now)

    def end(self, attempt: Attempt, wrong: bool) -> int:
        """The attempt's outcome; how many tries its client has left in the window."""
        self._trying.discard(attempt.client)
        stamps = self._wrong.get(attempt.client)
        if not wrong:
            if stamps is not None and attempt.stamp in stamps:
                stamps.remove(attempt.stamp)
            if (attempt.stamp, attempt.client) in self._all:
                self._all.remove((attempt.stamp, attempt.client))
        return max(0, self.max_wrong - len(stamps or ()))

    def wrong(self, client: str) -> int:
        """Record a wrong code at once (an attempt begun and ended wrong)."""
        self._trying.discard(client)
        return self.end(self.begin(client), wrong=True)


def utc_now() -> datetime:
    return datetime.now(UTC)
