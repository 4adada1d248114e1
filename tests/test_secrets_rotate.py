"""`edged secret rotate-key`: every secret sealed again in one transaction, old key kept."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from edged.store import secrets
from edged.store.database import open_sync
from tests.daemon_process import run_cli

NO_CREDS: dict[str, str] = {}


def _seed(data: Path) -> bytes:
    for name, value in (("stripe.key", "sk_test_one"), ("shopify.token", "shpat_two")):
        secrets.cli_set(data, name, io.StringIO(value + "\n"), env=NO_CREDS)
    return (data / "secret.key").read_bytes()


def _values(data: Path, key: bytes) -> dict[str, str | None]:
    conn = open_sync(data / "edged.db")
    try:
        store = secrets.SecretStore(key)
        return {n: store.get(conn, n) for n in ("stripe.key", "shopify.token")}
    finally:
        conn.close()


def _blobs(data: Path) -> list[tuple[str, bytes]]:
    conn = sqlite3.connect(data / "edged.db")
    try:
        return [(n, bytes(b)) for n, b in
                conn.execute("SELECT name, ciphertext FROM secrets ORDER BY name")]
    finally:
        conn.close()


def _leftovers(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith("secret.key."))


def test_rotation_reseals_every_secret_under_a_new_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = _seed(data)
    before = _blobs(data)
    said = secrets.rotate_key(data, env=NO_CREDS)
    assert "2 secret(s)" in said
    new = (data / "secret.key").read_bytes()
    assert new != old and len(new) == 32
    assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
    assert _leftovers(data) == []
    assert _values(data, new) == {"stripe.key": "sk_test_one", "shopify.token": "shpat_two"}
    assert all(b1 != b2 for (_, b1), (_, b2) in zip(before, _blobs(data), strict=True))
    with pytest.raises(secrets.SecretUnreadable):
        _values(data, old)
    conn = sqlite3.connect(data / "edged.db")
    (entry,) = conn.execute("SELECT data FROM audit WHERE action = 'secret.key_rotated'")
    conn.close()
    assert "sk_test" not in entry[0] and "stripe.key" in entry[0]
    assert "audit chain OK" in run_cli(data, "audit", "verify").stdout


def test_a_failure_inside_the_transaction_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = _seed(data)
    before = _blobs(data)
    conn = sqlite3.connect(data / "edged.db")
    conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON secrets WHEN NEW.name = 'stripe.key'"
                 " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        secrets.rotate_key(data, env=NO_CREDS)
    assert (data / "secret.key").read_bytes() == old
    assert _blobs(data) == before  # shopify.token, updated first, was rolled back too
    assert _leftovers(data) == []
    assert _values(data, old)["stripe.key"] == "sk_test_one"


def test_a_crash_between_commit_and_swap_is_finished_by_the_next_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = _seed(data)

    def crash() -> None:
        raise KeyboardInterrupt  # the process dies here: the database moved, the file not

    with pytest.raises(KeyboardInterrupt):
        secrets.rotate_key(data, env=NO_CREDS, before_swap=crash)
    assert (data / "secret.key").read_bytes() == old  # the old key file is still there
    pending = (data / "secret.key.new").read_bytes()
    assert _values(data, pending)["stripe.key"] == "sk_test_one"
    said = secrets.rotate_key(data, env=NO_CREDS)
    assert said.startswith("finished the rotation")
    final = (data / "secret.key").read_bytes()
    assert final not in (old, pending) and _leftovers(data) == []
    assert _values(data, final) == {"stripe.key": "sk_test_one", "shopify.token": "shpat_two"}


def test_a_new_key_left_unused_is_dropped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _seed(data)
    stray = data / "secret.key.new"
    stray.write_bytes(os.urandom(32))
    stray.chmod(0o600)
    assert secrets.rotate_key(data, env=NO_CREDS).startswith("dropped the unused new key")
    assert _values(data, (data / "secret.key").read_bytes())["shopify.token"] == "shpat_two"


def test_systemd_credential_names_the_file_to_rotate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    creds = tmp_path / "creds"
    creds.mkdir()
    etc_key = tmp_path / "etc-edged.key"
    etc_key.write_bytes(os.urandom(32))
    etc_key.chmod(0o600)
    (creds / "edged.key").write_bytes(etc_key.read_bytes())
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    secrets.cli_set(data, "square.token", io.StringIO("sq0_three"), env=env)
    with pytest.raises(secrets.SecretError, match="--key-file"):
        secrets.rotate_key(data, env=env)
    secrets.rotate_key(data, key_file=etc_key, env=env)
    assert etc_key.read_bytes() != (creds / "edged.key").read_bytes()
    conn = open_sync(data / "edged.db")
    try:
        assert secrets.SecretStore(etc_key.read_bytes()).get(conn, "square.token") == "sq0_three"
    finally:
        conn.close()


def test_the_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _seed(data)
    done = run_cli(data, "secret", "rotate-key")
    assert "rotated: 2 secret(s)" in done.stdout
    assert "sk_test_one" not in done.stdout + done.stderr
