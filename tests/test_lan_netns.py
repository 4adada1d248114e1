"""The store LAN end to end: the daemon and a register in two network namespaces.

Two namespaces joined by a veth pair, with addresses in a /30 that exists only inside
them (multicast on): the daemon listens with TLS in one; from the other ``edged discover``
hears it with the short fingerprint `edged pair` prints beside the code, a register proves
the code over HTTPS pinned to the announced fingerprint (a proof made for another
certificate gets nothing), calls the API, reads /metrics only with its token, is refused
over plain HTTP, and once its token is revoked its open event stream ends and its next
call is refused.
The namespaces are removed even when the test fails. Creating namespaces needs root
(CI runs as root); without it the test says so and skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess, run_cli

ROOT = Path(__file__).resolve().parent.parent
DAEMON_IP = "10.213.77.1"
REGISTER_IP = "10.213.77.2"
PORT = 8731

pytestmark = [pytest.mark.skipif(
    os.geteuid() != 0,
    reason="creating network namespaces and a veth pair needs root (CI runs as root);"
           " run `sudo .venv/bin/pytest tests/test_lan_netns.py` to see it"),
    pytest.mark.serial]  # fixed addresses and namespace names: one run at a time


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True,  # noqa: S603,S607
                   timeout=30)


@dataclass
class Lan:
    daemon_ns: str
    register_ns: str

    def in_register(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.register_ns, *cmd],  # noqa: S603,S607
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              check=False)

    def popen(self, *cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.register_ns, *cmd],  # noqa: S603,S607
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT)

    def register(self, *args: str) -> dict[str, Any]:
        done = self.in_register(sys.executable, "-m", "tests.lan_register", *args)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@pytest.fixture
def lan() -> Iterator[Lan]:
    if shutil.which("ip") is None:
        pytest.fail("`ip` (iproute2) is missing; .ci/run installs it")
    tag = uuid.uuid4().hex[:6]
    net = Lan(f"edged-box-{tag}", f"edged-reg-{tag}")
    veth_box, veth_reg = f"eb{tag}", f"er{tag}"
    try:
        _ip("netns", "add", net.daemon_ns)
        _ip("netns", "add", net.register_ns)
        _ip("link", "add", veth_box, "type", "veth", "peer", "name", veth_reg)
        for ns, dev, addr in ((net.daemon_ns, veth_box, DAEMON_IP),
                              (net.register_ns, veth_reg, REGISTER_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "multicast", "on", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield net
    finally:
        for ns in (net.daemon_ns, net.register_ns):  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,  # noqa: S603,S607
                           timeout=30, check=False)


def test_discover_pair_call_over_pinned_tls_and_revoke_across_namespaces(
        lan: Lan, tmp_path: Path) -> None:
    data = tmp_path / "box"
    config = tmp_path / "edged.toml"
    store = f"shop-{uuid.uuid4().hex[:6]}"
    config.write_text(f'[store]\nid = "{store}"\n[api]\nlisten = "0.0.0.0:{PORT}"\n'
                      "tls = true\n", encoding="utf-8")
    with DaemonProcess(data, config=config, host="0.0.0.0", port=PORT,  # noqa: S104
                       wrapper=("ip", "netns", "exec", lan.daemon_ns)) as daemon:
        assert daemon.base_url.startswith("https://")
        fingerprint = run_cli(data, "tls", "fingerprint", config=config).stdout.splitlines()
        names = next(line for line in fingerprint if line.startswith("names:"))
        assert f"{DAEMON_IP}," in names or names.endswith(DAEMON_IP)  # the box's address is in the certificate
        fp = fingerprint[-1]

        # the register's side: mDNS finds the daemon, with the fingerprint to pin
        heard: list[dict[str, Any]] = []
        for _ in range(5):  # bounded: one more listening window on a busy machine
            done = lan.in_register(sys.executable, "-m", "edged", "discover", "--timeout", "3",
                                   "--json")
            assert done.returncode == 0, done.stderr
            heard = [d for d in json.loads(done.stdout) if d["store"] == store]
            if heard:
                break
        assert len(heard) == 1, heard
        (seen,) = heard
        assert seen["addresses"] == [DAEMON_IP] and seen["port"] == PORT
        assert seen["tls"] is True and seen["fingerprint"] == fp
        url = f"https://{DAEMON_IP}:{PORT}"

        # pairing: a code from `edged pair`, proven over HTTPS pinned to the TXT fp; the
        # short fingerprint printed beside the code is the one discover showed
        printed = run_cli(data, "pair", "--name", "lane-7", config=config).stdout.splitlines()
        code = printed[-1]
        assert f"fingerprint {seen['short_fingerprint']}   code {code}" in printed
        # a register that pinned another certificate (a fake answerer's) does not even talk
        # to this daemon; what it sends the fake is refused here (tests/test_pairing.py)
        assert lan.register("pair", url, "5e" * 32, code, "lane-7")["status"] is None
        paired = lan.register("pair", url, seen["fingerprint"], code, "lane-7")
        assert paired["status"] == 201, paired
        token = paired["body"]["token"]
        assert lan.register("pair", url, fp, code, "lane-8")["status"] == 403  # used up

        # /metrics from the LAN: a token, or nothing
        assert lan.register("get", url, fp, "/metrics", "-")["status"] == 401
        metrics = lan.register("get", url, fp, "/metrics", token)
        assert metrics["status"] == 200 and metrics["body"].startswith("# HELP edged_")

        called = lan.register("get", url, fp, "/v1/terminals", token)
        assert called["status"] == 200 and called["body"]["data"][0]["id"] == "sim-1"
        # a wrong pin is refused by the register; plain HTTP gets no API at all
        wrong = lan.register("get", url, "ab" * 32, "/v1/terminals", token)
        assert wrong["status"] is None and "Fingerprint" in wrong["error"]
        plain = lan.register("plain", f"http://{DAEMON_IP}:{PORT}", "/healthz")
        assert plain["status"] is None, plain

        # revoked: the open event stream ends, the next call is refused
        stream = lan.popen(sys.executable, "-m", "tests.lan_register", "stream", url, fp,
                           token, "20")
        try:
            assert stream.stdout is not None
            assert json.loads(stream.stdout.readline())["open"] is True
            run_cli(data, "token", "revoke", "lane-7", config=config)
            ended = json.loads(stream.communicate(timeout=60)[0].strip().splitlines()[-1])
        finally:
            if stream.poll() is None:
                stream.kill()
                stream.wait(timeout=10)
        assert ended["ended"] is True, ended
        refused = lan.register("get", url, fp, "/v1/terminals", token)
        assert refused["status"] == 401
        assert refused["body"]["error"]["code"] == "ERR-5002"
        assert token not in daemon.stderr_text()
    audit = run_cli(data, "audit", "verify", config=config).stdout
    assert "audit chain OK" in audit
