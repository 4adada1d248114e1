"""Alerts: conditions a person must act on, kept in the database and sent as ``alert`` events.

Each alert has a key naming its condition and subject (``breaker:shopify``,
``payment.unknown:pay_…``), a severity, a message that says what to do, and
``raised_at`` / ``cleared_at``. At most one alert per key is open at a time (a unique
index). The :class:`AlertCenter` looks at the daemon's state every ``[alerts]
check_seconds`` and at once after a payment, refund, terminal or sync event: a condition
that holds and has no open alert raises one; an open alert whose condition no longer holds
is cleared. Cleared alerts are deleted after ``[alerts] keep_days`` (edged.upkeep.retention).

Conditions (thresholds in ``[alerts]``):
- a destination's circuit breaker is open or probing (cleared when it closes);
- a destination's oldest pending change is older than ``oldest_pending_minutes``;
- a destination has dead rows;
- a payment or a refund is ``unknown``;
- a token payment stored offline was declined when forwarded (for a day after the decline);
- a terminal has been offline longer than ``terminal_offline_minutes``;
- a payment is ``authorized`` and past 3/4 of its processor's capture window
  (``edged.payments.capture.EXPIRY_HOURS``): capture or void it before it lapses;
- stored offline payments hold more than ``stored_cap_ratio`` of the cap in a currency, or
  the oldest is past ``stored_age_ratio`` of ``[offline] max_age_hours``;
- a terminal's end of day reported other totals than the daemon's for that lane (for a day
  after it, ``edged.lanes.end_of_day``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edged.config import Config
from edged.events import EventBus
from edged.lanes.end_of_day import ALERT_HOURS, settlement_conditions
from edged.lanes.terminals import TerminalManager
from edged.store import Database
from sync.core.clock import Clock, utc_iso
from sync.core.money import minor_to_decimal

log = logging.getLogger(__name__)

FORWARD_DECLINED_HOURS = 24
WATCHED_KINDS = frozenset({"payment", "refund", "terminal", "sync"})
# The states an event can bring that may raise an alert at once; any other payment, refund
# or terminal event matters only for a subject with an alert open (it may clear it). What
# only time raises (a terminal offline for long, an old queue) the periodic look finds.
RAISING_STATES = {"payment": frozenset({"unknown", "stored", "forward_declined",
                                        "authorized"}),
                  "refund": frozenset({"unknown"}),
                  "terminal": frozenset({"offline"})}
ALERT_FIELDS = ("id", "key", "kind", "severity", "subject", "message", "raised_at",
                "cleared_at")


@dataclass(frozen=True, slots=True)
class Condition:
    """A condition that holds now: what an open alert for ``key`` says."""

    key: str
    kind: str
    severity: str  # info | warning | critical
    subject: str | None
    message: str


def alert_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {f: row[f] for f in ALERT_FIELDS}
    out["data"] = json.loads(row["data"])
    return out


def list_alerts(conn: sqlite3.Connection, open_only: bool, limit: int) -> list[dict[str, Any]]:
    sql = "SELECT * FROM alerts"
    if open_only:
        sql += " WHERE cleared_at IS NULL"
    sql += " ORDER BY cleared_at IS NULL DESC, id DESC LIMIT ?"
    return [alert_dict(r) for r in conn.execute(sql, (limit,)).fetchall()]


def open_count(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    return {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT kind, severity, count(*) FROM alerts WHERE cleared_at IS NULL"
        " GROUP BY kind, severity")}


def _money(amount: int, currency: str) -> str:
    return f"{minor_to_decimal(amount, currency)} {currency}"


def _minutes(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


SyncStatus = Callable[[], Awaitable[dict[str, Any]]]


class AlertCenter:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, clock: Clock,
                 terminals: TerminalManager, sync_status: SyncStatus) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._clock = clock
        self._terminals = terminals
        self._sync_status = sync_status
        self._offline_since: dict[str, datetime] = {}
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._subjects: frozenset[str] = frozenset()  # of the conditions the last look held
        self.extra: list[Callable[[], Iterable[Any]]] = []
        """More conditions (edged.upkeep.tasks: disk space, the replica's lag, a failed backup):
        each returns objects with key, kind, severity, subject and message."""

    # -- the conditions -------------------------------------------------------------------

    async def conditions(self) -> list[Condition]:
        now = self._clock.now()
        found: list[Condition] = []
        found += self._terminal_conditions(now)
        sync = await self._sync_status()
        found += self._sync_conditions(sync)
        found += self._offline_conditions(sync["offline"])
        since = utc_iso(now - timedelta(hours=FORWARD_DECLINED_HOURS))
        found += await self._db.read(lambda c: self._record_conditions(c, since))
        found += await self._db.read(lambda c: self._capture_conditions(c, utc_iso(now)))
        settled_since = utc_iso(now - timedelta(hours=ALERT_HOURS))
        found += [Condition(key, "terminal_totals_mismatch", "critical", subject, message)
                  for key, subject, message in await self._db.read(
                      lambda c: settlement_conditions(c, settled_since))]
        for source in self.extra:
            found += [Condition(a.key, a.kind, a.severity, a.subject, a.message)
                      for a in source()]
        return found

    @staticmethod
    def _capture_conditions(conn: sqlite3.Connection, now: str) -> list[Condition]:
        """Authorisations left uncaptured, raised before the processor lets them lapse."""
        from edged.payments.capture import expiring  # noqa: PLC0415  (capture imports refunds)

        out = []
        for p, hours in expiring(conn, now):
            out.append(Condition(
                f"payment.authorized:{p['id']}", "authorization_expiring", "warning", p["id"],
                f"Payment {p['id']} of {_money(p['amount'], p['currency'])} is authorised"
                f" and not captured; {p['processor']} lets the authorisation lapse about"
                f" {hours:g} hours after it was made ({p['finished_at'] or p['created_at']})."
                f" Capture it (POST /v1/payments/{p['id']}/capture) or void it now."))
        return out

    def _terminal_conditions(self, now: datetime) -> list[Condition]:
        limit = self._cfg.alerts.terminal_offline_minutes * 60
        out = []
        for view in self._terminals.views():
            if view.state != "offline":
                self._offline_since.pop(view.id, None)
                continue
            since = self._offline_since.setdefault(view.id, now)
            if view.last_seen is not None:
                since = min(since, datetime.fromisoformat(view.last_seen))
            gone = (now - since).total_seconds()
            if gone > limit:
                out.append(Condition(
                    f"terminal.offline:{view.id}", "terminal_offline", "warning", view.id,
                    f"Terminal {view.id} has been offline for {_minutes(gone)}"
                    f" ({view.detail or 'no answer'}): the lane cannot take cards. Check the"
                    " terminal's power and cable; edged reconnects by itself."))
        return out

    def _sync_conditions(self, sync: dict[str, Any]) -> list[Condition]:
        limit = self._cfg.alerts.oldest_pending_minutes * 60
        out = []
        for d in sync["destinations"]:
            name = d["destination"]
            error = d.get("last_error") or "no error recorded"
            # half-open (one probe) still counts: clear only once the link proved itself
            if (d.get("breaker") or {}).get("state") in ("open", "half_open"):
                out.append(Condition(
                    f"breaker:{name}", "breaker_open", "warning", name,
                    f"{name} is unreachable (circuit breaker open; last error: {error})."
                    " Changes wait in the queue and go out by themselves when the link"
                    " returns; check the store's internet link."))
            age = d.get("oldest_pending_age_seconds") or 0.0
            if age > limit:
                out.append(Condition(
                    f"sync.stale:{name}", "oldest_pending", "warning", name,
                    f"The oldest change for {name} has waited {_minutes(age)}"
                    f" ({d['pending'] + d['inflight']} waiting; last error: {error}). Check"
                    " the link, the breaker and the credentials (edged secret set)."))
            if d.get("dead"):
                out.append(Condition(
                    f"sync.dead:{name}", "dead_job", "warning", name,
                    f"Changes for {name} failed for good and will not be sent by themselves."
                    " Read their error under Dead jobs, fix the cause, then retry or"
                    " discard them."))
        return out

    def _offline_conditions(self, offline: dict[str, Any]) -> list[Condition]:
        alerts = self._cfg.alerts
        cap = offline["max_stored_total"]
        max_age = offline["max_age_hours"] * 3600
        out = []
        for s in offline["stored"]:
            cur = s["currency"]
            if s["total"] > alerts.stored_cap_ratio * cap:
                out.append(Condition(
                    f"offline.cap:{cur}", "stored_cap", "warning", cur,
                    f"Token payments stored offline hold {_money(s['total'], cur)} of the"
                    f" {_money(cap, cur)} allowed ({s['count']} payments). At the cap token"
                    " payments are refused: restore the processor's link or take cash or"
                    " cards on the terminals."))
            if s["oldest_age_seconds"] > alerts.stored_age_ratio * max_age:
                out.append(Condition(
                    f"offline.age:{cur}", "stored_age", "critical", cur,
                    f"A token payment stored offline is {_minutes(s['oldest_age_seconds'])}"
                    f" old; it must be forwarded within {offline['max_age_hours']} hours."
                    " Restore the processor's link now."))
        return out

    @staticmethod
    def _record_conditions(conn: sqlite3.Connection, since: str) -> list[Condition]:
        out = []
        for p in conn.execute("SELECT id, amount, currency, terminal_id, processor, reference"
                              " FROM payments WHERE state = 'unknown' ORDER BY n"):
            where = p["terminal_id"] or p["processor"] or "the register"
            out.append(Condition(
                f"payment.unknown:{p['id']}", "payment_unknown", "critical", p["id"],
                f"Payment {p['id']} of {_money(p['amount'], p['currency'])} on {where} is"
                " unknown: the customer may have been charged. Check the terminal's or"
                " processor's journal, then resolve it as approved or declined."))
        for r in conn.execute("SELECT id, payment_id, amount, currency FROM refunds"
                              " WHERE state = 'unknown' ORDER BY n"):
            out.append(Condition(
                f"refund.unknown:{r['id']}", "refund_unknown", "critical", r["id"],
                f"Refund {r['id']} of {_money(r['amount'], r['currency'])} (payment"
                f" {r['payment_id']}) is unknown: the money may have gone back. Check the"
                " terminal's or processor's journal, then resolve it."))
        for p in conn.execute("SELECT id, amount, currency, processor, reference, failure"
                              " FROM payments WHERE state = 'forward_declined'"
                              " AND updated_at >= ? ORDER BY n", (since,)):
            ref = f" (reference {p['reference']})" if p["reference"] else ""
            out.append(Condition(
                f"payment.forward_declined:{p['id']}", "forward_declined", "critical", p["id"],
                f"A token payment of {_money(p['amount'], p['currency'])}{ref} accepted"
                f" offline was declined by {p['processor']} when forwarded: the customer was"
                " not charged. Contact the customer for another payment."))
        return out

    # -- raising and clearing -------------------------------------------------------------

    async def evaluate(self) -> list[dict[str, Any]]:
        """Raise what holds, clear what no longer does; return the changed alerts."""
        async with self._lock:
            held = {c.key: c for c in await self.conditions()}
            self._subjects = frozenset(c.subject for c in held.values() if c.subject)
            now = utc_iso(self._clock.now())

            def unchanged(conn: sqlite3.Connection) -> bool:
                open_keys = {r[0] for r in conn.execute(
                    "SELECT key FROM alerts WHERE cleared_at IS NULL")}
                return open_keys == held.keys()

            # Most looks change nothing (each payment pokes one): then no write, no commit
            # and no fsync beside the payments'. The write below checks again in its own
            # transaction.
            if await self._db.read(unchanged):
                return []

            def write(conn: sqlite3.Connection) -> list[dict[str, Any]]:
                changed = []
                open_rows = {r["key"]: r for r in conn.execute(
                    "SELECT * FROM alerts WHERE cleared_at IS NULL").fetchall()}
                for key, row in open_rows.items():
                    if key not in held:
                        conn.execute("UPDATE alerts SET cleared_at = ? WHERE id = ?",
                                     (now, row["id"]))
                        changed.append(alert_dict(conn.execute(
                            "SELECT * FROM alerts WHERE id = ?", (row["id"],)).fetchone()))
                for key, c in held.items():
                    if key in open_rows:
                        continue
                    cur = conn.execute(
                        "INSERT INTO alerts (key, kind, severity, subject, message, raised_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (key, c.kind, c.severity, c.subject, c.message, now))
                    changed.append(alert_dict(conn.execute(
                        "SELECT * FROM alerts WHERE id = ?", (cur.lastrowid,)).fetchone()))
                return changed

            changed = await self._db.write(write)
        for alert in changed:
            state = "cleared" if alert["cleared_at"] else "raised"
            logger = log.info if state == "cleared" or alert["severity"] == "info" \
                else log.warning
            logger("alert %s %s: %s", state, alert["key"], alert["message"])
            self._bus.publish("alert", {"event": state, "alert": alert})
        return changed

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Evaluate every check_seconds, and soon after any watched event, until cancelled."""
        watcher = asyncio.create_task(self._watch(), name="alerts-watch")
        try:
            while True:
                self._poke.clear()  # before looking: an event during the look pokes again
                try:
                    await self.evaluate()
                except Exception:  # a failed look is logged; the next one may succeed
                    log.exception("evaluating alerts failed")
                sleeper = asyncio.ensure_future(self._clock.sleep(
                    self._cfg.alerts.check_seconds))
                poked = asyncio.ensure_future(self._poke.wait())
                try:
                    await asyncio.wait({sleeper, poked}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    poked.cancel()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def matters(self, kind: str, data: dict[str, Any]) -> bool:
        """Whether an event may raise or clear an alert now (a cash sale cannot)."""
        raising = RAISING_STATES.get(kind)
        if raising is None or "end_of_day" in data:  # a terminal's totals, maybe not ours
            return True
        return (data.get("state") in raising or data.get("id") in self._subjects
                or data.get("currency") in self._subjects)  # stored offline, by currency

    async def _watch(self) -> None:
        sub = self._bus.subscribe(WATCHED_KINDS, accept=self.matters)
        try:
            while True:
                await sub.queue.get()  # only what matters is queued (asked at publishing)
                self._poke.set()
        finally:
            self._bus.unsubscribe(sub)
