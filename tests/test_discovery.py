"""mDNS discovery with real zeroconf instances on the loopback interface.

Every test uses its own store id: other test runs on this machine announce on the same
loopback multicast group, and must not be mistaken for ours.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edged import __version__
from edged.app import Daemon
from edged.config import Config, DiscoveryConfig
from edged.lan import discovery, tls, tokens
from tests.clock import ManualClock
from tests.daemon_process import DaemonProcess, run_cli, write_config
from tests.helpers import make_config

# the daemons these tests start answer mDNS on 127.0.0.1: one test at a time hears them
# (pytest-xdist: the same worker)
pytestmark = pytest.mark.xdist_group("mdns")

LOOPBACK = ("127.0.0.1",)


def lan_config(data_dir: Path, *, tls_on: bool = True) -> Config:
    cfg = make_config(data_dir)
    return replace(cfg, store=replace(cfg.store, id=f"t-{uuid.uuid4().hex[:10]}"),
                   api=replace(cfg.api, tls=tls_on),
                   discovery=DiscoveryConfig(enabled=True, interfaces=LOOPBACK))


async def _find(store: str, timeout: float = 1.5) -> discovery.Found | None:
    for _ in range(5):  # bounded: a busy machine may need another listening window
        for found in await discovery.discover(timeout, LOOPBACK):
            if found.store == store:
                return found
    return None


async def _txt(zc: AsyncZeroconf, name: str) -> dict[str, str]:
    info = AsyncServiceInfo(discovery.SERVICE_TYPE, name)
    assert await info.async_request(zc.zeroconf, 3000)
    return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}


async def test_a_tls_daemon_is_found_and_reached_by_its_announced_fingerprint(
        tmp_path: Path) -> None:
    cfg = lan_config(tmp_path / "data")
    daemon = Daemon(cfg, ManualClock(datetime.now(UTC)), shutdown_grace=0.5)
    await daemon.start()
    try:
        token = await daemon.db.write(lambda c: tokens.create(c, "lane-1"))
        assert daemon.advertiser is not None and daemon.tls is not None
        found = await _find(cfg.store.id)
        assert found is not None
        assert (found.port, found.tls, found.version) == (daemon.port, True, __version__)
        assert found.fingerprint == daemon.tls.info.fingerprint  # type: ignore[union-attr]
        assert found.addresses == ("127.0.0.1",)
        assert found.host == f"{cfg.store.id}.local"
        zc = AsyncZeroconf(interfaces=list(LOOPBACK))
        try:
            txt = await _txt(zc, daemon.advertiser.info.name)  # type: ignore[union-attr]
        finally:
            await zc.async_close()
        assert txt == {"txtvers": "1", "api": "/v1", "version": __version__,
                       "store": cfg.store.id, "tls": "1", "fp": found.fingerprint}
        # a register: HTTPS to the announced address and port, pinned to the TXT fp
        url = f"https://{found.addresses[0]}:{found.port}{txt['api']}/terminals"
        async with aiohttp.ClientSession() as session, session.get(
                url, headers={"Authorization": f"Bearer {token}"},
                ssl=aiohttp.Fingerprint(bytes.fromhex(found.fingerprint))) as r:
            assert r.status == 200
    finally:
        await daemon.stop()


async def test_the_record_follows_the_certificate_and_says_goodbye(tmp_path: Path) -> None:
    clock = ManualClock(datetime.now(UTC))
    cfg = lan_config(tmp_path / "data")
    daemon = Daemon(cfg, clock, shutdown_grace=0.5)
    await daemon.start()
    zc = AsyncZeroconf(interfaces=list(LOOPBACK))
    removed = asyncio.Event()
    stopped = False
    try:
        assert daemon.advertiser is not None and daemon.tls is not None
        ours = daemon.advertiser.info.name  # type: ignore[union-attr]
        old = daemon.tls.info.fingerprint  # type: ignore[union-attr]

        def watch(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
            if name == ours and state_change is ServiceStateChange.Removed:
                removed.set()

        browser = AsyncServiceBrowser(zc.zeroconf, discovery.SERVICE_TYPE, handlers=[watch])
        assert (await _txt(zc, ours))["fp"] == old
        # the certificate is renewed: the record announces the new one, the old superseded
        changed = asyncio.Event()
        daemon.tls.on_change(lambda _info: changed.set())
        clock.advance((tls.VALIDITY - tls.RENEW_BEFORE).total_seconds() + 86400)
        await asyncio.wait_for(changed.wait(), 30)
        new = daemon.tls.info.fingerprint  # type: ignore[union-attr]
        assert new != old
        for _ in range(50):  # bounded: each round is a real query on the wire
            txt = await _txt(zc, ours)
            if txt["fp"] == new:
                break
            await asyncio.sleep(0.1)
        assert (txt["fp"], txt.get("fpold")) == (new, old)
        # shutdown withdraws the record with goodbye packets
        await daemon.stop()
        stopped = True
        await asyncio.wait_for(removed.wait(), 10)
        await browser.async_cancel()
    finally:
        if not stopped:
            await daemon.stop()
        await zc.async_close()


async def test_loopback_daemons_do_not_announce_by_default(tmp_path: Path) -> None:
    cfg = replace(lan_config(tmp_path / "data", tls_on=False), discovery=DiscoveryConfig())
    assert not cfg.advertise
    daemon = Daemon(cfg, ManualClock(datetime.now(UTC)), shutdown_grace=0.5)
    await daemon.start()
    try:
        assert daemon.advertiser is None
    finally:
        await daemon.stop()


def test_txt_without_tls_says_so() -> None:
    cfg = lan_config(Path("/nonexistent"), tls_on=False)
    assert discovery.txt_record(cfg, None) == {
        "txtvers": "1", "api": "/v1", "version": __version__, "store": cfg.store.id,
        "tls": "0", "fp": ""}
    assert discovery.local_host("Shop 7_north") == "shop-7-north.local."


def test_edged_discover_lists_the_daemons_it_hears(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = f"t-{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path / "edged.toml", api={"tls": True})
    with config.open("a") as f:
        f.write(f'[store]\nid = "{store}"\n[discovery]\nenabled = true\n'
                'interfaces = ["127.0.0.1"]\n')
    with DaemonProcess(data, config=config) as daemon:
        fp = run_cli(data, "tls", "fingerprint", config=config).stdout.splitlines()[-1]
        mine: list[dict[str, object]] = []
        for _ in range(5):  # bounded, as above
            out = run_cli(tmp_path, "discover", "--timeout", "1.5", "--json",
                          "--interface", "127.0.0.1").stdout
            mine = [d for d in json.loads(out) if d["store"] == store]
            if mine:
                break
        assert len(mine) == 1
        assert mine[0]["port"] == daemon.port and mine[0]["tls"] is True
        assert mine[0]["fingerprint"] == fp and mine[0]["addresses"] == ["127.0.0.1"]
        table = run_cli(tmp_path, "discover", "--timeout", "1.5", "--interface",
                        "127.0.0.1").stdout
        assert table.splitlines()[0].split()[:4] == ["NAME", "STORE", "ADDRESSES", "PORT"]
