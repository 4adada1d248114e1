"""Integration secrets encrypted at rest (README, the store LAN).

The Shopify token and webhook secret, the Stripe key and the Square token live in the
``secrets`` table, each value sealed with AES-256-GCM under a 32-byte key that never
enters the database:

* **Where the key comes from.** If ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)
  is set and holds a file ``edged.key``, that is the key. Otherwise the key file
  ``DATA_DIR/secret.key`` is used; it is created at first use with mode 0600 and refused if
  group or others have any access to it.
* **Key file formats accepted** (both places): exactly 32 raw bytes; or text holding 64 hex
  digits; or text holding the standard or URL-safe base64 of 32 bytes (44 characters with
  ``=`` padding, or 43 without). Surrounding whitespace and a trailing newline are ignored
  in the text forms. A file of exactly 32 bytes is always taken as raw bytes (so 32 hex
  digits without a newline are a raw key, not 16 decoded bytes). A key file this module
  creates holds 32 raw bytes. A credential can be
  made with ``head -c 32 /dev/urandom > edged.key`` or ``openssl rand -hex 32``.
* **What is stored.** ``ciphertext`` = 12-byte random nonce || AES-GCM ciphertext and tag.
  The secret's name is the associated data, so a ciphertext copied to another name's row
  does not decrypt; neither does one read with another key or altered by a single bit.

Neither the key nor any value is ever logged; audit entries name the secret only. Use
:class:`Secret` to carry a value around: its ``repr`` and ``str`` print ``Secret('***')``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edged.errors import EdgedError
from edged.store import audit, durable_file
from edged.store.database import open_sync
from sync.core.clock import utc_iso

log = logging.getLogger(__name__)

ALLOWED_NAMES: Final[tuple[str, ...]] = (
    "shopify.token",
    "shopify.webhook_secret",
    "stripe.key",
    "square.token",
    "replica.access_key_id",  # an S3-compatible [replica]: handed to Litestream at start
    "replica.secret_access_key",
)

#: Secrets whose value a new one replaces is kept under a second name, written by
#: :meth:`SecretStore.put` itself (never by hand): Shopify still signs with the old webhook
#: secret for up to an hour after a rotation. The row's ``updated_at`` is the rotation time.
PREVIOUS_KEPT: Final[dict[str, str]] = {
    "shopify.webhook_secret": "shopify.webhook_secret.previous",
}

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
CREDENTIAL_NAME: Final = "edged.key"
KEY_FILE_NAME: Final = "secret.key"
DB_FILE_NAME: Final = "edged.db"


class SecretError(EdgedError):
    """A secret cannot be stored or read; the message says why, never the value."""


class UnknownSecretName(SecretError):
    """The name is not one of :data:`ALLOWED_NAMES`."""


class KeyFileInsecure(SecretError):
    """The key file is readable (or writable) by group or others, or is not a plain file."""


class SecretUnreadable(SecretError):
    """A stored value does not decrypt: another key, another row's ciphertext, or tampering."""


class Secret:
    """A secret value that prints as stars; call :meth:`reveal` where the value is used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    __hash__ = None  # type: ignore[assignment]  # a secret is no dictionary key


def check_name(name: str) -> str:
    """Return ``name`` if it is an allowed secret name, else raise :class:`UnknownSecretName`."""
    if name not in ALLOWED_NAMES and name not in PREVIOUS_KEPT.values():
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise UnknownSecretName(
            f"unknown secret name {shown!r}; allowed names: {', '.join(ALLOWED_NAMES)}"
        )
    return name


def _parse_key(raw: bytes, source: Path) -> bytes:
    """The 32-byte key held by ``raw`` (raw bytes, hex text or base64 text)."""
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            pass
    if len(text) in (43, 44):
        padded = text + b"=" * (-len(text) % 4)
        for altchars in (None, b"-_"):  # standard, then URL-safe alphabet
            try:
                key = base64.b64decode(padded, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(key) == KEY_BYTES:
                return key
    raise SecretError(
        f"the key in {source} is not usable: it must hold exactly {KEY_BYTES} raw bytes,"
        f" or {2 * KEY_BYTES} hex digits, or the base64 of {KEY_BYTES} bytes"
        f" (found {len(raw)} bytes)"
    )


def _read_key_file(path: Path) -> bytes:
    """Read the data-dir key file, refusing it unless only its owner can access it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileInsecure(
                f"the key file {path} is a symbolic link; put the key file itself there"
            ) from None
        raise SecretError(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileInsecure(f"the key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFileInsecure(
                f"the key file {path} has mode {mode:04o}, so group or others can access"
                f" it; only its owner may: run `chmod 600 {path}`"
            )
        chunks: list[bytes] = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return _parse_key(b"".join(chunks), path)


def _create_key_file(path: Path) -> bool:
    """Create ``path`` holding a new random key, mode 0600; False if it already existed.

    :func:`edged.store.durable_file.create_file`: the key is linked into place, so the name never
    exists with another mode or a partial key, and a concurrent creator that loses the
    race reads the winner's key.
    """
    return durable_file.create_file(path, os.urandom(KEY_BYTES), 0o600)


def _load_key(data_dir: Path, env: Mapping[str, str] | None) -> tuple[bytes, Path]:
    env = os.environ if env is None else env
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        cred = Path(cred_dir) / CREDENTIAL_NAME
        if cred.is_file():
            try:
                raw = cred.read_bytes()
            except OSError as exc:
                raise SecretError(
                    f"cannot read the credential {cred}: {exc.strerror}"
                ) from None
            log.debug("secret key read from the systemd credential %s", cred)
            return _parse_key(raw, cred), cred
        log.debug("no %s in $CREDENTIALS_DIRECTORY; using the key file", CREDENTIAL_NAME)
    path = data_dir / KEY_FILE_NAME
    if not path.exists() and not path.is_symlink():
        try:
            if _create_key_file(path):
                log.warning("created a new secret key file %s (mode 0600); back it up"
                            " with the database, secrets cannot be read without it", path)
        except OSError as exc:
            raise SecretError(f"cannot create the key file {path}: {exc.strerror}") from None
    return _read_key_file(path), path


class SecretStore:
    """Seals and opens the values of the ``secrets`` table with one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretError(f"the secret key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretStore(key=***)"

    @classmethod
    def load_key(cls, data_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
        """The key from ``$CREDENTIALS_DIRECTORY/edged.key``, else ``data_dir/secret.key``.

        The key file is created (32 random bytes, mode 0600) if it does not exist, and
        refused with :class:`KeyFileInsecure` if group or others may access it. ``env``
        defaults to ``os.environ``.
        """
        return _load_key(data_dir, env)[0]

    def seal(self, name: str, value: str) -> bytes:
        """nonce || ciphertext of ``value``, bound to ``name``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), name.encode("utf-8"))

    def open(self, name: str, blob: bytes) -> str:
        """The value sealed in ``blob`` under ``name``; :class:`SecretUnreadable` if not."""
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise SecretUnreadable(f"the stored secret {name} is truncated")
        nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, sealed, name.encode("utf-8"))
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretUnreadable(
                f"the stored secret {name} cannot be decrypted: the key is not the one it"
                " was stored with, or the row was altered or copied from another name"
            ) from None

    def put(self, conn: sqlite3.Connection, name: str, value: str | Secret, *,
            actor: str = "cli") -> None:
        """Store ``value`` under ``name`` and append a ``secret.set`` audit entry (name only).

        Runs in the caller's transaction if one is open, else in its own.
        """
        check_name(name)
        plain = value.reveal() if isinstance(value, Secret) else value
        if not plain:
            raise SecretError(f"refusing to store an empty value for {name}")
        blob = self.seal(name, plain)
        own_tx = not conn.in_transaction
        if own_tx:
            conn.execute("BEGIN IMMEDIATE")
        try:
            now = utc_iso(datetime.now(UTC))
            previous = PREVIOUS_KEPT.get(name)
            old = self.get(conn, name) if previous is not None else None
            if previous is not None and old is not None and old != plain:
                conn.execute(
                    "INSERT INTO secrets (name, ciphertext, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext,"
                    " updated_at = excluded.updated_at",
                    (previous, self.seal(previous, old), now))
            conn.execute(
                "INSERT INTO secrets (name, ciphertext, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext,"
                " updated_at = excluded.updated_at",
                (name, blob, now),
            )
            audit.append(conn, actor, "secret.set", name, {})
        except BaseException:
            if own_tx:
                conn.execute("ROLLBACK")
            raise
        if own_tx:
            conn.execute("COMMIT")
        log.info("secret %s set by %s", name, actor)

    def get(self, conn: sqlite3.Connection, name: str) -> str | None:
        """The value stored under ``name``, or None if it was never set."""
        check_name(name)
        row = conn.execute("SELECT ciphertext FROM secrets WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return self.open(name, bytes(row[0]))

    def get_secret(self, conn: sqlite3.Connection, name: str) -> Secret | None:
        """As :meth:`get`, wrapped so that an accidental log prints stars."""
        value = self.get(conn, name)
        return None if value is None else Secret(value)

    def names(self, conn: sqlite3.Connection) -> list[str]:
        """The names that have a stored value, sorted."""
        return [r[0] for r in conn.execute("SELECT name FROM secrets ORDER BY name")]

    def unreadable(self, conn: sqlite3.Connection) -> list[str]:
        """The stored names this key cannot decrypt (empty when the key is right)."""
        bad: list[str] = []
        for name, blob in conn.execute("SELECT name, ciphertext FROM secrets ORDER BY name"):
            try:
                self.open(name, bytes(blob))
            except SecretUnreadable:
                bad.append(name)
        return bad


def _strip_one_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def cli_set(data_dir: Path, name: str, stdin: TextIO,
            env: Mapping[str, str] | None = None) -> str:
    """``edged secret set NAME``: read the value from ``stdin`` and store it encrypted.

    One trailing newline is stripped (``\\n`` or ``\\r\\n``), nothing else; an empty value
    is refused. Refuses too when secrets already stored cannot be decrypted with the key
    found now (typically: run outside the service, so ``$CREDENTIALS_DIRECTORY`` is unset
    and another key was picked up), rather than mixing values sealed with two keys.
    Returns a confirmation line that names the secret and the key's place, never the value.
    """
    check_name(name)
    if name in PREVIOUS_KEPT.values():
        raise UnknownSecretName(f"{name} is kept by edged itself when"
                                f" {name.removesuffix('.previous')} is set again")
    value = _strip_one_newline(stdin.read())
    if not value:
        raise SecretError(f"no value for {name} on standard input; nothing was stored")
    key, source = _load_key(data_dir, env)
    store = SecretStore(key)
    conn = open_sync(data_dir / DB_FILE_NAME)
    try:
        bad = store.unreadable(conn)
        if bad:
            raise SecretUnreadable(
                f"the key in {source} does not decrypt the secrets already stored"
                f" ({', '.join(bad)}); nothing was stored. Use the key the daemon uses"
                " (if it gets it from systemd's LoadCredential=, set $CREDENTIALS_DIRECTORY"
                " to a directory holding that edged.key), or, if that key is lost, delete"
                " those rows from the secrets table and set them again"
            )
        store.put(conn, name, value, actor="cli")
    finally:
        conn.close()
    return f"secret {name} stored, encrypted with the key from {source}"


def _new_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` to a new file ``path`` (mode 0600, synced); it must not exist."""
    durable_file.new_file(path, key, 0o600)


def _sync_dir(path: Path) -> None:
    durable_file.sync_dir(path)


def _swap_in(key_file: Path, new_file: Path) -> None:
    """Put ``new_file`` in place of ``key_file``; the old key stays as ``.old`` until then."""
    old_file = key_file.with_name(key_file.name + ".old")
    old_file.unlink(missing_ok=True)
    os.link(key_file, old_file)
    os.replace(new_file, key_file)
    _sync_dir(key_file.parent)
    old_file.unlink()
    _sync_dir(key_file.parent)


def _finish_interrupted(conn: sqlite3.Connection, key_file: Path, new_file: Path) -> str | None:
    """A ``.new`` key left by an interrupted rotation: finish it if the database moved to it,
    else drop it. Returns what was done, or None if there was nothing to do."""
    if not new_file.exists():
        key_file.with_name(key_file.name + ".old").unlink(missing_ok=True)
        return None
    new_store = SecretStore(_read_key_file(new_file))
    stored = conn.execute("SELECT count(*) FROM secrets").fetchone()[0]
    if stored and not new_store.unreadable(conn):
        _swap_in(key_file, new_file)
        return "finished the rotation an earlier run left half done"
    new_file.unlink()
    return "dropped the unused new key an earlier run left behind"


def rotate_key(data_dir: Path, key_file: Path | None = None,
               env: Mapping[str, str] | None = None, *,
               before_swap: Callable[[], None] | None = None) -> str:
    """``edged secret rotate-key``: every stored secret sealed again under a new key.

    The new key is written beside the old one (``secret.key.new``, 0600), every row is
    re-encrypted and an audit entry appended in one transaction, and only after its commit
    does the new key take the old one's place; the old key file is kept until then (as
    ``.old`` for the instant of the swap). A failure before the commit changes nothing and
    removes the new key; a crash between the commit and the swap is finished by the next
    run. With the key in ``$CREDENTIALS_DIRECTORY`` (systemd), name the file
    ``LoadCredential=`` reads with ``key_file`` and restart the daemon afterwards.
    ``before_swap`` is a test hook run between the commit and the swap.
    """
    env = os.environ if env is None else env
    if key_file is None:
        cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
        if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
            raise SecretError(
                f"the key is the systemd credential {Path(cred_dir) / CREDENTIAL_NAME}, a"
                " read-only copy: rotate the file LoadCredential= names instead (edged secret"
                " rotate-key --key-file /etc/edged/edged.key), then restart the daemon")
        key_file = data_dir / KEY_FILE_NAME
    if not key_file.exists():
        raise SecretError(f"no key file {key_file}: nothing is encrypted yet, nothing to"
                          " rotate")
    new_file = key_file.with_name(key_file.name + ".new")
    conn = open_sync(data_dir / DB_FILE_NAME)
    try:
        conn.execute("BEGIN IMMEDIATE")  # one rotation at a time, and no `secret set` meanwhile
        try:
            recovered = _finish_interrupted(conn, key_file, new_file)
            old_store = SecretStore(_read_key_file(key_file))
            bad = old_store.unreadable(conn)
            if bad:
                raise SecretUnreadable(
                    f"the key in {key_file} does not decrypt {', '.join(bad)}; nothing was"
                    " changed (rotate with the key the daemon uses)")
            new_key = os.urandom(KEY_BYTES)
            new_store = SecretStore(new_key)
            _new_key_file(new_file, new_key)
            rows = conn.execute("SELECT name, ciphertext FROM secrets ORDER BY name").fetchall()
            now = utc_iso(datetime.now(UTC))
            for name, blob in rows:
                conn.execute("UPDATE secrets SET ciphertext = ?, updated_at = ? WHERE name = ?",
                             (new_store.seal(name, old_store.open(name, bytes(blob))), now,
                              name))
            audit.append(conn, "cli", "secret.key_rotated", str(key_file),
                         {"secrets": [r[0] for r in rows]})
        except BaseException:
            conn.execute("ROLLBACK")
            new_file.unlink(missing_ok=True)
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()
    if before_swap is not None:
        before_swap()
    _swap_in(key_file, new_file)
    log.warning("secret key %s rotated: %d secrets sealed again", key_file, len(rows))
    done = f"key {key_file} rotated: {len(rows)} secret(s) encrypted again under the new key"
    return f"{recovered}; {done}" if recovered else done
