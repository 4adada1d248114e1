"""``edged backup create PATH`` and the daily copy of ``[backup]``: SQLite's online backup.

The copy is made from a read-only connection with the backup API in one step, so it is
one consistent snapshot of the last commits while the daemon goes on writing (in WAL
mode a reader never blocks the writer). It is written beside its final name, switched to
``journal_mode=DELETE`` (one self-contained file), checked with ``PRAGMA integrity_check``
and the audit chain (through the archive, copied with it when there is one), flushed, and
only then renamed into place with its folder synced (``edged.store.durable_file``). A copy that
fails a check never takes a backup's name.

The secrets key is not in the copy (the secrets stay encrypted in it): keep the key apart
(README, "Keeping the secrets key").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from edged.errors import EdgedError
from edged.store import audit, audit_key, durable_file, files

log = logging.getLogger(__name__)

DB_NAME = "edged.db"
ARCHIVE_NAME = "edged-archive.db"
PREFIX = "edged-"
SUFFIX = ".db"


class BackupError(EdgedError):
    """The copy could not be made or did not pass its checks; nothing took its name."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    archive: Path | None
    bytes: int
    audit_entries: int
    payments: int
    seconds: float


def _copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        files.private_db(target)  # a copy of the store is as private as the store
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step: one read snapshot, never restarted by a write
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def archive_path_for(path: Path) -> Path:
    """Where the copy of the archive goes beside a copy at ``path``."""
    return path.with_name(path.stem + "-archive" + (path.suffix or SUFFIX))


def verify_copy(path: Path, archive: Path | None = None,
                key: bytes | None = None) -> tuple[int, int]:
    """(audit entries, payments) of a copy, its chain checked with the audit ``key`` of the
    box it was copied from; :class:`BackupError` when a check fails."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    arch = sqlite3.connect(f"file:{archive}?mode=ro", uri=True) if archive else None
    try:
        for c, name in ((conn, path), (arch, archive)):
            if c is None:
                continue
            ok = c.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise BackupError(f"the copy {name} fails integrity_check: {ok}")
        result = audit.check_file(conn, arch, key)
        if not result.ok:
            raise BackupError(f"the copy {path} has a broken audit chain at entry"
                              f" {result.broken_at}: {result.reason}")
        payments = conn.execute("SELECT count(*) FROM payments").fetchone()[0]
        return result.entries, payments
    finally:
        conn.close()
        if arch is not None:
            arch.close()


def create(data_dir: Path, target: Path) -> BackupResult:
    """Copy the database (and its archive) of ``data_dir`` to ``target``, checked."""
    started = time.monotonic()
    source = data_dir / DB_NAME
    if not source.exists():
        raise BackupError(f"no database at {source} (use --data-dir)")
    if target.exists():
        raise BackupError(f"{target} exists; choose a new name")
    target.parent.mkdir(parents=True, exist_ok=True)
    archive_src = data_dir / ARCHIVE_NAME
    pairs = [(source, target)]
    if archive_src.exists():
        pairs.append((archive_src, archive_path_for(target)))
    scratch = [(s, t.with_name(f".{t.name}.{os.getpid()}.partial"), t) for s, t in pairs]
    try:
        for src, tmp, _ in scratch:
            tmp.unlink(missing_ok=True)
            _copy(src, tmp)
        key = audit_key.load(data_dir)
        entries, payments = verify_copy(scratch[0][1],
                                        scratch[1][1] if len(scratch) > 1 else None,
                                        key.secret if key is not None else None)
        for _, tmp, final in reversed(scratch):  # the archive first: a copy has its archive
            durable_file.sync_file(tmp)
            os.replace(tmp, final)
            durable_file.sync_dir(final.parent)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"the copy to {target} failed: {exc}") from exc
    finally:
        for _, tmp, _ in scratch:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    result = BackupResult(target, archive_path_for(target) if len(pairs) > 1 else None,
                          target.stat().st_size, entries, payments,
                          time.monotonic() - started)
    log.info("backup %s made: %d bytes, %d payments, audit chain of %d entries verified"
             " (%.1f s)", target, result.bytes, payments, entries, result.seconds)
    return result


def scheduled_name(moment: datetime) -> str:
    return f"{PREFIX}{moment.strftime('%Y%m%d-%H%M%S')}{SUFFIX}"


def rotate(folder: Path, keep: int) -> list[Path]:
    """Delete the oldest scheduled copies beyond ``keep`` (with their archives)."""
    copies = sorted(p for p in folder.glob(f"{PREFIX}2*{SUFFIX}")
                    if not p.stem.endswith("-archive"))
    removed = copies[:-keep] if keep else copies
    for p in removed:
        p.unlink(missing_ok=True)
        archive_path_for(p).unlink(missing_ok=True)
    if removed:
        durable_file.sync_dir(folder)
    return removed


def next_run(now: datetime, at: str, zone: str) -> datetime:
    """The next ``at`` (HH:MM in ``zone``) after ``now`` (aware UTC)."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    hour, minute = (int(x) for x in at.split(":"))
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)
    return candidate.astimezone(now.tzinfo)
