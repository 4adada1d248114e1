"""Pairing: a register gets its token with a short one-time code instead of a copied secret.

``edged pair`` (a separate process) stores a code, hashed with its own salt, in the
``pairing_codes`` table; the daemon's ``POST /v1/pair {"code", "name"}`` trades it for a
new token, once. A code lives :data:`CODE_TTL` and works once. Wrong codes are counted per
client address by :class:`PairingGuard`: after :data:`MAX_WRONG` of them in
:data:`WINDOW_SECONDS`, that address gets 429 until the window has passed, whatever it
sends; past :data:`MAX_WRONG_TOTAL` wrong codes from all addresses together pairing pauses
for everyone. With 10 characters of a 32-letter alphabet (50 bits) guessing is hopeless.
Every code made and every pairing is audited; codes and tokens are never logged.
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

from edged import audit, tokens
from edged.errors import EdgedError
from sync.clock import Clock, utc_iso

ALPHABET: Final = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read aloud safely
CODE_LENGTH: Final = 10
CODE_TTL: Final = timedelta(minutes=5)
PAIR_SCOPES: Final = ("register", "manager")
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


def _digest(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{normalize(code)}".encode()).hexdigest()


def create(conn: sqlite3.Connection, scope: str, name: str | None, now: datetime,
           actor: str = "cli") -> str:
    """Store a new code (hashed) in the caller's transaction; return it, shown once."""
    if scope not in PAIR_SCOPES:
        raise PairingError("ERR-1005", f"scope must be one of {', '.join(PAIR_SCOPES)}")
    if name is not None and tokens.name_in_use(conn, name):
        raise PairingError("ERR-5013", f"a token named {name!r} is in use; revoke it first"
                           f" (edged token revoke {name}) or choose another name")
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    salt = secrets.token_hex(16)
    expires = now + CODE_TTL
    conn.execute(
        "INSERT INTO pairing_codes (salt, code_hash, name, scope, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (salt, _digest(salt, raw), name, scope, utc_iso(now), utc_iso(expires)))
    audit.append(conn, actor, "pairing.code_created", name or "-",
                 {"scope": scope, "expires_at": utc_iso(expires)}, at=now)
    half = CODE_LENGTH // 2
    return f"{raw[:half]}-{raw[half:]}"


def redeem(conn: sqlite3.Connection, code: str, name: str | None, now: datetime,
           client: str, scopes: tuple[str, ...] = PAIR_SCOPES) -> Paired | None:
    """Trade a live code for a new token in the caller's transaction; None if no code matches.

    Every live code is compared (each has its own salt) with :func:`hmac.compare_digest`.
    A right code whose scope is not in ``scopes`` raises :class:`PairingError` (ERR-5003)
    and stays unused.
    """
    rows = conn.execute(
        "SELECT id, salt, code_hash, name, scope FROM pairing_codes"
        " WHERE used_at IS NULL AND expires_at > ?", (utc_iso(now),)).fetchall()
    match = None
    for row in rows:
        if hmac.compare_digest(_digest(row["salt"], code), row["code_hash"]):
            match = row
    if match is None:
        return None
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
    if used.rowcount != 1:  # pragma: no cover  (one writer; kept as a guard)
        raise RuntimeError("a pairing code was used twice")
    audit.append(conn, f"pairing:{client}", "token.paired", token_name,
                 {"scope": match["scope"], "client": client, "code_id": match["id"]}, at=now)
    return Paired(token, token_name, match["scope"])


@dataclass
class PairingGuard:
    """Counts wrong codes per client address (and in all) over a sliding window."""

    clock: Clock
    max_wrong: int = MAX_WRONG
    max_wrong_total: int = MAX_WRONG_TOTAL
    window: float = WINDOW_SECONDS
    max_clients: int = 10000
    _wrong: dict[str, deque[float]] = field(default_factory=dict)
    _all: deque[float] = field(default_factory=deque)

    def _trim(self, stamps: deque[float], now: float) -> None:
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()

    def retry_after(self, client: str) -> int | None:
        """Seconds this client must wait before trying a code, or None if it may try now."""
        now = self.clock.monotonic()
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.max_wrong_total:
            waits.append(self._all[0] + self.window - now)
        stamps = self._wrong.get(client)
        if stamps is not None:
            self._trim(stamps, now)
            if len(stamps) >= self.max_wrong:
                waits.append(stamps[0] + self.window - now)
            elif not stamps:
                del self._wrong[client]
        return max(1, math.ceil(max(waits))) if waits else None

    def wrong(self, client: str) -> int:
        """Record a wrong code; return how many this client has left in the window."""
        now = self.clock.monotonic()
        if len(self._wrong) >= self.max_clients and client not in self._wrong:
            self._wrong.clear()  # bounded memory; the global count still holds
        stamps = self._wrong.setdefault(client, deque())
        stamps.append(now)
        self._all.append(now)
        return max(0, self.max_wrong - len(stamps))


def utc_now() -> datetime:
    return datetime.now(UTC)
