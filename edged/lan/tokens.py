"""Bearer tokens for the register API: shown once, stored as a SHA-256 hash.

Scopes (README, the API): ``register`` (payments, orders, stock, reads), ``manager`` (also
resolve, retry and discard, reports, pairing) and ``monitor`` (reads only, for a wall
screen). A revoked token is refused on its very next call: a revocation is committed, then
announced to the daemon, which keeps the tokens it has read (:mod:`edged.lan.token_cache`).
The CLI and pairing keep names unique among the tokens in use, so ``edged token revoke
NAME`` names one. ``last_used_at`` is written at most once a minute per token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from edged.errors import EdgedError
from sync.core.clock import utc_iso

SCOPES = ("register", "manager", "monitor")
PREFIX = "edg_"
LAST_USED_RESOLUTION = timedelta(minutes=1)
READ_METHODS = frozenset({"GET", "HEAD"})


class TokenError(EdgedError):
    """A token cannot be created or revoked as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    name: str
    scope: str
    last_used_at: str | None = None

    @property
    def is_manager(self) -> bool:
        return self.scope == "manager"


def refusal(principal: Principal | None, needed: str | None, method: str) -> str | None:
    """Why ``principal`` may not make a ``method`` call on a route of scope ``needed``."""
    if needed is None:
        return None
    if principal is None:
        return "this call needs a bearer token"
    if needed == "manager" and not principal.is_manager:
        return ("this call needs a token with the manager scope"
                " (edged token create NAME --scope manager)")
    if principal.scope == "monitor" and method not in READ_METHODS:
        return "a monitor token may only read; this call needs a register or manager token"
    return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(conn: sqlite3.Connection, name: str, scope: str = "register",
           now: datetime | None = None) -> str:
    """Store a new token's hash and return the token itself (shown once)."""
    if scope not in SCOPES:
        raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
    if not name.strip() or len(name) > 64 or not name.isprintable():
        raise TokenError("a token name must be 1 to 64 printable characters")
    token = PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokens (name, scope, token_hash, created_at) VALUES (?, ?, ?, ?)",
        (name, scope, hash_token(token), utc_iso(now or datetime.now(UTC))),
    )
    return token


def create_unique(conn: sqlite3.Connection, name: str, scope: str = "register",
                  now: datetime | None = None) -> str:
    """:func:`create`, refused when a token in use has this name (the CLI and pairing)."""
    if name_in_use(conn, name):
        raise TokenError(f"a token named {name!r} is in use; revoke it first"
                         f" (edged token revoke {name}) or choose another name")
    return create(conn, name, scope, now)


def name_in_use(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL",
                        (name,)).fetchone() is not None


def revoke(conn: sqlite3.Connection, name: str, now: datetime | None = None) -> int:
    """Revoke the tokens in use under ``name``; the number revoked (0: none by that name).

    Once committed, :func:`edged.lan.token_cache.announce_revocation` tells a running daemon.
    """
    cur = conn.execute("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                       (utc_iso(now or datetime.now(UTC)), name))
    return cur.rowcount


def listing(conn: sqlite3.Connection, include_revoked: bool = False) -> list[dict[str, Any]]:
    """Name, scope, created, last used (and revoked): never the secret nor its hash."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return [dict(r) for r in conn.execute(
        "SELECT name, scope, created_at, last_used_at, revoked_at FROM tokens"  # noqa: S608
        f"{where} ORDER BY name, id")]


def touch(conn: sqlite3.Connection, principal: Principal, now: datetime) -> Principal:
    """Write this use as the token's last; the principal as it now is."""
    used = utc_iso(now)
    conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (used, principal.token_id))
    return replace(principal, last_used_at=used)


def touch_due(principal: Principal, now: datetime) -> bool:
    """Whether this use should be written (at most once per :data:`LAST_USED_RESOLUTION`)."""
    if principal.last_used_at is None:
        return True
    return now - _parsed(principal.last_used_at) >= LAST_USED_RESOLUTION


@lru_cache(maxsize=64)
def _parsed(stamp: str) -> datetime:
    """A stored time, parsed once (every call of a kept token asks about the same one)."""
    return datetime.fromisoformat(stamp)


def lookup(conn: sqlite3.Connection, token: str) -> Principal | None:
    return lookup_digest(conn, hash_token(token))


def lookup_digest(conn: sqlite3.Connection, digest: str) -> Principal | None:
    """The owner of the token in use whose SHA-256 is ``digest``."""
    row = conn.execute(
        "SELECT id, name, scope, token_hash, last_used_at FROM tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return Principal(row["id"], row["name"], row["scope"], row["last_used_at"])
