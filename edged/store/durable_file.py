"""Files written outside SQLite that must survive a power cut: one way to write them.

The secrets key, the TLS certificate and its key, the token revocation stamp, backups: each
is written to a temporary file in the same directory (created exclusively, with its final
mode from the start, never wider), flushed with ``fsync``, moved into place in one
``rename`` (or ``link`` when an existing file must win), and the directory is synced so
that the new name itself survives. A reader sees the old file or the new one, never part
of one, before and after a power cut; without the last step a cut right after the rename
can bring back the old file or an empty one (tests/test_power_loss.py shows it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sync_dir(path: Path) -> None:
    """Make the entries of the directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _scratch(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) holding ``data`` with exactly ``mode``, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Put ``data`` at ``path`` (replacing what was there) durably and atomically."""
    tmp = _scratch(path)
    try:
        _write_new(tmp, data, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    sync_dir(path.parent)


def create_file(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` durably unless it exists; False if it did.

    The new file is linked into place, so of two processes creating the same file at once
    exactly one wins and the other reads the winner's file; the name never exists with a
    partial content or a wider mode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch(path)
    try:
        _write_new(tmp, data, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    sync_dir(path.parent)
    return True


def new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (it must not exist) holding ``data``, its name synced too."""
    _write_new(path, data, mode)
    sync_dir(path.parent)


def sync_file(path: Path) -> None:
    """Flush a file another writer made (a backup's copy), and its directory entry."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    sync_dir(path.parent)
