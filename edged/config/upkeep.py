"""The settings of a box that runs for years: ``[retention]``, ``[storage]``, ``[replica]``
and ``[backup]`` (every key with its default in ``config.example.toml``).

Parsed by :func:`parse`, which ``edged.config`` calls with its table reader (so the same
complaints name the key and the file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from edged.config.table import Table


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How long what the daemon no longer needs is kept (``docs/design.md``, Retention)."""

    outbox_days: float = 30.0
    """Outbox rows sent (done) or discarded, and their batches."""
    idempotency_days: float = 7.0
    """Stored answers to Idempotency-Keys: longer than any register retries a call."""
    webhook_days: float = 30.0
    """Shopify deliveries once processed (the events Shopify sent)."""
    stock_changes_days: float = 90.0
    """Stock changes Shopify acknowledged and a later pull already counts."""
    expired_days: float = 1.0
    """Status-page sessions and pairing codes, after they expired."""
    interval_minutes: float = 10.0
    """How often the pruning task looks."""
    batch_ms: float = 5.0
    """The longest one batch of deletions may hold the writer (the batch size adapts)."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The database file and its WAL stay bounded; the disk never fills under SQLite."""

    wal_max_mb: float = 64.0
    """The WAL is checkpointed and truncated before it reaches this size."""
    vacuum_minutes: float = 60.0
    """How often free pages go back to the file system (incremental vacuum)."""
    vacuum_pages: int = 256
    """Pages freed per step (each step is one short write)."""
    min_free_mb: float = 256.0
    """Below this much free space writes answer 503 ERR-1040 and an alert is raised."""
    check_seconds: float = 10.0
    """How often the free space and the WAL's size are looked at."""


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """A continuous off-box copy made by Litestream (``edged restore`` brings it back)."""

    url: str
    """``/mnt/usb/edged`` or ``file:///…`` (a USB stick, a NAS mount) or ``s3://bucket/path``."""
    endpoint: str | None = None
    """An S3-compatible server (MinIO, Backblaze, Ceph…); absent: Amazon S3."""
    region: str = "us-east-1"
    force_path_style: bool = True
    sync_interval_seconds: float = 1.0
    """How often Litestream ships new pages."""
    check_seconds: float = 10.0
    """How often the daemon asks Litestream how far the replica is (the lag)."""
    lag_alert_seconds: float = 300.0
    """A replica further behind than this raises an alert."""
    include_secrets_key: bool = False
    """Also copy the secrets key beside a path replica (never by default)."""
    binary: str | None = None
    """The litestream executable; absent: the one beside this Python, then PATH."""

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


@dataclass(frozen=True, slots=True)
class BackupConfig:
    """A daily copy made with SQLite's online backup API, the oldest ones removed."""

    dir: str
    """Where the copies go (not the data directory's disk, ideally)."""
    at: str = "03:30"
    """Time of day, in ``[manager] timezone``."""
    keep: int = 7
    """Copies kept; older ones are deleted once a new one verified."""


@dataclass(frozen=True, slots=True)
class Upkeep:
    retention: RetentionConfig
    storage: StorageConfig
    replica: ReplicaConfig | None
    backup: BackupConfig | None


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _clock_time(v: str) -> str | None:
    if re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
        return None
    return "must be HH:MM (24-hour), for example 03:30"


def _replica_url(v: str) -> str | None:
    if v.startswith(("s3://", "file://", "/")):
        return None
    return "must be an absolute path, file:///path or s3://bucket/path"


def parse(root: Table, sub: Callable[[Table, str], Table | None]) -> Upkeep:
    retention = RetentionConfig()
    if (t := sub(root, "retention")) is not None:
        d = retention
        retention = RetentionConfig(
            outbox_days=t.get("outbox_days", float, d.outbox_days, _positive),
            idempotency_days=t.get("idempotency_days", float, d.idempotency_days, _positive),
            webhook_days=t.get("webhook_days", float, d.webhook_days, _positive),
            stock_changes_days=t.get("stock_changes_days", float, d.stock_changes_days,
                                     _positive),
            expired_days=t.get("expired_days", float, d.expired_days, _positive),
            interval_minutes=t.get("interval_minutes", float, d.interval_minutes, _positive),
            batch_ms=t.get("batch_ms", float, d.batch_ms, _positive),
        )
        t.done()
    storage = StorageConfig()
    if (t := sub(root, "storage")) is not None:
        s = storage
        storage = StorageConfig(
            wal_max_mb=t.get("wal_max_mb", float, s.wal_max_mb,
                             lambda v: None if v >= 4 else "must be at least 4"),
            vacuum_minutes=t.get("vacuum_minutes", float, s.vacuum_minutes, _positive),
            vacuum_pages=t.get("vacuum_pages", int, s.vacuum_pages, _positive),
            min_free_mb=t.get("min_free_mb", float, s.min_free_mb,
                              lambda v: None if v >= 0 else "must be 0 or more"),
            check_seconds=t.get("check_seconds", float, s.check_seconds, _positive),
        )
        t.done()
    replica = None
    if (t := sub(root, "replica")) is not None:
        url = t.require("url")
        if (problem := _replica_url(url)) is not None:
            raise t.fail("url", problem)
        endpoint = t.get("endpoint", str, "", None) or None
        binary = t.get("binary", str, "", None) or None
        replica = ReplicaConfig(
            url=url, endpoint=endpoint,
            region=t.get("region", str, "us-east-1", None),
            force_path_style=t.get("force_path_style", bool, True),
            sync_interval_seconds=t.get("sync_interval_seconds", float, 1.0, _positive),
            check_seconds=t.get("check_seconds", float, 10.0, _positive),
            lag_alert_seconds=t.get("lag_alert_seconds", float, 300.0, _positive),
            include_secrets_key=t.get("include_secrets_key", bool, False),
            binary=binary,
        )
        if replica.include_secrets_key and replica.is_s3:
            raise t.fail("include_secrets_key", "is for a path replica only; with s3 keep the"
                         " key yourself (README: keeping the secrets key)")
        t.done()
    backup = None
    if (t := sub(root, "backup")) is not None:
        if "dir" not in t.data:
            raise t.fail("dir", "is required")
        backup = BackupConfig(
            dir=t.get("dir", str, "", lambda v: None if v.strip() else "must not be empty"),
            at=t.get("at", str, "03:30", _clock_time),
            keep=t.get("keep", int, 7, _positive),
        )
        t.done()
    return Upkeep(retention, storage, replica, backup)

