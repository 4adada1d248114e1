"""A terminal's end of day: close its batch, keep its totals, compare them with ours.

``POST /v1/terminals/{id}/end-of-day`` (manager) claims the lane like a transaction, asks
the terminal to settle (ZVT ``06 50``), and records what it reported in
``terminal_settlements`` beside what the daemon holds for that lane since the lane's
previous end of day: its approved card payments minus its refunds that succeeded on the
terminal (a reversal is such a refund). A difference is a mismatch: the row says so, the
answer says so, and an alert asks a person to compare the terminal's printout with the
payments (:func:`settlement_conditions`). The day report lists the day's settlements
(:func:`day_settlements`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from drivers.base import DriverError, EndOfDayTotals, NothingSent, TerminalBusy
from edged.errors import ApiError
from edged.ids import new_id
from edged.store import audit, idempotency
from edged.store.answer import Answer
from sync.core.clock import utc_iso

if TYPE_CHECKING:
    from edged.events import EventBus
    from edged.lanes.terminals import TerminalManager
    from edged.store import Database
    from edged.store.idempotency import IdemRecord
    from sync.core.clock import Clock

log = logging.getLogger(__name__)

ALERT_HOURS = 24
"""A mismatch stays an open alert this long after its end of day."""

_FIELDS = ("id", "terminal_id", "currency", "terminal_total", "terminal_count",
           "daemon_total", "daemon_count", "mismatch", "since", "created_at")


def settlement_dict(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {f: row[f] for f in _FIELDS}
    out["mismatch"] = bool(row["mismatch"])
    out["difference"] = row["terminal_total"] - row["daemon_total"]
    out["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return out


def daemon_figures(conn: sqlite3.Connection, terminal_id: str,
                   since: str | None) -> tuple[int, int]:
    """(net total, approved count) of the lane's card payments since ``since``."""
    after = since or ""
    paid = conn.execute(
        "SELECT count(*), coalesce(sum(coalesce(captured, amount)), 0) FROM payments"
        " WHERE terminal_id = ? AND method = 'card_present' AND state = 'approved'"
        " AND coalesce(finished_at, updated_at) > ?", (terminal_id, after)).fetchone()
    refunded = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM refunds WHERE terminal_id = ?"
        " AND state = 'succeeded' AND updated_at > ?", (terminal_id, after)).fetchone()
    return int(paid[1]) - int(refunded[0]), int(paid[0])


class EndOfDayService:
    def __init__(self, db: Database, bus: EventBus, terminals: TerminalManager,
                 clock: Clock) -> None:
        self._db = db
        self._bus = bus
        self._terminals = terminals
        self._clock = clock

    async def run(self, terminal_id: str, idem: IdemRecord, actor: str) -> Answer:
        driver = self._terminals.driver(terminal_id)
        if driver is None:
            raise ApiError("ERR-3006", f"no terminal {terminal_id!r}")
        if not driver.capabilities.end_of_day:
            raise ApiError("ERR-3020", f"terminal {terminal_id} ({driver.kind}) has no end of"
                           " day from the register; close its day on the terminal itself")
        subject = new_id("eod")
        self._terminals.claim(terminal_id, subject)
        try:
            totals = await driver.end_of_day()
        except TerminalBusy as exc:
            raise ApiError("ERR-3002", f"terminal {terminal_id}: {exc}") from None
        except NothingSent as exc:
            raise ApiError("ERR-3021", f"terminal {terminal_id}: {exc}") from None
        except DriverError as exc:
            log.error("terminal %s: end of day in doubt: %s", terminal_id, exc)
            raise ApiError("ERR-3022", f"terminal {terminal_id}: the end of day's outcome is"
                           f" unknown ({exc}); read the terminal's printout before trying"
                           " again") from None
        finally:
            self._terminals.release(terminal_id, subject)
        answer = await self._db.write(
            lambda conn: self._record(conn, subject, terminal_id, totals, idem, actor))
        body = answer.body
        view = self._terminals.view(terminal_id)
        self._bus.publish("terminal", {**(view.as_dict() if view else {"id": terminal_id}),
                                       "end_of_day": body})
        (log.warning if body["mismatch"] else log.info)(
            "terminal %s end of day: terminal %d %s, daemon %d %s%s", terminal_id,
            body["terminal_total"], body["currency"], body["daemon_total"], body["currency"],
            " (MISMATCH)" if body["mismatch"] else "")
        return answer

    def _record(self, conn: sqlite3.Connection, settlement_id: str, terminal_id: str,
                totals: EndOfDayTotals, idem: IdemRecord, actor: str) -> Answer:
        now = utc_iso(self._clock.now())
        previous = conn.execute("SELECT created_at FROM terminal_settlements WHERE"
                                " terminal_id = ? ORDER BY n DESC LIMIT 1",
                                (terminal_id,)).fetchone()
        since = previous[0] if previous else None
        daemon_total, daemon_count = daemon_figures(conn, terminal_id, since)
        mismatch = totals.total != daemon_total
        detail = {"groups": [{"card": g, "count": c, "total": t} for g, c, t in totals.groups],
                  "receipt_from": totals.receipt_from, "receipt_to": totals.receipt_to,
                  "reference": totals.reference, "receipt": totals.receipt}
        conn.execute(
            "INSERT INTO terminal_settlements (id, terminal_id, currency, terminal_total,"
            " terminal_count, daemon_total, daemon_count, mismatch, since, detail,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (settlement_id, terminal_id, totals.currency, totals.total, totals.count,
             daemon_total, daemon_count, int(mismatch), since, json.dumps(detail), now))
        audit.append(conn, actor, "terminal.end_of_day", settlement_id,
                     {"terminal": terminal_id, "terminal_total": totals.total,
                      "daemon_total": daemon_total, "currency": totals.currency,
                      "mismatch": mismatch})
        row = conn.execute("SELECT * FROM terminal_settlements WHERE id = ?",
                           (settlement_id,)).fetchone()
        body = settlement_dict(row)
        idempotency.save(conn, idem, 201, body)
        return Answer(201, body)


def day_settlements(conn: sqlite3.Connection, start: str, end: str) -> list[dict[str, Any]]:
    """The end-of-day settlements made in ``[start, end)``, oldest first."""
    rows = conn.execute("SELECT * FROM terminal_settlements WHERE created_at >= ? AND"
                        " created_at < ? ORDER BY n", (start, end)).fetchall()
    out = []
    for row in rows:
        entry = settlement_dict(row)
        entry["detail"] = {k: v for k, v in entry["detail"].items() if k != "receipt"}
        out.append(entry)
    return out


def settlement_conditions(conn: sqlite3.Connection, since: str) -> list[tuple[str, str, str]]:
    """(key, subject, message) of every mismatched end of day newer than ``since``."""
    out = []
    for row in conn.execute("SELECT * FROM terminal_settlements WHERE mismatch = 1 AND"
                            " created_at >= ? ORDER BY n", (since,)):
        diff = row["terminal_total"] - row["daemon_total"]
        out.append((
            f"terminal.totals:{row['id']}", row["terminal_id"],
            f"Terminal {row['terminal_id']} closed its day ({row['created_at']}) with"
            f" {row['terminal_total']} {row['currency']} (minor units), edged holds"
            f" {row['daemon_total']} for that lane since its previous end of day"
            f" ({'+' if diff > 0 else ''}{diff}). Compare the terminal's printout with the"
            " lane's payments (unknown ones first) and resolve what differs."))
    return out
