"""mDNS discovery (README, the store LAN): the daemon announces itself, ``edged discover`` listens.

The daemon registers ``<instance>._edged._tcp.local.`` with zeroconf's asyncio API: SRV to
``<store id>.local.`` (a name in its certificate) on the API's port, A/AAAA records for its
addresses, and TXT ``txtvers=1``, ``api=/v1``, ``version``, ``store``, ``tls=0|1``,
``fp=<certificate SHA-256 hex>`` (empty without TLS) and, after a renewal, ``fpold=`` the
superseded fingerprint. The record is updated when the certificate changes and withdrawn
with goodbye packets at shutdown. ``[discovery] interfaces`` limits where it is announced
(names such as ``eth0`` or addresses); by default every interface.

mDNS is not authenticated: a register pins the fingerprint it learnt when it was set up
(from ``edged tls fingerprint`` or the first announcement), and treats a changed ``fp``
as something a person confirms, unless ``fpold`` is the fingerprint it already pinned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from dataclasses import asdict, dataclass
from typing import Any, Final

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edged import __version__
from edged.config import Config
from edged.errors import EdgedError
from edged.lan.tls import CertInfo, CertKeeper, box_addresses

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_edged._tcp.local."
TXT_VERSION: Final = "1"
RESOLVE_MS: Final = 3000


class DiscoveryError(EdgedError):
    """mDNS cannot be started as configured (an unknown interface, no address)."""


def local_host(store_id: str) -> str:
    """``<store id>.local.`` as a host name (letters, digits and hyphens)."""
    label = re.sub(r"[^a-z0-9-]+", "-", store_id.lower()).strip("-") or "edged"
    return f"{label[:63]}.local."


def txt_record(cfg: Config, cert: CertInfo | None) -> dict[str, str]:
    txt = {"txtvers": TXT_VERSION, "api": "/v1", "version": __version__,
           "store": cfg.store.id, "tls": "1" if cert is not None else "0",
           "fp": cert.fingerprint if cert is not None else ""}
    if cert is not None and cert.superseded:
        txt["fpold"] = cert.superseded
    return txt


def resolve_interfaces(names: tuple[str, ...]) -> list[str]:
    """Addresses for ``[discovery] interfaces`` entries (interface names or addresses)."""
    import ifaddr  # noqa: PLC0415

    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    out: list[str] = []
    for entry in names:
        try:
            out.append(str(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        adapter = adapters.get(entry)
        if adapter is None:
            raise DiscoveryError(f"discovery.interfaces: no interface {entry!r} on this box"
                                 f" (there are {', '.join(sorted(adapters))})")
        out += [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
    return out


def announced_addresses(cfg: Config, interfaces: list[str]) -> list[str]:
    """The addresses registers can reach the API on."""
    host = cfg.api.host
    try:
        listen = ipaddress.ip_address(host)
    except ValueError:
        return [socket.gethostbyname(host)]
    if not listen.is_unspecified:
        return [str(listen)]
    candidates = interfaces or box_addresses()
    return [a for a in candidates
            if ipaddress.ip_address(a).version == 4 and not ipaddress.ip_address(a).is_loopback]


def _zeroconf(interfaces: list[str]) -> AsyncZeroconf:
    chosen: Any = interfaces if interfaces else InterfaceChoice.All
    return AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)


class Advertiser:
    """Announces one daemon; :meth:`update` after a certificate change, :meth:`stop` at the end."""

    def __init__(self, cfg: Config, port: int, cert: CertInfo | None) -> None:
        self._cfg = cfg
        self._port = port
        self._cert = cert
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._lock = asyncio.Lock()
        self._updates: set[asyncio.Task[None]] = set()
        self.name = f"edged {cfg.store.id}"[:63]

    def _make_info(self, name: str) -> AsyncServiceInfo:
        interfaces = resolve_interfaces(self._cfg.discovery.interfaces)
        addresses = announced_addresses(self._cfg, interfaces)
        if not addresses:
            raise DiscoveryError("no address to announce: the box has no IPv4 address on"
                                 " the interfaces in use")
        return AsyncServiceInfo(SERVICE_TYPE, name, port=self._port,
                                properties=txt_record(self._cfg, self._cert),
                                server=local_host(self._cfg.store.id),
                                parsed_addresses=addresses)

    @property
    def info(self) -> AsyncServiceInfo | None:
        return self._info

    async def start(self) -> None:
        interfaces = resolve_interfaces(self._cfg.discovery.interfaces)
        info = self._make_info(f"{self.name}.{SERVICE_TYPE}")
        self._zc = _zeroconf(interfaces)
        # each call returns the task broadcasting the change: wait for it to be sent
        await (await self._zc.async_register_service(info, allow_name_change=True))
        self._info = info
        log.info("announcing %s on mDNS (%s port %d, tls=%s)", info.name,
                 ", ".join(info.parsed_addresses()), self._port,
                 "1" if self._cert is not None else "0")

    def schedule_update(self, cert: CertInfo) -> None:
        """:meth:`update` from a synchronous listener (the certificate keeper)."""
        task = asyncio.get_running_loop().create_task(self.update(cert))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def update(self, cert: CertInfo) -> None:
        """Announce the new certificate's fingerprint (and the superseded one)."""
        async with self._lock:
            self._cert = cert
            if self._zc is None or self._info is None:
                return
            info = self._make_info(self._info.name)
            await (await self._zc.async_update_service(info))
            self._info = info
            log.info("mDNS record %s updated: fp=%s", info.name, cert.fingerprint)

    async def stop(self) -> None:
        """Withdraw the record (goodbye packets) and close the sockets."""
        for task in list(self._updates):
            task.cancel()
        async with self._lock:
            if self._zc is None:
                return
            try:
                if self._info is not None:
                    await (await self._zc.async_unregister_service(self._info))
            finally:
                await self._zc.async_close()
                self._zc, self._info = None, None


@dataclass(frozen=True, slots=True)
class Found:
    """One daemon heard on the LAN."""

    name: str
    store: str
    addresses: tuple[str, ...]
    port: int
    tls: bool
    fingerprint: str
    superseded: str
    version: str
    host: str

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["addresses"] = list(self.addresses)
        return out


def _text(props: dict[bytes, bytes | None], key: str) -> str:
    value = props.get(key.encode())
    return value.decode("utf-8", "replace") if value else ""


async def discover(timeout: float, interfaces: tuple[str, ...] = ()) -> list[Found]:
    """Listen for ``timeout`` seconds and return the daemons heard, resolved."""
    azc = _zeroconf(resolve_interfaces(interfaces))
    seen: dict[str, bool] = {}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        seen[name] = state_change is not ServiceStateChange.Removed

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.sleep(timeout)  # the listening window the user asked for
        names = sorted(n for n, alive in seen.items() if alive)
        infos = [AsyncServiceInfo(SERVICE_TYPE, n) for n in names]
        resolved = await asyncio.gather(*(i.async_request(azc.zeroconf, RESOLVE_MS)
                                          for i in infos))
    finally:
        await browser.async_cancel()
        await azc.async_close()
    found = []
    for info, ok in zip(infos, resolved, strict=True):
        if not ok or info.port is None:
            continue
        props = info.properties
        instance = info.name[:-len(SERVICE_TYPE) - 1] if info.name.endswith(
            "." + SERVICE_TYPE) else info.name
        found.append(Found(name=instance, store=_text(props, "store"),
                           addresses=tuple(info.parsed_addresses()), port=info.port,
                           tls=_text(props, "tls") == "1", fingerprint=_text(props, "fp"),
                           superseded=_text(props, "fpold"), version=_text(props, "version"),
                           host=(info.server or "").rstrip(".")))
    return found


async def announce(cfg: Config, port: int, keeper: CertKeeper | None) -> Advertiser | None:
    """Start announcing the daemon; None (logged) if mDNS cannot run here.

    The API serves registers that were told the address even when mDNS fails, so a
    failure here is loud but does not stop the daemon.
    """
    adv = Advertiser(cfg, port, keeper.info if keeper is not None else None)
    try:
        await adv.start()
    except (DiscoveryError, OSError) as exc:
        log.error("mDNS discovery is off: %s", exc)
        await adv.stop()
        return None
    if keeper is not None:
        keeper.on_change(adv.schedule_update)
    return adv
