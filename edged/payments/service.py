"""Payments and refunds: the writes that move them through the state table
(:mod:`edged.payments.states`; docs/design.md, payments).

Every change is one write transaction that also stores the idempotent answer, the audit
entry and the outbox rows; events go out only after the commit.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NoReturn

from drivers.base import (
    CancelTooLate,
    DriverError,
    InterruptedTransaction,
    Outcome,
    SaleRefused,
    Terminal,
    TerminalBusy,
    TerminalUnavailable,
    TransactionKind,
    TransactionRequest,
    TransactionResult,
)
from edged.config import Config
from edged.errors import ApiError
from edged.events import EventBus
from edged.ids import new_id
from edged.lanes.terminals import NotSent, TerminalManager
from edged.payments import records
from edged.payments.capture import CaptureService
from edged.payments.records import payment_answer
from edged.payments.refunds import RefundService
from edged.payments.settlement import previous_reference
from edged.payments.states import (
    ANSWERED,
    Actor,
    IllegalTransition,
    PaymentState,
    check_payment_start,
    move_payment,
)
from edged.payments.terminal_figures import describe, other_figures
from edged.payments.token_payments import TokenPayments
from edged.store import Database, audit, idempotency
from edged.store.answer import Answer, stored_answer
from edged.store.idempotency import IdemRecord
from sync.core.clock import Clock, utc_iso

log = logging.getLogger(__name__)

__all__ = ["Answer", "NewPayment", "PaymentService"]

MAX_WAIT_SECONDS = 60.0
_OUTCOME_STATE = {Outcome.APPROVED: PaymentState.APPROVED,
                  Outcome.DECLINED: PaymentState.DECLINED,
                  Outcome.CANCELED: PaymentState.CANCELED,
                  Outcome.UNKNOWN: PaymentState.UNKNOWN,
                  Outcome.AUTHORIZED: PaymentState.AUTHORIZED}
#: What a terminal raises to refuse a sale before anything could be charged: the register
#: is answered at once (ERR-3003 offline, ERR-3002 busy, ERR-3010 the sale as asked).
Refusal = TerminalUnavailable | TerminalBusy | SaleRefused
REFUSALS = (TerminalUnavailable, TerminalBusy, SaleRefused)


@dataclass(frozen=True, slots=True)
class NewPayment:
    amount: int
    currency: str
    method: str
    terminal_id: str | None = None
    reference: str | None = None
    token: str | None = None
    processor: str | None = None
    capture: str = "automatic"
    """``manual``: authorise only; capture or void later (card_present, token)."""


class PaymentService:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, terminals: TerminalManager,
                 clock: Clock) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._terminals = terminals
        self._clock = clock
        self.tokens = TokenPayments(cfg, db, bus, clock)
        self.refunds = RefundService(db, bus, terminals, clock)
        self.captures = CaptureService(db, bus, clock, self.refunds)

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    # -- create ---------------------------------------------------------------------------

    async def create(self, new: NewPayment, idem: IdemRecord, actor: str) -> Answer:
        if new.capture == "manual" and new.method == "cash":
            raise ApiError("ERR-2015", "cash is taken at once: capture manual is for"
                           " card_present and token payments")
        if new.method == "cash":
            return await self._create_cash(new, idem, actor)
        if new.method == "card_present":
            return await self._create_card_present(new, idem, actor)
        return await self.tokens.create(new.processor, new.amount, new.currency,
                                        new.reference, new.token, idem, actor,
                                        manual_capture=new.capture == "manual")

    async def _create_cash(self, new: NewPayment, idem: IdemRecord, actor: str) -> Answer:
        payment_id = new_id("pay")
        now = idem.at or self._now()  # the moment the call came

        def write(conn: sqlite3.Connection) -> Answer:
            check_payment_start(payment_id, PaymentState.APPROVED)
            body = records.insert_payment(
                conn, id=payment_id, method="cash", state=PaymentState.APPROVED,
                amount=new.amount, currency=new.currency, reference=new.reference,
                created_at=now, updated_at=now, finished_at=now)
            audit.append(conn, actor, "payment.approved", payment_id,
                         {"method": "cash", "amount": new.amount, "currency": new.currency})
            return stored_answer(conn, idem, 201, body)

        answer = await self._db.write(write, inline=True)  # point writes: on the loop
        self._bus.publish("payment", answer.body)
        return answer

    async def _create_card_present(self, new: NewPayment, idem: IdemRecord,
                                   actor: str) -> Answer:
        terminal_id = new.terminal_id or self._default_terminal()
        payment_id = new_id("pay")
        now = self._now()
        manual = new.capture == "manual"
        known = self._terminals.driver(terminal_id)
        if manual and known is not None and not known.capabilities.manual_capture:
            raise ApiError("ERR-3008", f"terminal {terminal_id} ({known.kind}) cannot hold an"
                           " authorisation for a later capture: take the payment with"
                           " capture automatic, or on a stripe_reader or square_terminal lane")
        driver = self._terminals.claim(terminal_id, payment_id)
        request = TransactionRequest(payment_id, new.amount, new.currency,
                                     TransactionKind.SALE, new.reference,
                                     manual_capture=manual)
        reference: str | None = None
        beside: asyncio.Task[str | None] | None = None
        if driver.prepare_beside_write:  # a round trip that charges nothing (base.py):
            beside = asyncio.create_task(driver.prepare(request))  # it overlaps the commit
        else:
            try:
                reference = await driver.prepare(request)
            except REFUSALS as exc:
                self._refused(terminal_id, payment_id, exc)
            except BaseException:
                self._terminals.release(terminal_id, payment_id)
                raise

        def write(conn: sqlite3.Connection) -> Answer:
            check_payment_start(payment_id, PaymentState.IN_PROGRESS)
            body = records.insert_payment(
                conn, id=payment_id, method="card_present", state=PaymentState.IN_PROGRESS,
                amount=new.amount, currency=new.currency, terminal_id=terminal_id,
                reference=new.reference, processor_ref=reference, processor=driver.processor,
                capture=new.capture, created_at=now, updated_at=now)
            audit.append(conn, actor, "payment.started", payment_id,
                         {"terminal": terminal_id, "amount": new.amount,
                          "currency": new.currency})
            return stored_answer(conn, idem, 202, body)

        try:
            if beside is not None:  # its request goes out before the write's statements run
                await asyncio.sleep(0)  # on the loop (else they delay it by as long)
            answer = await self._db.write(write, inline=True)
        except BaseException:
            if beside is not None:  # the lane is freed only once its prepare is over
                await asyncio.wait([beside])
                if not beside.cancelled():
                    beside.exception()  # consumed: the write's failure is what is said
            driver.abandon(request)  # nothing recorded: the terminal gets nothing to charge
            self._terminals.release(terminal_id, payment_id)
            raise
        made: str | None = None
        if beside is not None:
            try:
                made = await beside
            except REFUSALS as exc:
                await self._refused_after_write(terminal_id, payment_id, idem, exc)
            except Exception:
                log.exception("terminal %s: preparing %s failed; following it anyway",
                              terminal_id, payment_id)
        # durable: the terminal may have the request now (a Concert lane sends the frame it
        # held since prepare; a cloud terminal is handed the sale)
        made = await self._start_on_terminal(terminal_id, request, idem) or made

        async def collect(driver: Terminal) -> TransactionResult:
            return await driver.collect(request)

        self._terminals.run(terminal_id, payment_id, collect, self._finish_payment,
                            settle=lambda: self.settle_unknown(payment_id))
        if driver.processor is not None:
            # a cloud lane's first read of the processor goes out before the reference's
            # statements run on the loop and before the answer is written (a local lane's
            # start has already sent what the terminal needs)
            await asyncio.sleep(0)
        if made is not None:  # stored before the answer, while the lane already follows it
            answer = await self._remember_reference(answer, made, idem)
        self._bus.publish("payment", answer.body)
        return answer

    async def _remember_reference(self, answer: Answer, reference: str,
                                  idem: IdemRecord) -> Answer:
        """The processor's id of what a terminal's start made (a PaymentIntent, a checkout):
        a restart reads it back by id. Queued before the lane's first read can end the
        payment, so the result's write comes after it; should it fail, a restart finds it by
        search. The 202 carries it, and so does its replay (the stored answer is brought up
        to date in the same transaction)."""
        body = {**answer.body, "processor_ref": reference, "updated_at": self._now()}
        try:
            await self._db.write(partial(_store_reference, body=body, idem=idem), inline=True)
        except Exception:
            log.exception("payment %s: could not store the processor's reference %s; the"
                          " lane follows it anyway", body["id"], reference)
            return answer
        return Answer(answer.status, body)

    def _refused(self, terminal_id: str, payment_id: str, exc: Exception) -> NoReturn:
        """A terminal refused a sale before anything could be charged: answer at once. Only
        an unreachable one is marked offline; a busy one, or a processor refusing the sale
        as asked (an amount below its minimum), says nothing about the lane."""
        self._terminals.release(terminal_id, payment_id)
        if isinstance(exc, SaleRefused):
            raise ApiError("ERR-3010", f"terminal {terminal_id}: {str(exc).rstrip('.')};"
                           " nothing was charged", details={"payment": payment_id}) from None
        busy = isinstance(exc, TerminalBusy)
        if not busy:
            self._terminals.mark_offline(terminal_id, str(exc))
        raise ApiError("ERR-3002" if busy else "ERR-3003", f"terminal {terminal_id}: {exc}",
                       details={"payment": payment_id}) from None

    async def _start_on_terminal(self, terminal_id: str, request: TransactionRequest,
                                 idem: IdemRecord) -> str | None:
        """Hand the sale over before answering (cloud terminals; local ones do nothing);
        the processor's id of what it made, if the driver says.

        A terminal that refused it (offline, busy: keyed on the processor's own error code)
        answers the register at once (:meth:`_refused_after_write`). A lost answer is not a
        refusal: the payment goes on and the driver finds out.
        """
        driver = self._terminals.driver(terminal_id)
        assert driver is not None
        try:
            return await driver.start(request)
        except REFUSALS as exc:
            await self._refused_after_write(terminal_id, request.payment_id, idem, exc)
        except Exception:
            log.exception("terminal %s: starting %s failed; following it anyway",
                          terminal_id, request.payment_id)
        return None

    async def _refused_after_write(self, terminal_id: str, payment_id: str, idem: IdemRecord,
                                   exc: Refusal) -> NoReturn:
        """A terminal refused a sale already written, before anything could be charged:
        ERR-3003 / ERR-3002 / ERR-3010 at once, the payment ``failed`` (nothing was charged)
        and its key forgotten, so the register may try again."""
        who = "the processor refused the sale" if isinstance(exc, SaleRefused) \
            else "the terminal refused the payment"
        why = f"{who}: {str(exc).rstrip('.')}"
        now = self._now()

        def fail(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = records.payment_row(conn, payment_id)
            assert row is not None
            self._apply_result(conn, row, NotSent(why), now, Actor.TERMINAL)
            idempotency.forget(conn, idem)
            return records.get_payment(conn, payment_id)

        try:
            body = await self._db.write(fail)
        except BaseException:
            self._terminals.release(terminal_id, payment_id)
            raise
        if body is not None:
            self._bus.publish("payment", body)
        self._refused(terminal_id, payment_id, exc)

    def _default_terminal(self) -> str:
        ids = self._terminals.ids()
        if len(ids) == 1:
            return ids[0]
        raise ApiError("ERR-1003", "terminal is required for card_present payments when the"
                       f" daemon drives several terminals ({', '.join(ids) or 'none'})")

    async def _finish_payment(self, result: TransactionResult | NotSent,
                              payment_id: str) -> None:
        now = self._now()

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = records.payment_row(conn, payment_id)
            if row is None:
                return None
            try:
                self._apply_result(conn, row, result, now, Actor.TERMINAL)
            except IllegalTransition as exc:
                log.error("terminal answer not recorded: %s", exc)
                return None
            return records.get_payment(conn, payment_id)

        body = await self._db.write(write, inline=True)
        if body is not None:
            self._bus.publish("payment", body)  # wakes the register's long-poll
            # logged once the long-poll's answer is on its way (it runs first on the loop)
            asyncio.get_running_loop().call_soon(
                log.info, "payment %s on %s ended %s", payment_id, body["terminal_id"],
                body["state"])

    def _apply_result(self, conn: sqlite3.Connection, row: sqlite3.Row,
                      result: TransactionResult | NotSent, now: str,
                      actor: Actor) -> PaymentState:
        """Record how a terminal transaction ended; raises IllegalTransition, writes nothing."""
        fields: dict[str, Any] = {}
        failure: str | None
        if isinstance(result, NotSent):
            state = PaymentState.FAILED
            failure = f"{result.reason}; nothing was charged"
        else:
            state = _OUTCOME_STATE[result.outcome]
            failure = result.detail if state not in (PaymentState.APPROVED,
                                                     PaymentState.AUTHORIZED) else None
            fields = {"brand": result.brand, "last4": result.last4,
                      "auth_code": result.auth_code, "raw_status": result.raw_status,
                      "receipt": result.receipt}
            if result.reference is not None:  # never forget what start stored (a checkout)
                fields["processor_ref"] = result.reference
            figures = other_figures(row["amount"], row["currency"], result)
            if figures and state in (PaymentState.APPROVED, PaymentState.AUTHORIZED):
                # the terminal took something, but not what was asked: a person decides
                state = PaymentState.UNKNOWN
                failure = ("the terminal approved other figures than asked ("
                           + describe(figures)
                           + "): compare with the terminal's journal and resolve")
                fields["terminal_figures"] = json.dumps(figures, sort_keys=True)
        move_payment(conn, row["id"], state, actor, now, failure=failure, finished_at=now,
                     **fields)
        audit.append(conn, actor.value, f"payment.{state}", row["id"],
                     {"amount": row["amount"], "currency": row["currency"],
                      "terminal": row["terminal_id"], "detail": failure})
        return state

    # -- read -----------------------------------------------------------------------------

    async def get(self, payment_id: str) -> dict[str, Any]:
        body = await self._db.read(lambda c: records.get_payment(c, payment_id))
        if body is None:
            raise ApiError("ERR-2003", f"no payment {payment_id!r}")
        return body

    async def wait(self, payment_id: str, seconds: float) -> dict[str, Any]:
        """Long-poll: answer at a final state or when ``seconds`` have passed."""
        deadline = self._clock.monotonic() + min(seconds, MAX_WAIT_SECONDS)
        while True:
            waiter = self._bus.watch(payment_id)
            try:
                body = await self.get(payment_id)
                remaining = deadline - self._clock.monotonic()
                if body["state"] in ANSWERED or remaining <= 0:
                    return body
                try:
                    # awaited directly, not through wait_for's own task hop: the answer
                    # goes out before what the publisher queued after waking it (its log line)
                    async with asyncio.timeout(remaining):
                        data = await waiter
                except TimeoutError:
                    return await self.get(payment_id)
                if "refunds" in data and data["state"] in ANSWERED:
                    return data  # the full payment as committed: no need to read it back
            finally:
                self._bus.unwatch(payment_id, waiter)

    async def list(self, state: str | None, limit: int,
                   cursor: str | None) -> dict[str, Any]:
        before = _decode_cursor(cursor) if cursor else None

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            sql = "SELECT * FROM payments WHERE 1 = 1"
            args: list[Any] = []
            if state:
                sql += " AND state = ?"
                args.append(state)
            if before is not None:
                sql += " AND n < ?"
                args.append(before)
            sql += " ORDER BY n DESC LIMIT ?"
            args.append(limit + 1)
            rows = conn.execute(sql, args).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return {"data": [records.payment_dict(conn, r) for r in rows],
                    "next_cursor": _encode_cursor(rows[-1]["n"]) if more else None}

        return await self._db.read(read)

    # -- cancel, refund, resolve ----------------------------------------------------------

    async def cancel(self, payment_id: str, idem: IdemRecord) -> Answer:
        body = await self.get(payment_id)
        if body["state"] == "canceled":
            return Answer(200, body, stored=False)
        if body["state"] != "in_progress" or not body["terminal_id"]:
            raise ApiError("ERR-2005", f"payment {payment_id} is {body['state']}; only a"
                           " payment running on a terminal can be cancelled (refund an"
                           " approved one)")
        driver = self._terminals.driver(body["terminal_id"])
        assert driver is not None
        if not driver.capabilities.cancel:
            raise ApiError("ERR-3004", f"terminal {body['terminal_id']} cannot cancel from the"
                           " register: press the red key on the terminal")
        try:
            await self._terminals.cancel(body["terminal_id"], payment_id)
        except CancelTooLate as exc:
            raise ApiError("ERR-2030", f"payment {payment_id}: {exc}; follow it with GET"
                           f" /v1/payments/{payment_id}?wait=30 (refund it if it ends"
                           " approved)", details={"payment": payment_id}) from None
        body = await self.wait(payment_id, 10.0)
        return Answer(200, body, stored=False)

    async def refund(self, payment_id: str, amount: int, reason: str | None,
                     idem: IdemRecord, actor: str) -> Answer:
        return await self.refunds.refund(await self.get(payment_id), amount, reason, idem,
                                         actor)

    async def capture(self, payment_id: str, amount: int | None, idem: IdemRecord,
                      actor: str) -> Answer:
        return await self.captures.capture(await self.get(payment_id), amount, idem, actor)

    async def void(self, payment_id: str, idem: IdemRecord, actor: str) -> Answer:
        return await self.captures.void(await self.get(payment_id), idem, actor)

    async def resolve(self, payment_id: str, outcome: str, note: str, idem: IdemRecord,
                      actor: str) -> Answer:
        now = self._now()
        new = PaymentState(outcome)

        def write(conn: sqlite3.Connection) -> Answer:
            row = records.payment_row(conn, payment_id)
            if row is None:
                raise ApiError("ERR-2003", f"no payment {payment_id!r}")
            try:
                move_payment(conn, payment_id, new, Actor.MANAGER, now,
                             failure=f"resolved by {actor}: {note}", finished_at=now)
            except IllegalTransition:
                raise ApiError("ERR-2008", f"payment {payment_id} is {row['state']}, not"
                               " unknown; nothing to resolve") from None
            audit.append(conn, actor, "payment.resolved", payment_id,
                         {"outcome": outcome, "note": note, "amount": row["amount"],
                          "currency": row["currency"]})
            return payment_answer(conn, idem, 200, payment_id)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        return answer

    # -- start-up reconciliation ----------------------------------------------------------

    async def recover_interrupted(self) -> int:
        """Settle what was running on a terminal when the daemon stopped; return how many.

        Only a card payment that was running on a terminal can be in doubt at start: a
        token payment keeps its state (its forward row carries it upstream, once).
        """

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute("SELECT * FROM payments WHERE state = ? ORDER BY n",
                                (PaymentState.IN_PROGRESS,)).fetchall()

        rows = await self._db.read(read)
        for row in rows:
            driver = self._terminals.driver(row["terminal_id"] or "")
            result: TransactionResult | None = None
            failed = False
            if driver is not None and driver.capabilities.recover:
                extra = {k: row[k] for k in ("processor_ref", "reference", "capture")
                         if row[k]}
                previous = await self._db.read(functools.partial(
                    previous_reference, terminal_id=row["terminal_id"], subject_id=row["id"]))
                if previous is not None:
                    extra["previous_receipt"] = previous
                try:
                    result = await driver.recover(InterruptedTransaction(
                        row["id"], row["amount"], row["currency"], TransactionKind.SALE,
                        row["created_at"], extra))
                except Exception as exc:  # recovery is best effort; unknown is the floor
                    log.warning("recovering payment %s failed: %s", row["id"], exc)
                    failed = True
            if result is None:
                result = TransactionResult(
                    Outcome.UNKNOWN, 0, "", detail="the daemon stopped during the transaction;"
                    " check the terminal's journal and resolve")
            await self._settle_interrupted(row["id"], result)
            if failed and result.outcome is Outcome.UNKNOWN:
                self._terminals.settle_later(row["terminal_id"], row["id"],
                                             functools.partial(self.settle_unknown, row["id"]))
        for refund_id, terminal_id in await self._db.write(self.refunds.interrupted):
            self._terminals.settle_later(terminal_id, refund_id,
                                         functools.partial(self.refunds.settle_unknown,
                                                           refund_id))
        return len(rows)

    async def settle_unknown(self, payment_id: str) -> bool:
        """Ask the terminal how an ``unknown`` payment ended (ZVT Repeat receipt) and record
        what it says (declined for a transaction it never booked). True when there is
        nothing more to ask; False when the terminal could not be asked (ask again)."""
        row = await self._db.read(lambda c: records.payment_row(c, payment_id))
        if row is None or row["state"] != PaymentState.UNKNOWN:
            return True
        driver = self._terminals.driver(row["terminal_id"] or "")
        if driver is None or not driver.capabilities.recover:
            return True
        previous = await self._db.read(
            lambda c: previous_reference(c, row["terminal_id"], payment_id))
        interrupted = InterruptedTransaction(
            payment_id, row["amount"], row["currency"], TransactionKind.SALE, row["created_at"],
            {"previous_receipt": previous} if previous else {})
        try:
            result = await driver.recover(interrupted)
        except DriverError as exc:
            log.warning("payment %s: the terminal could not be asked how it ended: %s",
                        payment_id, exc)
            return False
        if result is None or result.outcome is Outcome.UNKNOWN:
            log.warning("payment %s stays unknown: the terminal's last receipt does not tell;"
                        " a manager decides", payment_id)
            return True
        if result.outcome is Outcome.CANCELED:  # not taken either way: declined
            result = replace(result, outcome=Outcome.DECLINED)
        now = self._now()

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            current = records.payment_row(conn, payment_id)
            if current is None or current["state"] != PaymentState.UNKNOWN:
                return None
            try:
                self._apply_result(conn, current, result, now, Actor.TERMINAL)
            except IllegalTransition as exc:
                log.error("payment %s: the terminal's record not applied: %s", payment_id, exc)
                return None
            return records.get_payment(conn, payment_id)

        body = await self._db.write(write)
        if body is not None:
            log.warning("payment %s was unknown; the terminal's record says %s", payment_id,
                        body["state"])
            self._bus.publish("payment", body)
        return True

    async def _settle_interrupted(self, payment_id: str, result: TransactionResult) -> None:
        now = self._now()

        def write(conn: sqlite3.Connection) -> PaymentState | None:
            row = records.payment_row(conn, payment_id)
            if row is None or row["state"] != PaymentState.IN_PROGRESS:
                return None
            return self._apply_result(conn, row, result, now, Actor.RECOVERY)

        state = await self._db.write(write)
        log.warning("payment %s was interrupted by a stop; now %s", payment_id, state)

    def unknown_count(self) -> Callable[[sqlite3.Connection], int]:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM payments WHERE state = ?",
                                    (PaymentState.UNKNOWN,)).fetchone()[0])
        return read


def _store_reference(conn: sqlite3.Connection, body: dict[str, Any],
                     idem: IdemRecord) -> None:
    """The processor's id of what a terminal's start made, on a payment still running, and
    the answer stored under the register's key, which now names it."""
    if conn.execute("UPDATE payments SET processor_ref = ?, updated_at = ? WHERE id = ? AND"
                    " state = ?", (body["processor_ref"], body["updated_at"], body["id"],
                                   PaymentState.IN_PROGRESS)).rowcount:
        idempotency.update(conn, idem, body)


def _encode_cursor(n: int) -> str:
    return base64.urlsafe_b64encode(f"n:{n}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        digits = text[2:]
        if not (text.startswith("n:") and digits.isascii() and digits.isdigit()
                and len(digits) <= 19 and int(digits) < 2**63):
            raise ValueError("not a cursor")
        return int(digits)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("ERR-1013", "cursor is not one this daemon handed out") from None
