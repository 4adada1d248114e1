"""Power cuts, on a file system that forgets what was not synced (issue 21 point 5, issue 16
point 11).

``tests/powerloss_fs.py`` is a FUSE file system (Debian's libfuse3 through mfusepy; CI runs
as root) that keeps two versions of everything: what programs see, and what a power cut
would leave, namely each file's bytes as of its last ``fsync`` and each directory's names
as of the last ``fsync`` of that directory (POSIX's promise, no more). ``cut`` throws the
first version away; a remount is the reboot.

- Under load, a real daemon writes its store there while registers take payments and
  record sales, each acknowledged only after its commit. The power is cut (every process
  on the box stops at once: the daemon and a control writer are killed, then ``cut``), the
  box restarts, and: every acknowledged payment and order is there as it was answered,
  nothing was done twice (a register's retry gets the first answer), ``integrity_check``
  and ``edged audit verify`` pass.
- The control, in the same cut: a connection with ``synchronous=OFF`` (which never calls
  fsync) committed rows on the same file system; after the cut they are gone. So the file
  system did drop what was not synced, and the daemon's survival is its own doing.
- Files written outside SQLite (the secrets key, the TLS certificate and key, the token
  revocation stamp) are synced with their folder: a cut right after the command that wrote
  them leaves them whole (before, a cut right after ``edged token revoke`` left the stamp
  as it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import (
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    free_port,
    run_cli,
    write_catalogue,
    write_config,
)
from tests.test_crash import (
    CATALOGUE,
    CLIENTS,
    Load,
    _load_until_trigger,
    durability_problems,
    store_problems,
)
from tests.tools import need

TRIGGER = 150  # acknowledged requests before the power goes
CONTROL_ROWS = 200

# one FUSE power-cut file system at a time (pytest-xdist: the same worker, one after the other)
pytestmark = pytest.mark.xdist_group("power_loss")


class PowerLossFS:
    """The file system process: ``cut``, ``sync``, ``remount`` over its standard input."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "tests.powerloss_fs", str(mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent)
        self._expect("mounted")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        if not result or not result[0]:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
            raise AssertionError(f"the power-loss file system did not answer; stderr: {err}")
        return result[0].strip()

    def _expect(self, prefix: str) -> str:
        line = self._line()
        assert line.startswith(prefix), line
        return line

    def command(self, text: str, answer: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._expect(answer)

    def cut(self) -> int:
        return int(self.command("cut", "cut").split()[1])

    def sync(self) -> None:
        self.command("sync", "synced")

    def remount(self) -> None:
        self.command("remount", "mounted")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False,  # noqa: S607
                       capture_output=True)


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerLossFS]:
    need("fusermount3", "fuse3", "a power cut (the FUSE file system of tests/powerloss_fs.py)")
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        message = "a power cut needs /dev/fuse and root (CI runs as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must not skip: {message}")
        pytest.skip(message)
    mount = PowerLossFS(tmp_path / "mnt")
    try:
        yield mount
    finally:
        mount.close()


CONTROL = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=OFF")
db.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER)")
for n in range(int(sys.argv[2])):
    db.execute("INSERT INTO rows VALUES (?)", (n,))  # a commit each, never an fsync
print("committed", flush=True)
sys.stdin.read()  # held open until the power goes
"""


@pytest.mark.timeout(240)
def test_a_power_cut_under_load_loses_nothing_acknowledged(fs: PowerLossFS,
                                                            tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    config = write_config(tmp_path / "edged.toml", shopify=True, api=UNLIMITED_API,
                          shopify_admin_url=f"http://127.0.0.1:{free_port()}/admin/api")
    run_cli(data, "items", "import", str(write_catalogue(tmp_path / "items.csv", CATALOGUE)),
            config=config)
    tokens = list(create_tokens(data, [f"register-{n}" for n in range(CLIENTS)]).values())
    fs.sync()  # the box as installed: a clean shutdown, everything on disk

    control = subprocess.Popen([sys.executable, "-c", CONTROL,  # noqa: S603
                                str(fs.mountpoint / "control.db"), str(CONTROL_ROWS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert control.stdout is not None and control.stdout.readline().strip() == "committed"
    daemon = DaemonProcess(data, config=config)
    try:
        daemon.start()
        load = Load(daemon.base_url, tokens, TRIGGER)
        asyncio.run(_load_until_trigger(load, daemon.send_sigkill))
        # the power goes: every process stops at once, then what was not synced is lost
        daemon.wait(30)
        control.kill()
        control.wait(30)
        lost = fs.cut()
    finally:
        daemon.close()
        if control.poll() is None:
            control.kill()
    fs.remount()  # the reboot
    assert load.acked >= TRIGGER
    assert [a for a in load.attempts if a.status is None], "the cut did not land mid-load"

    # the control: its rows were committed but never synced, and they are gone
    conn = sqlite3.connect(fs.mountpoint / "control.db")
    try:
        has_table = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rows'"
                                 ).fetchone()[0]
        kept = conn.execute("SELECT count(*) FROM rows").fetchone()[0] if has_table else 0
    finally:
        conn.close()
    assert kept < CONTROL_ROWS, "the file system kept rows that were never synced"
    assert lost > 0

    # the store after the reboot: everything acknowledged, nothing half-written
    again = DaemonProcess(data, config=config)
    with again:
        with contextlib.closing(sqlite3.connect(f"file:{again.db_path}?mode=ro",
                                                uri=True)) as db:
            db.row_factory = sqlite3.Row
            assert durability_problems(db, load) == []
            assert store_problems(db) == []
            before = db.execute("SELECT (SELECT count(*) FROM payments),"
                                " (SELECT count(*) FROM orders)").fetchone()[:]
        for a in load.acknowledged():  # a register that retries gets the same answer
            resp = again.post(a.path, a.body, token=a.token, key=a.key)
            assert resp.status == a.status and resp.json()["id"] == a.answered_id, resp.text
        with contextlib.closing(sqlite3.connect(f"file:{again.db_path}?mode=ro",
                                                uri=True)) as db:
            after = db.execute("SELECT (SELECT count(*) FROM payments),"
                               " (SELECT count(*) FROM orders)").fetchone()[:]
        assert after == before, "a retry after the power cut did something twice"
        assert again.terminate() == 0
    verify = run_cli(data, "audit", "verify", config=config, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\npower cut after {load.acked} acknowledged of {len(load.attempts)} sent:"
          f" {lost} unsynced bytes dropped; the control kept {kept} of {CONTROL_ROWS} rows")


@pytest.mark.timeout(120)
def test_files_written_outside_sqlite_survive_a_cut_right_after_the_command(
        fs: PowerLossFS, tmp_path: Path) -> None:
    data = fs.mountpoint / "data"
    config = tmp_path / "tls.toml"
    config.write_text("[api]\nlisten = \"0.0.0.0:8731\"\ntls = true\n", encoding="utf-8")
    create_tokens(data, ["lane-1", "lane-2"])
    fs.sync()
    # each command, then at once the power goes
    done = subprocess.run([sys.executable, "-m", "edged", "secret", "set", "stripe.key",  # noqa: S603
                           "--data-dir", str(data)], input="sk_test_123", text=True,
                          capture_output=True, check=True, timeout=60)
    assert "stored" in done.stdout
    fingerprint = run_cli(data, "tls", "fingerprint", config=config).stdout.split()[-1]
    run_cli(data, "token", "revoke", "lane-1")
    seen = {name: (data / name).read_bytes()
            for name in ("secret.key", "tls.crt", "tls.key", "tokens.revoked")}
    assert all(seen.values())
    fs.cut()
    fs.remount()
    for name, content in seen.items():
        assert (data / name).read_bytes() == content, f"{name} did not survive the cut"
    assert oct((data / "secret.key").stat().st_mode & 0o777) == "0o600"
    assert run_cli(data, "tls", "fingerprint", config=config).stdout.split()[-1] == fingerprint
    conn = sqlite3.connect(data / "edged.db")
    try:  # the secret stored before the cut decrypts with the key that survived it
        blob = conn.execute("SELECT ciphertext FROM secrets WHERE name = 'stripe.key'"
                            ).fetchone()[0]
    finally:
        conn.close()
    from edged.store.secrets import SecretStore  # noqa: PLC0415

    key = SecretStore.load_key(data, env={})
    assert SecretStore(key).open("stripe.key", bytes(blob)) == "sk_test_123"
    assert os.path.exists(data / "edged.db")
