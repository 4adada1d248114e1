"""What `edged run` loads: cryptography stays out of a daemon without TLS (about 10 MB of
its idle memory, and 50 ms of its start), however it is started."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent("""
    import json, os, signal, sys, threading, time, urllib.request
    from edged import cli

    port, data, config = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        loaded = sorted({m.split(".")[0] for m in sys.modules} & {"cryptography", "stripe"})
        print(json.dumps({"loaded": loaded}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    sys.exit(cli.main(["run", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                       "--config", config]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_daemon_without_tls_never_loads_cryptography(tmp_path: Path) -> None:
    config = tmp_path / "edged.toml"
    config.write_text("[discovery]\nenabled = false\n", encoding="utf-8")
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", PROBE, str(_free_port()), str(tmp_path / "data"), str(config)],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []
    assert "stopped cleanly" in done.stderr
