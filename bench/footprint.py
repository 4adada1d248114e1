"""The daemon's idle memory and start-up time, with no cloud and with all three configured.

Starts a real daemon (``python -m edged run`` through ``tests/daemon_process.py``) on a
fresh data dir, reads ``VmRSS`` from ``/proc/PID/status`` once it printed its ready line and
again after ``--settle`` seconds of idling, and stops it; then the same with ``[shopify]``,
``[stripe]`` and ``[square]`` configured. Their SDKs (``stripe``, ``squareup`` and its
pydantic models, ``httpx``) are imported on a worker thread once the daemon is ready
(``sync/core/preload.py``); the bench waits for the line saying they are loaded before the
second reading, so that figure includes them; every upstream URL points at a closed
loopback port and no secret is set, so nothing leaves the box. Start → ready is from ``Popen`` to the ready line,
interpreter start included, with the CPU the daemon used by then (``/proc/PID/stat``,
which a busy box does not inflate as much); the best of ``--starts`` starts is printed
with the median (a shared box slows some starts down).

    .venv/bin/python bench/footprint.py [--starts 3] [--settle 1.0]

Targets (issue 22): idle RSS <= 60 MB with no cloud, <= 90 MB with all three; start → ready
<= 0.6 s with no cloud, <= 0.8 s with all three.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.daemon_process import DaemonProcess, free_port  # noqa: E402

TARGET_RSS_MB = {"no cloud": 60.0, "shopify + stripe + square": 90.0}
TARGET_READY_S = {"no cloud": 0.6, "shopify + stripe + square": 0.8}
MB = 1024 * 1024


def cloud_config(path: Path) -> Path:
    closed = f"http://127.0.0.1:{free_port()}"  # nobody listens: nothing leaves the box
    path.write_text(
        "[shopify]\n"
        'shop = "bench.myshopify.com"\n'
        'location_id = "gid://shopify/Location/1"\n'
        f'admin_url = "{closed}/admin"\n\n'
        "[stripe]\n"
        f'base_url = "{closed}"\n\n'
        "[square]\n"
        f'base_url = "{closed}"\n'
        'location_id = "L1"\n', encoding="utf-8")
    return path


SDKS_LOADED = "the processors' SDKs are loaded"


def measure(workdir: Path, config: Path | None,
            settle: float) -> tuple[float, float, float, float]:
    """(RSS at ready, RSS after settling, seconds from Popen to ready, CPU seconds used by
    then), in bytes and s. With cloud destinations, settling starts once their SDKs are
    loaded."""
    data = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    with DaemonProcess(data, config=config) as daemon:
        cpu = daemon.cpu_seconds()
        at_ready = daemon.rss_bytes()
        if config is not None:
            deadline = time.monotonic() + 30.0
            while SDKS_LOADED not in daemon.stderr_text():
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon never said its SDKs were loaded")
                time.sleep(0.02)
        time.sleep(settle)  # idle on purpose: background tasks start, pulls fail fast
        settled = daemon.rss_bytes()
        ready = daemon.startup_seconds
        daemon.terminate()
    return at_ready, settled, ready, cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--starts", type=int, default=3, help="starts per configuration (3)")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before the"
                   " second RSS reading (1.0)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="edged-footprint-"))
    rows: list[tuple[str, str, str]] = []
    try:
        configs = {"no cloud": None,
                   "shopify + stripe + square": cloud_config(workdir / "cloud.toml")}
        for name, config in configs.items():
            runs = [measure(workdir, config, args.settle) for _ in range(args.starts)]
            idle = max(max(r[0], r[1]) for r in runs) / MB
            ready = sorted(r[2] for r in runs)
            cpu = sorted(r[3] for r in runs)
            target = TARGET_RSS_MB[name]
            ready_target = TARGET_READY_S[name]
            rows.append((f"idle RSS, {name}", f"{idle:.1f} MB",
                         f"<= {target:.0f} MB  {'ok' if idle <= target else 'MISSED'}"))
            rows.append((f"start -> ready, {name}",
                         f"{ready[0]:.2f} s", f"median {statistics.median(ready):.2f} s;"
                         f" <= {ready_target} s  "
                         f"{'ok' if ready[0] <= ready_target else 'MISSED'}"))
            rows.append((f"daemon CPU to ready, {name}", f"{cpu[0]:.2f} s",
                         f"median {statistics.median(cpu):.2f} s (a busy box's floor for"
                         " start -> ready)"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"edged footprint: {args.starts} starts per configuration, RSS the larger of at"
          f" ready and after {args.settle:g} s idle (the largest over the starts)")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>{vwidth}}  {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
