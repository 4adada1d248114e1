"""Alerts: raised and cleared as the daemon's state changes, kept in the database, sent as
``alert`` events, with thresholds from [alerts] and time from the daemon's clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edged.app import Daemon
from edged.config import AlertsConfig, Config, OfflineConfig, TerminalConfig
from edged.events import Subscription
from edged.lan import tokens
from sync.core import outbox
from sync.core.contract import InventoryAdjust
from tests.clock import ManualClock
from tests.helpers import Api, make_config

START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass
class Setup:
    api: Api
    clock: ManualClock
    events: Subscription

    @property
    def db(self) -> Path:
        return self.api.daemon.db.path

    def sql(self, statement: str, *args: Any) -> None:
        conn = sqlite3.connect(self.db)
        conn.execute(statement, args)
        conn.commit()
        conn.close()

    async def evaluate(self) -> dict[str, dict[str, Any]]:
        """Run one look now; the alerts that changed, by key."""
        changed = await self.api.daemon.services.manager.alerts.evaluate()
        return {a["key"]: a for a in changed}

    def published(self) -> list[dict[str, Any]]:
        out = []
        while not self.events.queue.empty():
            out.append(self.events.queue.get_nowait().data)
        return out


async def _start(cfg: Config, loop: bool = False) -> AsyncIterator[Setup]:
    """The daemon; without ``loop`` its alert loop is stopped and the test calls evaluate."""
    clock = ManualClock(START)
    daemon = Daemon(cfg, clock, shutdown_grace=0.5)
    await daemon.start()
    if not loop:
        await daemon.services.manager.stop()
    token = await daemon.db.write(lambda c: tokens.create(c, "register-1"))
    manager = await daemon.db.write(lambda c: tokens.create(c, "manager-1", "manager"))
    events = daemon.bus.subscribe(frozenset({"alert"}))
    async with aiohttp.ClientSession() as session:
        yield Setup(Api(daemon, session, token, manager), clock, events)
    await daemon.stop()


def _cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path / "data", shopify=True,
                       offline=OfflineConfig(enabled=True, max_stored_total=10000,
                                             max_age_hours=10),
                       alerts=AlertsConfig(check_seconds=3600, oldest_pending_minutes=30,
                                           terminal_offline_minutes=5))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async for s in _start(_cfg(tmp_path)):
        yield s


def _payment(s: Setup, pid: str, state: str, amount: int, at: str,
             method: str = "token") -> None:
    s.sql("INSERT INTO payments (id, method, state, amount, currency, processor, terminal_id,"
          " created_at, updated_at) VALUES (?, ?, ?, ?, 'EUR', ?, ?, ?, ?)",
          pid, method, state, amount, "stripe" if method == "token" else None,
          "sim-1" if method == "card_present" else None, at, at)


async def test_unknown_payment_raised_then_cleared_by_a_resolve(setup: Setup) -> None:
    s = setup
    assert await s.evaluate() == {}
    _payment(s, "pay_u1", "unknown", 4250, "2026-11-26T11:59:00.000Z", "card_present")
    raised = (await s.evaluate())["payment.unknown:pay_u1"]
    assert raised["severity"] == "critical" and raised["kind"] == "payment_unknown"
    assert raised["raised_at"] == "2026-11-26T12:00:00.000Z" and raised["cleared_at"] is None
    assert "42.50 EUR" in raised["message"] and "sim-1" in raised["message"]
    assert "resolve" in raised["message"]
    assert s.published() == [{"event": "raised", "alert": raised}]
    assert await s.evaluate() == {}  # still holds: nothing new, no second row
    assert s.api.count("alerts") == 1

    s.clock.advance(90)
    status, _ = await s.api.post("/v1/payments/pay_u1/resolve",
                                 {"outcome": "approved", "note": "journal says approved"},
                                 token=s.api.manager_token)
    assert status == 200
    cleared = (await s.evaluate())["payment.unknown:pay_u1"]
    assert cleared["cleared_at"] == "2026-11-26T12:01:30.000Z"
    status, body = await s.api.get("/v1/alerts")
    assert status == 200 and [a["key"] for a in body["data"]] == ["payment.unknown:pay_u1"]
    status, body = await s.api.get("/v1/alerts?state=open")
    assert body["data"] == []
    status, body = await s.api.get("/v1/alerts?state=closed")
    assert (status, body["error"]["code"]) == (400, "ERR-1013")


async def test_sync_conditions_breaker_stale_and_dead(setup: Setup) -> None:
    s = setup
    conn = sqlite3.connect(s.db)
    conn.execute("BEGIN IMMEDIATE")
    outbox.enqueue(conn, "shopify", InventoryAdjust(
        adjustment_id="adj_1", delta_id=1, inventory_item_id="gid://x/1", delta=1,
        reason="received"), "2026-11-26T11:45:00.000Z")
    conn.execute("COMMIT")
    conn.close()
    assert await s.evaluate() == {}  # 15 minutes old: under the 30 of the config
    s.clock.advance(20 * 60)
    stale = (await s.evaluate())["sync.stale:shopify"]
    assert stale["kind"] == "oldest_pending" and "35 minutes" in stale["message"]

    breaker = s.api.daemon.sync.engine.workers["shopify"].breaker  # type: ignore[union-attr]
    for _ in range(breaker.settings.minimum_throughput):
        breaker.acquire().failure()
    opened = (await s.evaluate())["breaker:shopify"]
    assert opened["kind"] == "breaker_open" and "unreachable" in opened["message"]

    s.sql("UPDATE outbox SET state = 'dead', last_error = 'ERR-6015: refused'")
    changed = await s.evaluate()
    assert changed["sync.dead:shopify"]["raised_at"] == "2026-11-26T12:20:00.000Z"
    assert changed["sync.stale:shopify"]["cleared_at"] is not None  # dead is not pending

    s.sql("UPDATE outbox SET state = 'discarded'")
    changed = await s.evaluate()
    assert changed["sync.dead:shopify"]["cleared_at"] == "2026-11-26T12:20:00.000Z"


async def test_offline_cap_age_forward_declined_and_refund_unknown(setup: Setup) -> None:
    s = setup
    _payment(s, "pay_s1", "stored", 5000, "2026-11-26T11:00:00.000Z")
    assert await s.evaluate() == {}  # 50 % of the 100.00 cap, 1 h of 10
    _payment(s, "pay_s2", "stored", 3500, "2026-11-26T11:30:00.000Z")
    cap = (await s.evaluate())["offline.cap:EUR"]
    assert "85.00 EUR of the 100.00 EUR allowed" in cap["message"]
    s.clock.advance(7 * 3600 + 60)  # the oldest is 8 h 1 min old: past 80 % of 10 h
    age = (await s.evaluate())["offline.age:EUR"]
    assert age["severity"] == "critical" and "10 hours" in age["message"]

    s.sql("UPDATE payments SET state = 'forward_declined', updated_at = ? WHERE id = 'pay_s2'",
          "2026-11-26T19:01:00.000Z")
    changed = await s.evaluate()
    declined = changed["payment.forward_declined:pay_s2"]
    assert "35.00 EUR" in declined["message"] and "not charged" in declined["message"]
    assert changed["offline.cap:EUR"]["cleared_at"] is not None  # 50.00 left stored

    _payment(s, "pay_c", "approved", 2000, "2026-11-26T19:00:00.000Z", "cash")
    s.sql("INSERT INTO refunds (id, payment_id, amount, currency, state, created_at,"
          " updated_at) VALUES ('ref_1', 'pay_c', 700, 'EUR', 'unknown', ?, ?)",
          "2026-11-26T19:00:00.000Z", "2026-11-26T19:00:00.000Z")
    refund = (await s.evaluate())["refund.unknown:ref_1"]
    assert "7.00 EUR" in refund["message"] and refund["severity"] == "critical"

    s.clock.advance(25 * 3600)  # a day after the decline its alert clears by itself
    changed = await s.evaluate()
    assert changed["payment.forward_declined:pay_s2"]["cleared_at"] is not None


async def test_cleared_alerts_are_kept_for_keep_days(setup: Setup) -> None:
    """Cleared alerts go with the retention pass (edged.upkeep.retention) after keep_days."""
    s = setup
    retention = s.api.daemon.upkeep.retention
    _payment(s, "pay_u", "unknown", 100, "2026-11-26T11:00:00.000Z")
    await s.evaluate()
    s.sql("UPDATE payments SET state = 'declined' WHERE id = 'pay_u'")
    await s.evaluate()
    s.clock.advance(29 * 86400)
    await s.evaluate()
    await retention.run_pass()
    assert s.api.count("alerts") == 1
    s.clock.advance(2 * 86400)
    await s.evaluate()
    await retention.run_pass()
    assert s.api.count("alerts") == 0


async def test_a_look_that_changes_nothing_writes_nothing(setup: Setup) -> None:
    s = setup
    await s.evaluate()
    stats = s.api.daemon.db.stats
    before = (stats.commits, stats.writes)
    for _ in range(3):
        assert await s.evaluate() == {}
    assert (stats.commits, stats.writes) == before  # no commit, so no fsync, per look
    _payment(s, "pay_u", "unknown", 100, "2026-11-26T11:00:00.000Z")
    assert "payment.unknown:pay_u" in await s.evaluate()
    assert stats.writes == before[1] + 1
    assert await s.evaluate() == {}
    assert stats.writes == before[1] + 1


async def test_terminal_offline_longer_than_the_threshold(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data", terminals=(TerminalConfig(
        id="lane-1", kind="concert", options={"port": str(tmp_path / "no-such-tty")}),),
        alerts=AlertsConfig(check_seconds=3600, terminal_offline_minutes=5))
    async for s in _start(cfg):
        assert s.api.daemon.terminals.view("lane-1").state == "offline"  # type: ignore[union-attr]
        assert await s.evaluate() == {}
        s.clock.advance(4 * 60)
        assert await s.evaluate() == {}
        s.clock.advance(2 * 60)
        raised = (await s.evaluate())["terminal.offline:lane-1"]
        assert raised["kind"] == "terminal_offline" and "6 minutes" in raised["message"]


async def test_the_loop_raises_soon_after_an_event(tmp_path: Path) -> None:
    """No clock movement: the payment event itself makes the center look again."""
    async for s in _start(_cfg(tmp_path), loop=True):
        await _loop_case(s)


async def _loop_case(s: Setup) -> None:
    _payment(s, "pay_u9", "unknown", 999, "2026-11-26T11:00:00.000Z")
    s.api.daemon.bus.publish("payment", {"id": "pay_u9", "state": "unknown"})
    event = await asyncio.wait_for(s.events.queue.get(), 5.0)
    assert event.data["event"] == "raised"
    assert event.data["alert"]["key"] == "payment.unknown:pay_u9"
    conn = sqlite3.connect(s.db)
    row = conn.execute("SELECT severity, cleared_at FROM alerts").fetchone()
    conn.close()
    assert row == ("critical", None)
    # a cash sale or a busy lane cannot change an alert: no look for them
    alerts = s.api.daemon.services.manager.alerts
    assert not alerts.matters("payment", {"id": "pay_c", "state": "approved",
                                          "currency": "USD"})
    assert not alerts.matters("terminal", {"id": "sim-1", "state": "busy"})
    assert alerts.matters("terminal", {"id": "sim-1", "state": "offline"})
    assert alerts.matters("sync", {"event": "job.retry"})
    # the payment with the open alert is resolved: its event makes the center look again
    s.sql("UPDATE payments SET state = 'approved' WHERE id = 'pay_u9'")
    assert alerts.matters("payment", {"id": "pay_u9", "state": "approved"})
    s.api.daemon.bus.publish("payment", {"id": "pay_u9", "state": "approved"})
    event = await asyncio.wait_for(s.events.queue.get(), 5.0)
    assert (event.data["event"], event.data["alert"]["key"]) == ("cleared",
                                                                 "payment.unknown:pay_u9")


def test_alert_settings_are_checked(tmp_path: Path) -> None:
    from edged.config import load
    from edged.errors import ConfigError

    path = tmp_path / "edged.toml"
    path.write_text("[alerts]\nstored_cap_ratio = 1.5\n")
    with pytest.raises(ConfigError, match="alerts.stored_cap_ratio: must be more than 0"):
        load(path)
    path.write_text('[manager]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="manager.timezone: is not a time zone"):
        load(path)
    path.write_text("[alerts]\noldest_pending_minutes = 15\n")
    assert replace(load(path).alerts, oldest_pending_minutes=60.0) == AlertsConfig()
