"""Secrets at rest: AES-256-GCM under a key from systemd's credentials or a 0600 key file."""

from __future__ import annotations

import base64
import io
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.errors import EdgedError
from edged.store import audit
from edged.store.database import open_sync
from edged.store.secrets import (
    ALLOWED_NAMES,
    KeyFileInsecure,
    Secret,
    SecretError,
    SecretStore,
    SecretUnreadable,
    UnknownSecretName,
    cli_set,
)

VALUE = "shpat_0123456789abcdefFEDCBA9876543210"
NO_CREDS: dict[str, str] = {}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    d.mkdir()
    return d


@pytest.fixture
def conn(data_dir: Path) -> Iterator[sqlite3.Connection]:
    c = open_sync(data_dir / "edged.db")
    yield c
    c.close()


@pytest.fixture
def store() -> SecretStore:
    return SecretStore(os.urandom(32))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- encryption -------------------------------------------------------------------------


def test_round_trip(store: SecretStore, conn: sqlite3.Connection) -> None:
    assert store.get(conn, "stripe.key") is None
    store.put(conn, "stripe.key", VALUE)
    store.put(conn, "square.token", "sq0atp-é€ unicode")
    assert store.get(conn, "stripe.key") == VALUE
    assert store.get(conn, "square.token") == "sq0atp-é€ unicode"
    assert store.names(conn) == ["square.token", "stripe.key"]
    secret = store.get_secret(conn, "stripe.key")
    assert secret is not None and secret.reveal() == VALUE


def test_overwrite_keeps_one_row(store: SecretStore, conn: sqlite3.Connection) -> None:
    store.put(conn, "stripe.key", "first")
    store.put(conn, "stripe.key", "second")
    assert store.get(conn, "stripe.key") == "second"
    assert conn.execute("SELECT count(*) FROM secrets").fetchone()[0] == 1


def test_same_value_encrypts_differently_each_time(store: SecretStore) -> None:
    assert store.seal("stripe.key", VALUE) != store.seal("stripe.key", VALUE)


def test_sqlite_file_never_holds_the_plaintext(store: SecretStore, data_dir: Path) -> None:
    c = open_sync(data_dir / "edged.db")
    store.put(c, "shopify.token", VALUE)
    blob = bytes(c.execute("SELECT ciphertext FROM secrets").fetchone()[0])
    c.close()
    assert VALUE.encode() not in blob
    assert len(blob) == 12 + len(VALUE.encode()) + 16  # nonce + ciphertext + tag
    files = list(data_dir.glob("edged.db*"))
    assert files
    for f in files:  # the database and any WAL / shared-memory file left behind
        raw = f.read_bytes()
        assert VALUE.encode() not in raw
        assert VALUE.encode("utf-16-le") not in raw


def test_ciphertext_copied_to_another_name_fails(store: SecretStore,
                                                 conn: sqlite3.Connection) -> None:
    store.put(conn, "stripe.key", VALUE)
    conn.execute(
        "INSERT INTO secrets (name, ciphertext, updated_at)"
        " SELECT 'square.token', ciphertext, updated_at FROM secrets WHERE name = 'stripe.key'"
    )
    with pytest.raises(SecretUnreadable) as err:
        store.get(conn, "square.token")
    assert VALUE not in str(err.value)
    assert store.get(conn, "stripe.key") == VALUE


def test_wrong_key_fails(store: SecretStore, conn: sqlite3.Connection) -> None:
    store.put(conn, "stripe.key", VALUE)
    other = SecretStore(os.urandom(32))
    with pytest.raises(SecretUnreadable):
        other.get(conn, "stripe.key")
    assert other.unreadable(conn) == ["stripe.key"]
    assert store.unreadable(conn) == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_row_fails(store: SecretStore, conn: sqlite3.Connection, damage: str) -> None:
    store.put(conn, "stripe.key", VALUE)
    blob = bytearray(conn.execute("SELECT ciphertext FROM secrets").fetchone()[0])
    if damage == "flip":
        blob[20] ^= 0x01
    else:
        blob = blob[:20]
    conn.execute("UPDATE secrets SET ciphertext = ?", (bytes(blob),))
    with pytest.raises(SecretUnreadable):
        store.get(conn, "stripe.key")


def test_errors_share_one_root() -> None:
    for exc in (UnknownSecretName, KeyFileInsecure, SecretUnreadable):
        assert issubclass(exc, SecretError)
    assert issubclass(SecretError, EdgedError)


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(SecretError):
        SecretStore(b"short")


# --- names ------------------------------------------------------------------------------


def test_unknown_name_refused_listing_the_allowed(store: SecretStore,
                                                  conn: sqlite3.Connection) -> None:
    with pytest.raises(UnknownSecretName) as err:
        store.put(conn, "paypal.key", VALUE)
    for name in ALLOWED_NAMES:
        assert name in str(err.value)
    with pytest.raises(UnknownSecretName):
        store.get(conn, "paypal.key")
    assert store.names(conn) == []
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0


def test_allowed_names() -> None:
    assert ALLOWED_NAMES == ("shopify.token", "shopify.webhook_secret", "stripe.key",
                             "square.token", "replica.access_key_id",
                             "replica.secret_access_key")


def test_empty_value_refused(store: SecretStore, conn: sqlite3.Connection) -> None:
    with pytest.raises(SecretError):
        store.put(conn, "stripe.key", "")


# --- never logged, audit holds the name only -------------------------------------------


def test_logs_never_hold_the_value(store: SecretStore, conn: sqlite3.Connection,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store.put(conn, "stripe.key", VALUE)
    assert store.get(conn, "stripe.key") == VALUE
    store.get_secret(conn, "stripe.key")
    store.names(conn)
    assert caplog.records  # something was logged, and it was checked
    for record in caplog.records:
        assert VALUE not in record.getMessage()
    assert VALUE not in caplog.text
    assert any("stripe.key" in r.getMessage() for r in caplog.records)


def test_key_never_logged(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = SecretStore.load_key(data_dir, NO_CREDS)
    for form in (key.hex(), base64.b64encode(key).decode(), repr(key)):
        assert form not in caplog.text


def test_audit_entry_names_the_secret_only(store: SecretStore,
                                           conn: sqlite3.Connection) -> None:
    store.put(conn, "shopify.webhook_secret", VALUE, actor="technician")
    rows = conn.execute("SELECT actor, action, subject, data FROM audit").fetchall()
    assert len(rows) == 1
    assert tuple(rows[0]) == ("technician", "secret.set", "shopify.webhook_secret", "{}")
    for column in rows[0]:
        assert VALUE not in str(column)
    assert audit.check(conn).ok


def test_put_joins_the_callers_transaction(store: SecretStore,
                                           conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    store.put(conn, "stripe.key", VALUE)
    conn.execute("ROLLBACK")
    assert store.names(conn) == []
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0


def test_secret_wrapper_prints_stars() -> None:
    s = Secret(VALUE)
    assert repr(s) == "Secret('***')"
    assert str(s) == "Secret('***')"
    assert VALUE not in f"{s} {s!r} {[s]} {({'k': s})}"
    assert s.reveal() == VALUE
    assert s == Secret(VALUE) and s != Secret("other")


def test_store_repr_hides_the_key() -> None:
    key = os.urandom(32)
    assert key.hex() not in repr(SecretStore(key))
    assert repr(key) not in repr(SecretStore(key))


# --- the key ----------------------------------------------------------------------------


def test_key_file_created_0600(data_dir: Path) -> None:
    old = os.umask(0)  # even a permissive umask gives 0600
    try:
        key = SecretStore.load_key(data_dir, NO_CREDS)
    finally:
        os.umask(old)
    path = data_dir / "secret.key"
    assert mode_of(path) == 0o600
    assert path.read_bytes() == key and len(key) == 32
    assert SecretStore.load_key(data_dir, NO_CREDS) == key  # the same key next time
    assert [p.name for p in data_dir.iterdir()] == ["secret.key"]  # no temporary left


def test_key_file_created_in_missing_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "state"
    key = SecretStore.load_key(data_dir, NO_CREDS)
    assert (data_dir / "secret.key").read_bytes() == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620])
def test_key_file_open_to_others_refused(data_dir: Path, mode: int) -> None:
    path = data_dir / "secret.key"
    path.write_bytes(os.urandom(32))
    path.chmod(mode)
    with pytest.raises(KeyFileInsecure) as err:
        SecretStore.load_key(data_dir, NO_CREDS)
    assert "chmod 600" in str(err.value)
    assert str(path) in str(err.value)


def test_key_file_0400_accepted(data_dir: Path) -> None:
    path = data_dir / "secret.key"
    key = os.urandom(32)
    path.write_bytes(key)
    path.chmod(0o400)
    assert SecretStore.load_key(data_dir, NO_CREDS) == key


def test_key_file_symlink_refused(data_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    target.write_bytes(os.urandom(32))
    target.chmod(0o600)
    (data_dir / "secret.key").symlink_to(target)
    with pytest.raises(KeyFileInsecure):
        SecretStore.load_key(data_dir, NO_CREDS)


def test_credentials_directory_wins_over_the_file(data_dir: Path, tmp_path: Path) -> None:
    file_key = SecretStore.load_key(data_dir, NO_CREDS)
    creds = tmp_path / "creds"
    creds.mkdir()
    cred_key = os.urandom(32)
    (creds / "edged.key").write_bytes(cred_key)
    got = SecretStore.load_key(data_dir, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert got == cred_key != file_key


def test_credentials_directory_without_edged_key_falls_back(data_dir: Path,
                                                            tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = SecretStore.load_key(data_dir, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert (data_dir / "secret.key").read_bytes() == key


def test_env_defaults_to_os_environ(data_dir: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    cred_key = os.urandom(32)
    (creds / "edged.key").write_bytes(cred_key)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert SecretStore.load_key(data_dir) == cred_key
    assert not (data_dir / "secret.key").exists()


def _forms(key: bytes) -> list[bytes]:
    return [
        key,
        key.hex().encode() + b"\n",
        key.hex().upper().encode(),
        base64.b64encode(key) + b"\n",
        base64.urlsafe_b64encode(key).rstrip(b"="),
        b"  " + base64.b64encode(key) + b"\r\n",
    ]


@pytest.mark.parametrize("index", range(6))
def test_key_formats_accepted(data_dir: Path, tmp_path: Path, index: int) -> None:
    key = os.urandom(32)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "edged.key").write_bytes(_forms(key)[index])
    assert SecretStore.load_key(data_dir, {"CREDENTIALS_DIRECTORY": str(creds)}) == key


def test_raw_key_ending_in_whitespace_is_kept_whole(data_dir: Path) -> None:
    key = os.urandom(31) + b"\n"
    path = data_dir / "secret.key"
    path.write_bytes(key)
    path.chmod(0o600)
    assert SecretStore.load_key(data_dir, NO_CREDS) == key


@pytest.mark.parametrize("content", [b"", b"too short", os.urandom(33), b"z" * 64,
                                     base64.b64encode(os.urandom(16)) + b"\n"],
                         ids=["empty", "too short", "33 random bytes", "64 z",
                              "16 random bytes in base64"])  # the same ids in every worker
def test_bad_key_refused(data_dir: Path, content: bytes) -> None:
    path = data_dir / "secret.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(SecretError) as err:
        SecretStore.load_key(data_dir, NO_CREDS)
    assert "32" in str(err.value)


# --- the CLI ----------------------------------------------------------------------------


def test_cli_set_stores_and_confirms_without_the_value(data_dir: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    line = cli_set(data_dir, "stripe.key", io.StringIO(VALUE + "\n"), NO_CREDS)
    assert "stripe.key" in line
    assert VALUE not in line
    assert VALUE not in caplog.text
    key = SecretStore.load_key(data_dir, NO_CREDS)
    c = open_sync(data_dir / "edged.db")
    try:
        assert SecretStore(key).get(c, "stripe.key") == VALUE
        rows = c.execute("SELECT action, subject FROM audit").fetchall()
        assert [tuple(r) for r in rows] == [("secret.set", "stripe.key")]
    finally:
        c.close()


@pytest.mark.parametrize(("stdin", "stored"), [
    ("abc\n", "abc"),
    ("abc\r\n", "abc"),
    ("abc", "abc"),
    ("abc\n\n", "abc\n"),
    (" abc \n", " abc "),
])
def test_cli_set_strips_one_trailing_newline_only(data_dir: Path, stdin: str,
                                                  stored: str) -> None:
    cli_set(data_dir, "square.token", io.StringIO(stdin), NO_CREDS)
    c = open_sync(data_dir / "edged.db")
    try:
        key = SecretStore.load_key(data_dir, NO_CREDS)
        assert SecretStore(key).get(c, "square.token") == stored
    finally:
        c.close()


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_cli_set_refuses_an_empty_value(data_dir: Path, stdin: str) -> None:
    with pytest.raises(SecretError):
        cli_set(data_dir, "stripe.key", io.StringIO(stdin), NO_CREDS)
    assert not (data_dir / "edged.db").exists()


def test_cli_set_refuses_an_unknown_name_before_reading(data_dir: Path) -> None:
    stdin = io.StringIO(VALUE)
    with pytest.raises(UnknownSecretName):
        cli_set(data_dir, "stripe.secret", stdin, NO_CREDS)
    assert stdin.tell() == 0


def test_cli_set_refuses_to_mix_keys(data_dir: Path, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "edged.key").write_bytes(os.urandom(32))
    in_service = {"CREDENTIALS_DIRECTORY": str(creds)}
    cli_set(data_dir, "stripe.key", io.StringIO("one"), in_service)
    # the same command from a plain shell would pick up DATA_DIR/secret.key instead
    with pytest.raises(SecretUnreadable) as err:
        cli_set(data_dir, "square.token", io.StringIO("two"), NO_CREDS)
    assert "CREDENTIALS_DIRECTORY" in str(err.value)
    assert "two" not in str(err.value)
    c = open_sync(data_dir / "edged.db")
    try:
        assert SecretStore(SecretStore.load_key(data_dir, in_service)).names(c) == [
            "stripe.key"]
    finally:
        c.close()
