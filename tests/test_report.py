"""The end-of-day report: API (JSON and CSV, manager scope, 5 a minute) and `edged report day`."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edged.app import Daemon
from edged.config import ManagerConfig
from edged.lan import tokens
from sync.core import outbox
from sync.core.contract import InventoryAdjust
from tests.clock import ManualClock
from tests.helpers import Api, make_config

ROOT = Path(__file__).resolve().parent.parent
REPORT = "/v1/reports/day?date=2026-11-26"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Api, ManualClock]]:
    cfg = make_config(tmp_path / "data", manager=ManagerConfig(timezone="Europe/Berlin"))
    clock = ManualClock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    daemon = Daemon(cfg, clock, shutdown_grace=0.5)
    await daemon.start()
    token = await daemon.db.write(lambda c: tokens.create(c, "register-1"))
    manager = await daemon.db.write(lambda c: tokens.create(c, "manager-1", "manager"))
    async with aiohttp.ClientSession() as session:
        yield Api(daemon, session, token, manager), clock
    await daemon.stop()


def _insert(db: Path, pid: str, state: str, amount: int, created_at: str,
            method: str = "token", processor: str | None = "stripe") -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, processor,"
                 " created_at, updated_at) VALUES (?, ?, ?, ?, 'EUR', ?, ?, ?)",
                 (pid, method, state, amount, processor, created_at, created_at))
    conn.commit()
    conn.close()


async def _day(api: Api, clock: ManualClock) -> None:
    """A day in Berlin (UTC+1): cash, a card sale, a refund, one unknown, one stored."""
    ok, cash = await api.post("/v1/payments", {"amount": 1250, "currency": "EUR",
                                               "method": "cash"})
    assert ok == 201
    await api.post("/v1/payments", {"amount": 700, "currency": "EUR", "method": "cash"})
    await api.post("/v1/payments", {"amount": 300, "currency": "USD", "method": "cash"})
    status, card = await api.post("/v1/payments", {"amount": 2000, "currency": "EUR",
                                                   "method": "card_present"})
    assert status == 202
    clock.advance(1.0)  # the simulated customer taps
    status, card = await api.get(f"/v1/payments/{card['id']}?wait=5")
    assert card["state"] == "approved"
    status, declined = await api.post("/v1/payments", {"amount": 1013, "currency": "EUR",
                                                       "method": "card_present"})
    clock.advance(1.0)
    status, declined = await api.get(f"/v1/payments/{declined['id']}?wait=5")
    assert declined["state"] == "declined"
    status, refund = await api.post(f"/v1/payments/{cash['id']}/refunds", {"amount": 500})
    assert (status, refund["state"]) == (201, "succeeded")
    db = api.daemon.db.path
    _insert(db, "pay_unknown1", "unknown", 4200, "2026-11-26T10:00:00.000Z",
            "card_present", None)
    _insert(db, "pay_stored1", "stored", 900, "2026-11-26T11:00:00.000Z")
    # 23:30 UTC on the 25th is 00:30 on the 26th in Berlin: in the report
    _insert(db, "pay_early", "approved", 111, "2026-11-25T23:30:00.000Z", "cash", None)
    # 23:30 UTC on the 26th is the 27th in Berlin: not in it
    _insert(db, "pay_late", "approved", 5000, "2026-11-26T23:30:00.000Z", "cash", None)
    conn = sqlite3.connect(db)
    conn.execute("BEGIN IMMEDIATE")
    for i in (1, 2):
        outbox.enqueue(conn, "shopify", InventoryAdjust(
            adjustment_id=f"adj_{i}", delta_id=i, inventory_item_id=f"gid://x/{i}", delta=1,
            reason="received"), "2026-11-26T12:00:00.000Z")
    conn.execute("COMMIT")
    conn.close()


async def test_day_report_json(setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    await _day(api, clock)
    status, report = await api.get(REPORT, token=api.manager_token)
    assert status == 200, report
    assert (report["date"], report["timezone"]) == ("2026-11-26", "Europe/Berlin")
    assert (report["from"], report["to"]) == ("2026-11-25T23:00:00.000Z",
                                              "2026-11-26T23:00:00.000Z")
    eur, usd = report["currencies"]
    assert eur["currency"] == "EUR"
    assert eur["takings"] == {"count": 4, "total": 1250 + 700 + 2000 + 111}
    assert eur["by_method"] == [{"method": "card_present", "count": 1, "total": 2000},
                                {"method": "cash", "count": 3, "total": 2061}]
    assert eur["by_lane"] == [{"lane": "counter", "count": 3, "total": 2061},
                              {"lane": "sim-1", "count": 1, "total": 2000}]
    assert eur["refunds"] == {"count": 1, "total": 500}
    assert eur["net"] == 4061 - 500
    assert eur["counts"] == {"approved": 4, "declined": 1, "stored": 1, "unknown": 1}
    assert eur["unknown"] == {"count": 1, "total": 4200}
    assert eur["stored"] == {"count": 1, "total": 900}
    assert usd["takings"] == {"count": 1, "total": 300} and usd["net"] == 300
    assert [p["id"] for p in report["unknown_payments"]] == ["pay_unknown1"]
    assert [p["id"] for p in report["stored_payments"]] == ["pay_stored1"]
    [unsynced] = report["unsynced"]
    assert unsynced.pop("oldest_at")
    assert unsynced == {"destination": "shopify", "pending": 2, "inflight": 0, "dead": 0}


async def test_day_report_csv_and_cli_agree(setup: tuple[Api, ManualClock],
                                            tmp_path: Path) -> None:
    api, clock = setup
    await _day(api, clock)
    headers = {**api.headers(token=api.manager_token), "Accept": "text/csv"}
    async with api.session.get(api.base + REPORT, headers=headers) as r:
        assert r.status == 200
        assert r.content_type == "text/csv"
        text = await r.text()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["section", "currency", "name", "count", "amount_minor"]
    assert ["takings", "EUR", "approved", "4", "4061"] in rows
    assert ["method", "EUR", "cash", "3", "2061"] in rows
    assert ["lane", "EUR", "sim-1", "1", "2000"] in rows
    assert ["refunds", "EUR", "succeeded", "1", "500"] in rows
    assert ["net", "EUR", "takings - refunds", "", "3561"] in rows
    assert ["unknown_payment", "EUR", "pay_unknown1", "1", "4200"] in rows
    assert ["stored_payment", "EUR", "pay_stored1", "1", "900"] in rows
    assert ["unsynced", "", "shopify", "2", ""] in rows

    conf = tmp_path / "edged.toml"
    conf.write_text('[manager]\ntimezone = "Europe/Berlin"\n')
    data = str(api.daemon.db.path.parent)

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", "report", "day", "--date",
                               "2026-11-26", "--config", str(conf), "--data-dir", data,
                               *extra], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              check=False)

    out = cli("--csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout == text
    out = cli()
    assert out.returncode == 0, out.stderr
    _, api_json = await api.get(REPORT, token=api.manager_token)
    cli_json: dict[str, Any] = json.loads(out.stdout)
    cli_json.pop("generated_at")
    api_json.pop("generated_at")
    assert cli_json == api_json


async def test_day_report_scope_limit_and_bad_dates(setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    status, body = await api.get(REPORT)  # a register token
    assert (status, body["error"]["code"]) == (403, "ERR-5003")
    for bad in ("26/11/2026", "2026-13-01", "yesterday", "2026-11-26T00:00"):
        status, body = await api.get(f"/v1/reports/day?date={bad}", token=api.manager_token)
        assert (status, body["error"]["code"]) == (400, "ERR-1013"), bad
    # the four refused dates used four of the five a minute
    status, body = await api.get("/v1/reports/day", token=api.manager_token)
    assert status == 200
    assert body["date"] == "2026-11-26"  # today in Berlin by the daemon's clock
    async with api.session.get(api.base + REPORT,
                               headers=api.headers(token=api.manager_token)) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "ERR-1015"
    clock.advance(12.0)  # one report's worth of the 5 a minute
    status, _ = await api.get(REPORT, token=api.manager_token)
    assert status == 200


def test_report_cli_refuses_bad_input(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edged", "report", "day", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60,
                              check=False)

    out = cli("--data-dir", str(tmp_path / "none"))
    assert out.returncode == 1 and "no database" in out.stderr
    out = cli("--date", "tomorrow", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr


def test_example_config_has_manager_and_alert_keys() -> None:
    from edged.config import load

    cfg = load(ROOT / "config.example.toml")
    assert cfg.manager == replace(ManagerConfig(), timezone="UTC")
    assert cfg.alerts.oldest_pending_minutes == 60.0
