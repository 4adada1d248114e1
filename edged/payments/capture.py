"""Manual capture and void: what happens to a payment held ``authorized``.

A card payment on a cloud lane or a token payment taken with ``capture: "manual"`` ends
``authorized``: the processor holds the money and nothing is taken yet. Then:

- ``capture`` (``POST /v1/payments/{id}/capture {amount?}``): up to the authorised amount
  (Square completes the whole amount only: ERR-3009 for a part). An outbox row
  ``payment.capture`` carries it to the processor under its own key; the payment moves
  ``authorized → approved`` (with ``captured``) when the processor answers.
- ``void`` (``POST /v1/payments/{id}/void``): an ``authorized`` payment is cancelled at the
  processor (row ``payment.cancel``; ``authorized → canceled``); an ``approved`` one is
  refunded in full of what is left (the seed's void), and the answer is that refund. On a
  terminal that can void its own sale (ZVT) and with nothing refunded yet, that refund is
  a reversal of the sale (``06 30`` with its receipt number) rather than a credit.

Sim and Concert lanes cannot hold an authorisation (ERR-3008 at the payment's creation);
a cash payment has nothing to capture. Both calls answer 202 at once: the register follows
the payment (``GET /v1/payments/{id}``, or the ``payment`` events).

An authorisation left uncaptured is raised to the manager (``edged.ops.alerts``) before the
processor lets it lapse: see :data:`EXPIRY_HOURS`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edged.errors import ApiError
from edged.events import EventBus
from edged.payments import records
from edged.payments.refunds import RefundService
from edged.payments.states import PaymentState
from edged.store import Database, audit, idempotency
from edged.store.answer import Answer
from edged.store.idempotency import IdemRecord
from sync.core import outbox
from sync.core.clock import Clock, utc_iso
from sync.core.contract import OutboxKind, PaymentCancel, PaymentCapture

#: Hours a processor keeps an uncaptured authorisation, by (processor, method). Stripe:
#: card_present PaymentIntents must be captured within 2 days, online cards 7 days. Square:
#: a delayed capture lapses after its delay_duration, by default 36 hours card-present and
#: 7 days card-not-present (*unverified*: from Square's documentation, not the SDK).
EXPIRY_HOURS: dict[tuple[str, str], float] = {
    ("stripe", "card_present"): 48.0, ("stripe", "token"): 168.0,
    ("square", "card_present"): 36.0, ("square", "token"): 168.0,
}
#: Share of that window after which the manager is told to capture or void.
WARN_AT = 0.75

_OPEN_ROWS = ("SELECT kind FROM outbox WHERE subject_id = ? AND kind IN (?, ?)"
              " AND state IN ('pending', 'inflight')")


class CaptureService:
    def __init__(self, db: Database, bus: EventBus, clock: Clock,
                 refunds: RefundService) -> None:
        self._db = db
        self._bus = bus
        self._clock = clock
        self._refunds = refunds

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    async def capture(self, payment: dict[str, Any], amount: int | None, idem: IdemRecord,
                      actor: str) -> Answer:
        payment_id = payment["id"]
        if payment["state"] != PaymentState.AUTHORIZED:
            raise ApiError("ERR-2012", f"payment {payment_id} is {payment['state']}; only an"
                           " authorized payment (capture manual) can be captured")
        held = int(payment["amount"])
        if amount is not None and amount > held:
            raise ApiError("ERR-2013", f"capture of {amount} asked; {held}"
                           f" {payment['currency']} is authorised on payment {payment_id}")
        processor = payment["processor"]
        if processor == "square" and amount is not None and amount != held:
            raise ApiError("ERR-3009", f"Square completes the whole authorised amount ({held}"
                           f" {payment['currency']}) only; capture it whole and refund the"
                           " difference, or void it")
        part = amount if amount is not None and amount != held else None
        return await self._queue(payment, PaymentCapture(
            payment_id=payment_id, processor_ref=payment["processor_ref"], amount=part),
            idem, actor, {"amount": amount or held})

    async def void(self, payment: dict[str, Any], idem: IdemRecord, actor: str) -> Answer:
        payment_id = payment["id"]
        if payment["state"] == PaymentState.AUTHORIZED:
            return await self._queue(payment, PaymentCancel(
                payment_id=payment_id, processor_ref=payment["processor_ref"]), idem, actor, {})
        if payment["state"] == PaymentState.APPROVED:
            taken = int(payment.get("captured") or payment["amount"])
            left = taken - int(payment.get("refunded") or 0)
            if left <= 0:
                raise ApiError("ERR-2014", f"payment {payment_id} is already refunded in full")
            return await self._refunds.refund(payment, left, "void", idem, actor, void=True)
        raise ApiError("ERR-2014", f"payment {payment_id} is {payment['state']}; only an"
                       " authorized payment (cancelled) or an approved one (refunded) can be"
                       " voided")

    async def _queue(self, payment: dict[str, Any], row: PaymentCapture | PaymentCancel,
                     idem: IdemRecord, actor: str, data: dict[str, Any]) -> Answer:
        payment_id = payment["id"]
        processor = payment["processor"]
        if not processor or not payment["processor_ref"]:
            raise ApiError("ERR-2012", f"payment {payment_id} has no processor reference to"
                           " capture or void")
        now = self._now()
        what = "capture" if isinstance(row, PaymentCapture) else "void"

        def write(conn: sqlite3.Connection) -> Answer:
            current = records.payment_row(conn, payment_id)
            assert current is not None
            if current["state"] != PaymentState.AUTHORIZED:
                raise ApiError("ERR-2012" if what == "capture" else "ERR-2014",
                               f"payment {payment_id} is {current['state']} now")
            open_row = conn.execute(_OPEN_ROWS, (payment_id, OutboxKind.PAYMENT_CAPTURE,
                                                 OutboxKind.PAYMENT_CANCEL)).fetchone()
            if open_row is not None:
                raise ApiError("ERR-2012" if what == "capture" else "ERR-2014",
                               f"payment {payment_id} already has a {open_row[0]} on its way"
                               f" to {processor}")
            outbox.enqueue(conn, processor, row, now)
            audit.append(conn, actor, f"payment.{what}_requested", payment_id,
                         {"processor": processor, **data})
            body = records.get_payment(conn, payment_id)
            assert body is not None
            idempotency.save(conn, idem, 202, body)
            return Answer(202, body)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        return answer


def expiring(conn: sqlite3.Connection, now_iso: str) -> list[tuple[sqlite3.Row, float]]:
    """Authorised payments past :data:`WARN_AT` of their processor's window, with it."""
    from datetime import datetime, timedelta  # noqa: PLC0415

    now = datetime.fromisoformat(now_iso)
    out = []
    for p in conn.execute("SELECT * FROM payments WHERE state = ? ORDER BY n",
                          (PaymentState.AUTHORIZED,)):
        hours = EXPIRY_HOURS.get((str(p["processor"]), str(p["method"])), 36.0)
        since = datetime.fromisoformat(str(p["finished_at"] or p["created_at"]))
        if now - since >= timedelta(hours=hours * WARN_AT):
            out.append((p, hours))
    return out
