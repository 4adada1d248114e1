"""/metrics for Prometheus, and the shipped alert rules checked and unit-tested by promtool."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import yaml

from sync.core import outbox
from sync.core.contract import InventoryAdjust
from tests.helpers import Api, make_config, running
from tests.tools import need

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "edged-rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "edged-rules.test.yml"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def _scrape(api: Api) -> str:
    async with api.session.get(api.base + "/metrics") as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        return await r.text()


def _seed(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("BEGIN IMMEDIATE")
    for i in (1, 2, 3):
        outbox.enqueue(conn, "shopify", InventoryAdjust(
            adjustment_id=f"adj_{i}", delta_id=i, inventory_item_id=f"gid://x/{i}", delta=1,
            reason="received"), "2020-01-01T00:00:00.000Z")
    conn.execute("UPDATE outbox SET state = 'dead' WHERE subject_id = 'adj_3'")
    for pid, state, amount in (("pay_u", "unknown", 4200), ("pay_s1", "stored", 900),
                               ("pay_s2", "stored", 1100)):
        conn.execute("INSERT INTO payments (id, method, state, amount, currency, processor,"
                     " created_at, updated_at) VALUES (?, 'token', ?, ?, 'EUR', 'stripe', ?, ?)",
                     (pid, state, amount, "2020-01-01T00:00:00.000Z",
                      "2020-01-01T00:00:00.000Z"))
    conn.execute("COMMIT")
    conn.close()


async def test_metrics_carry_what_the_rules_need(tmp_path: Path) -> None:
    async with running(make_config(tmp_path / "data", shopify=True)) as api:
        _seed(api.daemon.db.path)
        for _ in range(3):
            status, _ = await api.post("/v1/payments", {"amount": 500, "currency": "EUR",
                                                        "method": "cash"})
            assert status == 201
        await api.get("/v1/terminals")
        text = await _scrape(api)
    s = _samples(text)
    assert s['edged_breaker_state{destination="shopify",state="closed"}'] == 1
    assert s['edged_breaker_state{destination="shopify",state="open"}'] == 0
    assert s['edged_sync_queue_depth{destination="shopify"}'] == 2
    assert s['edged_sync_dead_rows{destination="shopify"}'] == 1
    assert s['edged_sync_oldest_pending_age_seconds{destination="shopify"}'] > 3600 * 24 * 300
    assert s['edged_payments{method="cash",state="approved"}'] == 3
    assert s['edged_payments{method="token",state="unknown"}'] == 1
    assert s['edged_payments{method="token",state="stored"}'] == 2
    assert s['edged_offline_stored_amount{currency="EUR"}'] == 2000
    assert s['edged_offline_stored_payments{currency="EUR"}'] == 2
    assert s["edged_offline_max_stored_amount"] == 200000
    assert s["edged_terminals_online"] == 1
    assert s['edged_terminal_up{terminal="sim-1"}'] == 1
    assert s["edged_db_commits"] >= 3 and s["edged_db_writes"] >= 3
    assert "edged_db_largest_group" in s and "edged_db_failed_writes" in s
    # a latency histogram per route: cumulative buckets ending in +Inf == count
    route = 'route="/v1/payments"'
    buckets = [v for k, v in s.items()
               if k.startswith("edged_http_request_duration_seconds_bucket{" + route)]
    assert buckets == sorted(buckets) and len(buckets) > 5
    assert s['edged_http_request_duration_seconds_bucket{' + route + ',le="+Inf"}'] == 3
    assert s['edged_http_request_duration_seconds_count{' + route + '}'] == 3
    assert s['edged_http_request_duration_seconds_sum{' + route + '}'] > 0
    # every metric the shipped rules alert on is in a real scrape
    names = {k.split("{")[0] for k in s}
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        used = set(re.findall(r"edged_[a-z_]+", rule["expr"]))
        assert used <= names, (rule["alert"], used - names)

    promtool = need("promtool", "prometheus", "the exposition format")
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60, check=False)
    # the format parses and passes promtool's lint (names, suffixes, help) with no remark
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout + out.stderr == ""


def test_rules_are_valid_and_every_alert_is_exercised() -> None:
    promtool = need("promtool", "prometheus", "the shipped alert rules")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout
    out = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=RULES_TEST.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    alerts = {r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested == {"EdgedBreakerOpen", "EdgedOldestPendingOverAnHour",
                                "EdgedStoredOfflineNearCap", "EdgedUnknownPayment",
                                "EdgedTerminalOffline", "EdgedDeadSyncRows"}
