"""Register API bench (bench/README.md, issue 22): the daemon against the floor, on two disks.

For each storage, side by side in one run and in the same directory (so on the same disk):

- the **floor** (``bench/floor.py``): a bare aiohttp app on uvloop and orjson whose handler
  parses the same JSON body, inserts one row (WAL, ``synchronous=FULL``) and commits before
  answering 201; no auth, no idempotency, no audit;
- the **daemon** (``edged run``), N cash payments (``POST /v1/payments``, each with its own
  Idempotency-Key), from the same client: C concurrent keep-alive aiohttp connections;
- **raw commits**: N single-row ``synchronous=FULL`` commits on one connection, before the
  floor and after the daemon (the mean is used).

Storages: the box's own disk, and store-class storage (an SD card or eMMC) emulated by
delaying every ``fsync``/``fdatasync`` by ``--flush-ms`` (default 2) for the floor, the daemon
and the raw loop alike, through ``bench/slowflush.c`` built here with ``cc`` and put in
``LD_PRELOAD``.

Printed per storage: CPU per request of the floor and of the daemon and their ratio
(target ≤ 1.5x), payments/s against raw commits/s (target ≥ 4x on 2 ms-flush storage),
p50/p99 latency (targets: < 20 ms on the own disk, < 40 ms on 2 ms-flush storage at 20
clients), writes per group commit; and, once, the daemon's idle RSS and start → ready.
``--rounds R`` repeats the floor/daemon pair R times per storage and prints medians.

    .venv/bin/python bench/api.py [--n 2000] [--clients 20] [--rounds 1] [--flush-ms 2]
                                  [--storage own|slow|both] [--dir DIR] [--keep]

Exit status 1 when a payment was not answered 201 (the figures would be meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
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

TARGET_CPU_RATIO = 1.5  # daemon CPU per payment / floor CPU per request
TARGET_SLOW_RATIO = 4.0  # payments/s / raw commits/s on 2 ms-flush storage
TARGET_P99_MS = {"own": 20.0, "slow": 40.0}  # at 20 clients
TARGET_IDLE_RSS_MB = 60.0
TARGET_READY_S = 0.6
METRICS = ("edged_db_commits", "edged_db_writes", "edged_db_largest_group")
BODY = {"amount": 1250, "currency": "EUR", "method": "cash"}


@dataclass(frozen=True)
class Usage:
    """What the kernel counted for a process so far: CPU (user, system) and context
    switches summed over its threads (``/proc/PID/task/*/status``), live ones only."""

    user: float
    system: float
    switches: int  # voluntary + involuntary
    involuntary: int

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.user - other.user, self.system - other.system,
                     self.switches - other.switches, self.involuntary - other.involuntary)

    @property
    def cpu(self) -> float:
        return self.user + self.system


NO_USAGE = Usage(0.0, 0.0, 0, 0)


def process_usage(pid: int) -> Usage:
    """CPU and context switches of a process and all its threads."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    switches = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        switches += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        n = int(line.split()[1])
                        switches += n
                        involuntary += n
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return Usage(int(fields[11]) / tick, int(fields[12]) / tick, switches, involuntary)


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]  # seconds, one per answered payment
    failures: list[str]
    usage: Usage = NO_USAGE  # the server's, during the timed load
    client_cpu: float = 0.0  # this process's CPU seconds during the timed load

    @property
    def cpu(self) -> float:
        return self.usage.cpu

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu / len(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def switches(self) -> float:
        """Context switches per request, summed over the server's threads."""
        return self.usage.switches / len(self.latencies) if self.latencies else float("nan")

    @property
    def system_share(self) -> float:
        return self.usage.system / self.cpu if self.cpu else float("nan")


async def drive_payments(base_url: str, token: str | None, n: int, clients: int,
                         usage: Callable[[], Usage]) -> LoadResult:
    """N cash payments from ``clients`` workers, each on its own kept-alive connection."""
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def pay(key: str) -> None:
            started = time.perf_counter()
            try:
                async with session.post("/v1/payments", headers={"Idempotency-Key": key},
                                        json=BODY) as resp:
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
            return LoadResult(0.0, [], failures)

        async def worker() -> None:
            for i in counter:
                await pay(f"bench-{run}-{i}")

        usage_before = usage()
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        used = usage() - usage_before
    return LoadResult(seconds, latencies, failures, used, client_cpu)


RAW_LOOP = """
import sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
             " amount INTEGER NOT NULL, body TEXT NOT NULL)")
body = "x" * 400  # about a payment row and its stored answer
started = time.perf_counter()
for i in range(n):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (key, amount, body) VALUES (?, ?, ?)", (f"k-{i}", 1250, body))
    conn.execute("COMMIT")
print(time.perf_counter() - started)
"""


def raw_commits(directory: Path, n: int, env: Mapping[str, str]) -> float:
    """Seconds for N single-row INSERT + COMMIT, WAL and synchronous=FULL, one connection,
    in a process of its own with the storage's environment (the flush shim)."""
    path = directory / "raw-commits.db"
    try:
        done = subprocess.run([sys.executable, "-c", RAW_LOOP, str(path), str(n)],  # noqa: S603
                              env={**os.environ, **env}, capture_output=True, text=True,
                              check=True, timeout=600)
        return float(done.stdout.strip())
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def build_slowflush(workdir: Path) -> Path:
    """bench/slowflush.c as a shared object (cc must be installed)."""
    out = workdir / "slowflush.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(out),  # noqa: S603,S607
                    str(ROOT / "bench" / "slowflush.c"), "-ldl"], check=True)
    return out


class FloorProcess:
    """``bench/floor.py`` on a free port, in the storage's environment."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        from tests.daemon_process import free_port  # noqa: PLC0415

        self.port = free_port()
        db = directory / "floor.db"
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, str(ROOT / "bench" / "floor.py"), "--db", str(db),
             "--port", str(self.port)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, **env})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "floor ready" not in line:
            self.proc.kill()
            raise RuntimeError(f"the floor did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{self.port}"

    def usage(self) -> Usage:
        return process_usage(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


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


@dataclass
class Round:
    floor: LoadResult
    daemon: LoadResult
    writes_per_commit: float
    idle_rss: int
    ready_s: float


def one_round(workdir: Path, env: Mapping[str, str], args: argparse.Namespace) -> Round:
    """The floor, then the daemon, on fresh files in ``workdir``."""
    floor = FloorProcess(workdir, env)
    try:
        floor_load = asyncio.run(drive_payments(floor.base_url, None, args.n, args.clients,
                                                floor.usage))
    finally:
        floor.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{workdir / 'floor.db'}{suffix}").unlink(missing_ok=True)
    data = workdir / f"data-{uuid.uuid4().hex[:6]}"
    data.mkdir()
    config = write_config(workdir / "edged.toml", api=UNLIMITED_API)
    token = create_tokens(data, ["bench"])["bench"]
    with DaemonProcess(data, config=config, env=dict(env)) as daemon:
        ready_s, idle_rss = daemon.startup_seconds, daemon.rss_bytes()
        before = scrape(daemon.base_url)
        load = asyncio.run(drive_payments(daemon.base_url, token, args.n, args.clients,
                                          lambda: process_usage(daemon.pid)))
        after = scrape(daemon.base_url)
        daemon.terminate()
    shutil.rmtree(data, ignore_errors=True)
    commits = after.get("edged_db_commits", 0) - before.get("edged_db_commits", 0)
    writes = after.get("edged_db_writes", 0) - before.get("edged_db_writes", 0)
    return Round(floor_load, load, writes / commits if commits else float("nan"), idle_rss,
                 ready_s)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(label: str, kind: str, rounds: list[Round], raw_s: tuple[float, float],
           args: argparse.Namespace) -> list[tuple[str, str, str]]:
    med = statistics.median
    floor_ms = med(r.floor.cpu_ms for r in rounds)
    daemon_ms = med(r.daemon.cpu_ms for r in rounds)
    cpu_ratio = med(r.daemon.cpu_ms / r.floor.cpu_ms for r in rounds)
    pay_rate = med(r.daemon.rate for r in rounds)
    raw_rate = args.n / ((raw_s[0] + raw_s[1]) / 2)
    p99 = med(percentile(r.daemon.latencies, 99) for r in rounds) * 1000
    floor_p99 = med(percentile(r.floor.latencies, 99) for r in rounds) * 1000
    ratio = pay_rate / raw_rate
    target_p99 = TARGET_P99_MS[kind]
    rows = [
        (f"[{label}]", "", ""),
        ("floor CPU per request", f"{floor_ms:.3f} ms",
         f"{med(r.floor.rate for r in rounds):,.0f} req/s, p99 {floor_p99:.1f} ms,"
         f" {med(r.floor.system_share for r in rounds):.0%} in the kernel"),
        ("daemon CPU per payment", f"{daemon_ms:.3f} ms",
         f"{med(r.daemon.cpu / r.daemon.seconds for r in rounds):.0%} of one core,"
         f" {med(r.daemon.system_share for r in rounds):.0%} in the kernel"),
        ("context switches per request", f"{med(r.daemon.switches for r in rounds):.2f}",
         f"daemon (floor {med(r.floor.switches for r in rounds):.2f}; involuntary"
         f" {med(r.daemon.usage.involuntary / len(r.daemon.latencies) for r in rounds):.2f}"
         f" / {med(r.floor.usage.involuntary / len(r.floor.latencies) for r in rounds):.2f})"),
        ("daemon ÷ floor (CPU)", f"{cpu_ratio:.2f}x",
         f"<= {TARGET_CPU_RATIO}x  {verdict(cpu_ratio <= TARGET_CPU_RATIO)}"),
        ("durable payments/s", f"{pay_rate:,.0f}", ""),
        ("raw commits/s (WAL, FULL)", f"{raw_rate:,.0f}",
         f"before {args.n / raw_s[0]:,.0f}, after {args.n / raw_s[1]:,.0f}"),
        ("payments/s ÷ raw commits/s", f"{ratio:.2f}x",
         f">= {TARGET_SLOW_RATIO:g}x  {verdict(ratio >= TARGET_SLOW_RATIO)}"
         if kind == "slow" else ""),
        ("latency p50", f"{med(percentile(r.daemon.latencies, 50) for r in rounds) * 1000:.1f}"
         " ms", ""),
        ("latency p99", f"{p99:.1f} ms",
         f"< {target_p99:g} ms at 20 clients  {verdict(p99 < target_p99)}"
         if args.clients == 20 else ""),
        ("writes per group commit", f"{med(r.writes_per_commit for r in rounds):.1f}", ""),
        ("bench client CPU", f"{med(r.daemon.client_cpu / r.daemon.seconds for r in rounds):.0%}",
         "of one core"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="payments, and raw commits (2000)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    p.add_argument("--rounds", type=int, default=1, help="floor/daemon pairs per storage")
    p.add_argument("--flush-ms", type=float, default=2.0, help="the slow storage's flush")
    p.add_argument("--storage", choices=("own", "slow", "both"), default="both")
    p.add_argument("--dir", type=Path, default=None,
                   help="make the temporary data dir under DIR (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the data dir")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="edged-bench-", dir=args.dir))
    storages: list[tuple[str, str, dict[str, str]]] = []
    if args.storage in ("own", "both"):
        storages.append(("the box's own disk", "own", {}))
    if args.storage in ("slow", "both"):
        shim = build_slowflush(workdir)
        storages.append((f"{args.flush_ms:g} ms flush (LD_PRELOAD slowflush)", "slow",
                         {"LD_PRELOAD": str(shim),
                          "SLOWFLUSH_US": str(int(args.flush_ms * 1000))}))
    rows: list[tuple[str, str, str]] = []
    first: Round | None = None
    try:
        for label, kind, env in storages:
            raw_before = raw_commits(workdir, args.n, env)
            rounds = [one_round(workdir, env, args) for _ in range(args.rounds)]
            raw_after = raw_commits(workdir, args.n, env)
            failures = [f for r in rounds for f in r.floor.failures + r.daemon.failures]
            if failures:
                print(f"{len(failures)} payments failed; first: {failures[:3]}",
                      file=sys.stderr)
                return 1
            first = first or rounds[0]
            rows += report(label, kind, rounds, (raw_before, raw_after), args)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert first is not None
    mb = 1024 * 1024
    rows += [
        ("[the daemon, own start]", "", ""),
        ("idle RSS (after ready)", f"{first.idle_rss / mb:.1f} MB",
         f"<= {TARGET_IDLE_RSS_MB:.0f} MB  {verdict(first.idle_rss / mb <= TARGET_IDLE_RSS_MB)}"),
        ("process start -> ready", f"{first.ready_s:.2f} s",
         f"<= {TARGET_READY_S} s  {verdict(first.ready_s <= TARGET_READY_S)}"),
    ]
    print(f"edged register API bench: {args.n} cash payments per run, {args.clients} clients"
          f" (keep-alive, aiohttp), {args.rounds} round(s) per storage, medians")
    print(f"disk: {workdir} — {filesystem_of(workdir)}; {os.cpu_count()} CPUs, client,"
          " floor and daemon on the same box")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for name, value, target in rows:
        if name.startswith("["):
            print(f"{name}")
            continue
        print(f"  {name:<{width}}  {value:>{vwidth}}  {target}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
