"""Bearer tokens for the register API: shown once, stored as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from sync.clock import utc_iso

SCOPES = ("register", "manager")
PREFIX = "edg_"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    name: str
    scope: str

    @property
    def is_manager(self) -> bool:
        return self.scope == "manager"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(conn: sqlite3.Connection, name: str, scope: str = "register") -> str:
    """Store a new token's hash and return the token itself (shown once)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    token = PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokens (name, scope, token_hash, created_at) VALUES (?, ?, ?, ?)",
        (name, scope, hash_token(token), utc_iso(datetime.now(UTC))),
    )
    return token


def lookup(conn: sqlite3.Connection, token: str) -> Principal | None:
    digest = hash_token(token)
    row = conn.execute(
        "SELECT id, name, scope, token_hash FROM tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return Principal(row["id"], row["name"], row["scope"])
