"""Refunds: ``pending`` on a terminal, ``queued`` for a processor, then ``succeeded``,
``failed`` or ``unknown`` (a manager settles an unknown one). Every move goes through the
table of ``edged.payments.states``.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from drivers.base import (
    DriverError,
    InterruptedTransaction,
    Outcome,
    Terminal,
    TransactionKind,
    TransactionRequest,
    TransactionResult,
)
from edged.errors import ApiError
from edged.events import EventBus
from edged.ids import new_id
from edged.lanes.terminals import NotSent, TerminalManager
from edged.payments import records
from edged.payments.settlement import previous_reference
from edged.payments.states import (
    Actor,
    IllegalTransition,
    PaymentState,
    RefundState,
    check_refund_start,
    move_refund,
)
from edged.payments.terminal_figures import describe, other_figures
from edged.store import Database, audit, idempotency
from edged.store.answer import Answer
from edged.store.idempotency import IdemRecord
from sync.core import outbox
from sync.core.clock import Clock, utc_iso
from sync.core.contract import RefundCreate

log = logging.getLogger(__name__)


def _refund_body(conn: sqlite3.Connection, refund_id: str) -> dict[str, Any]:
    row = records.refund_row(conn, refund_id)
    assert row is not None
    return records.refund_dict(row)


class RefundService:
    def __init__(self, db: Database, bus: EventBus, terminals: TerminalManager,
                 clock: Clock) -> None:
        self._db = db
        self._bus = bus
        self._terminals = terminals
        self._clock = clock

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    async def refund(self, payment: dict[str, Any], amount: int, reason: str | None,
                     idem: IdemRecord, actor: str, *, void: bool = False) -> Answer:
        """A refund; ``void``: the whole of what is left, by reversal where the terminal
        can void its own sale (ZVT ``06 30``) and nothing was refunded yet."""
        payment_id = payment["id"]
        if payment["state"] != PaymentState.APPROVED:
            raise ApiError("ERR-2006", f"payment {payment_id} is {payment['state']}; only an"
                           " approved payment can be refunded")
        refund_id = new_id("ref")
        now = self._now()
        # a cloud lane's card payment is refunded through its processor, like a token one
        via_processor = payment["method"] == "token" or bool(payment.get("processor"))
        on_terminal = payment["method"] == "card_present" and not via_processor
        terminal_id = payment["terminal_id"]
        driver = None
        if on_terminal:
            driver = self._terminals.driver(terminal_id)
            if driver is None or not driver.capabilities.refund:
                raise ApiError("ERR-3005", f"terminal {terminal_id} cannot refund from the"
                               " register; refund in cash or on the terminal's own menu")
            self._terminals.claim(terminal_id, refund_id)
        reversal = (void and on_terminal and driver is not None
                    and driver.capabilities.reversal and bool(payment.get("processor_ref"))
                    and not payment.get("refunded")
                    and amount == int(payment.get("captured") or payment["amount"]))

        def write(conn: sqlite3.Connection) -> Answer:
            row = records.payment_row(conn, payment_id)
            assert row is not None
            taken = records.refunded_total(conn, payment_id)
            left = (row["captured"] or row["amount"]) - taken
            if amount > left:
                raise ApiError("ERR-2007", f"refund of {amount} asked, {left} left to refund"
                               f" on payment {payment_id} (minor units of"
                               f" {row['currency']})")
            state = RefundState.PENDING if on_terminal else \
                RefundState.QUEUED if via_processor else RefundState.SUCCEEDED
            check_refund_start(refund_id, state)
            conn.execute(
                "INSERT INTO refunds (id, payment_id, amount, currency, reason, state,"
                " terminal_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (refund_id, payment_id, amount, row["currency"], reason, state,
                 terminal_id if on_terminal else None, now, now))
            audit.append(conn, actor, f"refund.{state}", refund_id,
                         {"payment": payment_id, "amount": amount, "currency": row["currency"],
                          "reason": reason})
            if via_processor:
                outbox.enqueue(conn, row["processor"], RefundCreate(
                    refund_id=refund_id, payment_id=payment_id,
                    processor_ref=row["processor_ref"], amount=amount,
                    currency=row["currency"], reason=reason), now)
            body = _refund_body(conn, refund_id)
            status = 202 if on_terminal or via_processor else 201
            idempotency.save(conn, idem, status, body)
            return Answer(status, body)

        try:
            answer = await self._db.write(write)
        except BaseException:
            if on_terminal:
                self._terminals.release(terminal_id, refund_id)
            raise
        self._bus.publish("refund", answer.body)
        if on_terminal:
            request = TransactionRequest(
                refund_id, amount, payment["currency"],
                TransactionKind.REVERSAL if reversal else TransactionKind.REFUND,
                payment["reference"], original=payment["processor_ref"] if reversal else None)

            async def run_refund(driver: Terminal) -> TransactionResult:
                return await driver.refund(request)

            self._terminals.run(terminal_id, refund_id, run_refund, self._finish,
                                settle=lambda: self.settle_unknown(refund_id))
        return answer

    async def _finish(self, result: TransactionResult | NotSent, refund_id: str) -> None:
        now = self._now()
        reference = result.reference if isinstance(result, TransactionResult) else None
        if isinstance(result, NotSent):
            state, failure = RefundState.FAILED, f"{result.reason}; nothing was refunded"
        elif result.outcome is Outcome.APPROVED:
            state, failure = RefundState.SUCCEEDED, None
        elif result.outcome is Outcome.UNKNOWN:
            state, failure = RefundState.UNKNOWN, result.detail
        else:
            state, failure = RefundState.FAILED, result.detail or result.outcome.value

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = records.refund_row(conn, refund_id)
            if row is None:
                return None
            new, why = state, failure
            figures = other_figures(row["amount"], row["currency"], result) \
                if isinstance(result, TransactionResult) and new is RefundState.SUCCEEDED \
                else {}
            if figures:  # the terminal gave back something, but not what was asked
                new = RefundState.UNKNOWN
                why = (f"the terminal refunded other figures than asked ({describe(figures)}):"
                       " compare with the terminal's journal and resolve")
            try:
                move_refund(conn, refund_id, new, Actor.TERMINAL, now, failure=why,
                            processor_ref=reference)
            except IllegalTransition as exc:
                log.error("terminal answer for refund ignored: %s", exc)
                return None
            audit.append(conn, "terminal", f"refund.{new}", refund_id,
                         {"payment": row["payment_id"], "amount": row["amount"],
                          **({"terminal_figures": figures} if figures else {})})
            return _refund_body(conn, refund_id)

        body = await self._db.write(write)
        if body is not None:
            self._bus.publish("refund", body)

    async def resolve(self, refund_id: str, outcome: str, note: str, idem: IdemRecord,
                      actor: str) -> Answer:
        """A manager settles a refund left ``unknown`` (audited, under the request's key)."""
        now = self._now()
        new = RefundState(outcome)

        def write(conn: sqlite3.Connection) -> Answer:
            row = records.refund_row(conn, refund_id)
            if row is None:
                raise ApiError("ERR-2017", f"no refund {refund_id!r}")
            try:
                move_refund(conn, refund_id, new, Actor.MANAGER, now,
                            failure=f"resolved by {actor}: {note}")
            except IllegalTransition:
                raise ApiError("ERR-2016", f"refund {refund_id} is {row['state']}, not"
                               " unknown; nothing to resolve") from None
            audit.append(conn, actor, "refund.resolved", refund_id,
                         {"outcome": outcome, "note": note, "payment": row["payment_id"],
                          "amount": row["amount"], "currency": row["currency"]})
            body = _refund_body(conn, refund_id)
            idempotency.save(conn, idem, 200, body)
            return Answer(200, body)

        answer = await self._db.write(write)
        self._bus.publish("refund", answer.body)
        return answer

    def interrupted(self, conn: sqlite3.Connection) -> list[tuple[str, str]]:
        """At start: a refund that was running on a terminal is unknown. Returns their
        (refund id, terminal id), for the lanes that can ask their terminal."""
        now = self._now()
        out = []
        for row in conn.execute("SELECT id, payment_id, amount, terminal_id FROM refunds"
                                " WHERE state = ? AND terminal_id IS NOT NULL",
                                (RefundState.PENDING,)).fetchall():
            move_refund(conn, row["id"], RefundState.UNKNOWN, Actor.RECOVERY, now,
                        failure="the daemon stopped during the refund; check the terminal")
            audit.append(conn, "recovery", "refund.unknown", row["id"],
                         {"payment": row["payment_id"], "amount": row["amount"]})
            out.append((str(row["id"]), str(row["terminal_id"])))
        return out

    async def settle_unknown(self, refund_id: str) -> bool:
        """Ask the terminal how an ``unknown`` refund ended (ZVT Repeat receipt); True when
        there is nothing more to ask, False when the terminal could not be asked."""
        row = await self._db.read(lambda c: records.refund_row(c, refund_id))
        if row is None or row["state"] != RefundState.UNKNOWN:
            return True
        driver = self._terminals.driver(row["terminal_id"] or "")
        if driver is None or not driver.capabilities.recover:
            return True
        previous = await self._db.read(
            lambda c: previous_reference(c, row["terminal_id"], refund_id))
        try:
            result = await driver.recover(InterruptedTransaction(
                refund_id, row["amount"], row["currency"], TransactionKind.REFUND,
                row["created_at"], {"previous_receipt": previous} if previous else {}))
        except DriverError as exc:
            log.warning("refund %s: the terminal could not be asked how it ended: %s",
                        refund_id, exc)
            return False
        if result is None or result.outcome is Outcome.UNKNOWN:
            log.warning("refund %s stays unknown: a manager decides", refund_id)
            return True
        approved = result.outcome is Outcome.APPROVED
        state = RefundState.SUCCEEDED if approved else RefundState.FAILED
        now = self._now()

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            current = records.refund_row(conn, refund_id)
            if current is None or current["state"] != RefundState.UNKNOWN:
                return None
            move_refund(conn, refund_id, state, Actor.TERMINAL, now,
                        failure=None if approved else result.detail,
                        processor_ref=result.reference)
            audit.append(conn, "terminal", f"refund.{state}", refund_id,
                         {"payment": current["payment_id"], "amount": current["amount"],
                          "detail": result.detail})
            return _refund_body(conn, refund_id)

        body = await self._db.write(write)
        if body is not None:
            self._bus.publish("refund", body)
        return True
