"""The key of the audit chain's MACs, kept outside the database.

``$CREDENTIALS_DIRECTORY/edged-audit.key`` (systemd ``LoadCredential=``) if it is there,
else ``DATA_DIR/audit.key``: 32 bytes (raw, 64 hex digits or base64), the file readable by
its owner only. The daemon makes the key file at its first start after the upgrade
(32 random bytes, mode 0600); back it up *apart from* the database: whoever has the
database and not the key can neither rewrite the chain nor add to it unseen.
No cryptography import: the daemon without TLS or cloud destinations stays light.
"""

from __future__ import annotations

import base64
import binascii
import errno
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edged.errors import EdgedError

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
FILE_NAME: Final = "audit.key"
CREDENTIAL_NAME: Final = "edged-audit.key"


class AuditKeyError(EdgedError):
    """The audit key cannot be read or made; the message says where and why."""


@dataclass(frozen=True, slots=True)
class AuditKey:
    secret: bytes
    source: Path

    def __repr__(self) -> str:
        return f"AuditKey(source={self.source}, secret=***)"


def _parse(raw: bytes, source: Path) -> bytes:
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    try:
        if len(text) == 2 * KEY_BYTES:
            return binascii.unhexlify(text)
        key = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_"
                               if b"-" in text or b"_" in text else None, validate=True)
        if len(key) == KEY_BYTES:
            return key
    except (binascii.Error, ValueError):
        pass
    raise AuditKeyError(f"the audit key {source} must hold {KEY_BYTES} raw bytes, or"
                        f" {2 * KEY_BYTES} hex digits, or their base64 (found {len(raw)} bytes)")


def _read(path: Path, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AuditKeyError(f"the audit key {path} is a symbolic link; put the file"
                                " itself there") from None
        raise AuditKeyError(f"cannot read the audit key {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuditKeyError(f"the audit key {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise AuditKeyError(f"the audit key {path} has mode {mode:04o}, so group or others"
                                f" can access it; only its owner may: run `chmod 600 {path}`")
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return _parse(b"".join(chunks), path)


def _create(path: Path) -> bool:
    """A new random key at ``path`` (0600 whatever the umask); False if one appeared first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(os.urandom(KEY_BYTES))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never a half-written key under the name
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load(data_dir: Path, env: Mapping[str, str] | None = None, *,
         create: bool = False) -> AuditKey | None:
    """The audit key: the systemd credential, else ``data_dir/audit.key``; made there when
    ``create`` and there is none (None when there is none and ``create`` is false)."""
    env = os.environ if env is None else env
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        cred = Path(cred_dir) / CREDENTIAL_NAME
        if cred.is_file():
            return AuditKey(_read(cred, private=False), cred)  # systemd keeps it private
    path = data_dir / FILE_NAME
    if not path.exists() and not path.is_symlink():
        if not create:
            return None
        try:
            if _create(path):
                log.warning("created the audit key %s (mode 0600): it keys the audit chain's"
                            " MACs; back it up apart from the database", path)
        except OSError as exc:
            raise AuditKeyError(f"cannot create the audit key {path}: {exc.strerror}") from None
    return AuditKey(_read(path, private=True), path)
