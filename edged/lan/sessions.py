"""Status-page sessions: a manager token traded for a cookie, stored hashed, that expires.

A manager pairing code (``edged pair --scope manager``) signs in too: it is redeemed as
``POST /v1/pair`` would (a new named token, once) and the session is bound to that token,
in one transaction; the token itself never leaves the box.

The browser keeps only a random session id (an HttpOnly cookie); the database keeps its
SHA-256, the token it came from and when it expires. A session lives only as long as its
token: a revoked token's sessions stop working at their next request.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from edged.lan import pairing, tokens
from edged.store import Database
from sync.core.clock import Clock, utc_iso

SIGN_IN_SCOPES = ("manager", "monitor")


@dataclass(frozen=True, slots=True)
class NewSession:
    session_id: str  # goes to the browser once, never stored
    principal: tokens.Principal
    expires_at: str


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _open(conn: sqlite3.Connection, principal: tokens.Principal, session_id: str,
          now: datetime, expires: str) -> NewSession:
    conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (utc_iso(now),))
    conn.execute("INSERT INTO sessions (id_hash, token_id, created_at, expires_at)"
                 " VALUES (?, ?, ?, ?)",
                 (_hash(session_id), principal.token_id, utc_iso(now), expires))
    return NewSession(session_id, principal, expires)


class SessionStore:
    def __init__(self, db: Database, clock: Clock, minutes: int) -> None:
        self._db = db
        self._clock = clock
        self._lifetime = timedelta(minutes=minutes)

    @staticmethod
    def digest(session_id: str) -> str:
        """What the database keeps of a session id (and what its streams are known by)."""
        return _hash(session_id)

    @property
    def lifetime_seconds(self) -> int:
        return int(self._lifetime.total_seconds())

    async def sign_in(self, token: str) -> NewSession | tokens.Principal | None:
        """A new session for a manager (or monitor) token; the principal when its scope
        may not sign in; None when the token is unknown or revoked."""
        now: datetime = self._clock.now()
        session_id = secrets.token_urlsafe(32)
        expires = utc_iso(now + self._lifetime)

        def write(conn: sqlite3.Connection) -> NewSession | tokens.Principal | None:
            principal = tokens.lookup(conn, token)
            if principal is None or principal.scope not in SIGN_IN_SCOPES:
                return principal
            return _open(conn, principal, session_id, now, expires)

        return await self._db.write(write)

    async def sign_in_with_code(self, proof: str, name: str | None, client: str,
                                fingerprint: str) -> NewSession | pairing.Miss:
        """Redeem a manager pairing code, proven for ``fingerprint`` (the certificate
        served), and open a session on the new token, at once; a :class:`pairing.Miss` when
        no live code matches. Raises :class:`pairing.PairingError` (nothing used up) for a
        register code or a name in use."""
        now: datetime = self._clock.now()
        session_id = secrets.token_urlsafe(32)
        expires = utc_iso(now + self._lifetime)

        def write(conn: sqlite3.Connection) -> NewSession | pairing.Miss:
            paired = pairing.redeem(conn, proof, name, now, client, fingerprint,
                                    scopes=SIGN_IN_SCOPES)
            if isinstance(paired, pairing.Miss):
                return paired
            principal = tokens.lookup(conn, paired.token)
            if principal is None:  # pragma: no cover  (made just above)
                raise RuntimeError("a paired token is not found")
            return _open(conn, principal, session_id, now, expires)

        return await self._db.write(write)

    async def lookup(self, session_id: str) -> tuple[tokens.Principal, str] | None:
        """(the principal, expires_at) of a live session whose token is not revoked."""
        digest = _hash(session_id)
        now = utc_iso(self._clock.now())

        def read(conn: sqlite3.Connection) -> tuple[tokens.Principal, str] | None:
            row = conn.execute(
                "SELECT t.id, t.name, t.scope, s.expires_at FROM sessions s"
                " JOIN tokens t ON t.id = s.token_id"
                " WHERE s.id_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
                (digest, now)).fetchone()
            if row is None:
                return None
            return tokens.Principal(row[0], row[1], row[2]), row[3]

        return await self._db.read(read)

    async def sign_out(self, session_id: str) -> None:
        digest = _hash(session_id)
        await self._db.write(lambda c: c.execute("DELETE FROM sessions WHERE id_hash = ?",
                                                 (digest,)))
