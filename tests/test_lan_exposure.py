"""What the daemon shows the LAN and leaves on disk (issue 17, point 7).

- ``/metrics`` (sales volume by method, terminal ids, pairing failures) needs a bearer
  token of any scope from another box; from the box itself it needs none; ``[api]
  metrics_public = true`` opens it, with a warning at every start. The daemon listens on
  every address here and is reached through the box's own LAN address, so the client
  really is not loopback (no packet leaves the box).
- The data folder is 0700 and the database files 0600 whatever the umask, and a folder
  an older version left 0755 with a 0644 database is tightened at the next start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edged.lan import tokens
from edged.lan.tls import box_addresses
from tests.daemon_process import DaemonProcess, run_cli
from tests.helpers import make_config, running


def _lan_address() -> str:
    for address in box_addresses():
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_loopback and not ip.is_link_local:
            return address
    pytest.skip("this box has no IPv4 address besides loopback (tests/test_lan_netns.py"
                " checks /metrics from another namespace)")


async def _metrics(base: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics",
                                                               headers=headers) as r:
        return r.status, await r.text()


async def test_metrics_need_a_token_from_another_box(tmp_path: Path) -> None:
    lan = _lan_address()
    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, listen="0.0.0.0:0", allowed_hosts=(lan,)))
    async with running(cfg) as api:
        port = api.daemon.port
        status, text = await _metrics(f"http://{lan}:{port}")
        assert status == 401 and "ERR-5001" in text and "metrics_public" in text
        assert "edged_http_requests_total" not in text
        monitor = await api.daemon.db.write(lambda c: tokens.create(c, "prom", "monitor"))
        status, text = await _metrics(f"http://{lan}:{port}", monitor)
        assert status == 200 and "edged_terminal_up" in text
        status, _ = await _metrics(f"http://{lan}:{port}", "edg_wrong")
        assert status == 401
        status, text = await _metrics(f"http://127.0.0.1:{port}")  # the box's own Prometheus
        assert status == 200 and "edged_terminal_up" in text


async def test_metrics_public_lets_the_lan_in_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    lan = _lan_address()
    cfg = make_config(tmp_path / "data")
    cfg = replace(cfg, api=replace(cfg.api, listen="0.0.0.0:0", allowed_hosts=(lan,),
                                   metrics_public=True))
    async with running(cfg) as api:
        status, text = await _metrics(f"http://{lan}:{api.daemon.port}")
        assert status == 200 and "edged_terminal_up" in text
    assert "metrics_public = true" in caplog.text


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_folder_and_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with umask(0), DaemonProcess(data) as daemon:  # a umask that hides nothing
        token = daemon.create_token("lane-1")
        assert daemon.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                            "method": "cash"}, token=token,
                           key="mode-1").status == 201
        assert _mode(data) == 0o700
        for name in ("edged.db", "edged.db-wal", "edged.db-shm", "audit.key"):
            assert _mode(data / name) == 0o600, name


def test_a_folder_left_open_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    sqlite3.connect(data / "edged.db").close()  # as the old daemon left it, under umask 022
    (data / "edged.db").chmod(0o644)
    run_cli(data, "token", "list")
    assert _mode(data) == 0o700
    assert _mode(data / "edged.db") == 0o600
