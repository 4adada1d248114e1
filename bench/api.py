"""Register API bench (DESIGN §8): durable cash payments against raw SQLite commits.

Starts a real daemon on a temporary data dir, drives N cash payments (POST /v1/payments,
each with its own Idempotency-Key) from C concurrent clients over keep-alive HTTP, then, in
the same run and in the same directory (so on the same disk), times N raw single-row
commits with ``journal_mode=WAL, synchronous=FULL`` on one connection, once before the
daemon starts and once after it stops (the ratio uses their mean). Prints payments/s,
p50/p99 latency, raw commits/s and their ratio, the daemon's group-commit counters from
/metrics, its idle resident memory and its time from process start to ready.

    .venv/bin/python bench/api.py [--n 2000] [--clients 20] [--dir DIR] [--keep]

Exit status 1 when a payment was not answered 201 (the figures would be meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.daemon_process import (  # noqa: E402
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    http_request,
    write_config,
)

TARGET_RATIO = 1.0
TARGET_IDLE_RSS_MB = 60.0
TARGET_CPU_MS = 0.40  # daemon CPU per durable cash payment (issue 11)
TARGET_P99_MS = 20.0  # at 20 clients
TARGET_READY_S = 0.6
METRICS = ("edged_db_commits", "edged_db_writes", "edged_db_largest_group")


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]  # seconds, one per answered payment
    failures: list[str]
    metrics_before: dict[str, float]
    cpu_before: float = 0.0
    cpu_after: float = 0.0
    client_cpu: float = 0.0  # this process's CPU seconds during the timed load


async def drive_payments(daemon: DaemonProcess, token: str, n: int,
                         clients: int) -> LoadResult:
    """N cash payments from ``clients`` workers, each on its own kept-alive connection."""
    base_url = daemon.base_url
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def pay(key: str) -> None:
            started = time.perf_counter()
            try:
                async with session.post(
                        "/v1/payments", headers={"Idempotency-Key": key},
                        json={"amount": 1250, "currency": "EUR", "method": "cash"}) as resp:
                    text = await resp.text()
                    if resp.status != 201:
                        failures.append(f"{key}: {resp.status} {text[:200]}")
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{key}: {type(exc).__name__}: {exc}")
                return
            latencies.append(time.perf_counter() - started)

        # Warm-up, not timed: one payment per client opens every connection.
        await asyncio.gather(*(pay(f"bench-{run}-warm-{i}") for i in range(clients)))
        latencies.clear()
        if failures:
            return LoadResult(0.0, [], failures, {})
        before = scrape(base_url)  # nothing in flight: a blocking call is fine here

        async def worker() -> None:
            for i in counter:
                await pay(f"bench-{run}-{i}")

        cpu_before = daemon.cpu_seconds()
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        cpu_after = daemon.cpu_seconds()
    return LoadResult(seconds, latencies, failures, before, cpu_before, cpu_after, client_cpu)


def raw_commits(directory: Path, n: int) -> float:
    """Seconds for N single-row INSERT + COMMIT, WAL and synchronous=FULL, one connection."""
    path = directory / "raw-commits.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
                     " amount INTEGER NOT NULL, body TEXT NOT NULL)")
        body = "x" * 400  # about a payment row and its stored answer
        started = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (key, amount, body) VALUES (?, ?, ?)",
                         (f"k-{i}", 1250, body))
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def scrape(base_url: str) -> dict[str, float]:
    resp = http_request(base_url, "GET", "/metrics")
    found: dict[str, float] = {}
    if resp.status != 200:
        return found
    for line in resp.text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in METRICS:
            found[parts[0]] = float(parts[1])
    return found


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def filesystem_of(path: Path) -> str:
    """'ext4 on /dev/vda' for the mount holding ``path`` (from /proc/mounts)."""
    best = ("", "?", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                dev, mnt, fstype = line.split()[:3]
                if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} (mounted at {best[0] or '?'})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="payments, and raw commits (2000)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the temporary data dir under DIR (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the data dir")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="edged-bench-", dir=args.dir))
    data = workdir / "data"
    data.mkdir()
    config = write_config(workdir / "edged.toml", api=UNLIMITED_API)
    try:
        raw_before = raw_commits(workdir, args.n)
        token = create_tokens(data, ["bench"])["bench"]
        with DaemonProcess(data, config=config) as daemon:
            ready_s = daemon.startup_seconds
            idle_rss = daemon.rss_bytes()
            load = asyncio.run(drive_payments(daemon, token, args.n, args.clients))
            before = load.metrics_before
            after = scrape(daemon.base_url)
            loaded_rss = daemon.rss_bytes()
            stop_status = daemon.terminate()
        raw_after = raw_commits(workdir, args.n)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if load.failures:
        print(f"{len(load.failures)} payments failed; first: {load.failures[:3]}",
              file=sys.stderr)
        return 1

    done = len(load.latencies)
    pay_rate = done / load.seconds
    # The disk's speed drifts (caches, neighbours): time the raw commits before and after
    # the API load and compare with their mean.
    raw_s = (raw_before + raw_after) / 2
    raw_rate = args.n / raw_s
    ratio = pay_rate / raw_rate
    commits = after.get("edged_db_commits", 0) - before.get("edged_db_commits", 0)
    writes = after.get("edged_db_writes", 0) - before.get("edged_db_writes", 0)
    mb = 1024 * 1024
    cpu_used = load.cpu_after - load.cpu_before
    cpu_load = cpu_used / load.seconds
    cpu_per_payment_ms = cpu_used / done * 1000
    p99_ms = percentile(load.latencies, 99) * 1000

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    rows: list[tuple[str, str, str]] = [
        ("durable payments/s", f"{pay_rate:,.0f}", ""),
        ("latency p50", f"{percentile(load.latencies, 50) * 1000:.1f} ms", ""),
        ("latency p99", f"{p99_ms:.1f} ms",
         f"< {TARGET_P99_MS:g} ms at 20 clients  {verdict(p99_ms < TARGET_P99_MS)}"
         if args.clients == 20 else ""),
        ("daemon CPU during load", f"{cpu_load:.0%}", "of one core"),
        ("daemon CPU per payment", f"{cpu_per_payment_ms:.2f} ms",
         f"<= {TARGET_CPU_MS:.2f} ms  {verdict(cpu_per_payment_ms <= TARGET_CPU_MS)}"),
        ("bench client CPU during load", f"{load.client_cpu / load.seconds:.0%}",
         "of one core"),
        ("raw commits/s (WAL, FULL)", f"{raw_rate:,.0f}",
         f"before {args.n / raw_before:,.0f}, after {args.n / raw_after:,.0f}"),
        ("raw commit time (mean)", f"{raw_s / args.n * 1000:.2f} ms", ""),
        ("payments/s ÷ raw commits/s", f"{ratio:.2f}",
         f">= {TARGET_RATIO:.1f}  {verdict(ratio >= TARGET_RATIO)}"),
    ]
    if after:
        rows += [
            ("group commits (load)", f"{commits:.0f}", ""),
            ("writes (load)", f"{writes:.0f}", ""),
            ("writes per commit (mean)", f"{writes / commits:.1f}" if commits else "-", ""),
            ("largest group (since start)", f"{after.get('edged_db_largest_group', 0):.0f}",
             ""),
        ]
    else:
        rows.append(("group-commit stats", "not in /metrics", ""))
    rows += [
        ("idle RSS (after ready)", f"{idle_rss / mb:.1f} MB",
         f"<= {TARGET_IDLE_RSS_MB:.0f} MB  {verdict(idle_rss / mb <= TARGET_IDLE_RSS_MB)}"),
        ("RSS after load", f"{loaded_rss / mb:.1f} MB", ""),
        ("process start -> ready", f"{ready_s:.2f} s",
         f"<= {TARGET_READY_S} s  {verdict(ready_s <= TARGET_READY_S)}"),
        ("stop (SIGTERM) exit status", str(stop_status), ""),
    ]
    print(f"edged register API bench: {done} cash payments ({args.clients} clients,"
          f" keep-alive, aiohttp) in {load.seconds:.2f} s; {args.n} raw commits in"
          f" {raw_before:.2f} s before it and {raw_after:.2f} s after")
    print(f"disk: {workdir} — {filesystem_of(workdir)}; {os.cpu_count()} CPUs, client and"
          " daemon on the same box")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"  {'figure':<{width}}  {'value':>{vwidth}}  target")
    print(f"  {'-' * width}  {'-' * vwidth}  {'-' * 16}")
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>{vwidth}}  {target}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
