"""Token (card-not-present) payments: forwarded to their processor through the outbox.

A token payment is ``pending`` while its forward row waits for the processor, or
``stored`` when it was accepted offline within the caps (DESIGN §3). The processor's
answer arrives through the sync hooks (``edged.sync_hooks``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import partial

from edged import audit, records
from edged.answer import Answer, payment_answer
from edged.config import Config
from edged.errors import ApiError
from edged.events import EventBus
from edged.idempotency import IdemRecord
from edged.ids import new_id
from edged.payment_state import Actor, PaymentState, check_payment_start, move_payment
from edged.store import Database
from sync import outbox
from sync.clock import Clock, utc_iso
from sync.contract import PaymentForward

log = logging.getLogger(__name__)


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

        def write(conn: sqlite3.Connection) -> Answer:
            if stored:
                total = stored_total(conn, currency)
                if total + amount > offline.max_stored_total:
                    raise ApiError("ERR-2011", f"{processor} is unreachable and the payments"
                                   f" stored offline already hold {total} {currency} of"
                                   f" the {offline.max_stored_total} allowed")
            state = PaymentState.STORED if stored else PaymentState.PENDING
            check_payment_start(payment_id, state)
            conn.execute(
                "INSERT INTO payments (id, method, state, amount, currency, reference,"
                " processor, token, capture, created_at, updated_at, stored_at) VALUES (?,"
                " 'token', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (payment_id, state, amount, currency, reference, processor, token, capture,
                 now, now, now if stored else None))
            outbox.enqueue(conn, processor, PaymentForward(
                payment_id=payment_id, amount=amount, currency=currency, token=token,
                reference=reference, created_at=now, capture=capture), now)
            audit.append(conn, actor, f"payment.{state}", payment_id,
                         {"method": "token", "processor": processor, "amount": amount,
                          "currency": currency})
            return payment_answer(conn, idem, 201 if stored else 202, payment_id)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
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
