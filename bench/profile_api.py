"""Where the daemon's CPU per durable cash payment goes: cProfile by thread CPU time.

Starts a daemon as ``bench/api.py`` does, but with a ``sitecustomize`` on its
``PYTHONPATH`` that runs a ``cProfile.Profile(time.thread_time)`` in every thread (the event
loop, the writer, the readers): each thread's profile counts only the CPU that thread used,
so the busy threads of the other developers on a shared box and the time a thread waits
(for the disk, a lock, the loop) count for nothing. The profiles are merged when the daemon
stops. The bench drives a warm-up and then N cash payments from C clients; the table folds
the functions into the parts of a request, with each part's share of the profiled CPU and
that share of the daemon's CPU per payment as the kernel counts it (``/proc/PID/stat`` over
the timed load, like ``bench/api.py``).

A C function (``sqlite3`` ``execute``, ``commit``, ``hashlib``, the socket calls) is counted
for the Python function that called it, so ``execute`` inside the audit chain is the audit
chain's; the group commit's ``COMMIT`` is the ``commit`` call of the writer.

    .venv/bin/python bench/profile_api.py [--n 4000] [--clients 20] [--top 25] [--stats F]

Deterministic profiling slows Python code down more than C code, so the shares lean towards
the Python parts; the bench's own figure (``bench/api.py``) is the one to compare.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api import drive_payments  # noqa: E402
from tests.daemon_process import (  # noqa: E402
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    write_config,
)

SITECUSTOMIZE = '''
import atexit, cProfile, os, pstats, threading, time
_profiles = []
def _start_thread(*_args):
    prof = cProfile.Profile(time.thread_time)
    _profiles.append(prof)
    prof.enable()
threading.setprofile(_start_thread)
_main = cProfile.Profile(time.thread_time)
_profiles.append(_main)
_main.enable()
def _dump():
    _main.disable()
    stats = pstats.Stats(_profiles[0])
    for prof in _profiles[1:]:
        stats.add(prof)
    stats.dump_stats(os.environ["EDGED_PROFILE_OUT"])
atexit.register(_dump)
'''

STARTUP = "start-up (imports, not per payment)"

# (part, file pattern, function pattern or None): a Python function's own time goes to the
# first matching part; a C function's time goes to its callers' parts.
RULES: tuple[tuple[str, str, str | None], ...] = (
    (STARTUP, r"<frozen |importlib|dataclasses\.py|/re/|typing\.py|enum\.py|ssl\.py|attr/",
     None),
    (STARTUP, r"edged/app\.py", r"^serve$"),
    ("JSON encode/decode", r"/json/|orjson|edged/jsoncodec\.py", None),
    ("audit chain", r"edged/audit\.py", None),
    ("idempotency lookup", r"edged/idempotency\.py", r"^lookup$"),
    ("idempotency store", r"edged/idempotency\.py", r"^save$"),
    ("idempotency body hash", r"edged/idempotency\.py", r"body_hash"),
    ("idempotency key lock", r"edged/idempotency\.py|contextlib\.py", None),
    # a cash payment inserts its row and builds its answer from it (no read-back): the
    # comprehension inside insert_payment is its own function to the profiler
    ("payment insert", r"edged/records\.py", r"^insert_payment$|<dictcomp>|<genexpr>"),
    ("idempotency store", r"edged/answer\.py", r"^stored_answer$"),
    ("payment row read-back", r"edged/(records|answer)\.py", None),
    ("payment insert", r"edged/payments\.py", r"write"),
    ("ids and timestamps", r"edged/ids\.py|sync/clock\.py|random\.py|base64\.py|secrets\.py",
     None),
    ("alerts (looks after events)", r"edged/alerts\.py", None),
    ("auth (token)", r"edged/(tokens|token_cache|services)\.py", None),
    ("request metrics", r"edged/metrics\.py", None),
    ("events", r"edged/events\.py", None),
    ("rate limits", r"edged/api/ratelimit\.py", None),
    ("body checks (schema, card number scan)", r"edged/(api/schema|cardnumbers)\.py", None),
    ("commit (fsync)", r"edged/store/database\.py", r"^_commit$"),
    ("writer: BEGIN, SAVEPOINT, RELEASE", r"edged/store/database\.py", r"_run_group"),
    ("reader hop (BEGIN, COMMIT on a reader)", r"edged/store/database\.py", r"_run_read"),
    ("write/read hand-off (futures, queue)", r"edged/store/database\.py", None),
    ("route handlers and middleware", r"edged/(api|payments)", None),
    ("HTTP response (aiohttp)", r"aiohttp/(web_response|http_writer|helpers|multidict)",
     None),
    ("HTTP parsing and dispatch (aiohttp)", r"aiohttp/|multidict|yarl", None),
    ("thread pools (hand-off)", r"concurrent/futures|threading\.py|queue\.py", None),
    ("event loop (asyncio, uvloop, sockets)", r"asyncio/|uvloop|selectors\.py|socket", None),
)
_COMPILED = [(part, re.compile(f), re.compile(fn) if fn else None) for part, f, fn in RULES]

Func = tuple[str, int, str]


def part_of(func: Func) -> str | None:
    file, _, name = func
    if file == "~":
        return None  # a C function: its callers decide
    for part, fpat, fnpat in _COMPILED:
        if fpat.search(file) and (fnpat is None or fnpat.search(name)):
            return part
    return "other"


def fold(stats: pstats.Stats, ) -> Counter[str]:
    parts: Counter[str] = Counter()
    table = stats.stats  # type: ignore[attr-defined]
    for func, (_cc, _nc, tottime, _ct, callers) in table.items():
        part = part_of(func)
        if part is not None:
            parts[part] += tottime
            continue
        # A C function: split its own time between its callers (pstats keeps it per caller).
        for caller, entry in callers.items():
            caller_part = part_of(caller) or "C called from C"
            if func[2] == "<method 'commit' of 'sqlite3.Connection' objects>":
                caller_part = "commit (fsync)"
            parts[caller_part] += entry[2]
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--top", type=int, default=0, help="also print the top functions")
    p.add_argument("--stats", type=Path, default=None, help="keep the merged pstats file")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="edged-profile-"))
    data = workdir / "data"
    data.mkdir()
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = args.stats or workdir / "daemon.pstats"
    config = write_config(workdir / "edged.toml", api=UNLIMITED_API)
    try:
        token = create_tokens(data, ["bench"])["bench"]
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                           os.environ.get("PYTHONPATH")])),
               "EDGED_PROFILE_OUT": str(out)}
        with DaemonProcess(data, config=config, env=env) as daemon:
            asyncio.run(drive_payments(daemon, token, 200, args.clients))  # warm-up
            load = asyncio.run(drive_payments(daemon, token, args.n, args.clients))
            daemon.terminate()
        stats = pstats.Stats(str(out))
    finally:
        if args.stats is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if load.failures:
        print(f"failed: {load.failures[:3]}", file=sys.stderr)
        return 1
    done = len(load.latencies)
    cpu_ms = (load.cpu_after - load.cpu_before) / done * 1000
    parts = fold(stats)
    startup = parts.pop(STARTUP, 0.0)
    total = sum(parts.values())
    print(f"daemon CPU per durable cash payment under the profiler: {cpu_ms:.3f} ms"
          f" ({done} payments, {args.clients} clients; the profiler's own cost included)")
    print(f"  {'part':<42} {'share':>6}")
    for part, seconds in parts.most_common():
        print(f"  {part:<42} {seconds / total:6.1%}")
    print(f"  (left out: {startup:.2f} s of start-up, imports and the like)")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
