"""The payment and refund lifecycles (docs/design.md, payments): the states and every move allowed.

One table says which move each actor may make. Every writer of ``payments.state`` or
``refunds.state`` goes through :func:`move_payment` / :func:`move_refund` (or
:func:`check_payment_move` when it writes the row itself): a move the table does not allow
raises :class:`IllegalTransition` and changes nothing, never overwrites.

The database CHECK lists, the OpenAPI enums and ``docs/payment-states.md`` are derived
from these enums and checked against them by the tests and ``make test``.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Mapping
from typing import Any

from edged.errors import EdgedError


class PaymentState(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    APPROVED = "approved"
    DECLINED = "declined"
    CANCELED = "canceled"
    FAILED = "failed"
    UNKNOWN = "unknown"
    AUTHORIZED = "authorized"
    STORED = "stored"
    FORWARD_DECLINED = "forward_declined"


class RefundState(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Actor(enum.StrEnum):
    """Who makes a move: the kind of evidence behind it (see ACTOR_MEANING)."""

    REGISTER = "register"
    TERMINAL = "terminal"
    PROCESSOR = "processor"
    SYNC = "sync"
    DEADLINE = "deadline"
    RECOVERY = "recovery"
    MANAGER = "manager"


ACTOR_MEANING: Mapping[Actor, str] = {
    Actor.REGISTER: "the API on a register's call (create, capture, void)",
    Actor.TERMINAL: "the terminal's own answer, or the proof that nothing reached it; for"
                    " an unknown one, the terminal's record of it (ZVT Repeat receipt)",
    Actor.PROCESSOR: "the processor's own answer to a forward (a sync hook), or what it shows"
                     " when read back (edged/payments/unknown_settler.py)",
    Actor.SYNC: "the daemon's sync side without an answer: the link is down, a send in"
                " doubt gave up",
    Actor.DEADLINE: "a bound ran out: the token forward wait",
    Actor.RECOVERY: "the start after a stop: what was running on a terminal",
    Actor.MANAGER: "a person's decision (resolve), with an audit entry",
}


P = PaymentState
A = Actor

# A payment starts in one of these (cash is approved at once).
INITIAL_PAYMENT_STATES = frozenset({P.PENDING, P.STORED, P.IN_PROGRESS, P.APPROVED})

# (from, to) -> the actors that may make that move. Nothing else is allowed.
PAYMENT_MOVES: Mapping[tuple[PaymentState, PaymentState], frozenset[Actor]] = {
    # a card payment on a terminal
    (P.IN_PROGRESS, P.APPROVED): frozenset({A.TERMINAL, A.RECOVERY}),
    (P.IN_PROGRESS, P.DECLINED): frozenset({A.TERMINAL, A.RECOVERY}),
    (P.IN_PROGRESS, P.CANCELED): frozenset({A.TERMINAL, A.RECOVERY}),
    (P.IN_PROGRESS, P.AUTHORIZED): frozenset({A.TERMINAL, A.RECOVERY}),
    (P.IN_PROGRESS, P.UNKNOWN): frozenset({A.TERMINAL, A.RECOVERY}),
    # only with proof that nothing reached the terminal
    (P.IN_PROGRESS, P.FAILED): frozenset({A.TERMINAL}),
    # manual capture (authorized: held, not yet taken)
    (P.AUTHORIZED, P.APPROVED): frozenset({A.REGISTER, A.PROCESSOR, A.TERMINAL}),
    (P.AUTHORIZED, P.CANCELED): frozenset({A.REGISTER, A.PROCESSOR, A.TERMINAL}),
    (P.AUTHORIZED, P.UNKNOWN): frozenset({A.PROCESSOR, A.SYNC}),
    # a token payment forwarded to its processor
    (P.PENDING, P.APPROVED): frozenset({A.PROCESSOR}),
    (P.PENDING, P.DECLINED): frozenset({A.PROCESSOR}),
    # manual capture: the processor authorised the forward and holds the money
    (P.PENDING, P.AUTHORIZED): frozenset({A.PROCESSOR}),
    (P.STORED, P.AUTHORIZED): frozenset({A.PROCESSOR}),
    (P.PENDING, P.STORED): frozenset({A.SYNC, A.DEADLINE}),
    # the processor refused before charging, or the forward was cancelled before any send
    (P.PENDING, P.FAILED): frozenset({A.PROCESSOR, A.DEADLINE}),
    # sent in doubt: gave up, or the wait ran out while a send was in flight
    (P.PENDING, P.UNKNOWN): frozenset({A.SYNC, A.DEADLINE}),
    # accepted offline, forwarded later
    (P.STORED, P.APPROVED): frozenset({A.PROCESSOR}),
    # the processor refused it, or a manager gave up collecting it (its forward discarded)
    (P.STORED, P.FORWARD_DECLINED): frozenset({A.PROCESSOR, A.MANAGER}),
    (P.STORED, P.UNKNOWN): frozenset({A.SYNC}),
    # a person, the processor's own answer, or the terminal's own record of the
    # transaction (a ZVT Repeat receipt) settles what is in doubt
    (P.UNKNOWN, P.APPROVED): frozenset({A.MANAGER, A.PROCESSOR, A.TERMINAL}),
    (P.UNKNOWN, P.DECLINED): frozenset({A.MANAGER, A.PROCESSOR, A.TERMINAL}),
    (P.UNKNOWN, P.FORWARD_DECLINED): frozenset({A.PROCESSOR}),
    (P.UNKNOWN, P.AUTHORIZED): frozenset({A.PROCESSOR}),  # a manual-capture forward
    # the processor shows it canceled (a PaymentIntent, a Square checkout): not taken
    (P.UNKNOWN, P.CANCELED): frozenset({A.PROCESSOR}),
}

# What the states mean to the people around the payment.
SETTLED = frozenset({P.APPROVED, P.DECLINED, P.CANCELED, P.FAILED, P.FORWARD_DECLINED})
"""Nothing moves these any more (refunds are records of their own)."""
ANSWERED = SETTLED | {P.UNKNOWN, P.STORED, P.AUTHORIZED}
"""Final for the register: it can act on them (a long-poll answers)."""
MAY_CHANGE_UPSTREAM = frozenset(PaymentState) - SETTLED
"""Still open: a terminal, a processor or a manager may move these."""
NOT_TAKEN = frozenset({P.DECLINED, P.CANCELED, P.FAILED, P.FORWARD_DECLINED})
"""The customer's money was not taken."""
MAY_HAVE_BEEN_CHARGED = frozenset({P.APPROVED, P.UNKNOWN, P.AUTHORIZED, P.STORED})
"""Taken, held, maybe taken or to be taken: never ``failed`` from here."""
HAND_OVER = frozenset({P.APPROVED, P.STORED})
"""The register may hand over the goods (a stored payment's risk is the store's)."""


R = RefundState
INITIAL_REFUND_STATES = frozenset({R.PENDING, R.QUEUED, R.SUCCEEDED})
REFUND_MOVES: Mapping[tuple[RefundState, RefundState], frozenset[Actor]] = {
    (R.PENDING, R.SUCCEEDED): frozenset({A.TERMINAL}),
    (R.PENDING, R.FAILED): frozenset({A.TERMINAL}),
    (R.PENDING, R.UNKNOWN): frozenset({A.TERMINAL, A.RECOVERY}),
    (R.QUEUED, R.SUCCEEDED): frozenset({A.PROCESSOR}),
    (R.QUEUED, R.FAILED): frozenset({A.PROCESSOR}),
    (R.QUEUED, R.UNKNOWN): frozenset({A.SYNC}),
    (R.UNKNOWN, R.SUCCEEDED): frozenset({A.MANAGER, A.PROCESSOR, A.TERMINAL}),
    (R.UNKNOWN, R.FAILED): frozenset({A.MANAGER, A.PROCESSOR, A.TERMINAL}),
}
REFUND_HOLDS_MONEY = frozenset({R.PENDING, R.QUEUED, R.SUCCEEDED, R.UNKNOWN})
"""Refunds that hold money back from what can still be refunded."""


def manager_outcomes(table: Mapping[tuple[Any, Any], frozenset[Actor]],
                     unknown: Any) -> tuple[str, ...]:
    """The states a manager may settle ``unknown`` into (the resolve calls' enums)."""
    return tuple(new.value for (old, new), actors in table.items()
                 if old is unknown and Actor.MANAGER in actors)


class IllegalTransition(EdgedError):
    """A move the table does not allow; nothing was written."""

    def __init__(self, what: str, subject: str, old: str | None, new: str,
                 actor: Actor) -> None:
        super().__init__(f"{what} {subject}: {old} -> {new} by {actor.value} is not allowed")
        self.subject = subject
        self.old = old
        self.new = new
        self.actor = actor


def payment_move_allowed(old: PaymentState, new: PaymentState, actor: Actor) -> bool:
    return actor in PAYMENT_MOVES.get((old, new), frozenset())


def refund_move_allowed(old: RefundState, new: RefundState, actor: Actor) -> bool:
    return actor in REFUND_MOVES.get((old, new), frozenset())


def check_payment_move(payment_id: str, old: str, new: PaymentState, actor: Actor) -> None:
    if not payment_move_allowed(PaymentState(old), new, actor):
        raise IllegalTransition("payment", payment_id, old, new, actor)


def check_payment_start(payment_id: str, state: PaymentState) -> None:
    if state not in INITIAL_PAYMENT_STATES:
        raise IllegalTransition("payment", payment_id, None, state, Actor.REGISTER)


def check_refund_start(refund_id: str, state: RefundState) -> None:
    if state not in INITIAL_REFUND_STATES:
        raise IllegalTransition("refund", refund_id, None, state, Actor.REGISTER)


_PAYMENT_COLUMNS = frozenset({"failure", "brand", "last4", "auth_code", "processor_ref",
                              "raw_status", "receipt", "terminal_figures", "stored_at",
                              "finished_at", "captured"})
_REFUND_COLUMNS = frozenset({"failure", "processor_ref"})


def move_payment(conn: sqlite3.Connection, payment_id: str, new: PaymentState, actor: Actor,
                 now: str, **fields: Any) -> str:
    """Move one payment to ``new`` with ``fields``; return the state it left.

    Raises :class:`IllegalTransition` (nothing written) when the table forbids it. The
    compare-and-set on the old state keeps the check true even if two writers race.
    """
    row = conn.execute("SELECT state FROM payments WHERE id = ?", (payment_id,)).fetchone()
    if row is None:
        raise IllegalTransition("payment", payment_id, None, new, actor)
    old = str(row[0])
    check_payment_move(payment_id, old, new, actor)
    _update(conn, "payments", _PAYMENT_COLUMNS, payment_id, old, new, now, fields)
    return old


def move_refund(conn: sqlite3.Connection, refund_id: str, new: RefundState, actor: Actor,
                now: str, **fields: Any) -> str:
    row = conn.execute("SELECT state FROM refunds WHERE id = ?", (refund_id,)).fetchone()
    if row is None:
        raise IllegalTransition("refund", refund_id, None, new, actor)
    old = str(row[0])
    if not refund_move_allowed(RefundState(old), new, actor):
        raise IllegalTransition("refund", refund_id, old, new, actor)
    _update(conn, "refunds", _REFUND_COLUMNS, refund_id, old, new, now, fields)
    return old


def _update(conn: sqlite3.Connection, table: str, allowed: frozenset[str], subject: str,
            old: str, new: str, now: str, fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"not {table} columns a move may set: {sorted(unknown)}")
    names = sorted(fields)
    sets = "".join(f", {name} = ?" for name in names)
    cur = conn.execute(
        f"UPDATE {table} SET state = ?, updated_at = ?{sets} WHERE id = ? AND state = ?",  # noqa: S608
        (str(new), now, *(fields[n] for n in names), subject, old))
    assert cur.rowcount == 1, (table, subject, old, new)
