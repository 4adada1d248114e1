"""Payments and refunds: the states of DESIGN §3 and the writes that move between them.

Every change is one write transaction that also stores the idempotent answer, the audit
entry and the outbox rows; events go out only after the commit.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    InterruptedTransaction,
    Outcome,
    Terminal,
    TerminalBusy,
    TerminalUnavailable,
    TransactionKind,
    TransactionRequest,
    TransactionResult,
)
from edged import audit, idempotency, records
from edged.config import Config
from edged.errors import ApiError
from edged.events import EventBus
from edged.idempotency import IdemRecord
from edged.ids import new_id
from edged.store import Database
from edged.terminals import TerminalManager
from sync import outbox
from sync.clock import Clock, utc_iso
from sync.contract import PaymentForward, RefundCreate

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
_OUTCOME_STATE = {Outcome.APPROVED: "approved", Outcome.DECLINED: "declined",
                  Outcome.CANCELED: "canceled", Outcome.UNKNOWN: "unknown"}


@dataclass(frozen=True, slots=True)
class NewPayment:
    amount: int
    currency: str
    method: str
    terminal_id: str | None = None
    reference: str | None = None
    token: str | None = None
    processor: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer decided by a service: status and JSON body."""

    status: int
    body: dict[str, Any]
    stored: bool = True  # False: the caller still has to store it under the key


class PaymentService:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, terminals: TerminalManager,
                 clock: Clock) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._terminals = terminals
        self._clock = clock
        # Tells whether a destination's link is down (its breaker open); set by the app.
        self.link_down: Callable[[str], bool] = lambda destination: False

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    # -- create ---------------------------------------------------------------------------

    async def create(self, new: NewPayment, idem: IdemRecord, actor: str) -> Answer:
        if new.method == "cash":
            return await self._create_cash(new, idem, actor)
        if new.method == "card_present":
            return await self._create_card_present(new, idem, actor)
        return await self._create_token(new, idem, actor)

    async def _create_token(self, new: NewPayment, idem: IdemRecord, actor: str) -> Answer:
        """Forward through the processor's outbox; stored within the caps if offline."""
        processor, token = new.processor, new.token
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
        if stored and new.amount > offline.max_payment:
            raise ApiError("ERR-2010", f"{processor} is unreachable; offline, one payment may"
                           f" not exceed {offline.max_payment} minor units")
        payment_id = new_id("pay")
        now = self._now()

        def write(conn: sqlite3.Connection) -> Answer:
            if stored:
                total = conn.execute("SELECT coalesce(sum(amount), 0) FROM payments WHERE"
                                     " state = 'stored' AND currency = ?",
                                     (new.currency,)).fetchone()[0]
                if total + new.amount > offline.max_stored_total:
                    raise ApiError("ERR-2011", f"{processor} is unreachable and the payments"
                                   f" stored offline already hold {total} {new.currency} of"
                                   f" the {offline.max_stored_total} allowed")
            state = "stored" if stored else "pending"
            conn.execute(
                "INSERT INTO payments (id, method, state, amount, currency, reference,"
                " processor, token, created_at, updated_at) VALUES (?, 'token', ?, ?, ?, ?, ?,"
                " ?, ?, ?)",
                (payment_id, state, new.amount, new.currency, new.reference, processor,
                 new.token, now, now))
            outbox.enqueue(conn, processor, PaymentForward(
                payment_id=payment_id, amount=new.amount, currency=new.currency,
                token=token, reference=new.reference, created_at=now), now)
            audit.append(conn, actor, f"payment.{state}", payment_id,
                         {"method": "token", "processor": processor, "amount": new.amount,
                          "currency": new.currency})
            return self._answer_with(conn, idem, 201 if stored else 202, payment_id)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        return answer

    async def _create_cash(self, new: NewPayment, idem: IdemRecord, actor: str) -> Answer:
        payment_id = new_id("pay")
        now = self._now()

        def write(conn: sqlite3.Connection) -> Answer:
            conn.execute(
                "INSERT INTO payments (id, method, state, amount, currency, reference,"
                " created_at, updated_at, finished_at) VALUES (?, 'cash', 'approved', ?, ?,"
                " ?, ?, ?, ?)",
                (payment_id, new.amount, new.currency, new.reference, now, now, now))
            audit.append(conn, actor, "payment.approved", payment_id,
                         {"method": "cash", "amount": new.amount, "currency": new.currency})
            return self._answer_with(conn, idem, 201, payment_id)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        return answer

    async def _create_card_present(self, new: NewPayment, idem: IdemRecord,
                                   actor: str) -> Answer:
        terminal_id = new.terminal_id or self._default_terminal()
        payment_id = new_id("pay")
        now = self._now()
        self._terminals.claim(terminal_id, payment_id)

        def write(conn: sqlite3.Connection) -> Answer:
            conn.execute(
                "INSERT INTO payments (id, method, state, amount, currency, terminal_id,"
                " reference, created_at, updated_at) VALUES (?, 'card_present', 'in_progress',"
                " ?, ?, ?, ?, ?, ?)",
                (payment_id, new.amount, new.currency, terminal_id, new.reference, now, now))
            audit.append(conn, actor, "payment.started", payment_id,
                         {"terminal": terminal_id, "amount": new.amount,
                          "currency": new.currency})
            return self._answer_with(conn, idem, 202, payment_id)

        try:
            answer = await self._db.write(write)
        except BaseException:
            self._terminals.release(terminal_id, payment_id)
            raise
        request = TransactionRequest(payment_id, new.amount, new.currency,
                                     TransactionKind.SALE, new.reference)
        answer = await self._start_on_terminal(terminal_id, request, idem, answer)
        self._bus.publish("payment", answer.body)

        async def collect(driver: Terminal) -> TransactionResult:
            return await driver.collect(request)

        self._terminals.run(terminal_id, payment_id, collect, self._finish_payment)
        return answer

    async def _start_on_terminal(self, terminal_id: str, request: TransactionRequest,
                                 idem: IdemRecord, answer: Answer) -> Answer:
        """Hand the sale over before answering (cloud terminals; local ones do nothing).

        A terminal that refused it (offline, busy: keyed on the processor's own error code)
        answers the register at once with ERR-3003 / ERR-3002: the payment is ``failed``
        (nothing was charged) and the key is forgotten, so the register may try again. A
        lost answer is not a refusal: the payment goes on and the driver finds out.
        """
        driver = self._terminals.driver(terminal_id)
        assert driver is not None
        payment_id = request.payment_id
        try:
            reference = await driver.start(request)
        except (TerminalUnavailable, TerminalBusy) as exc:
            busy = isinstance(exc, TerminalBusy)
            message = str(exc)
            now = self._now()

            def fail(conn: sqlite3.Connection) -> None:
                row = records.payment_row(conn, payment_id)
                assert row is not None
                self._apply_result(conn, row, None, now, actor="terminal",
                                   failure=f"the terminal refused the payment: {message}")
                idempotency.forget(conn, idem)

            try:
                await self._db.write(fail)
            finally:
                self._terminals.release(terminal_id, payment_id)
            if not busy:
                self._terminals.mark_offline(terminal_id, message)
            body = await self.get(payment_id)
            self._bus.publish("payment", body)
            raise ApiError("ERR-3002" if busy else "ERR-3003",
                           f"terminal {terminal_id}: {message}",
                           details={"payment": payment_id}) from None
        except Exception:
            log.exception("terminal %s: starting %s failed; following it anyway",
                          terminal_id, payment_id)
            return answer
        if reference is None:
            return answer

        def keep(conn: sqlite3.Connection) -> dict[str, Any]:
            conn.execute("UPDATE payments SET processor_ref = ? WHERE id = ? AND"
                         " processor_ref IS NULL", (reference, payment_id))
            return records.get_payment(conn, payment_id) or answer.body

        return Answer(answer.status, await self._db.write(keep))

    def _default_terminal(self) -> str:
        ids = self._terminals.ids()
        if len(ids) == 1:
            return ids[0]
        raise ApiError("ERR-1003", "terminal is required for card_present payments when the"
                       f" daemon drives several terminals ({', '.join(ids) or 'none'})")

    def _answer_with(self, conn: sqlite3.Connection, idem: IdemRecord | None, status: int,
                     payment_id: str) -> Answer:
        body = records.get_payment(conn, payment_id)
        assert body is not None
        if idem is not None:
            idempotency.save(conn, idem, status, body)
        return Answer(status, body)

    async def _finish_payment(self, result: TransactionResult | None, payment_id: str) -> None:
        now = self._now()

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = records.payment_row(conn, payment_id)
            if row is None or row["state"] != "in_progress":
                return None
            self._apply_result(conn, row, result, now, actor="terminal")
            return records.get_payment(conn, payment_id)

        body = await self._db.write(write)
        if body is not None:
            log.info("payment %s on %s ended %s", payment_id, body["terminal_id"], body["state"])
            self._bus.publish("payment", body)

    def _apply_result(self, conn: sqlite3.Connection, row: sqlite3.Row,
                      result: TransactionResult | None, now: str, actor: str,
                      failure: str | None = None) -> None:
        if result is None:
            state = "failed"
            failure = failure or "the terminal could not be reached; nothing was charged"
            fields: dict[str, Any] = {}
        else:
            state = _OUTCOME_STATE[result.outcome]
            failure = result.detail if state != "approved" else None
            fields = {"brand": result.brand, "last4": result.last4,
                      "auth_code": result.auth_code, "processor_ref": result.reference,
                      "raw_status": result.raw_status, "receipt": result.receipt}
            if result.amount and result.amount != row["amount"] and state == "approved":
                failure = f"terminal approved {result.amount}, asked {row['amount']}"
        conn.execute(
            "UPDATE payments SET state = ?, failure = ?, brand = ?, last4 = ?, auth_code = ?,"
            " processor_ref = ?, raw_status = ?, receipt = ?, updated_at = ?, finished_at = ?"
            " WHERE id = ?",
            (state, failure, fields.get("brand"), fields.get("last4"), fields.get("auth_code"),
             fields.get("processor_ref"), fields.get("raw_status"), fields.get("receipt"),
             now, now, row["id"]))
        audit.append(conn, actor, f"payment.{state}", row["id"],
                     {"amount": row["amount"], "currency": row["currency"],
                      "terminal": row["terminal_id"], "detail": failure})

    async def store_pending(self, processor: str) -> int:
        """The processor's link went down: accept its pending token payments offline.

        Oldest first, each within the offline caps; one that does not fit stays pending
        and is forwarded when the link returns. Returns how many were stored.
        """
        offline = self._cfg.offline
        if not offline.enabled:
            return 0
        now = self._now()

        def write(conn: sqlite3.Connection) -> list[str]:
            stored: list[str] = []
            totals = dict(conn.execute("SELECT currency, sum(amount) FROM payments WHERE"
                                       " state = 'stored' GROUP BY currency").fetchall())
            for row in conn.execute("SELECT id, amount, currency FROM payments WHERE state ="
                                    " 'pending' AND method = 'token' AND processor = ?"
                                    " ORDER BY n", (processor,)).fetchall():
                total = totals.get(row["currency"], 0)
                if row["amount"] > offline.max_payment or \
                        total + row["amount"] > offline.max_stored_total:
                    continue
                totals[row["currency"]] = total + row["amount"]
                conn.execute("UPDATE payments SET state = 'stored', updated_at = ? WHERE id = ?",
                             (now, row["id"]))
                audit.append(conn, "sync", "payment.stored", row["id"],
                             {"processor": processor, "amount": row["amount"],
                              "currency": row["currency"], "why": "link down"})
                stored.append(row["id"])
            return stored

        ids = await self._db.write(write)
        for payment_id in ids:
            self._bus.publish("payment", await self.get(payment_id))
        if ids:
            log.warning("%s is unreachable: %d pending token payments stored offline",
                        processor, len(ids))
        return len(ids)

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
                if body["state"] in records.FINAL_PAYMENT_STATES or remaining <= 0:
                    return body
                try:
                    data = await asyncio.wait_for(waiter, remaining)
                except TimeoutError:
                    return await self.get(payment_id)
                if "refunds" in data and data["state"] in records.FINAL_PAYMENT_STATES:
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
        await self._terminals.cancel(body["terminal_id"])
        body = await self.wait(payment_id, 10.0)
        return Answer(200, body, stored=False)

    async def refund(self, payment_id: str, amount: int, reason: str | None,
                     idem: IdemRecord, actor: str) -> Answer:
        payment = await self.get(payment_id)
        if payment["state"] != "approved":
            raise ApiError("ERR-2006", f"payment {payment_id} is {payment['state']}; only an"
                           " approved payment can be refunded")
        refund_id = new_id("ref")
        now = self._now()
        on_terminal = payment["method"] == "card_present"
        via_processor = payment["method"] == "token"
        terminal_id = payment["terminal_id"]
        if on_terminal:
            driver = self._terminals.driver(terminal_id)
            if driver is None or not driver.capabilities.refund:
                raise ApiError("ERR-3005", f"terminal {terminal_id} cannot refund from the"
                               " register; refund in cash or on the terminal's own menu")
            self._terminals.claim(terminal_id, refund_id)

        def write(conn: sqlite3.Connection) -> Answer:
            row = records.payment_row(conn, payment_id)
            assert row is not None
            taken = records.refunded_total(conn, payment_id)
            left = row["amount"] - taken
            if amount > left:
                raise ApiError("ERR-2007", f"refund of {amount} asked, {left} {row['currency']}"
                               f" left to refund on payment {payment_id}")
            state = "pending" if on_terminal else "queued" if via_processor else "succeeded"
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
            body = records.refund_dict(records.refund_row(conn, refund_id))  # type: ignore[arg-type]
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
            request = TransactionRequest(refund_id, amount, payment["currency"],
                                         TransactionKind.REFUND, payment["reference"])

            async def run_refund(driver: Terminal) -> TransactionResult:
                return await driver.refund(request)

            self._terminals.run(terminal_id, refund_id, run_refund, self._finish_refund)
        return answer

    async def _finish_refund(self, result: TransactionResult | None, refund_id: str) -> None:
        now = self._now()
        if result is None:
            state, failure = "failed", "the terminal could not be reached; nothing was refunded"
        elif result.outcome is Outcome.APPROVED:
            state, failure = "succeeded", None
        elif result.outcome is Outcome.UNKNOWN:
            state, failure = "unknown", result.detail
        else:
            state, failure = "failed", result.detail or result.outcome.value

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = records.refund_row(conn, refund_id)
            if row is None or row["state"] != "pending":
                return None
            conn.execute("UPDATE refunds SET state = ?, failure = ?, processor_ref = ?,"
                         " updated_at = ? WHERE id = ?",
                         (state, failure, result.reference if result else None, now, refund_id))
            audit.append(conn, "terminal", f"refund.{state}", refund_id,
                         {"payment": row["payment_id"], "amount": row["amount"]})
            return records.refund_dict(records.refund_row(conn, refund_id))  # type: ignore[arg-type]

        body = await self._db.write(write)
        if body is not None:
            self._bus.publish("refund", body)

    async def resolve(self, payment_id: str, outcome: str, note: str, idem: IdemRecord,
                      actor: str) -> Answer:
        now = self._now()

        def write(conn: sqlite3.Connection) -> Answer:
            row = records.payment_row(conn, payment_id)
            if row is None:
                raise ApiError("ERR-2003", f"no payment {payment_id!r}")
            if row["state"] != "unknown":
                raise ApiError("ERR-2008", f"payment {payment_id} is {row['state']}, not"
                               " unknown; nothing to resolve")
            conn.execute("UPDATE payments SET state = ?, failure = ?, updated_at = ?,"
                         " finished_at = ? WHERE id = ?",
                         (outcome, f"resolved by {actor}: {note}", now, now, payment_id))
            audit.append(conn, actor, "payment.resolved", payment_id,
                         {"outcome": outcome, "note": note, "amount": row["amount"],
                          "currency": row["currency"]})
            return self._answer_with(conn, idem, 200, payment_id)

        answer = await self._db.write(write)
        self._bus.publish("payment", answer.body)
        return answer

    # -- start-up reconciliation ----------------------------------------------------------

    async def recover_interrupted(self) -> int:
        """Settle what was running when the daemon stopped; return how many were touched."""

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute("SELECT * FROM payments WHERE state IN ('pending',"
                                " 'in_progress') ORDER BY n").fetchall()

        rows = await self._db.read(read)
        for row in rows:
            driver = self._terminals.driver(row["terminal_id"] or "")
            result: TransactionResult | None = None
            if driver is not None and driver.capabilities.recover:
                try:
                    result = await driver.recover(InterruptedTransaction(
                        row["id"], row["amount"], row["currency"], TransactionKind.SALE,
                        row["created_at"],
                        {"processor_ref": row["processor_ref"]} if row["processor_ref"]
                        else {}))
                except Exception as exc:  # recovery is best effort; unknown is the floor
                    log.warning("recovering payment %s failed: %s", row["id"], exc)
            if result is None:
                result = TransactionResult(
                    Outcome.UNKNOWN, 0, "", detail="the daemon stopped during the transaction;"
                    " check the terminal's journal and resolve")
            await self._settle_interrupted(row["id"], result)
        await self._db.write(self._refunds_interrupted)
        return len(rows)

    async def _settle_interrupted(self, payment_id: str, result: TransactionResult) -> None:
        now = self._now()

        def write(conn: sqlite3.Connection) -> None:
            row = records.payment_row(conn, payment_id)
            if row is not None and row["state"] in ("pending", "in_progress"):
                self._apply_result(conn, row, result, now, actor="recovery")

        await self._db.write(write)
        log.warning("payment %s was interrupted by a stop; now %s", payment_id,
                    _OUTCOME_STATE[result.outcome])

    def _refunds_interrupted(self, conn: sqlite3.Connection) -> None:
        now = self._now()
        for row in conn.execute("SELECT id, payment_id, amount FROM refunds WHERE state ="
                                " 'pending' AND terminal_id IS NOT NULL").fetchall():
            conn.execute("UPDATE refunds SET state = 'unknown', failure = ?, updated_at = ?"
                         " WHERE id = ?",
                         ("the daemon stopped during the refund; check the terminal", now,
                          row["id"]))
            audit.append(conn, "recovery", "refund.unknown", row["id"],
                         {"payment": row["payment_id"], "amount": row["amount"]})

    def unknown_count(self) -> Callable[[sqlite3.Connection], int]:
        def read(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM payments WHERE state = 'unknown'")
                       .fetchone()[0])
        return read


def _encode_cursor(n: int) -> str:
    return base64.urlsafe_b64encode(f"n:{n}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("n:"):
            raise ValueError(text)
        return int(text[2:])
    except (ValueError, UnicodeDecodeError):
        raise ApiError("ERR-1013", "cursor is not one this daemon handed out") from None
