"""Where the CPU per durable cash payment goes, in the daemon and in the floor, side by side.

Starts the floor (``bench/floor.py``) and the daemon as ``bench/api.py`` does, each with a
``sitecustomize`` on its ``PYTHONPATH`` that runs a ``cProfile.Profile(time.thread_time)``
in every thread (the event loop, the writer, the readers): each thread's profile counts
only the CPU that thread used, so the other processes of a shared box and the time a
thread waits (for the disk, the interpreter lock, the loop) count for nothing. The profiles
of a process are merged when it stops. The same client drives a warm-up and then N
requests from C connections against each; the table folds the functions into the parts of
a request, with each part's share of the profiled CPU, and that share of the CPU per
request the kernel counted for the process over the timed load (``/proc/PID``, as
``bench/api.py``), so that the difference between the two columns is the list of work.

A C function (``sqlite3`` ``execute``, ``hashlib``, the socket calls) is counted for the
Python function that called it, so ``execute`` inside the audit chain is the audit chain's;
the writer's ``COMMIT`` (its own function, ``Database._commit``: the WAL write and fsync) is
counted apart, and so are the floor's three statements.

    .venv/bin/python bench/profile_api.py [--n 4000] [--clients 20] [--storage own|slow]
                                          [--top 25] [--keep DIR]

Deterministic profiling slows Python code down more than C code (each call and return reads
the thread's clock), so the shares lean towards the Python parts, and the CPU per request
under the profiler is higher than ``bench/api.py``'s; the calls per request are exact.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api import (  # noqa: E402
    FloorProcess,
    LoadResult,
    build_slowflush,
    drive_payments,
    process_usage,
)
from tests.daemon_process import (  # noqa: E402
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    write_config,
)

SITECUSTOMIZE = '''
import atexit, cProfile, os, pstats, signal, sys, threading, time
_profiles = []
def _start_thread(*_args):
    sys.setprofile(None)
    prof = cProfile.Profile(time.thread_time)
    _profiles.append(prof)
    prof.enable()
threading.setprofile(_start_thread)
_main = cProfile.Profile(time.thread_time)
_profiles.append(_main)
_main.enable()
def _dump():
    for prof in _profiles:
        prof.disable()
    stats = pstats.Stats(_profiles[0])
    for prof in _profiles[1:]:
        stats.add(prof)
    stats.dump_stats(os.environ["EDGED_PROFILE_OUT"])
atexit.register(_dump)
if os.environ.get("EDGED_PROFILE_SIGTERM_EXITS"):  # the floor has no handler of its own
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
'''

STARTUP = "start-up (imports, not per request)"
IDLE = "waiting (not per request)"
COMMIT = "writer: COMMIT (the WAL write and its fsync)"
FLOOR_SQL = "SQLite: BEGIN, INSERT, COMMIT (one fsync per request)"

# (part, file pattern, function pattern or None): a Python function's own time goes to the
# first matching part; a C function's time goes to its callers' parts.
RULES: tuple[tuple[str, str, str | None], ...] = (
    (STARTUP, r"<frozen |importlib|dataclasses\.py|/re/|typing\.py|enum\.py|ssl\.py|attr/"
     r"|sre_|inspect\.py|ast\.py|abc\.py$|functools\.py|pkgutil\.py|tomllib|argparse",
     None),
    (STARTUP, r"edged/(app|cli|config|services)\.py|edged/lanes/factory\.py",
     r"^(serve|main|_dispatch|build|load|make_app|_build.*|run_daemon|<module>)$"),
    (IDLE, r"concurrent/futures/thread\.py", r"^_worker$"),
    (IDLE, r"threading\.py", r"^(wait|_wait_for_tstate_lock|join|run|_bootstrap.*)$"),
    ("floor's handler", r"bench/floor\.py", None),
    ("JSON (orjson, the codec)", r"/json/|orjson|edged/jsoncodec\.py", None),
    ("audit chain", r"edged/store/audit(_key)?\.py", None),
    ("idempotency: lookup, store, body hash, key lock", r"edged/store/idempotency\.py"
     r"|contextlib\.py", None),
    ("payment row and its answer", r"edged/store/records\.py|edged/payments/answer\.py",
     None),
    ("ids and timestamps", r"edged/ids\.py|sync/core/clock\.py|random\.py|base64\.py"
     r"|secrets\.py|uuid\.py", None),
    ("auth (token, revocation stamp)", r"edged/lan/(tokens|token_cache)\.py"
     r"|edged/services\.py", None),
    ("request metrics", r"edged/ops/(metrics|status_metrics)\.py", None),
    ("events, alerts", r"edged/events\.py|edged/ops/alerts\.py", None),
    ("logging (records, redaction, handlers)", r"logging/|edged/ops/log_redaction\.py",
     None),
    ("rate limits", r"edged/api/ratelimit\.py", None),
    ("body checks (schema, card numbers)", r"edged/api/schema\.py"
     r"|edged/payments/cardnumbers\.py", None),
    ("writer: BEGIN, SAVEPOINT, RELEASE, outcomes", r"edged/store/database\.py",
     r"_run_group|_commit_group|_drain|_deliver|_bound_wal|_run_inline|_start_group"
     r"|_group_done|_commit"),
    ("write hand-off (loop to writer and back)", r"edged/store/database\.py", None),
    ("connection guard, accept loop", r"edged/api/(server|acceptor|stream_registry)\.py",
     None),
    ("route handlers, middleware, payment service", r"edged/(api|payments)/", None),
    ("HTTP response (aiohttp)", r"aiohttp/(web_response|http_writer|helpers|multidict)",
     None),
    ("HTTP parsing and dispatch (aiohttp)", r"aiohttp/|multidict|yarl", None),
    ("thread pools, locks (hand-off)", r"concurrent/futures|threading\.py|queue\.py",
     None),
    ("event loop (asyncio, uvloop), sockets", r"asyncio/|uvloop|selectors\.py|socket",
     None),
)
_COMPILED = [(part, re.compile(f), re.compile(fn) if fn else None) for part, f, fn in RULES]
_COMMIT_SQL = re.compile(r"COMMIT", re.IGNORECASE)

Func = tuple[str, int, str]


def part_of(func: Func) -> str | None:
    file, _, name = func
    if file == "~":
        return None  # a C function: its callers decide
    for part, fpat, fnpat in _COMPILED:
        if fpat.search(file) and (fnpat is None or fnpat.search(name)):
            return part
    return "other"


def fold(stats: pstats.Stats) -> tuple[Counter[str], int]:
    """(seconds per part, Python calls per part's functions) of a merged profile."""
    parts: Counter[str] = Counter()
    calls = 0
    table = stats.stats  # type: ignore[attr-defined]
    for func, (_cc, nc, tottime, _ct, callers) in table.items():
        part = part_of(func)
        if part is not None:
            if part not in (STARTUP, IDLE):
                calls += nc
            parts[part] += tottime
            continue
        # A C function: split its own time between its callers (pstats keeps it per caller).
        for caller, entry in callers.items():
            caller_part = part_of(caller) or "C called from C"
            if func[2] == "<method 'execute' of 'sqlite3.Connection' objects>":
                if caller[0].endswith("bench/floor.py"):
                    caller_part = FLOOR_SQL
                elif caller[0].endswith("edged/store/database.py") and caller[2] == "_commit":
                    caller_part = COMMIT
            parts[caller_part] += entry[2]
    return parts, calls


@dataclass
class Profiled:
    load: LoadResult
    parts: Counter[str]
    calls: int
    stats: pstats.Stats


def _env(site: Path, out: Path, base: dict[str, str]) -> dict[str, str]:
    return {**base, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(site), os.environ.get("PYTHONPATH")])), "EDGED_PROFILE_OUT": str(out)}


def profile_floor(workdir: Path, site: Path, env: dict[str, str],
                  args: argparse.Namespace) -> Profiled:
    out = workdir / "floor.pstats"
    floor = FloorProcess(workdir, {**_env(site, out, env), "EDGED_PROFILE_SIGTERM_EXITS": "1"})
    try:
        asyncio.run(drive_payments(floor.base_url, None, 200, args.clients, floor.usage))
        load = asyncio.run(drive_payments(floor.base_url, None, args.n, args.clients,
                                          floor.usage))
    finally:
        floor.stop()
    return _profiled(load, out)


def profile_daemon(workdir: Path, site: Path, env: dict[str, str],
                   args: argparse.Namespace) -> Profiled:
    out = workdir / "daemon.pstats"
    data = workdir / "data"
    data.mkdir()
    config = write_config(workdir / "edged.toml", api=UNLIMITED_API)
    token = create_tokens(data, ["bench"])["bench"]
    with DaemonProcess(data, config=config, env=_env(site, out, env)) as daemon:
        asyncio.run(drive_payments(daemon.base_url, token, 200, args.clients,
                                   lambda: process_usage(daemon.pid)))
        load = asyncio.run(drive_payments(daemon.base_url, token, args.n, args.clients,
                                          lambda: process_usage(daemon.pid)))
        daemon.terminate()
    return _profiled(load, out)


def _profiled(load: LoadResult, out: Path) -> Profiled:
    stats = pstats.Stats(str(out))
    parts, calls = fold(stats)
    return Profiled(load, parts, calls, stats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--storage", choices=("own", "slow"), default="own",
                   help="the box's own disk, or 2 ms-flush storage (bench/slowflush.c)")
    p.add_argument("--top", type=int, default=0, help="also print each one's top functions")
    p.add_argument("--keep", type=Path, default=None, help="keep the pstats files in DIR")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="edged-profile-"))
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env: dict[str, str] = {}
    if args.storage == "slow":
        env = {"LD_PRELOAD": str(build_slowflush(workdir)), "SLOWFLUSH_US": "2000"}
    try:
        floor = profile_floor(workdir, site, env, args)
        daemon = profile_daemon(workdir, site, env, args)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("floor.pstats", "daemon.pstats"):
                shutil.copy(workdir / name, args.keep / name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for who, prof in (("floor", floor), ("daemon", daemon)):
        if prof.load.failures:
            print(f"{who}: failed: {prof.load.failures[:3]}", file=sys.stderr)
            return 1
    print(f"CPU per request under the profiler ({args.n} requests, {args.clients} clients,"
          f" {'2 ms-flush storage' if args.storage == 'slow' else 'the own disk'}):"
          f" floor {floor.load.cpu_ms:.3f} ms, daemon {daemon.load.cpu_ms:.3f} ms;"
          f" Python calls per request: floor {floor.calls / args.n:.0f},"
          f" daemon {daemon.calls / args.n:.0f} (warm-up included)")
    table: dict[str, list[float]] = {}
    for column, prof in enumerate((floor, daemon)):
        total = sum(v for k, v in prof.parts.items() if k not in (STARTUP, IDLE))
        for part, seconds in prof.parts.items():
            if part in (STARTUP, IDLE):
                continue
            share = seconds / total
            table.setdefault(part, [0.0, 0.0, 0.0, 0.0])
            table[part][column * 2] = share
            table[part][column * 2 + 1] = share * prof.load.cpu_ms
    print(f"  {'part':<56} {'floor':>6} {'ms':>6}   {'daemon':>6} {'ms':>6}")
    for part, (fs, fms, ds, dms) in sorted(table.items(), key=lambda kv: -kv[1][3]):
        if fs < 0.0005 and ds < 0.0005:
            continue
        print(f"  {part:<56} {fs:6.1%} {fms:6.3f}   {ds:6.1%} {dms:6.3f}")
    if args.top:
        for who, prof in (("floor", floor), ("daemon", daemon)):
            print(f"--- {who}: top functions by own time")
            prof.stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
