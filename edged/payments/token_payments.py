"""Token (card-not-present) payments: forwarded to their processor through the outbox.

A token payment is ``pending`` while its forward row waits for the processor, or
``stored`` when it was accepted offline within the caps (docs/design.md, payments). The processor's
answer arrives through the sync hooks (``edged.upstream.sync_hooks``).

Two bounds run on the daemon's clock (:meth:`TokenPayments.run_deadlines`):

- **The forward wait** (``[offline] forward_wait_seconds``, 30 s): a payment still
  ``pending`` then is ``stored`` if offline acceptance is on and it fits the caps;
  otherwise its forward row is cancelled and it is ``failed`` (ERR-2018, retryable: take
  the payment again). The safe rule for the race with the sender: a row that is in flight,
  or whose earlier send is in doubt, cannot be cancelled (it may be charged): that payment
  becomes ``unknown`` and the processor's own answer (or a manager) settles it. A
  cancelled row is ``discarded``: it is never sent, so never charged later.
- **The offline maximum age** (``[offline] max_age_hours``): a ``stored`` payment still
  unsent then is not forwarded blindly: its forward row is held (``dead``, with the
  reason) and an alert raised, once. The payment stays ``stored`` (nothing taken yet); a
  manager retries the job (forward anyway) or discards it (the payment is then
  ``forward_declined``: not collected, see ``edged.upstream.sync_hooks.job_discarded``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from edged.config import Config
from edged.errors import ApiError
from edged.events import EventBus
from edged.ids import new_id
from edged.payments import records
from edged.payments.states import Actor, PaymentState, check_payment_start, move_payment
from edged.store import Database, audit
from edged.store.answer import Answer, stored_answer
from edged.store.idempotency import IdemRecord
from sync.core import outbox
from sync.core.clock import Clock, utc_iso
from sync.core.contract import OutboxKind, PaymentForward

log = logging.getLogger(__name__)

TIMED_OUT = "ERR-2018"
IDLE_POLL = 60.0  # the longest sleep between two passes: a safety net for a missed wake-up


@dataclass(frozen=True, slots=True)
class Settled:
    """What one pass of the deadlines did: payment ids by what became of them."""

    stored: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    next_in: float | None = None
    """Seconds until the next deadline; None when nothing waits."""


def stored_total(conn: sqlite3.Connection, currency: str) -> int:
    """What the payments accepted offline and not yet forwarded hold in ``currency``."""
    return int(conn.execute("SELECT coalesce(sum(amount), 0) FROM payments WHERE state = ?"
                            " AND currency = ?", (PaymentState.STORED, currency)).fetchone()[0])


class TokenPayments:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, clock: Clock) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._clock = clock
        # Tells whether a destination's link is down (its breaker open); set by the app.
        self.link_down: Callable[[str], bool] = lambda destination: False
        self._wake = asyncio.Event()

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    def fits_offline(self, conn: sqlite3.Connection, amount: int, currency: str) -> bool:
        offline = self._cfg.offline
        return offline.enabled and amount <= offline.max_payment and \
            stored_total(conn, currency) + amount <= offline.max_stored_total

    async def create(self, processor: str | None, amount: int, currency: str,
                     reference: str | None, token: str | None, idem: IdemRecord,
                     actor: str, *, manual_capture: bool = False) -> Answer:
        """Queue the forward; stored at once within the caps when the link is down."""
        if token is None:
            raise ApiError("ERR-2004", "method token needs a token")
        if processor is None or processor not in self._cfg.destinations:
            raise ApiError("ERR-2009", f"token payments need processor stripe or square"
                           f" configured on this daemon (configured:"
                           f" {', '.join(self._cfg.destinations) or 'none'})")
        offline = self._cfg.offline
        stored = self.link_down(processor)
        if stored and not offline.enabled:
            raise ApiError("ERR-6005", f"{processor} is unreachable and offline acceptance is"
                           " off ([offline] enabled = false); take another means of payment")
        if stored and amount > offline.max_payment:
            raise ApiError("ERR-2010", f"{processor} is unreachable; offline, one payment may"
                           f" not exceed {offline.max_payment} minor units")
        payment_id = new_id("pay")
        now = self._now()
        capture = "manual" if manual_capture else "automatic"
        square = self._cfg.square
        location = square.location_id if processor == "square" and square is not None \
            else None

        def write(conn: sqlite3.Connection) -> Answer:
            if stored:
                total = stored_total(conn, currency)
                if total + amount > offline.max_stored_total:
                    raise ApiError("ERR-2011", f"{processor} is unreachable and the payments"
                                   f" stored offline already hold {total} {currency} of"
                                   f" the {offline.max_stored_total} allowed")
            state = PaymentState.STORED if stored else PaymentState.PENDING
            check_payment_start(payment_id, state)
            body = records.insert_payment(
                conn, id=payment_id, method="token", state=state, amount=amount,
                currency=currency, reference=reference, processor=processor, token=token,
                capture=capture, created_at=now, updated_at=now,
                stored_at=now if stored else None)
            outbox.enqueue(conn, processor, PaymentForward(
                payment_id=payment_id, amount=amount, currency=currency, token=token,
                reference=reference, created_at=now, capture=capture,
                location_id=location), now)
            audit.append(conn, actor, f"payment.{state}", payment_id,
                         {"method": "token", "processor": processor, "amount": amount,
                          "currency": currency})
            return stored_answer(conn, idem, 201 if stored else 202, body)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        self._wake.set()  # a new forward wait to watch
        return answer

    async def _publish(self, ids: list[str]) -> None:
        for payment_id in ids:
            body = await self._db.read(partial(records.get_payment, payment_id=payment_id))
            if body is not None:
                self._bus.publish("payment", body)

    async def store_pending(self, processor: str) -> list[str]:
        """The processor's link went down: accept its pending token payments offline.

        Oldest first, each within the offline caps; one that does not fit stays pending
        (its forward wait decides). Returns the ids stored.
        """
        if not self._cfg.offline.enabled:
            return []
        now = self._now()

        def write(conn: sqlite3.Connection) -> list[str]:
            stored: list[str] = []
            for row in conn.execute("SELECT id, amount, currency FROM payments WHERE state ="
                                    " ? AND method = 'token' AND processor = ? ORDER BY n",
                                    (PaymentState.PENDING, processor)).fetchall():
                if not self.fits_offline(conn, row["amount"], row["currency"]):
                    continue
                move_payment(conn, row["id"], PaymentState.STORED, Actor.SYNC, now,
                             stored_at=now)
                audit.append(conn, "sync", "payment.stored", row["id"],
                             {"processor": processor, "amount": row["amount"],
                              "currency": row["currency"], "why": "link down"})
                stored.append(row["id"])
            return stored

        ids = await self._db.write(write)
        await self._publish(ids)
        if ids:
            log.warning("%s is unreachable: %d pending token payments stored offline",
                        processor, len(ids))
        return ids

    # -- the bounds ---------------------------------------------------------------------

    async def run_deadlines(self) -> None:
        """Enforce the forward wait and the offline maximum age until cancelled."""
        while True:
            self._wake.clear()
            try:
                done = await self.settle_overdue()
                delay = IDLE_POLL if done.next_in is None else min(done.next_in, IDLE_POLL)
            except Exception:  # logged loudly; the next pass tries again
                log.exception("token payment deadlines: a pass failed; trying again")
                delay = 1.0
            sleeper = asyncio.ensure_future(self._clock.sleep(max(delay, 0.001)))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def settle_overdue(self) -> Settled:
        """One pass over the token payments whose bound ran out (see the module's doc)."""
        offline = self._cfg.offline
        now_dt = self._clock.now()
        now = utc_iso(now_dt)
        wait = timedelta(seconds=offline.forward_wait_seconds)
        max_age = timedelta(hours=offline.max_age_hours)

        def write(conn: sqlite3.Connection) -> tuple[Settled, list[dict[str, Any]]]:
            stored: list[str] = []
            failed: list[str] = []
            unknown: list[str] = []
            held: list[str] = []
            alerts: list[dict[str, Any]] = []
            upcoming: list[datetime] = []
            for row in conn.execute("SELECT id, amount, currency, processor, created_at FROM"
                                    " payments WHERE state = ? AND method = 'token' ORDER BY n",
                                    (PaymentState.PENDING,)).fetchall():
                due = datetime.fromisoformat(row["created_at"]) + wait
                if due > now_dt:
                    upcoming.append(due)
                    continue
                self._overdue(conn, row, now, stored, failed, unknown)
            for row in conn.execute(
                    "SELECT p.id, p.amount, p.currency, coalesce(p.stored_at, p.created_at)"
                    " AS since FROM payments p WHERE p.state = ? AND EXISTS (SELECT 1 FROM"
                    " outbox o WHERE o.kind = ? AND o.subject_id = p.id AND o.state ="
                    " 'pending') AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.subject = p.id"
                    " AND a.action = 'payment.forward_held') ORDER BY p.n",
                    (PaymentState.STORED, OutboxKind.PAYMENT_FORWARD.value)).fetchall():
                due = datetime.fromisoformat(row["since"]) + max_age
                if due > now_dt:
                    upcoming.append(due)
                    continue
                reason = (f"held: stored offline since {row['since']}, longer than"
                          f" max_age_hours ({offline.max_age_hours}); retry to forward anyway,"
                          " or discard")
                if outbox.stop_unsent(conn, OutboxKind.PAYMENT_FORWARD.value, row["id"],
                                      "dead", reason, now):
                    audit.append(conn, "deadline", "payment.forward_held", row["id"],
                                 {"amount": row["amount"], "currency": row["currency"],
                                  "stored_since": row["since"]})
                    held.append(row["id"])
                    alerts.append({"kind": "payment.stored_too_old", "payment": row["id"],
                                   "state": "stored", "message": reason})
            next_in = (min(upcoming) - now_dt).total_seconds() if upcoming else None
            return Settled(tuple(stored), tuple(failed), tuple(unknown), tuple(held),
                           next_in), alerts

        done, alerts = await self._db.write(write)
        await self._publish([*done.stored, *done.failed, *done.unknown])
        for alert in alerts:
            self._bus.publish("alert", alert)
        if done.failed or done.unknown or done.stored or done.held:
            log.warning("token payments past their bound: %d stored, %d failed, %d unknown"
                        " (a send in flight), %d held for a manager", len(done.stored),
                        len(done.failed), len(done.unknown), len(done.held))
        return done

    def _overdue(self, conn: sqlite3.Connection, row: sqlite3.Row, now: str,
                 stored: list[str], failed: list[str], unknown: list[str]) -> None:
        """A pending token payment whose forward wait ran out: an answer for the register."""
        wait = self._cfg.offline.forward_wait_seconds
        processor = row["processor"]
        if self.fits_offline(conn, row["amount"], row["currency"]):
            move_payment(conn, row["id"], PaymentState.STORED, Actor.DEADLINE, now,
                         stored_at=now)
            audit.append(conn, "deadline", "payment.stored", row["id"],
                         {"processor": processor, "amount": row["amount"],
                          "currency": row["currency"], "why": f"no answer within {wait:g} s"})
            stored.append(row["id"])
            return
        reason = f"{processor} did not answer within {wait:g} s"
        if outbox.stop_unsent(conn, OutboxKind.PAYMENT_FORWARD.value, row["id"], "discarded",
                              f"cancelled: {reason}; the payment failed", now):
            move_payment(conn, row["id"], PaymentState.FAILED, Actor.DEADLINE, now,
                         finished_at=now, failure=f"{TIMED_OUT}: {reason}; nothing was"
                         " charged and nothing will be: take the payment again")
            audit.append(conn, "deadline", "payment.failed", row["id"],
                         {"processor": processor, "amount": row["amount"],
                          "currency": row["currency"], "why": reason})
            failed.append(row["id"])
            return
        # a send is in flight or in doubt: it may be charged, so it is not failed
        move_payment(conn, row["id"], PaymentState.UNKNOWN, Actor.DEADLINE, now,
                     failure=f"{reason} and a send is under way: it may be charged;"
                     f" {processor}'s answer or a manager settles it")
        audit.append(conn, "deadline", "payment.unknown", row["id"],
                     {"processor": processor, "amount": row["amount"],
                      "currency": row["currency"], "why": reason})
        unknown.append(row["id"])
