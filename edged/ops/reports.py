"""The end-of-day report: what a store took, gave back and still owes the cloud, per currency.

One function reads it from a connection, so the API (on a reader) and ``edged report day``
(on the file directly) print the same figures. Money stays in integer minor units.

What counts, for the day ``[start, end)`` in the report's time zone:
- takings: payments ``approved`` that were created that day, by method and by lane (the
  terminal, the processor of a token payment, or ``counter`` for cash);
- refunds: refunds ``succeeded`` that were created that day; net = takings - refunds;
- counts: the day's payments in every state;
- what needs a person or the link: payments and refunds of the day still ``unknown``,
  token payments ``stored`` and not yet forwarded, and every change not yet synced when the
  report is read (whatever its day: it still waits for the cloud).
"""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from edged.lanes.end_of_day import day_settlements
from edged.store import audit
from sync.core.clock import utc_iso

CSV_COLUMNS = ("section", "currency", "name", "count", "amount_minor")


@dataclass(frozen=True, slots=True)
class DayBounds:
    day: date
    timezone: str
    start: str  # UTC ISO, inclusive
    end: str    # UTC ISO, exclusive


def bounds(day: date, timezone: str) -> DayBounds:
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(0), zone)
    end = datetime.combine(day + timedelta(days=1), time(0), zone)
    return DayBounds(day, timezone, utc_iso(start.astimezone(UTC)), utc_iso(end.astimezone(UTC)))


def today(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def _lane(row: sqlite3.Row) -> str:
    return str(row["terminal_id"] or row["processor"] or "counter")


def _short(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in row.keys() if k in (  # noqa: SIM118  (sqlite3.Row)
        "id", "payment_id", "method", "state", "amount", "currency", "terminal_id",
        "processor", "reference", "failure", "created_at")}


def day_report(conn: sqlite3.Connection, b: DayBounds, generated_at: datetime) -> dict[str, Any]:
    """The report for one day, as the API answers it."""
    span = (b.start, b.end)
    payments = conn.execute(
        "SELECT id, method, state, amount, currency, terminal_id, processor, reference,"
        " failure, created_at FROM payments WHERE created_at >= ? AND created_at < ?"
        " ORDER BY n", span).fetchall()
    refunds = conn.execute(
        "SELECT id, payment_id, state, amount, currency, terminal_id, reason, failure,"
        " created_at FROM refunds WHERE created_at >= ? AND created_at < ? ORDER BY n",
        span).fetchall()
    per: dict[str, dict[str, Any]] = {}

    def cur(code: str) -> dict[str, Any]:
        entry = per.get(code)
        if entry is None:
            entry = per[code] = {
                "currency": code, "takings": {"count": 0, "total": 0}, "by_method": {},
                "by_lane": {}, "refunds": {"count": 0, "total": 0},
                "net": 0, "counts": {}, "unknown": {"count": 0, "total": 0},
                "stored": {"count": 0, "total": 0}}
        return entry

    def add(bucket: dict[str, Any], amount: int) -> None:
        bucket["count"] += 1
        bucket["total"] += amount

    for p in payments:
        c = cur(p["currency"])
        c["counts"][p["state"]] = c["counts"].get(p["state"], 0) + 1
        if p["state"] == "approved":
            add(c["takings"], p["amount"])
            add(c["by_method"].setdefault(p["method"], {"count": 0, "total": 0}), p["amount"])
            add(c["by_lane"].setdefault(_lane(p), {"count": 0, "total": 0}), p["amount"])
        elif p["state"] == "unknown":
            add(c["unknown"], p["amount"])
        elif p["state"] == "stored":
            add(c["stored"], p["amount"])
    for r in refunds:
        c = cur(r["currency"])
        if r["state"] == "succeeded":
            add(c["refunds"], r["amount"])
    currencies = []
    for code in sorted(per):
        c = per[code]
        c["net"] = c["takings"]["total"] - c["refunds"]["total"]
        c["by_method"] = [{"method": k, **v} for k, v in sorted(c["by_method"].items())]
        c["by_lane"] = [{"lane": k, **v} for k, v in sorted(c["by_lane"].items())]
        c["counts"] = dict(sorted(c["counts"].items()))
        currencies.append(c)
    unsynced = [
        {"destination": row[0], "pending": row[1], "inflight": row[2], "dead": row[3],
         "oldest_at": row[4]}
        for row in conn.execute(
            "SELECT destination, sum(state = 'pending'), sum(state = 'inflight'),"
            " sum(state = 'dead'), min(created_at) FROM outbox"
            " WHERE state IN ('pending', 'inflight', 'dead') GROUP BY destination"
            " ORDER BY destination")]
    return {
        "date": b.day.isoformat(), "timezone": b.timezone, "from": b.start, "to": b.end,
        "generated_at": utc_iso(generated_at), "currencies": currencies,
        "unknown_payments": [_short(p) for p in payments if p["state"] == "unknown"],
        "unknown_refunds": [_short(r) for r in refunds if r["state"] == "unknown"],
        "stored_payments": [_short(p) for p in payments if p["state"] == "stored"],
        "unsynced": unsynced,
        "terminal_settlements": day_settlements(conn, b.start, b.end),
        "audit": _audit(conn),
    }


def _audit(conn: sqlite3.Connection) -> dict[str, Any]:
    """The audit chain's head when the report was made: keep it, and `edged audit verify
    --expect-head HEAD` proves later that no entry was cut from the chain's end."""
    head = audit.head(conn)
    return {"entries": head.entries if head else 0, "head": str(head) if head else ""}


def to_csv(report: dict[str, Any]) -> str:
    """One row per figure: section, currency, name, count, amount in minor units."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerow(("date", "", report["date"], "", ""))
    w.writerow(("timezone", "", report["timezone"], "", ""))
    for c in report["currencies"]:
        code = c["currency"]
        w.writerow(("takings", code, "approved", c["takings"]["count"], c["takings"]["total"]))
        for m in c["by_method"]:
            w.writerow(("method", code, m["method"], m["count"], m["total"]))
        for ln in c["by_lane"]:
            w.writerow(("lane", code, ln["lane"], ln["count"], ln["total"]))
        w.writerow(("refunds", code, "succeeded", c["refunds"]["count"], c["refunds"]["total"]))
        w.writerow(("net", code, "takings - refunds", "", c["net"]))
        for state, n in c["counts"].items():
            w.writerow(("count", code, state, n, ""))
        w.writerow(("unknown", code, "payments", c["unknown"]["count"], c["unknown"]["total"]))
        w.writerow(("stored", code, "not forwarded", c["stored"]["count"],
                    c["stored"]["total"]))
    for p in report["unknown_payments"]:
        w.writerow(("unknown_payment", p["currency"], p["id"], 1, p["amount"]))
    for r in report["unknown_refunds"]:
        w.writerow(("unknown_refund", r["currency"], r["id"], 1, r["amount"]))
    for p in report["stored_payments"]:
        w.writerow(("stored_payment", p["currency"], p["id"], 1, p["amount"]))
    for t in report.get("terminal_settlements", []):
        w.writerow(("terminal_total", t["currency"], t["terminal_id"], t["terminal_count"],
                    t["terminal_total"]))
        w.writerow(("terminal_daemon_total", t["currency"], t["terminal_id"],
                    t["daemon_count"], t["daemon_total"]))
    for u in report["unsynced"]:
        w.writerow(("unsynced", "", u["destination"], u["pending"] + u["inflight"] + u["dead"],
                    ""))
    if "audit" in report:
        w.writerow(("audit_head", "", report["audit"]["head"], report["audit"]["entries"], ""))
    return out.getvalue()


def parse_date(raw: str) -> date:
    """YYYY-MM-DD, or ValueError."""
    if len(raw) != 10:
        raise ValueError(raw)
    return date.fromisoformat(raw)
