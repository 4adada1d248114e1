"""``unknown`` settles itself when the processor can say (issue 16 item 9).

A supervised task (``settle-unknown``) reads every payment and refund left ``unknown`` back
from its processor (``sync.core.readback``): when the daemon starts, when a processor's link
returns (its breaker closes), when something new becomes ``unknown``, and every
``[sync] unknown_recheck_seconds`` while anything is ``unknown`` (sooner while a processor
could not be asked: as soon as its breaker lets a call through, at most every
:data:`LINK_RETRY` seconds; that call is what finds the link back). It reads, by the id the
daemon stored, else by what the daemon set on the object (metadata, a note); it never
re-sends a create. A search that finds nothing proves nothing (Stripe's search can lag).

What the processor shows moves the record through the state table, as the processor
(``Actor.PROCESSOR``): taken → ``approved``, held → ``authorized``, declined → ``declined``
(``forward_declined`` for a payment accepted offline), canceled → ``canceled``; a refund
sent back → ``succeeded``, refused → ``failed``. Only when its figures agree: a processor
showing another amount or currency leaves it ``unknown`` for a person. A record still open
at the processor, or not found, stays ``unknown``. Each read records ``last_checked_at``
(shown in the API's payment view and on the status page). Skipped: what an outbox row is
still carrying (its answer settles it), what a terminal without a processor ran (a person
reads the terminal's journal), what already shows other figures. A manager's resolve stays
possible at any time, audited as before. A dead outbox row of what was settled is closed
(``done`` when the money moved, ``discarded`` when it did not), so it is no longer offered
for a retry.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from edged.config import Config
from edged.events import EventBus
from edged.payments import records
from edged.payments.states import (
    Actor,
    IllegalTransition,
    PaymentState,
    RefundState,
    move_payment,
    move_refund,
)
from edged.store import Database, audit
from sync.core import outbox
from sync.core.breaker import BreakerState, CircuitBreaker
from sync.core.clock import Clock, utc_iso
from sync.core.contract import OutboxKind
from sync.core.errors import OutcomeUnknown, SyncError
from sync.core.readback import PaymentQuery, PaymentSeen, ReadBack, RefundQuery, RefundSeen, Seen

log = logging.getLogger(__name__)

#: While a processor could not be asked, how soon to try again (the link may be back);
#: sooner when its breaker allows a probe before that.
LINK_RETRY = 15.0
#: After something becomes unknown, how long before the first read (let it settle there).
NEW_UNKNOWN_DELAY = 5.0

_SETTLES: Mapping[Seen, PaymentState] = {
    Seen.APPROVED: PaymentState.APPROVED, Seen.AUTHORIZED: PaymentState.AUTHORIZED,
    Seen.DECLINED: PaymentState.DECLINED, Seen.CANCELED: PaymentState.CANCELED}


@dataclass(frozen=True, slots=True)
class Pass:
    """What one pass did."""

    checked: int = 0
    settled: tuple[str, ...] = ()
    unreachable: int = 0
    """Records whose processor could not be asked."""
    unreachable_at: tuple[str, ...] = ()
    """The processors that could not be asked."""
    left: int = 0
    """Records still unknown that a processor could settle."""


class UnknownSettler:
    def __init__(self, cfg: Config, db: Database, bus: EventBus, clock: Clock,
                 readers: Mapping[str, ReadBack]) -> None:
        self._cfg = cfg
        self._db = db
        self._bus = bus
        self._clock = clock
        self._readers = readers
        self.last_pass: Pass | None = None

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: a pass, then wait for what calls for the next one."""
        sub = self._bus.subscribe(frozenset({"sync", "payment", "refund"}),
                                  accept=self._wakes)
        try:
            while True:
                done = await self.settle_once()
                await self._wait(sub.queue, self._delay(done))
        finally:
            self._bus.unsubscribe(sub)

    def _wakes(self, kind: str, data: dict[str, Any]) -> bool:
        """What :meth:`_wait` acts on: a link back, something new unknown (every other
        payment event, a sale that went well, costs the task no wake-up)."""
        if kind == "sync":
            return data.get("event") == "breaker" and data.get("to") == "closed"
        return data.get("state") == "unknown"

    def _delay(self, done: Pass) -> float:
        """The next pass: the interval; while a processor could not be asked, as soon as
        its breaker lets a call through (that call is the probe), at most LINK_RETRY."""
        interval = self._cfg.sync.unknown_recheck_seconds
        if not done.unreachable:
            return interval
        waits = [LINK_RETRY]
        for name in done.unreachable_at:
            breaker = getattr(self._readers[name], "breaker", None)
            if isinstance(breaker, CircuitBreaker):
                snap = breaker.snapshot()
                if snap.state is BreakerState.OPEN:
                    waits.append(snap.retry_after + 0.1)
        return min(interval, max(0.1, min(waits)))

    async def _wait(self, queue: asyncio.Queue[Any], seconds: float) -> None:
        """Sleep ``seconds`` on the clock; less when a link returns (at once) or something
        becomes unknown (within :data:`NEW_UNKNOWN_DELAY`)."""
        due = self._clock.monotonic() + seconds
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            while not sleeper.done():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({sleeper, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                event = getter.result()
                data = event.data if isinstance(event.data, Mapping) else {}
                if event.kind == "sync" and data.get("event") == "breaker" \
                        and data.get("to") == "closed" \
                        and data.get("destination") in self._readers:
                    log.info("%s answers again: reading the unknown back",
                             data.get("destination"))
                    return
                sooner = self._clock.monotonic() + NEW_UNKNOWN_DELAY
                if event.kind in ("payment", "refund") and data.get("state") == "unknown" \
                        and sooner < due:
                    due = sooner
                    sleeper.cancel()
                    sleeper = asyncio.ensure_future(self._clock.sleep(NEW_UNKNOWN_DELAY))
        finally:
            sleeper.cancel()

    # -- one pass -------------------------------------------------------------------------

    async def settle_once(self) -> Pass:
        payments, refunds = await self._db.read(self._unknown)
        settled: list[str] = []
        unreachable = checked = 0
        down: set[str] = set()
        for query, processor in payments:
            seen = await self._ask(self._readers[processor].payment(query), query.payment_id)
            if seen is None:
                unreachable += 1
                down.add(processor)
                continue
            checked += 1
            body = await self._db.write(partial(self._apply_payment, query=query, seen=seen,
                                                processor=processor, now=self._now()))
            if body is not None:
                settled.append(query.payment_id)
                self._bus.publish("payment", body)
        for rquery, processor in refunds:
            rseen = await self._ask(self._readers[processor].refund(rquery), rquery.refund_id)
            if rseen is None:
                unreachable += 1
                down.add(processor)
                continue
            checked += 1
            rbody = await self._db.write(partial(self._apply_refund, query=rquery, seen=rseen,
                                                 processor=processor, now=self._now()))
            if rbody is not None:
                settled.append(rquery.refund_id)
                self._bus.publish("refund", rbody)
        total = len(payments) + len(refunds)
        done = Pass(checked, tuple(settled), unreachable, tuple(sorted(down)),
                    total - len(settled))
        self.last_pass = done
        if total:
            log.info("unknown read back: %d checked, %d settled (%s), %d could not be asked,"
                     " %d still unknown", checked, len(settled), ", ".join(settled) or "none",
                     unreachable, done.left)
        return done

    @staticmethod
    async def _ask(read: Any, subject: str) -> Any:
        try:
            return await read
        except (SyncError, TimeoutError, OSError) as exc:
            quiet = not isinstance(exc, OutcomeUnknown)
            (log.debug if quiet else log.warning)("%s: its processor cannot be asked now"
                                                  " (%s)", subject, exc)
            return None

    def _unknown(self, conn: sqlite3.Connection) -> tuple[list[tuple[PaymentQuery, str]],
                                                         list[tuple[RefundQuery, str]]]:
        """What a processor may settle, and whose processor."""
        devices = {t.id: str(t.options.get("device_id") or t.options.get("reader_id") or "")
                   for t in self._cfg.terminals}
        payments = []
        for row in conn.execute(
                "SELECT * FROM payments WHERE state = ? AND processor IS NOT NULL"
                " AND terminal_figures IS NULL AND NOT EXISTS (SELECT 1 FROM outbox o"
                " WHERE o.subject_id = payments.id AND o.state IN ('pending', 'inflight'))"
                " ORDER BY n", (PaymentState.UNKNOWN,)).fetchall():
            if row["processor"] not in self._readers:
                continue
            payments.append((PaymentQuery(
                payment_id=row["id"], method=row["method"], processor_ref=row["processor_ref"],
                created_at=row["created_at"],
                device=devices.get(row["terminal_id"]) if row["terminal_id"] else None),
                str(row["processor"])))
        refunds = []
        for row in conn.execute(
                "SELECT r.*, p.processor AS processor, p.processor_ref AS payment_ref"
                " FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.state = ?"
                " AND r.terminal_id IS NULL AND p.processor IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM outbox o WHERE o.subject_id = r.id AND o.state IN"
                " ('pending', 'inflight')) ORDER BY r.n", (RefundState.UNKNOWN,)).fetchall():
            if row["processor"] not in self._readers:
                continue
            known = tuple(r[0] for r in conn.execute(
                "SELECT processor_ref FROM refunds WHERE payment_id = ? AND id != ? AND"
                " processor_ref IS NOT NULL", (row["payment_id"], row["id"])).fetchall())
            refunds.append((RefundQuery(
                refund_id=row["id"], payment_id=row["payment_id"],
                payment_ref=row["payment_ref"], processor_ref=row["processor_ref"],
                amount=row["amount"], known_refs=known), str(row["processor"])))
        return payments, refunds

    # -- applying what was seen -----------------------------------------------------------

    def _apply_payment(self, conn: sqlite3.Connection, query: PaymentQuery, seen: PaymentSeen,
                       processor: str, now: str) -> dict[str, Any] | None:
        row = records.payment_row(conn, query.payment_id)
        if row is None or row["state"] != PaymentState.UNKNOWN:
            return None  # settled meanwhile (its outbox row, a manager)
        conn.execute("UPDATE payments SET last_checked_at = ? WHERE id = ?", (now, row["id"]))
        new = _SETTLES.get(seen.seen)
        if new is None:
            return None
        if new is PaymentState.DECLINED and row["stored_at"] is not None:
            new = PaymentState.FORWARD_DECLINED  # accepted offline, refused when forwarded
        other = _other(row["amount"], row["currency"], seen,
                       capture=row["capture"] == "manual" and new is PaymentState.APPROVED)
        if other:
            conn.execute("UPDATE payments SET failure = ? WHERE id = ?",
                         (f"{processor} shows other figures than asked ({other}): compare"
                          " and resolve", row["id"]))
            log.warning("payment %s: %s shows %s; it stays unknown", row["id"], processor,
                        other)
            return None
        fields: dict[str, Any] = {
            "finished_at": now, "raw_status": seen.raw_status,
            "failure": None if new in (PaymentState.APPROVED, PaymentState.AUTHORIZED)
            else f"{processor}: {seen.detail or seen.seen.value}"}
        for name in ("processor_ref", "brand", "last4", "auth_code"):
            if getattr(seen, name) is not None:
                fields[name] = getattr(seen, name)
        if new is PaymentState.APPROVED and row["capture"] == "manual":
            fields["captured"] = seen.amount or row["amount"]
        try:
            move_payment(conn, row["id"], new, Actor.PROCESSOR, now, **fields)
        except IllegalTransition as exc:
            log.error("read back of %s not recorded: %s", row["id"], exc)
            return None
        audit.append(conn, processor, f"payment.{new}", row["id"],
                     {"read_back": seen.seen.value, "processor_ref": seen.processor_ref,
                      "amount": seen.amount, "currency": seen.currency,
                      "detail": seen.detail})
        _close_payment_rows(conn, row["id"], new, f"settled by reading {processor} back:"
                            f" {new}", now)
        log.warning("payment %s was unknown; %s shows it %s: now %s", row["id"], processor,
                    seen.seen.value, new)
        return records.get_payment(conn, row["id"])

    def _apply_refund(self, conn: sqlite3.Connection, query: RefundQuery, seen: RefundSeen,
                      processor: str, now: str) -> dict[str, Any] | None:
        row = records.refund_row(conn, query.refund_id)
        if row is None or row["state"] != RefundState.UNKNOWN:
            return None
        conn.execute("UPDATE refunds SET last_checked_at = ? WHERE id = ?", (now, row["id"]))
        new = {Seen.SUCCEEDED: RefundState.SUCCEEDED,
               Seen.FAILED: RefundState.FAILED}.get(seen.seen)
        if new is None:
            return None
        if seen.amount is not None and seen.amount != row["amount"]:
            log.warning("refund %s: %s shows %s, not %s; it stays unknown", row["id"],
                        processor, seen.amount, row["amount"])
            return None
        try:
            move_refund(conn, row["id"], new, Actor.PROCESSOR, now,
                        processor_ref=seen.processor_ref or row["processor_ref"],
                        failure=None if new is RefundState.SUCCEEDED
                        else f"{processor}: {seen.detail}")
        except IllegalTransition as exc:
            log.error("read back of %s not recorded: %s", row["id"], exc)
            return None
        audit.append(conn, processor, f"refund.{new}", row["id"],
                     {"read_back": seen.seen.value, "processor_ref": seen.processor_ref,
                      "payment": row["payment_id"], "amount": row["amount"]})
        outbox.close_dead(conn, OutboxKind.REFUND_CREATE, row["id"],
                          "done" if new is RefundState.SUCCEEDED else "discarded",
                          f"settled by reading {processor} back: {new}", now)
        log.warning("refund %s was unknown; %s shows it %s", row["id"], processor, new)
        row = records.refund_row(conn, row["id"])
        assert row is not None
        return records.refund_dict(row)


def _other(amount: int, currency: str, seen: PaymentSeen, *, capture: bool) -> str:
    """Where the processor's figures differ from the payment's ("" when they agree)."""
    parts = []
    if seen.amount is not None and seen.amount != amount and not capture:
        parts.append(f"amount {seen.amount}")
    if seen.currency and seen.currency.upper() != currency.upper():
        parts.append(f"currency {seen.currency}")
    return ", ".join(parts)


#: What a payment's settled state means for each kind of its dead rows: ``done`` (it
#: happened), ``discarded`` (it did not and never will), absent: still to do (left dead).
_CLOSES: Mapping[str, Mapping[PaymentState, str]] = {
    OutboxKind.PAYMENT_FORWARD: {PaymentState.APPROVED: "done", PaymentState.AUTHORIZED: "done",
                                 PaymentState.DECLINED: "discarded",
                                 PaymentState.FORWARD_DECLINED: "discarded",
                                 PaymentState.CANCELED: "discarded"},
    OutboxKind.PAYMENT_CAPTURE: {PaymentState.APPROVED: "done",
                                 PaymentState.CANCELED: "discarded"},
    OutboxKind.PAYMENT_CANCEL: {PaymentState.CANCELED: "done",
                                PaymentState.APPROVED: "discarded"},
}


def _close_payment_rows(conn: sqlite3.Connection, payment_id: str, new: PaymentState,
                        note: str, now: str) -> None:
    """The dead rows of a settled payment: no longer jobs to retry, when nothing is left
    for them to do."""
    for kind, by_state in _CLOSES.items():
        target = by_state.get(new)
        if target is not None:
            outbox.close_dead(conn, kind, payment_id, target, note, now)


__all__ = ["LINK_RETRY", "Pass", "UnknownSettler"]
