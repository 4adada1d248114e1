"""Nobody on the store LAN can stop the lanes with slow connections (issue 17, point 1).

One address (127.0.0.1) keeps 512 connections that each send the headers of ``POST
/v1/pair`` (and 32 more of ``POST /session``) with ``Content-Length: 100`` and one byte of
body, opening a new one whenever the daemon closes one; a monitor token on the same address asks for 32
event streams and holds what it gets. Meanwhile a register on another address (127.0.0.2,
loopback too) takes cash payments one after the other, each on a fresh connection: every
one must be answered 201 in under a second, the product's promise, for the whole hold.

The hold lasts ``EDGED_SLOW_HOLD_SECONDS`` (6 s in the suite) and the daemon's header
timeout ``EDGED_SLOW_HEADER_TIMEOUT`` (4 s in the suite; 15 s by default): the hold is longer
than the header timeout, so slow connections the daemon had kept would have been kept for
the whole hold (the issue's 60 s with ``EDGED_SLOW_HOLD_SECONDS=60
EDGED_SLOW_HEADER_TIMEOUT=15``). The attacker runs in a process of its own
(tests/slowloris.py) so that its CPU is not the register's; the daemon is a real process on
uvloop with the default limits but for the register's own rate limits and the header timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edged.config import ApiConfig
from tests.daemon_process import UNLIMITED_API, DaemonProcess, create_tokens, write_config

ROOT = Path(__file__).resolve().parent.parent
HOLD = float(os.environ.get("EDGED_SLOW_HOLD_SECONDS", "6"))
HEADER_TIMEOUT = float(os.environ.get("EDGED_SLOW_HEADER_TIMEOUT", "4"))
SLOW = 512
SESSIONS = 32
STREAMS = 32
PROMISE = 1.0  # seconds: a register's cash payment, whatever else happens on the LAN

# serial: a promise in real time (under a second a payment), kept apart from other tests
pytestmark = [pytest.mark.timeout(HOLD + 120), pytest.mark.serial]


async def _register(base: str, token: str, until: float) -> list[float | str]:
    """Cash payments one after the other, each on a new connection from 127.0.0.2."""
    out: list[float | str] = []
    timeout = aiohttp.ClientTimeout(total=10)
    n = 0
    while time.monotonic() < until:
        n += 1
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            started = time.monotonic()
            try:
                async with session.post(
                        base + "/v1/payments",
                        json={"amount": 100 + n % 50, "currency": "EUR", "method": "cash"},
                        headers={"Authorization": f"Bearer {token}",
                                 "Idempotency-Key": f"slow-{n}"}) as r:
                    await r.read()
                    took = time.monotonic() - started
                    out.append(took if r.status == 201 else f"HTTP {r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.append(f"{type(exc).__name__} after {time.monotonic() - started:.2f} s")
    return out


def test_a_register_pays_in_under_a_second_while_one_address_holds_slow_connections(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = create_tokens(data, ["lane-1"])["lane-1"]
    monitor = create_tokens(data, ["wall-1"], scope="monitor")["wall-1"]
    assert HOLD > HEADER_TIMEOUT, "the hold must outlast the header timeout"
    config = write_config(tmp_path / "edged.toml",
                          api={**UNLIMITED_API, "header_timeout": HEADER_TIMEOUT})
    with DaemonProcess(data, config=config) as daemon:
        attacker = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.slowloris", daemon.base_url, "--source",
             "127.0.0.1", "--count", str(SLOW), "--sessions", str(SESSIONS),
             "--seconds", str(HOLD + 2),
             "--monitor-token", monitor, "--streams", str(STREAMS)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert attacker.stdout is not None
            assert attacker.stdout.readline().strip() == "attacking"
            until = time.monotonic() + HOLD
            results = asyncio.run(_register(daemon.base_url, token, until))
            out, err = attacker.communicate(timeout=60)
            cpu = daemon.cpu_seconds()
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait(timeout=10)
        assert attacker.returncode == 0, err
        stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        stderr = daemon.stderr_text()
    latencies = [r for r in results if isinstance(r, float)]
    failures = [r for r in results if not isinstance(r, float)]
    ranked = sorted(latencies)
    summary = (f"{len(results)} payments in {HOLD:g} s, median"
               f" {ranked[len(ranked) // 2] if ranked else 0:.3f} s, slowest"
               f" {max(latencies, default=0):.3f} s, failures {failures[:5]}; daemon CPU"
               f" {cpu:.1f} s; attacker {stats}")
    print(summary)
    # the attack really ran: it kept connecting and sending slow bodies the whole time
    assert stats["opened"] >= SLOW, summary
    assert stats["most_open"] >= 32, summary
    assert not failures, summary
    assert len(latencies) >= HOLD, summary  # at least one a second, all the way
    assert max(latencies) < PROMISE, summary
    # the monitor got its maximum of streams and no more; the others were told why
    most = ApiConfig().max_streams_per_token
    assert stats["streams_held"] == most, summary
    assert stats["streams_refused"] == {"429": STREAMS - most}, summary
    assert "Traceback" not in stderr
