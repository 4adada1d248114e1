"""The off-box replica (issue 21, point 3): a box brought back from nothing.

A real daemon (``python -m edged run``) replicates with Litestream to a folder, or to an
S3-compatible server this test starts (moto's server mode, on 127.0.0.1), while registers
take cash payments. The test reads the replica's position on ``/v1/status``
(``storage.replica.replicated_at``: every commit made before it is in the replica), lets
the load go on, and kills the daemon with SIGKILL (the box dies, Litestream with it). The
data folder is deleted; ``edged restore --from REPLICA`` brings it back; every payment
acknowledged before that position is there with its amount, nothing is there that no
register was answered or that was in flight, ``integrity_check`` and ``edged audit
verify`` pass, and a daemon started on it answers for those payments.

Rests on Litestream's documented control socket (``POST /sync`` with ``wait``: it answers
once the replica holds the database as it was when asked) and on S3's API as moto serves
it (the bucket made with boto3 before the daemon starts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import (
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    free_port,
    http_request,
)

CLIENTS = 3
MARK_AFTER = 60   # acknowledged payments before the replica position is read
KILL_AFTER = 40   # more acknowledged payments after it, then SIGKILL
LOAD_LIMIT = 2000


@dataclass
class Ack:
    id: str
    amount: int
    at: datetime


@dataclass
class Load:
    base_url: str
    tokens: list[str]
    acks: list[Ack] = field(default_factory=list)
    sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, n: int) -> None:
        for j in range(LOAD_LIMIT):
            if self.stop.is_set():
                return
            amount = 100 + n * 10_000 + j
            try:
                resp = http_request(self.base_url, "POST", "/v1/payments",
                                    {"amount": amount, "currency": "EUR", "method": "cash"},
                                    token=self.tokens[n], key=f"c{n}-{j}", timeout=10)
            except OSError:
                return  # the daemon is gone
            if resp.status != 201:
                return
            with self.lock:
                self.acks.append(Ack(resp.json()["id"], amount, datetime.now(UTC)))

    def count(self) -> int:
        with self.lock:
            return len(self.acks)


def _children(pid: int) -> list[int]:
    """The daemon's child processes (Litestream), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for init to reap it counts: it runs no more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 on a loopback port, one bucket ``edged``; yields the endpoint URL."""
    import boto3  # noqa: PLC0415  (moto[server], a test extra, brings it)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",  # noqa: S603
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                         0.2):
                return True
            return False

        _wait_for(up, 30, "moto's server")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="edged")
        yield endpoint
    finally:
        proc.kill()
        proc.wait(10)


def _secret(data: Path, name: str, value: str) -> None:
    subprocess.run([sys.executable, "-m", "edged", "secret", "set", name, "--data-dir",  # noqa: S603
                    str(data)], input=value, text=True, check=True, capture_output=True,
                   timeout=60)


def _restore(source: str, data: Path, config: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "edged", "restore", "--from", source,  # noqa: S603
                           "--data-dir", str(data), "--config", str(config)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _run_replica_trial(tmp_path: Path, replica_lines: list[str], source: str,
                       restore_env: dict[str, str], secrets: dict[str, str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "edged.toml"
    api = "".join(f"{k} = {v!r}\n" for k, v in UNLIMITED_API.items())
    config.write_text("[api]\n" + api + "[replica]\n" + "\n".join(replica_lines)
                      + "\ncheck_seconds = 0.2\n", encoding="utf-8")
    for name, value in secrets.items():
        _secret(data, name, value)
    tokens = list(create_tokens(data, [f"lane-{n}" for n in range(CLIENTS)]).values())
    manager = create_tokens(data, ["manager"], scope="manager")["manager"]
    daemon = DaemonProcess(data, config=config)
    with daemon:
        load = Load(daemon.base_url, tokens)
        threads = [threading.Thread(target=load.client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: load.count() >= MARK_AFTER, 60, "the first payments")
            asked = datetime.now(UTC)

            def replicated_at() -> datetime | None:
                body = daemon.get("/v1/status", token=manager).json()
                stamp = body["storage"]["replica"]["replicated_at"]
                return None if stamp is None else datetime.fromisoformat(
                    stamp.replace("Z", "+00:00"))

            _wait_for(lambda: (replicated_at() or asked) > asked, 60,
                      "the replica to pass the first payments")
            position = replicated_at()
            assert position is not None
            status = daemon.get("/v1/status", token=manager).json()["storage"]["replica"]
            assert status["state"] == "replicating" and status["lag_seconds"] < 60, status
            metrics = daemon.get("/metrics").text
            assert "edged_replica_lag_seconds" in metrics
            before = load.count()
            _wait_for(lambda: load.count() >= before + KILL_AFTER, 60, "more payments")
            helpers = _children(daemon.pid)
            assert helpers, "no Litestream child under the daemon"
            for pid in [daemon.pid, *helpers]:  # the box dies under load, Litestream with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            daemon.wait(30)
            for pid in helpers:
                _wait_for(lambda pid=pid: _gone(pid), 30, "Litestream to be gone")
        finally:
            load.stop.set()
            for t in threads:
                t.join(30)
    acked = list(load.acks)
    covered = [a for a in acked if a.at < position]
    assert len(covered) >= MARK_AFTER, (len(covered), len(acked))
    assert len(covered) < len(acked), "the kill came before any payment after the position"

    kept_key = (data / "audit.key").read_bytes()  # kept apart from the box, as the README says
    shutil.rmtree(data)  # the box is gone
    fresh = tmp_path / "new-box"
    out = _restore(source, fresh, config, restore_env)
    assert "audit chain ok" in out, out
    # the audit key is not in the replica: the restore checked the chain's links and says so
    assert "checked for their links only" in out, out
    assert (fresh.stat().st_mode & 0o777) == 0o700
    assert ((fresh / "edged.db").stat().st_mode & 0o777) == 0o600
    (fresh / "audit.key").write_bytes(kept_key)
    (fresh / "audit.key").chmod(0o600)

    conn = sqlite3.connect(fresh / "edged.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(conn.execute("SELECT id, amount FROM payments").fetchall())
    finally:
        conn.close()
    missing = [a.id for a in covered if rows.get(a.id) != a.amount]
    assert not missing, f"{len(missing)} payments acknowledged before the replica's position" \
                        f" are not in the restored database: {missing[:5]}"
    # nothing doubled, nothing invented: every restored payment was one a register sent
    sent_amounts = {100 + n * 10_000 + j for n in range(CLIENTS) for j in range(LOAD_LIMIT)}
    assert all(amount in sent_amounts for amount in rows.values())
    assert len(set(rows.values())) == len(rows)
    verify = subprocess.run([sys.executable, "-m", "edged", "audit", "verify", "--data-dir",  # noqa: S603
                             str(fresh)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # the box back in service: the same tokens, the same payments
    plain = tmp_path / "plain.toml"
    plain.write_text("[api]\n" + "".join(f"{k} = {v!r}\n" for k, v in UNLIMITED_API.items()),
                     encoding="utf-8")
    with DaemonProcess(fresh, config=plain) as again:
        some = covered[len(covered) // 2]
        resp = again.get(f"/v1/payments/{some.id}", token=tokens[0])
        assert resp.status == 200 and resp.json()["amount"] == some.amount, resp.text


@pytest.mark.timeout(180)
def test_a_folder_replica_brings_back_every_payment_acknowledged_before_its_position(
        tmp_path: Path) -> None:
    replica = tmp_path / "usb-stick" / "edged"
    _run_replica_trial(tmp_path, [f"url = {str(replica)!r}"], str(replica), {}, {})


@pytest.mark.timeout(180)
def test_an_s3_replica_brings_back_every_payment_acknowledged_before_its_position(
        tmp_path: Path) -> None:
    with moto_server() as endpoint:
        _run_replica_trial(
            tmp_path,
            ['url = "s3://edged/store-1"', f"endpoint = {endpoint!r}"],
            "s3://edged/store-1",
            {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
            # the daemon hands Litestream the bucket's credentials from the encrypted secrets
            {"replica.access_key_id": "test", "replica.secret_access_key": "test"})


async def test_a_replica_that_cannot_be_reached_raises_an_alert_as_its_lag_grows(
        tmp_path: Path) -> None:
    """No Litestream answers on the control socket (a replica unreachable, Litestream
    stuck): replicated_at stays still, the lag grows with the clock, and past
    lag_alert_seconds the alert ``replica_lag`` holds, naming the replica and the error."""
    from edged.config.upkeep import ReplicaConfig  # noqa: PLC0415
    from edged.upkeep.replica import Replicator  # noqa: PLC0415
    from edged.upkeep.tasks import Upkeep  # noqa: PLC0415
    from tests.clock import ManualClock  # noqa: PLC0415
    from tests.helpers import make_config  # noqa: PLC0415

    clock = ManualClock()
    replica = ReplicaConfig(url=str(tmp_path / "nas"), lag_alert_seconds=300)
    cfg = make_config(tmp_path / "data", replica=replica)
    upkeep = Upkeep(cfg, None, clock)  # type: ignore[arg-type]  (no database needed here)
    upkeep.replicator = Replicator(replica, tmp_path / "data", clock, 64 << 20)
    await upkeep.replicator.check()
    status = upkeep.replicator.status
    assert status.replicated_at is None and status.last_error
    assert not [a for a in upkeep.conditions() if a.key == "replica.lag"]
    clock.advance(301)
    await upkeep.replicator.check()
    assert status.lag_seconds is not None and status.lag_seconds >= 301
    assert status.state == "behind"
    alarms = [a for a in upkeep.conditions() if a.key == "replica.lag"]
    assert alarms and str(tmp_path / "nas") in alarms[0].message


async def test_the_archive_appearing_starts_litestream_again_without_a_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``edged archive`` makes ``edged-archive.db`` beside the database while the daemon
    replicates: Litestream is started again to ship it too (its YAML names one file more).
    That is no failure: no ERROR in the log, no restart counted, the task goes on."""
    import asyncio  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from edged.config.upkeep import ReplicaConfig  # noqa: PLC0415
    from edged.upkeep.replica import ARCHIVE_NAME, DB_NAME, Replicator  # noqa: PLC0415
    from sync.core.clock import SystemClock  # noqa: PLC0415

    data = tmp_path / "data"
    data.mkdir()
    for name in (DB_NAME,):
        conn = sqlite3.connect(data / name)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    replica = ReplicaConfig(url=str(tmp_path / "nas"), check_seconds=0.1,
                            sync_interval_seconds=0.1)
    rep = Replicator(replica, data, SystemClock(), 64 << 20)
    caplog.set_level(logging.INFO, logger="edged.upkeep.replica")
    task = asyncio.create_task(rep.run())

    async def until(probe: Any, what: str) -> None:
        for _ in range(400):
            if probe():
                return
            assert not task.done(), task.exception() if task.done() else None
            await asyncio.sleep(0.025)
        raise AssertionError(f"not within 10 s: {what}")

    try:
        await until(lambda: rep._proc is not None and rep.status.replicated_at, "replicating")
        assert rep._proc is not None
        first = rep._proc.pid
        conn = sqlite3.connect(data / ARCHIVE_NAME)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        await until(lambda: rep._proc is not None and rep._proc.pid != first,
                    "litestream started again with the archive")
        assert not task.done()
        assert rep.status.restarts == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "starts again, now with the archive" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rep.stop()
