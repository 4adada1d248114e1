"""The data folder and the database files are the owner's only, whatever the umask.

The folder is made (or tightened to) 0700, and the database file is made 0600 before SQLite
opens it: SQLite gives its ``-wal`` and ``-shm`` files the database file's mode. Files left
wider by an older version (``make run`` used to leave 0755 and 0644) are tightened at the
next open, with one warning. The keys are 0600 already (:mod:`edged.store.audit_key`,
:mod:`edged.store.secrets`, :mod:`edged.lan.tls`); ``tokens.revoked`` stays readable (0644) so a
daemon running as another user than the CLI reads it, private all the same inside 0700.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    current = stat.S_IMODE(info.st_mode)
    if current & ~mode & 0o777 == 0:
        return
    if info.st_uid != os.geteuid():
        log.warning("%s has mode %04o (group or others may read it) and belongs to another"
                    " user; make it %04o", path, current, mode)
        return
    path.chmod(current & mode)
    log.warning("%s had mode %04o: now %04o (only its owner may read the store)", path,
                current, current & mode)


def secure(db_path: Path) -> None:
    """Make or tighten the data folder (0700) and the database files (0600)."""
    folder = db_path.parent
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(folder, DIR_MODE)
    private_db(db_path)


def private_db(db_path: Path) -> None:
    """Make or tighten an SQLite file and its side files (0600), before SQLite opens it:
    SQLite gives its -wal and -shm the mode of the database file (the archive, a backup)."""
    try:
        fd = os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     FILE_MODE)
    except FileExistsError:
        _tighten(db_path, FILE_MODE)
    else:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask narrows a mode, this sets it
        finally:
            os.close(fd)
    for suffix in SIDE_FILES:
        _tighten(db_path.with_name(db_path.name + suffix), FILE_MODE)
