"""TLS for real: the daemon's own certificate, pinned by fingerprint with real TLS clients."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import stat
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edged.app import Daemon
from edged.config import ApiConfig, Config, StoreConfig, load
from edged.errors import ConfigError
from edged.lan import tls, tokens
from tests.clock import ManualClock
from tests.daemon_process import DaemonProcess, run_cli, write_config
from tests.helpers import make_config


def tls_config(data_dir: Path, store_id: str = "shop-7") -> Config:
    cfg = make_config(data_dir)
    return replace(cfg, store=replace(cfg.store, id=store_id),
                   api=replace(cfg.api, tls=True))


async def _start(cfg: Config, clock: ManualClock | None = None) -> tuple[Daemon, str]:
    daemon = Daemon(cfg, clock or ManualClock(), shutdown_grace=0.5)
    await daemon.start()
    token = await daemon.db.write(lambda c: tokens.create(c, "register-1"))
    return daemon, token


def _pin(fp: str) -> aiohttp.Fingerprint:
    return aiohttp.Fingerprint(bytes.fromhex(fp))


async def test_first_start_makes_a_p256_certificate_and_serves_https_only(
        tmp_path: Path) -> None:
    cfg = tls_config(tmp_path / "data")
    daemon, token = await _start(cfg)
    try:
        assert daemon.tls is not None and daemon.tls.info is not None
        info = daemon.tls.info
        key_mode = stat.S_IMODE((cfg.data_dir / "tls.key").stat().st_mode)
        assert key_mode == 0o600
        cert = x509.load_pem_x509_certificate((cfg.data_dir / "tls.crt").read_bytes())
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert {"shop-7.local", socket.gethostname().lower()} <= set(info.dns_names)
        assert "127.0.0.1" in info.addresses
        assert len(info.fingerprint) == 64

        url = f"https://127.0.0.1:{daemon.port}/v1/terminals"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            # pinned to the fingerprint: the chain is the one certificate we expect
            async with session.get(url, headers=headers, ssl=_pin(info.fingerprint)) as r:
                assert r.status == 200
                assert (await r.json())["data"][0]["id"] == "sim-1"
            # another fingerprint: the client refuses the server
            with pytest.raises(aiohttp.ServerFingerprintMismatch):
                async with session.get(url, headers=headers, ssl=_pin("00" * 32)):
                    pass
            # plain HTTP on the same port gets no answer
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url.replace("https", "http"), headers=headers) as r:
                    await r.read()

        # the standard library's verifier: the certificate as the only trust anchor,
        # the store's mDNS name checked against its subject alternative names
        pem = (cfg.data_dir / "tls.crt").read_text()
        ctx = ssl.create_default_context(cadata=pem)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", daemon.port, ssl=ctx, server_hostname="shop-7.local")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert hashlib.sha256(der).hexdigest() == info.fingerprint
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: shop-7.local\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", daemon.port, ssl=ctx,
                                          server_hostname="other-box.example")
    finally:
        await daemon.stop()


async def test_host_check_accepts_the_names_in_the_certificate(tmp_path: Path) -> None:
    cfg = tls_config(tmp_path / "data")
    daemon, token = await _start(cfg)
    try:
        assert daemon.tls is not None and daemon.tls.info is not None
        pin = _pin(daemon.tls.info.fingerprint)
        url = f"https://127.0.0.1:{daemon.port}/v1/terminals"
        async with aiohttp.ClientSession() as session:
            for host, status in ((f"shop-7.local:{daemon.port}", 200),
                                 (socket.gethostname(), 200),
                                 ("attacker.example", 421)):
                async with session.get(url, ssl=pin, headers={
                        "Authorization": f"Bearer {token}", "Host": host}) as r:
                    assert r.status == status, host
    finally:
        await daemon.stop()


async def test_renewal_well_before_expiry_swaps_the_served_certificate(
        tmp_path: Path) -> None:
    clock = ManualClock()
    cfg = tls_config(tmp_path / "data")
    daemon, token = await _start(cfg, clock)
    try:
        assert daemon.tls is not None and daemon.tls.info is not None
        old = daemon.tls.info
        changed: asyncio.Future[tls.CertInfo] = asyncio.get_running_loop().create_future()
        daemon.tls.on_change(changed.set_result)
        # not due a day before the renewal window
        early = clock.now() + tls.VALIDITY - tls.RENEW_BEFORE - timedelta(days=1)
        assert tls.ensure(cfg, early) == (old, False)
        # a day into the window the renewal task (sleeping on the clock) renews it
        clock.advance((tls.VALIDITY - tls.RENEW_BEFORE + timedelta(days=1)).total_seconds())
        new = await asyncio.wait_for(changed, 30)
        assert daemon.tls.info == new and not await daemon.tls.check()
        assert new.fingerprint != old.fingerprint
        assert new.superseded == old.fingerprint
        assert new.not_after - clock.now() > tls.VALIDITY - timedelta(hours=1)
        url = f"https://127.0.0.1:{daemon.port}/v1/terminals"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=headers, ssl=_pin(new.fingerprint)) as r:
                assert r.status == 200
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ServerFingerprintMismatch):
                async with session.get(url, headers=headers, ssl=_pin(old.fingerprint)):
                    pass
        # the superseded fingerprint is announced until the old certificate would expire
        assert tls.load(cfg.data_dir, clock.now()).superseded == old.fingerprint  # type: ignore[union-attr]
        assert tls.load(cfg.data_dir, old.not_after).superseded is None  # type: ignore[union-attr]
    finally:
        await daemon.stop()


def test_a_new_store_id_reissues_at_start_and_the_same_config_does_not(
        tmp_path: Path) -> None:
    clock = ManualClock()
    cfg = tls_config(tmp_path / "data")
    first, made = tls.ensure(cfg, clock.now())
    assert made
    again, made = tls.ensure(cfg, clock.now())
    assert (made, again.fingerprint) == (False, first.fingerprint)
    moved, made = tls.ensure(replace(cfg, store=replace(cfg.store, id="shop-8")), clock.now())
    assert made and "shop-8.local" in moved.dns_names and moved.superseded == first.fingerprint


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    cfg = tls_config(tmp_path / "data")
    tls.ensure(cfg, ManualClock().now())
    key = cfg.data_dir / "tls.key"
    key.chmod(0o644)
    with pytest.raises(tls.TlsError, match="chmod 600"):
        tls.load(cfg.data_dir)


def test_lan_listen_without_tls_refuses_to_start_naming_key_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "lan.toml"
    bad.write_text('[api]\nlisten = "0.0.0.0:8731"\n')
    with pytest.raises(ConfigError) as caught:
        load(bad)
    message = str(caught.value)
    assert "api.listen" in message and "api.tls = false" in message
    assert "tls = true" in message and "127.0.0.1" in message
    done = run_cli(tmp_path / "data", "run", "--listen", "192.0.2.10:8731", check=False)
    assert done.returncode == 2 and "tls = true" in done.stderr
    # loopback stays allowed without TLS; so does a LAN listen with it
    load_ok = tmp_path / "ok.toml"
    load_ok.write_text('[api]\nlisten = "0.0.0.0:8731"\ntls = true\n')
    assert load(load_ok).api.tls
    assert Config(store=StoreConfig(), api=ApiConfig(listen="[::1]:8731")).on_loopback


def test_fingerprint_command_prints_the_served_fingerprint_last(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "edged.toml", api={"tls": True})
    with DaemonProcess(data, config=config) as daemon:
        assert daemon.base_url.startswith("https://")
        printed = [line for line in daemon.stdout_lines if "fingerprint" in line]
        served = printed[0].rsplit(" ", 1)[1]
        out = run_cli(data, "tls", "fingerprint", config=config).stdout.splitlines()
        assert out[-1] == served
        pem = (data / "tls.crt").read_bytes()
        der = ssl.PEM_cert_to_DER_cert(pem.decode())
        assert hashlib.sha256(der).hexdigest() == served
        ctx = ssl.create_default_context(cadata=pem.decode())
        with socket.create_connection(("127.0.0.1", daemon.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            der_served = conn.getpeercert(binary_form=True)
            assert der_served is not None
            assert hashlib.sha256(der_served).hexdigest() == served
