"""The manager's routes: alerts and the end-of-day report."""

from __future__ import annotations

import sqlite3
from typing import Any

from aiohttp import web

from edged.api import models
from edged.api.http import Ctx, Route
from edged.errors import ApiError
from edged.ops import alerts, job_retry, reports
from edged.payments import records
from edged.payments.service import Answer
from sync.core.clock import utc_iso

STATUS_LIMIT = 50
RECENT_PAYMENTS = 10


async def day_report(ctx: Ctx) -> Answer | web.StreamResponse:
    services = ctx.services
    assert ctx.principal is not None
    verdict = services.manager.report_limits.take(f"token:{ctx.principal.token_id}")
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"at most {verdict.limit} reports a minute; retry after"
                       f" {verdict.retry_after} s", headers=verdict.headers())
    zone = services.cfg.manager.timezone
    raw = ctx.request.query.get("date", "")
    if raw:
        try:
            day = reports.parse_date(raw)
        except ValueError:
            raise ApiError("ERR-1013", f"date must be YYYY-MM-DD, not {raw!r}") from None
    else:
        day = reports.today(services.clock.now(), zone)
    span = reports.bounds(day, zone)
    now = services.clock.now()
    report = await services.db.read(lambda c: reports.day_report(c, span, now))
    if "text/csv" in ctx.request.headers.get("Accept", ""):
        return web.Response(text=reports.to_csv(report), content_type="text/csv",
                            charset="utf-8", headers={
                                "Content-Disposition":
                                    f'attachment; filename="edged-{day.isoformat()}.csv"'})
    return Answer(200, report)


async def list_alerts(ctx: Ctx) -> Answer:
    state = ctx.request.query.get("state") or "all"
    if state not in ("open", "all"):
        raise ApiError("ERR-1013", f"state must be open or all, not {state!r}")
    limit = ctx.query_int("limit", 50, 1, 500)
    rows = await ctx.services.db.read(lambda c: alerts.list_alerts(c, state == "open", limit))
    return Answer(200, {"data": rows})


async def status(ctx: Ctx) -> Answer:
    """Everything the status page shows, in one read."""
    services = ctx.services
    now = services.clock.now()
    zone = services.cfg.manager.timezone
    span = reports.bounds(reports.today(now, zone), zone)

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        unknown = conn.execute("SELECT * FROM payments WHERE state = 'unknown' ORDER BY n"
                               " LIMIT ?", (STATUS_LIMIT,)).fetchall()
        recent = conn.execute("SELECT * FROM payments ORDER BY n DESC LIMIT ?",
                              (RECENT_PAYMENTS,)).fetchall()
        refunds = conn.execute("SELECT * FROM refunds WHERE state = 'unknown' ORDER BY n"
                               " LIMIT ?", (STATUS_LIMIT,)).fetchall()
        today = reports.day_report(conn, span, now)
        return {
            "unknown_payments": [records.payment_dict(conn, r) for r in unknown],
            "recent_payments": [records.payment_dict(conn, r) for r in recent],
            "unknown_refunds": [records.refund_dict(r) for r in refunds],
            "alerts": alerts.list_alerts(conn, False, 20),
            "today": {"date": today["date"], "currencies": [
                {k: c[k] for k in ("currency", "takings", "refunds", "net", "by_method")}
                for c in today["currencies"]]},
        }

    body = await services.db.read(read)
    dead = await services.outbox.jobs("dead", None, STATUS_LIMIT)
    body["dead_jobs"] = await services.db.read(lambda conn: job_retry.annotate(conn, dead))
    body["pickups"] = await services.pickups.list("active", STATUS_LIMIT) \
        if services.pickups is not None else []
    body["terminals"] = [v.as_dict() for v in services.terminals.views()]
    body["sync"] = await services.sync_status()
    body["storage"] = services.upkeep.status() if services.upkeep is not None else None
    body["now"] = utc_iso(now)
    body["store"] = {"id": services.cfg.store.id, "currency": services.cfg.store.currency,
                     "timezone": zone}
    body["viewer"] = {"name": ctx.principal.name if ctx.principal else None,
                      "scope": ctx.principal.scope if ctx.principal else None,
                      "actions": bool(ctx.principal and ctx.principal.is_manager)}
    return Answer(200, body)


MANAGER_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/status", status, "What the status page shows, in one read: terminals,"
          " destinations, stored offline payments, unknown payments and refunds, dead jobs,"
          " recent alerts and payments, today's takings", models.STATUS, tag="manager"),
    Route("GET", "/v1/alerts", list_alerts, "Alerts kept in the database, open ones first,"
          " newest first: kind, severity, what to do, raised_at, cleared_at",
          models.ALERTS, query={"state": "open|all (all)", "limit": "1-500 (50)"},
          errors=("ERR-1013",), tag="manager"),
    Route("GET", "/v1/reports/day", day_report, "The end-of-day report (manager scope, 5 a"
          " minute): per currency takings by method and lane, refunds, net, counts; payments"
          " unknown or stored; changes not yet synced. CSV with Accept: text/csv",
          models.DAY_REPORT, query={"date": "YYYY-MM-DD in [manager].timezone (today)"},
          errors=("ERR-1013", "ERR-1015", "ERR-5003"), scope="manager", tag="manager"),
)
