"""systemd: the notify protocol on a real datagram socket, and the unit checked by systemd."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.ops.systemd_notify import Notifier
from tests.daemon_process import DaemonProcess
from tests.tools import need

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "edged.service"


class Listener:
    """The systemd side: a bound AF_UNIX datagram socket that parses KEY=VALUE messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def until(self, want: str, timeout: float = 20.0) -> tuple[dict[str, str],
                                                                list[dict[str, str]]]:
        """Messages up to the first one holding ``want`` (KEY or KEY=VALUE)."""
        seen = []
        key, _, value = want.partition("=")
        while True:
            msg = self.next(timeout)
            seen.append(msg)
            if key in msg and (not value or msg[key] == value):
                return msg, seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lis = Listener(tmp_path / "notify.sock")
    yield lis
    lis.close()


def test_ready_watchdog_only_while_healthy_and_stopping(tmp_path: Path,
                                                        listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    with DaemonProcess(tmp_path / "data", env=env) as daemon:
        ready = listener.next()
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(daemon.pid)
        assert ready["STATUS"].startswith("ready; terminals 1/1 online")
        assert "0 unknown payments" in ready["STATUS"]
        # the API listened before READY=1 was sent
        assert daemon.get("/healthz").status == 200
        for _ in range(2):
            beat, _ = listener.until("WATCHDOG=1")
            assert "terminals 1/1 online" in beat["STATUS"]

        # a writer holds the database: the check's write cannot commit, the watchdog starves
        blocker = sqlite3.connect(daemon.db_path, timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            sick, _ = listener.until("STATUS", timeout=20)
            while not sick["STATUS"].startswith("unhealthy"):
                sick, _ = listener.until("STATUS", timeout=20)
            assert "database write" in sick["STATUS"]
            for _ in range(2):  # while it lasts, no WATCHDOG=1 at all
                msg = listener.next()
                assert "WATCHDOG" not in msg, msg
                assert msg["STATUS"].startswith("unhealthy")
        finally:
            blocker.rollback()
            blocker.close()
        listener.until("WATCHDOG=1")  # fed again once writes commit
        assert daemon.terminate() == 0
    stopping, _ = listener.until("STOPPING=1")
    assert stopping["STATUS"].startswith("stopping")


def test_no_socket_no_messages_and_foreign_watchdog(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert Notifier({}).send("READY=1") is False
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, pid=2) \
        .watchdog_seconds is None  # the watchdog is meant for another process
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, pid=7) \
        .watchdog_seconds == 4.0


def test_abstract_socket_name(tmp_path: Path) -> None:
    name = f"edged-test-{tmp_path.name}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("STATUS=two\nlines", "READY=1")
        server.settimeout(5)
        assert server.recv(100) == b"STATUS=two lines\nREADY=1"
        notifier.close()
    finally:
        server.close()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = need("systemd-analyze", "systemd", "the unit file")
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "StateDirectory=edged",
                 "LoadCredential=edged.key:/etc/edged/edged.key"):
        assert line in text.splitlines(), line
    # verify insists that ExecStart's program exists: point it at this checkout's edged,
    # every other line as shipped
    shipped = "ExecStart=/opt/edged/.venv/bin/edged "
    assert shipped in text
    edged = Path(sys.executable).parent / "edged"
    assert edged.exists()
    local = tmp_path / "edged.service"
    local.write_text(text.replace(shipped, f"ExecStart={edged} "))
    out = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout + out.stderr == "", out.stdout + out.stderr
    # and it does read the file: a broken copy is reported
    local.write_text(local.read_text().replace("Type=notify", "Type=notfy"))
    out = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert "Failed to parse service type" in out.stdout + out.stderr
