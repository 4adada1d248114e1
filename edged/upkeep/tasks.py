"""The daemon's housekeeping, supervised: retention, the file's size, free space, backups,
the replica. Each is a background task under one :class:`sync.core.supervisor.Supervisor` (a
crash is logged once, the task restarts with backoff, ``/v1/sync`` lists it under
``tasks``); :meth:`Upkeep.status` is the ``storage`` part of ``/v1/status`` and
:meth:`Upkeep.conditions` feeds the alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edged.config import Config
from edged.ops.metrics import Metrics
from edged.store import Database, StoreFull, storage
from edged.upkeep import backup
from edged.upkeep.retention import Retention
from sync.core.clock import Clock, utc_iso
from sync.core.supervisor import Supervisor, TaskStatus

log = logging.getLogger(__name__)

MB = 1 << 20


@dataclass(frozen=True, slots=True)
class Alarm:
    """A condition for ``edged.ops.alerts`` (key, kind, severity, subject, message)."""

    key: str
    kind: str
    severity: str
    subject: str | None
    message: str


@dataclass
class BackupState:
    last_at: str | None = None
    last_path: str | None = None
    last_error: str | None = None
    next_at: str | None = None


class Upkeep:
    def __init__(self, cfg: Config, db: Database, clock: Clock) -> None:
        self.cfg = cfg
        self.db = db
        self.clock = clock
        self.supervisor = Supervisor(clock)
        self.retention = Retention(cfg, db, clock)
        self.guard = storage.SpaceGuard(cfg.data_dir, int(cfg.storage.min_free_mb * MB))
        self.backup_state = BackupState()
        self.replicator: Any = None
        self.vacuumed_pages = 0
        self._sizes: storage.FileSizes | None = None

    async def start(self, credentials: dict[str, str] | None = None) -> None:
        self.guard.check()
        self.db.space_low = self.guard.low
        sup = self.supervisor
        sup.start("retention", self.retention.run)
        sup.start("storage", self._storage_loop)
        if self.cfg.backup is not None:
            sup.start("backup", self._backup_loop)
        if self.cfg.replica is not None:
            from edged.upkeep.replica import Replicator  # noqa: PLC0415

            self.replicator = Replicator(self.cfg.replica, self.cfg.data_dir, self.clock,
                                         self.db.wal_max_bytes, credentials)
            sup.start("replica", self.replicator.run, on_crash=self.replicator.stop)

    async def stop(self) -> None:
        await self.supervisor.stop(grace=5.0)
        if self.replicator is not None:
            await self.replicator.stop()

    def tasks(self) -> list[TaskStatus]:
        return self.supervisor.status()

    # -- the file -------------------------------------------------------------------------

    async def _storage_loop(self) -> None:
        """Free space every ``check_seconds``; an incremental vacuum every
        ``vacuum_minutes``; the sizes for the status page and the metrics."""
        st = self.cfg.storage
        since_vacuum = st.vacuum_minutes * 60  # a vacuum at start
        while True:
            self.db.space_low = self.guard.check()
            if since_vacuum >= st.vacuum_minutes * 60:
                with contextlib.suppress(StoreFull):  # logged once by the store
                    await self.vacuum()
                since_vacuum = 0.0
            self._sizes = await self.db.read(lambda c: storage.sizes(c, self.db.path))
            await self.clock.sleep(st.check_seconds)
            since_vacuum += st.check_seconds

    async def vacuum(self) -> int:
        """Give the file's free pages back, ``vacuum_pages`` per write."""
        freed = 0
        while True:
            step = await self.db.write(lambda c: storage.vacuum_step(
                c, self.cfg.storage.vacuum_pages))
            freed += step.freed_pages
            if step.freed_pages == 0 or step.free_pages_left == 0:
                break
            await asyncio.sleep(0)
        if freed:
            log.info("incremental vacuum: %d pages given back to the file system", freed)
        self.vacuumed_pages += freed
        return freed

    # -- backups --------------------------------------------------------------------------

    async def _backup_loop(self) -> None:
        assert self.cfg.backup is not None
        conf = self.cfg.backup
        folder = Path(conf.dir)
        while True:
            due = backup.next_run(self.clock.now(), conf.at, self.cfg.manager.timezone)
            self.backup_state.next_at = utc_iso(due)
            await self.clock.sleep(max(0.0, (due - self.clock.now()).total_seconds()))
            await self.backup_now(folder, conf.keep, due)

    async def backup_now(self, folder: Path, keep: int, due: datetime | None = None,
                         ) -> Path | None:
        """One copy named after when it was due (now by default), then the rotation."""
        target = folder / backup.scheduled_name(due or self.clock.now())
        try:
            result = await asyncio.to_thread(backup.create, self.cfg.data_dir, target)
        except backup.BackupError as exc:
            self.backup_state.last_error = str(exc)
            log.error("the scheduled backup failed: %s", exc)
            return None
        self.backup_state.last_at = utc_iso(self.clock.now())
        self.backup_state.last_path = str(result.path)
        self.backup_state.last_error = None
        removed = await asyncio.to_thread(backup.rotate, folder, keep)
        if removed:
            log.info("backups rotated: removed %s", ", ".join(p.name for p in removed))
        return result.path

    # -- what the page, the metrics and the alerts read ------------------------------------

    def status(self) -> dict[str, Any]:
        s = self._sizes
        out: dict[str, Any] = {
            "database_bytes": storage.file_size(self.db.path),
            "wal_bytes": storage.file_size(storage.wal_path(self.db.path)),
            "wal_peak_bytes": self.db.wal_peak_bytes,
            "wal_max_bytes": self.db.wal_max_bytes,
            "free_pages": s.free_pages if s else None,
            "free_disk_bytes": self.guard.free,
            "min_free_bytes": self.guard.min_free_bytes,
            "space_low": self.guard.low,
            "retention": {"deleted_since_start": dict(self.retention.totals),
                          "last_pass": None if self.retention.last is None else {
                              "deleted": self.retention.last.deleted,
                              "batches": self.retention.last.batches,
                              "longest_batch_ms": round(
                                  self.retention.last.longest_batch_ms, 3)}},
            "backup": None if self.cfg.backup is None else {
                "dir": self.cfg.backup.dir, "last_at": self.backup_state.last_at,
                "last_path": self.backup_state.last_path,
                "last_error": self.backup_state.last_error,
                "next_at": self.backup_state.next_at},
            "replica": None if self.replicator is None else self.replicator.status.as_dict(),
        }
        return out

    def conditions(self) -> list[Alarm]:
        out = []
        if self.guard.low:
            out.append(Alarm(
                "storage.space_low", "disk_space_low", "critical", str(self.cfg.data_dir),
                f"The disk holding the store has {self.guard.free // MB} MB free, under"
                f" [storage] min_free_mb = {self.guard.min_free_bytes // MB}: registers get"
                " 503 ERR-1040 for new payments. Make room on that disk (old backups, logs)"
                " now; the store takes writes again by itself."))
        rep = self.replicator
        if rep is not None and rep.status.lag_seconds is not None and \
                rep.status.lag_seconds > rep.cfg.lag_alert_seconds:
            out.append(Alarm(
                "replica.lag", "replica_lag", "warning", rep.status.url,
                f"The off-box replica ({rep.status.url}) is {rep.status.lag_seconds:.0f} s"
                f" behind (last error: {rep.status.last_error or 'none'}): payments taken"
                " since would be lost with this box. Check the USB stick, NAS or bucket and"
                " the network; edged retries by itself."))
        if self.backup_state.last_error:
            out.append(Alarm(
                "backup.failed", "backup_failed", "warning", self.cfg.backup.dir
                if self.cfg.backup else None,
                f"The last scheduled backup failed: {self.backup_state.last_error}. Check the"
                " backup folder's disk; the next one runs at the set time."))
        return out

    def collect(self, m: Metrics) -> None:
        st = self.status()
        m.set("edged_db_bytes", "Size of the database file", st["database_bytes"])
        m.set("edged_db_wal_bytes", "Size of the WAL file", st["wal_bytes"])
        m.set("edged_db_wal_peak_bytes", "Largest WAL seen since start", st["wal_peak_bytes"])
        m.set("edged_disk_free_bytes", "Free space on the data directory's disk",
              st["free_disk_bytes"])
        m.set("edged_disk_space_low", "1 while writes are refused for want of space",
              1 if st["space_low"] else 0)
        for rule, n in self.retention.totals.items():
            m.set("edged_retention_deleted", "Rows pruned by retention since start", n,
                  rule=rule)
        rep = st["replica"]
        if rep is not None:
            m.set("edged_replica_lag_seconds", "Age of the newest commit known to be in the"
                  " off-box replica", rep["lag_seconds"] or 0.0)
            m.set("edged_replica_up", "1 while Litestream replicates",
                  1 if rep["state"] in ("replicating", "behind") else 0)


async def replica_credentials(cfg: Config, db: Database) -> dict[str, str]:
    """The bucket's credentials from the encrypted secrets (an S3 replica only)."""
    if cfg.replica is None or not cfg.replica.is_s3:
        return {}
    from edged.store.secrets import SecretError, SecretStore  # noqa: PLC0415
    from edged.upkeep.replica import SECRET_NAMES  # noqa: PLC0415

    try:
        store = SecretStore(SecretStore.load_key(cfg.data_dir))
    except SecretError:
        return {}

    def read(conn: sqlite3.Connection) -> dict[str, str]:
        out = {}
        for name in SECRET_NAMES:
            try:
                value = store.get(conn, name)
            except SecretError as exc:
                log.error("secret %s cannot be read: %s", name, exc)
                continue
            if value:
                out[name] = value
        return out

    return await db.read(read)
