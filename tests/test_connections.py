"""Idle sockets cannot take the API down (issue 7, defect 18): a real daemon process under
the default 1,024 open-file limit, 1,100 connections that never send a byte, and the API
still answers reads and writes."""

from __future__ import annotations

import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.daemon_process import UNLIMITED_API, DaemonProcess, create_tokens, write_config

IDLE = 1100
FILE_LIMIT = 1024


@contextlib.contextmanager
def inherited_file_limit(limit: int) -> Iterator[None]:
    """Children started inside get ``limit`` open files; this process keeps its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_1100_idle_sockets_under_1024_files_do_not_take_the_api_down(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 200:  # the test itself needs the sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    data = tmp_path / "data"
    token = create_tokens(data, ["register-1"])["register-1"]
    # header_timeout long enough that only the connection cap can save the API
    config = write_config(tmp_path / "edged.toml", api={**UNLIMITED_API,
                                                         "header_timeout": 600.0})
    with inherited_file_limit(FILE_LIMIT):
        daemon = DaemonProcess(data, config=config).start()
    idle: list[socket.socket] = []
    try:
        with open(f"/proc/{daemon.pid}/limits") as f:
            assert any(line.startswith("Max open files") and f" {FILE_LIMIT} " in line
                       for line in f)
        for _ in range(IDLE):
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", daemon.port))
            idle.append(sock)
        for i in range(5):
            resp = daemon.request("GET", "/healthz")
            assert resp.status == 200, resp.text
            resp = daemon.request("POST", "/v1/payments",
                                  {"amount": 100 + i, "currency": "EUR", "method": "cash"},
                                  token=token, key=f"idle-flood-{i}")
            assert resp.status == 201, resp.text
        open_fds = len(list(Path(f"/proc/{daemon.pid}/fd").iterdir()))
        assert open_fds < FILE_LIMIT
    finally:
        for sock in idle:
            sock.close()
        daemon.close()
    assert "Too many open files" not in daemon.stderr_text()
    assert "Traceback" not in daemon.stderr_text()
