"""Run a real ``edged`` daemon as a subprocess, for the crash tests and the benches.

    with DaemonProcess(data_dir, config=cfg_file) as daemon:   # started, ready
        token = daemon.create_token("lane-1")
        resp = daemon.request("POST", "/v1/payments", {...}, token=token, key="k-1")
        daemon.kill()            # SIGKILL, or daemon.terminate() for SIGTERM

The process is ``python -m edged run --data-dir D --listen 127.0.0.1:P [--config F]``
(the same interpreter as the caller, so the venv's ``edged``). Start-up waits for the
``edged ready on http://…`` line on stdout with a bounded timeout and, on failure, raises
with the daemon's stderr. Standard error goes to a file (no pipe to fill up and stall the
daemon); :meth:`DaemonProcess.stderr_text` reads it. Nothing here sleeps for timing: every
wait is a bounded blocking wait on the process, the stdout line queue or a socket.

The HTTP helper is a small synchronous client on ``http.client`` (no third-party client),
good for checks; load generators should use their own (aiohttp) client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

READY_RE = re.compile(r"edged ready on (https?://(\S+):(\d+))")
DEFAULT_READY_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0

# Inbound limits high enough that a load generator never meets a 429 (the defaults are
# sized for one register: 10 payments/s per token).
UNLIMITED_API = {"rate_per_second": 1e6, "rate_burst": 1_000_000,
                 "payment_rate_per_second": 1e6, "payment_rate_burst": 1_000_000}


class DaemonError(RuntimeError):
    """The daemon did not start, or did not stop as asked; the message carries its stderr."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, shopify: bool = False, shopify_admin_url: str | None = None,
                 api: Mapping[str, Any] | None = None, log_level: str | None = None) -> Path:
    """A TOML file for the daemon.

    ``shopify=True`` makes every sale queue a Shopify row; with no token set nothing is
    sent, and ``shopify_admin_url`` (for example a closed local port, or a fake) keeps any
    attempt off the internet.
    """
    lines: list[str] = []
    if api:
        lines.append("[api]")
        lines += [f"{k} = {_toml(v)}" for k, v in api.items()]
    if shopify:
        lines += ["[shopify]", 'shop = "x.myshopify.com"',
                  'location_id = "gid://shopify/Location/1"']
        if shopify_admin_url:
            lines.append(f"admin_url = {_toml(shopify_admin_url)}")
    if log_level:
        lines += ["[log]", f"level = {_toml(log_level)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_catalogue(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """A catalogue CSV for ``edged items import``."""
    cols = ("sku", "barcode", "title", "price", "variant_id", "inventory_item_id", "quantity")
    out = [",".join(cols)]
    for row in rows:
        out.append(",".join(str(row.get(c, "")) for c in cols))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def run_cli(data_dir: Path, *args: str, config: Path | None = None, check: bool = True,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m edged ARGS --data-dir D [--config F]``; raises with stderr if it fails."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "edged", *args, "--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,  # noqa: S603
                          cwd=data_dir, check=False)
    if check and done.returncode != 0:
        raise DaemonError(f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout}"
                          f"\nstderr: {done.stderr}")
    return done


def create_tokens(data_dir: Path, names: Sequence[str], *, scope: str = "register",
                  timeout: float = CLI_TIMEOUT) -> dict[str, str]:
    """Create several tokens with the CLI, one after the other.

    Not side by side: ``edged token create`` appends its audit entry outside a
    transaction, so concurrent runs can fork the audit hash chain.
    """
    tokens: dict[str, str] = {}
    for name in names:
        done = run_cli(data_dir, "token", "create", name, "--scope", scope, timeout=timeout)
        token = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        if not token:
            raise DaemonError(f"token create {name} printed no token; stderr: {done.stderr}")
        tokens[name] = token
    return tokens


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text) if self.text else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def http_request(base_url: str, method: str, path: str, body: Any = None, *,
                 token: str | None = None, key: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 15.0) -> Response:
    """One HTTP request on a fresh connection (``http.client``): JSON in, text out."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=timeout)
    send: dict[str, str] = {"Accept": "application/json"}
    if token is not None:
        send["Authorization"] = f"Bearer {token}"
    if key is not None:
        send["Idempotency-Key"] = key
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        send["Content-Type"] = "application/json"
    elif method.upper() == "POST":
        data = b""
    send.update(headers or {})
    try:
        conn.request(method.upper(), path, body=data, headers=send)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return Response(resp.status, {k: v for k, v in resp.getheaders()}, text)
    finally:
        conn.close()


@dataclass
class DaemonProcess:
    """One daemon process on ``data_dir``; a context manager that always cleans up."""

    data_dir: Path
    config: Path | None = None
    port: int | None = None  # None: pick a free port
    host: str = "127.0.0.1"
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    env: Mapping[str, str] | None = None
    extra_args: Sequence[str] = ()
    wrapper: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "ns1"): run inside a namespace
    proc: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    base_url: str = field(default="", init=False)
    startup_seconds: float = field(default=0.0, init=False)
    stdout_lines: list[str] = field(default_factory=list, init=False, repr=False)
    _stderr_path: Path | None = field(default=None, init=False, repr=False)
    _stderr_file: Any = field(default=None, init=False, repr=False)
    _stderr_final: str | None = field(default=None, init=False, repr=False)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue, init=False,
                                            repr=False)
    _reader: threading.Thread | None = field(default=None, init=False, repr=False)

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> DaemonProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> DaemonProcess:
        """Start the process and return once it printed its ready line.

        With no port given, a free one is picked; should another process take it before
        the daemon binds it (a narrow race), the start is tried again on a new port.
        """
        if self.proc is not None:
            raise DaemonError("this DaemonProcess was already started; make a new one")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.port is not None:
            return self._start_once()
        for attempt in range(3):
            self.port = free_port(self.host)
            try:
                return self._start_once()
            except DaemonError as exc:
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
                self.proc, self._stderr_final, self.stdout_lines = None, None, []
                self._lines = queue.Queue()
        raise AssertionError("unreachable")

    def _start_once(self) -> DaemonProcess:
        cmd = [*self.wrapper, sys.executable, "-m", "edged", "run", "--data-dir",
               str(self.data_dir),
               "--listen", f"{self.host}:{self.port}", *self.extra_args]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        fd, name = tempfile.mkstemp(prefix="edged-stderr-", suffix=".log")
        os.close(fd)
        self._stderr_path = Path(name)
        self._stderr_file = open(self._stderr_path, "w+b")  # noqa: SIM115 (closed in close())
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        started = time.monotonic()
        self.proc = subprocess.Popen(  # noqa: S603
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr_file,
            text=True, bufsize=1, cwd=self.data_dir, env=env)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True,
                                        name=f"edged-stdout-{self.proc.pid}")
        self._reader.start()
        deadline = started + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abort(f"no ready line within {self.ready_timeout:.0f} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue  # the deadline check above raises
            if line is None:  # stdout closed: the process is gone
                code = self.proc.wait(timeout=10)
                self._abort(f"the daemon exited with status {code} before it was ready")
            match = READY_RE.search(line)
            if match:
                self.startup_seconds = time.monotonic() - started
                self.base_url = match.group(1)
                self.port = int(match.group(3))
                return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def _abort(self, why: str) -> NoReturn:
        self.close()  # kills the process if it still runs; keeps its stderr text
        raise DaemonError(f"edged did not start ({why}); stdout: {self.stdout_lines!r}\n"
                          f"--- stderr ---\n{self.stderr_text()}")

    def terminate(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit; SIGKILL and raise if it does not come in time."""
        proc = self._proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise DaemonError(f"edged did not stop within {timeout:.0f} s of SIGTERM\n"
                              f"--- stderr ---\n{self.stderr_text()}") from None

    def send_sigterm(self) -> None:
        """SIGTERM without waiting (for tests that keep talking to the daemon meanwhile)."""
        self._proc().send_signal(signal.SIGTERM)

    def send_sigkill(self) -> None:
        """SIGKILL without waiting (to pull the plug from inside a running load)."""
        self._proc().kill()

    def kill(self) -> int:
        """SIGKILL (the plug pulled): no chance to finish anything; wait for the exit."""
        proc = self._proc()
        if proc.poll() is None:
            proc.kill()
        return proc.wait(timeout=30)

    def wait(self, timeout: float | None = None) -> int:
        return self._proc().wait(timeout=timeout)

    def close(self) -> None:
        """Kill the process if it still runs, and release every resource. Idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        if self._stderr_file is not None:
            self._stderr_final = self.stderr_text()
            self._stderr_file.close()
            self._stderr_file = None
        if self._stderr_path is not None:
            with contextlib.suppress(OSError):
                self._stderr_path.unlink()
            self._stderr_path = None

    def _proc(self) -> subprocess.Popen[str]:
        if self.proc is None:
            raise DaemonError("the daemon was not started")
        return self.proc

    def restarted(self, **changes: Any) -> DaemonProcess:
        """A new, not yet started DaemonProcess on the same data dir, config and port.

        When this one has already exited (killed or stopped), its resources go now (its
        stderr file in the temporary folder), as :meth:`close` would.
        """
        if self.proc is not None and not self.running():
            self.close()
        params: dict[str, Any] = {
            "data_dir": self.data_dir, "config": self.config, "port": self.port,
            "host": self.host, "ready_timeout": self.ready_timeout, "env": self.env,
            "extra_args": self.extra_args}
        params.update(changes)
        return DaemonProcess(**params)

    # -- what it said ---------------------------------------------------------------------

    def stderr_text(self) -> str:
        if self._stderr_final is not None:
            return self._stderr_final
        if self._stderr_path is None:
            return ""
        try:
            return self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the daemon process (VmRSS in /proc/PID/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise DaemonError("no VmRSS in /proc/PID/status")

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon process used so far (/proc/PID/stat)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    # -- talking to it --------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edged.db"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.data_dir, *args, config=self.config, check=check)

    def create_token(self, name: str, scope: str = "register") -> str:
        return create_tokens(self.data_dir, [name], scope=scope)[name]

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                key: str | None = None, headers: Mapping[str, str] | None = None,
                timeout: float = 15.0) -> Response:
        if not self.base_url:
            raise DaemonError("the daemon is not ready")
        return http_request(self.base_url, method, path, body, token=token, key=key,
                            headers=headers, timeout=timeout)

    def get(self, path: str, *, token: str | None = None) -> Response:
        return self.request("GET", path, token=token)

    def post(self, path: str, body: Any, *, token: str, key: str) -> Response:
        return self.request("POST", path, body, token=token, key=key)
