"""The daemon's own TLS certificate: made at first start, pinned by fingerprint (README, the
store LAN).

Registers on the store LAN do not trust a CA; they pin the SHA-256 fingerprint of this
certificate, which ``edged tls fingerprint`` prints and mDNS announces (TXT ``fp=``).

* **What is made.** An ECDSA P-256 key (``DATA_DIR/tls.key``, mode 0600) and a self-signed
  certificate (``DATA_DIR/tls.crt``) valid for :data:`VALIDITY`, whose subject alternative
  names are the host name, ``<store id>.local``, ``localhost`` and the listen address (for
  ``0.0.0.0`` or ``::``, every address of the box at that time, loopback included).
* **When it is made again.** When less than :data:`RENEW_BEFORE` of its validity is left
  (the daemon checks every :data:`CHECK_SECONDS` on its clock), or at start when the store
  id, the host name or an explicit listen address is no longer among its names. A box
  listening on every address keeps its certificate when DHCP hands it another address:
  registers pin the fingerprint, not the address. The fingerprint of the certificate it
  replaces is kept in ``DATA_DIR/tls.superseded`` and announced as superseded (TXT
  ``fpold=``) until that certificate would have expired.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edged.config import Config
from edged.errors import TlsError
from edged.store import durable_file
from sync.core.clock import Clock

log = logging.getLogger(__name__)

CERT_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"
SUPERSEDED_FILE: Final = "tls.superseded"
VALIDITY: Final = timedelta(days=397)
RENEW_BEFORE: Final = timedelta(days=60)
CHECK_SECONDS: Final = 6 * 3600.0
BACKDATE: Final = timedelta(hours=1)  # a register whose clock runs a little late

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The certificate in use, as registers see it."""

    cert_path: Path
    key_path: Path
    fingerprint: str
    """SHA-256 of the DER certificate, 64 lower-case hex digits (what registers pin)."""
    not_before: datetime
    not_after: datetime
    dns_names: tuple[str, ...]
    addresses: tuple[str, ...]
    superseded: str | None
    """The fingerprint this certificate replaced, while that one would still be valid."""

    @property
    def names(self) -> frozenset[str]:
        """Every name and address in the certificate, lower case (for the Host check)."""
        return frozenset(n.lower() for n in self.dns_names + self.addresses)


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def wanted_names(cfg: Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, addresses) the certificate should carry for this configuration."""
    host = socket.gethostname().lower()
    dns = [host, f"{cfg.store.id.lower()}.local", "localhost"]
    if "." not in host:
        dns.insert(1, f"{host}.local")
    listen = cfg.api.host
    addresses: list[str] = []
    try:
        addr = ipaddress.ip_address(listen)
    except ValueError:
        dns.append(listen.lower())  # a name: localhost or the box's own
    else:
        addresses = box_addresses() if addr.is_unspecified else [str(addr)]
    for loop in ("127.0.0.1", "::1"):
        if loop not in addresses:
            addresses.append(loop)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(addresses))


def box_addresses() -> list[str]:
    """Every IPv4 and global IPv6 address of this box's interfaces."""
    import ifaddr  # noqa: PLC0415  (only for a wildcard listen)

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                out.append(ip.ip)
            else:
                v6 = ipaddress.IPv6Address(ip.ip[0])
                if not v6.is_link_local:
                    out.append(str(v6))
    return out


def _must_reissue(info: CertInfo, cfg: Config) -> str | None:
    dns, addresses = wanted_names(cfg)
    missing = [n for n in dns if n not in info.dns_names]
    try:
        if not ipaddress.ip_address(cfg.api.host).is_unspecified:
            missing += [a for a in addresses if a not in info.addresses]
    except ValueError:
        pass
    if missing:
        return f"it does not name {', '.join(missing)}"
    return None


def load(data_dir: Path, now: datetime | None = None) -> CertInfo | None:
    """The certificate in ``data_dir``, or None if there is none yet."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        return None
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise TlsError(f"the TLS key {key_path} has mode {mode:04o}, so group or others can"
                       f" read it; only its owner may: run `chmod 600 {key_path}`")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read the certificate {cert_path}: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        addresses = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, addresses = (), ()
    return CertInfo(cert_path, key_path,
                    fingerprint_of(cert.public_bytes(serialization.Encoding.DER)),
                    cert.not_valid_before_utc, cert.not_valid_after_utc, dns, addresses,
                    _read_superseded(data_dir, now))


def _read_superseded(data_dir: Path, now: datetime | None) -> str | None:
    path = data_dir / SUPERSEDED_FILE
    try:
        fp, until = path.read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return None
    if now is not None and datetime.fromisoformat(until) <= now:
        return None
    return fp


def ensure(cfg: Config, now: datetime) -> tuple[CertInfo, bool]:
    """The certificate to serve, made or renewed if needed; True when it is new."""
    data_dir = cfg.data_dir
    current = load(data_dir, now)
    if current is not None:
        why = None
        if current.not_after - now < RENEW_BEFORE:
            why = f"it expires on {current.not_after:%Y-%m-%d}"
        else:
            why = _must_reissue(current, cfg)
        if why is None:
            return current, False
        log.warning("renewing the TLS certificate %s: %s", current.fingerprint, why)
    made = _create(cfg, now, current)
    if current is None:
        log.warning("created the TLS certificate %s (key %s, mode 0600); registers pin"
                    " SHA-256 fingerprint %s", made.cert_path, made.key_path, made.fingerprint)
    else:
        log.warning("TLS certificate renewed: fingerprint %s supersedes %s",
                    made.fingerprint, current.fingerprint)
    return made, True


def _create(cfg: Config, now: datetime, previous: CertInfo | None) -> CertInfo:
    data_dir = cfg.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    dns, addresses = wanted_names(cfg)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edged {cfg.store.id}"[:64])])
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    if previous is not None and previous.not_after > now:
        _write(data_dir / SUPERSEDED_FILE,
               f"{previous.fingerprint} {previous.not_after.isoformat()}\n".encode(), 0o644)
    # the key first: a certificate on disk always has its key beside it
    _write(data_dir / KEY_FILE, key_pem, 0o600)
    _write(data_dir / CERT_FILE, cert_pem, 0o644)
    info = load(data_dir, now)
    assert info is not None
    return info


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically and durably; the new file never exists with a wider mode."""
    try:
        durable_file.replace_file(path, data, mode)
    except OSError as exc:
        raise TlsError(f"cannot write {path}: {exc.strerror}") from None


def server_context(info: CertInfo) -> ssl.SSLContext:
    """An SSL context serving ``info``; :func:`reload` swaps the certificate in place."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    reload(ctx, info)
    return ctx


def reload(ctx: ssl.SSLContext, info: CertInfo) -> None:
    """New handshakes on ``ctx`` present ``info``'s certificate from now on."""
    try:
        ctx.load_cert_chain(info.cert_path, info.key_path)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the certificate {info.cert_path}: {exc}") from None


CertListener = Callable[[CertInfo], None]


class CertKeeper:
    """Holds the certificate the daemon serves and renews it in place on its clock."""

    def __init__(self, cfg: Config, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self._listeners: list[CertListener] = []
        self.info: CertInfo | None = None
        self.context: ssl.SSLContext | None = None

    def start(self) -> CertInfo:
        self.info, _ = ensure(self._cfg, self._clock.now())
        self.context = server_context(self.info)
        return self.info

    def on_change(self, listener: CertListener) -> None:
        self._listeners.append(listener)

    async def check(self) -> bool:
        """Renew if due; True when a new certificate is now served."""
        info, renewed = await asyncio.to_thread(ensure, self._cfg, self._clock.now())
        if not renewed:
            return False
        assert self.context is not None
        reload(self.context, info)
        self.info = info
        for listener in self._listeners:
            try:
                listener(info)
            except Exception:  # one failing listener must not keep the others stale
                log.exception("a certificate listener failed")
        return True

    async def run(self) -> None:
        while True:
            await self._clock.sleep(CHECK_SECONDS)
            try:
                await self.check()
            except TlsError as exc:
                log.error("cannot renew the TLS certificate: %s", exc)
