"""The bearer tokens the daemon has seen, kept in memory until a revocation says otherwise.

Reading a token's row on every call cost about a sixth of the daemon's CPU per cash payment
(bench/README.md). A token is now read once and kept; what makes that safe is the
revocation stamp, a small file beside the database (``tokens.revoked``): every revocation,
from whatever process, writes a new random stamp there once its commit is durable
(:func:`announce_revocation`), and the daemon reads that file on every call (a few
microseconds: open, read, close), forgetting every token it knew as soon as the stamp
changed. So a revoked token still fails on its very next call.

Should a revocation ever be committed without its stamp (the process killed in between, a
manual ``UPDATE``), a token kept longer than :data:`RECHECK_SECONDS` is read again: the
longest such a revocation can go unseen. Only tokens that exist are kept (an unknown one is
read every time and never fills memory), keyed by their SHA-256 digest, never the secret.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from edged.lan.tokens import Principal
from edged.store import durable_file

log = logging.getLogger(__name__)

STAMP_NAME = "tokens.revoked"
RECHECK_SECONDS = 1.0
"""A kept token is read again once it is this old, stamp or no stamp."""


def stamp_path(db_path: Path) -> Path:
    """The revocation stamp of the database at ``db_path`` (in the same directory)."""
    return db_path.parent / STAMP_NAME


def announce_revocation(db_path: Path) -> None:
    """Tell a running daemon that a token was revoked; call after the revocation's commit.

    The new stamp replaces the old one in one rename, so a reader sees the old or the new,
    never half of one; the file and its directory are synced
    (:func:`edged.store.durable_file.replace_file`), so a power cut right after the revocation
    leaves the new stamp, not an empty file or the old one. Mode 0644: the daemon may run
    as another user than the CLI.
    """
    durable_file.replace_file(stamp_path(db_path),
                              secrets.token_hex(16).encode("ascii"), 0o644)


def read_stamp(path: Path) -> bytes | None:
    """The stamp as it is now; empty while no revocation was ever announced, ``None`` when
    it cannot be read (then nothing may be kept). Never blocks (a FIFO put there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return b""
    except OSError:
        return None
    try:
        return os.read(fd, 64)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Kept:
    principal: Principal
    read_at: float


class PrincipalCache:
    """Principals by token digest, valid while the revocation stamp stays the same.

    Use it as :meth:`check` (once per call, before anything else), :meth:`get`, and on a miss
    :meth:`put` with the stamp :meth:`check` returned, after the read from the table.
    """

    def __init__(self, stamp: Path, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self._stamp_path = stamp
        self._recheck = recheck_seconds
        self._stamp: bytes | None = b""
        self._kept: dict[str, _Kept] = {}

    def check(self) -> bytes | None:
        """Read the stamp; forget every kept token if it changed. Returns the stamp read
        (``None``: unreadable, so every token is read from the table until it is again)."""
        stamp = read_stamp(self._stamp_path)
        if stamp != self._stamp:
            self._kept.clear()
            if stamp is None:
                log.warning("the revocation stamp %s cannot be read: every call reads its"
                            " token from the database until it can", self._stamp_path)
            elif self._stamp is None:
                log.warning("the revocation stamp %s can be read again", self._stamp_path)
            self._stamp = stamp
        return stamp

    def get(self, digest: str, now: float) -> Principal | None:
        kept = self._kept.get(digest)
        if kept is None:
            return None
        if now - kept.read_at >= self._recheck or now < kept.read_at:
            del self._kept[digest]
            return None
        return kept.principal

    def put(self, digest: str, principal: Principal, stamp: bytes | None,
            read_at: float) -> None:
        """Keep a principal read at ``read_at`` under ``stamp``; not if a revocation came
        in between (the row read may predate it), nor while the stamp cannot be read."""
        if stamp is not None and stamp == self._stamp:
            self._kept[digest] = _Kept(principal, read_at)

    def update(self, digest: str, principal: Principal) -> None:
        """Replace a kept principal (its last use written), keeping when it was read."""
        kept = self._kept.get(digest)
        if kept is not None:
            kept.principal = principal

    def __len__(self) -> int:
        return len(self._kept)
