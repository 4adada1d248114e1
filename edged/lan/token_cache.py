"""The bearer tokens the daemon has seen, kept in memory until a revocation says otherwise.

Reading a token's row on every call cost about a sixth of the daemon's CPU per cash payment
(bench/README.md). A token is now read once and kept; what makes that safe is the
revocation stamp, a small file beside the database (``tokens.revoked``): every revocation,
from whatever process, writes a new random stamp there once its commit is durable
(:func:`announce_revocation`), and the daemon looks at that file on every call, forgetting
every token it knew as soon as the stamp changed. So a revoked token still fails on its very
next call. The daemon keeps the stamp file open (:class:`StampFile`): a call costs one
``fstat`` of it, which tells whether it was replaced (a revocation's rename leaves the open
file without a name: no link left) or written in place since it was read; only then is the
file opened and read again.

Should a revocation ever be committed without its stamp (the process killed in between, a
manual ``UPDATE``), a token kept longer than :data:`RECHECK_SECONDS` is read again: the
longest such a revocation can go unseen. Only tokens that exist are kept (an unknown one is
read every time and never fills memory), keyed by their SHA-256 digest, never the secret.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
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


def ensure_stamp(path: Path) -> None:
    """An empty stamp (no revocation announced yet) where there is none, so that the daemon
    has a file to keep open from its start. Not synced: lost in a power cut, a missing
    stamp means the same as an empty one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
    except OSError:  # there is one (or the directory is not ours: read per call then)
        return
    try:
        os.fchmod(fd, 0o644)  # as announce_revocation writes it: another user may read it
    finally:
        os.close(fd)


class StampFile:
    """The revocation stamp as it is now, kept open while it is a regular file.

    :meth:`read` costs one ``fstat`` of the open file while nobody touched it. A revocation
    replaces the file by a rename, which leaves the one held open with no link; a write in
    place changes its modification time or size: either way the file is opened and read
    again. Anything but a regular file (a FIFO put there, a directory) is opened, read and
    closed on every call, never blocking.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._seen: tuple[int, int, int] = (0, 0, 0)  # mtime, ctime (ns) and size read
        self._stamp = b""

    def read(self) -> bytes | None:
        """The stamp; empty while no revocation was ever announced, ``None`` when it cannot
        be read (then nothing may be kept)."""
        fd = self._fd
        if fd is not None:
            try:
                now = os.fstat(fd)
            except OSError:
                now = None
            if now is not None and now.st_nlink > 0 and \
                    (now.st_mtime_ns, now.st_ctime_ns, now.st_size) == self._seen:
                return self._stamp
            self.close()
        return self._open()

    def _open(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return b""
        except OSError:
            return None
        kept = False
        try:
            before = os.fstat(fd)  # before the read: a write in between is seen next time
            stamp = os.read(fd, 64)
            if stat.S_ISREG(before.st_mode):
                self._fd, self._stamp, kept = fd, stamp, True
                self._seen = (before.st_mtime_ns, before.st_ctime_ns, before.st_size)
            return stamp
        except OSError:
            return None
        finally:
            if not kept:
                os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        self._stamp_file = StampFile(stamp)
        self._recheck = recheck_seconds
        self._stamp: bytes | None = b""
        self._kept: dict[str, _Kept] = {}

    def check(self) -> bytes | None:
        """Read the stamp; forget every kept token if it changed. Returns the stamp read
        (``None``: unreadable, so every token is read from the table until it is again)."""
        stamp = self._stamp_file.read()
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

    def close(self) -> None:
        """Let go of the stamp file (a stopped daemon)."""
        self._stamp_file.close()

    def __len__(self) -> int:
        return len(self._kept)
