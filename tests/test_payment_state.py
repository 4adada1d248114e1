"""The payment state machine: the table itself, what it derives, and its promises.

Property tests (hypothesis) run every sequence of moves the daemon's writers can attempt
(the API, terminals, sync hooks, deadlines, restarts, a manager) through the table and
check what docs/design.md, payments promises; the same moves through the real SQLite store check that a
refused move changes nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.api import models
from edged.docgen.states_doc import render
from edged.payments.states import (
    ANSWERED,
    INITIAL_PAYMENT_STATES,
    MAY_CHANGE_UPSTREAM,
    MAY_HAVE_BEEN_CHARGED,
    PAYMENT_MOVES,
    REFUND_MOVES,
    SETTLED,
    Actor,
    IllegalTransition,
    PaymentState,
    RefundState,
    move_payment,
    move_refund,
    payment_move_allowed,
)
from edged.store.database import open_sync

P = PaymentState
HARD_FINAL = frozenset({P.APPROVED, P.DECLINED, P.CANCELED, P.FAILED})
moves = st.lists(st.tuples(st.sampled_from(list(Actor)), st.sampled_from(list(PaymentState))),
                 max_size=40)


def run(start: PaymentState, attempts: list[tuple[Actor, PaymentState]],
        ) -> list[tuple[PaymentState, PaymentState, Actor]]:
    """Apply every attempt the table allows; return the moves made."""
    state, made = start, []
    for actor, target in attempts:
        if payment_move_allowed(state, target, actor):
            made.append((state, target, actor))
            state = target
    return made


@settings(max_examples=500)
@given(st.sampled_from(sorted(INITIAL_PAYMENT_STATES)), moves)
def test_a_settled_payment_never_moves(start: PaymentState,
                                       attempts: list[tuple[Actor, PaymentState]]) -> None:
    for old, _new, _actor in run(start, attempts):
        assert old not in HARD_FINAL
        assert old not in SETTLED


@settings(max_examples=500)
@given(st.sampled_from(sorted(INITIAL_PAYMENT_STATES)), moves)
def test_only_a_manager_the_processor_or_the_terminal_settles_an_unknown_payment(
        start: PaymentState, attempts: list[tuple[Actor, PaymentState]]) -> None:
    """The terminal may settle one only from its own record of the transaction (ZVT
    Repeat receipt); recovery at start, sync and deadlines never do."""
    for old, _new, actor in run(start, attempts):
        if old is P.UNKNOWN:
            assert actor in (Actor.MANAGER, Actor.PROCESSOR, Actor.TERMINAL)


@settings(max_examples=500)
@given(st.sampled_from(sorted(INITIAL_PAYMENT_STATES)), moves)
def test_nothing_that_may_have_been_charged_becomes_failed(
        start: PaymentState, attempts: list[tuple[Actor, PaymentState]]) -> None:
    for old, new, actor in run(start, attempts):
        if new is P.FAILED:
            assert old not in MAY_HAVE_BEEN_CHARGED
            # failed only with proof that nothing was charged: the terminal never got the
            # request, the processor refused it, or the forward was cancelled unsent
            assert (old, actor) in {(P.IN_PROGRESS, Actor.TERMINAL),
                                    (P.PENDING, Actor.PROCESSOR), (P.PENDING, Actor.DEADLINE)}


def test_the_named_sets_agree_with_the_table() -> None:
    sources = {old for old, _ in PAYMENT_MOVES}
    assert not sources & SETTLED, "a settled state has a way out"
    assert MAY_CHANGE_UPSTREAM == frozenset(PaymentState) - SETTLED
    assert P.STORED in ANSWERED and P.STORED not in SETTLED  # final for the register only
    assert P.PENDING not in ANSWERED and P.IN_PROGRESS not in ANSWERED
    # every state can be reached from a start
    reached = set(INITIAL_PAYMENT_STATES)
    for _ in PaymentState:
        reached |= {new for (old, new) in PAYMENT_MOVES if old in reached}
    assert reached == set(PaymentState)
    assert (P.AUTHORIZED, P.APPROVED) in PAYMENT_MOVES  # capture
    assert (P.AUTHORIZED, P.CANCELED) in PAYMENT_MOVES  # void
    assert REFUND_MOVES[(RefundState.UNKNOWN, RefundState.SUCCEEDED)] >= {Actor.MANAGER}
    # a person, the terminal's own record (ZVT Repeat receipt), or the processor showing it
    # refused (issue 16 item 9: read back)
    assert REFUND_MOVES[(RefundState.UNKNOWN, RefundState.FAILED)] == {
        Actor.MANAGER, Actor.TERMINAL, Actor.PROCESSOR}
    assert PAYMENT_MOVES[(P.UNKNOWN, P.CANCELED)] == {Actor.PROCESSOR}


# -- what is derived from the table ----------------------------------------------------------


def _check_list(conn: sqlite3.Connection, table: str, values: list[str]) -> set[str]:
    """The values the table's state CHECK accepts, among ``values`` and a bogus one."""
    accepted = set()
    for value in [*values, "bogus"]:
        conn.execute("SAVEPOINT probe")
        try:
            if table == "payments":
                conn.execute("INSERT INTO payments (id, method, state, amount, currency,"
                             " created_at, updated_at) VALUES (?, 'cash', ?, 1, 'EUR', '', '')",
                             (f"p-{value}", value))
            else:
                conn.execute("INSERT INTO refunds (id, payment_id, amount, currency, state,"
                             " created_at, updated_at) VALUES (?, 'p-approved', 1, 'EUR', ?,"
                             " '', '')", (f"r-{value}", value))
            accepted.add(value)
        except sqlite3.IntegrityError:
            pass
        conn.execute("RELEASE probe")
    return accepted


def test_database_checks_accept_exactly_the_states(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "edged.db")
    try:
        conn.execute("BEGIN")
        assert _check_list(conn, "payments", [s.value for s in PaymentState]) == \
            {s.value for s in PaymentState}, "add a migration for the new payment states"
        assert _check_list(conn, "refunds", [s.value for s in RefundState]) == \
            {s.value for s in RefundState}, "add a migration for the new refund states"
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_openapi_enums_are_the_states() -> None:
    payment = models.PAYMENT.schema["properties"]["state"]["enum"]
    refund = models.REFUND.schema["properties"]["state"]["enum"]
    assert payment == [s.value for s in PaymentState]
    assert refund == [s.value for s in RefundState]


def test_docs_page_is_generated_from_the_table() -> None:
    page = Path(__file__).parent.parent / "docs" / "payment-states.md"
    assert page.read_text(encoding="utf-8") == render(), "run `make docs`"


def test_upgrade_from_the_first_schema_keeps_payments_and_refunds(tmp_path: Path) -> None:
    from edged.store.migrations import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                 " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    conn.execute("BEGIN")
    for statement in MIGRATIONS[0][2].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial schema', '')")
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, created_at,"
                 " updated_at) VALUES ('pay-1', 'token', 'stored', 500, 'EUR', 't0', 't0')")
    conn.execute("INSERT INTO refunds (id, payment_id, amount, currency, state, created_at,"
                 " updated_at) VALUES ('ref-1', 'pay-1', 100, 'EUR', 'queued', 't1', 't1')")
    conn.execute("COMMIT")
    conn.close()

    conn = open_sync(path)  # runs the migrations
    try:
        row = conn.execute("SELECT state, stored_at FROM payments WHERE id = 'pay-1'").fetchone()
        assert tuple(row) == ("stored", "t0")
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert not conn.execute("PRAGMA foreign_key_check").fetchall()
        with pytest.raises(sqlite3.IntegrityError):  # the refund's key still holds
            conn.execute("INSERT INTO refunds (id, payment_id, amount, currency, state,"
                         " created_at, updated_at) VALUES ('ref-2', 'nope', 1, 'EUR',"
                         " 'queued', '', '')")
    finally:
        conn.close()


# -- the one door, on the real store -----------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    """One migrated store for the property tests; each example runs in a savepoint."""
    c = open_sync(tmp_path_factory.mktemp("db") / "edged.db")
    c.execute("PRAGMA synchronous=OFF")  # every example is rolled back
    yield c  # type: ignore[misc]
    c.close()


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    c = open_sync(tmp_path / "edged.db")
    c.execute("BEGIN")
    yield c  # type: ignore[misc]
    c.execute("ROLLBACK")
    c.close()


def _payment(conn: sqlite3.Connection, state: PaymentState) -> str:
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, created_at,"
                 " updated_at) VALUES ('pay-1', 'token', ?, 100, 'EUR', 't0', 't0')", (state,))
    return "pay-1"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(list(PaymentState)), st.sampled_from(list(PaymentState)),
       st.sampled_from(list(Actor)))
def test_move_payment_writes_allowed_moves_and_refuses_the_rest(
        shared: sqlite3.Connection, old: PaymentState, new: PaymentState,
        actor: Actor) -> None:
    c = shared
    c.execute("BEGIN")
    try:
        pid = _payment(c, old)
        if payment_move_allowed(old, new, actor):
            assert move_payment(c, pid, new, actor, "t1", failure="why") == old
            expected = (new.value, "t1", "why")
        else:
            with pytest.raises(IllegalTransition):
                move_payment(c, pid, new, actor, "t1", failure="why")
            expected = (old.value, "t0", None)
        row = c.execute("SELECT state, updated_at, failure FROM payments").fetchone()
        assert tuple(row) == expected
    finally:
        c.execute("ROLLBACK")


def test_move_refund_goes_through_its_table(conn: sqlite3.Connection) -> None:
    _payment(conn, P.APPROVED)
    conn.execute("INSERT INTO refunds (id, payment_id, amount, currency, state, created_at,"
                 " updated_at) VALUES ('ref-1', 'pay-1', 10, 'EUR', 'unknown', 't0', 't0')")
    with pytest.raises(IllegalTransition):  # the daemon without an answer cannot say
        move_refund(conn, "ref-1", RefundState.FAILED, Actor.SYNC, "t1")
    assert move_refund(conn, "ref-1", RefundState.FAILED, Actor.MANAGER, "t1") == "unknown"
    with pytest.raises(IllegalTransition):
        move_refund(conn, "ref-1", RefundState.SUCCEEDED, Actor.MANAGER, "t2")


# -- the writers themselves, on the real store --------------------------------------------------

_EVENTS = st.lists(st.sampled_from([
    "approved", "declined", "refused", "gave_up_in_doubt", "link_down", "resolve_approved",
    "resolve_declined"]), max_size=12)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["pending", "stored"]), _EVENTS)
def test_token_payment_writers_keep_the_promises(
        shared: sqlite3.Connection, start: str, events: list[str]) -> None:
    """Random outcomes from the sync hooks (the processor's answers, a send given up in
    doubt), the link going down and a manager's resolve, through the real writers: a
    settled payment never moves, only a manager or the processor leaves unknown, and
    nothing that may have been charged becomes failed."""
    from edged.upstream.sync_hooks import StoreHooks
    from sync.core.gateway import OutboxRow, RowFailure
    from tests.clock import ManualClock

    hooks = StoreHooks(ManualClock())
    row = OutboxRow(id=1, destination="stripe", kind="payment.forward", subject_id="pay-1",
                    idempotency_key="ed-1", payload={
                        "payment_id": "pay-1", "amount": 100, "currency": "EUR",
                        "token": "pm_x", "reference": None, "created_at": "t0"},
                    attempts=1, last_error=None, created_at="t0")
    c = shared
    c.execute("BEGIN")
    try:
        c.execute("INSERT INTO payments (id, method, state, amount, currency, processor, token,"
                  " created_at, updated_at) VALUES ('pay-1', 'token', ?, 100, 'EUR', 'stripe',"
                  " 'pm_x', 't0', 't0')", (start,))
        state = P(start)
        for event in events:
            if event == "approved":
                hooks.applied(c, row, {"processor_ref": "pi_1"})
                actor = Actor.PROCESSOR
            elif event in ("declined", "refused", "gave_up_in_doubt"):
                code = {"declined": "ERR-6071", "refused": "ERR-6070"}.get(event, "ERR-6003")
                hooks.failed(c, row, RowFailure(code, event,
                                                outcome_unknown=event == "gave_up_in_doubt"))
                actor = Actor.SYNC if event == "gave_up_in_doubt" else Actor.PROCESSOR
            elif event == "link_down":
                if state is P.PENDING:
                    move_payment(c, "pay-1", P.STORED, Actor.SYNC, "t1", stored_at="t1")
                actor = Actor.SYNC
            else:
                actor = Actor.MANAGER
                try:
                    move_payment(c, "pay-1", P(event.removeprefix("resolve_")), actor, "t1")
                except IllegalTransition:
                    pass
            new = P(c.execute("SELECT state FROM payments").fetchone()[0])
            if new is not state:
                assert state not in SETTLED, (state, event, new)
                assert state is not P.UNKNOWN or actor in (Actor.MANAGER, Actor.PROCESSOR)
                assert new is not P.FAILED or state not in MAY_HAVE_BEEN_CHARGED
            state = new
    finally:
        c.execute("ROLLBACK")
