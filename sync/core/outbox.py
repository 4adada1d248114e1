"""The outbox: the daemon writes rows with :func:`enqueue` in the transaction of the
business change (payloads are the dataclasses of ``sync.core.contract``); this module then moves
them: ``pending → inflight`` under a lease, then ``done``, back to ``pending`` with a later
``next_attempt_at``, or ``dead``. It talks SQL to the shared table through a
:class:`TxRunner` (the daemon's store), and lets the daemon apply the business consequences
of an outcome in the same transaction through :class:`OutboxHooks`.

A batch's members, key and variables are stored in ``outbox_batches`` before its first
send, so a retry sends identical variables under the same key. A row left ``inflight`` by
a crash goes back to ``pending`` at start, flagged ``outcome_unknown``: the gateway reads
back before it sends again. That flag, once set, stays with the row whatever becomes of it
(a refusal of a later attempt does not prove the earlier one did nothing): a row that dies
after a send in doubt dies in doubt, and the hooks hear it so. ``doubt_at`` keeps when a
send of the row last went without an answer (for a crash: when its lease was taken),
across restarts: what waits on it (the order lookup's settle time) counts from then, not
from the start of the worker.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sync.core.clock import Clock, utc_iso
from sync.core.contract import Payload, redacted
from sync.core.errors import SyncError
from sync.core.gateway import Gateway, OutboxRow, RowFailure, Work, WorkResult

log = logging.getLogger(__name__)

T = TypeVar("T")

JOB_STATES = ("pending", "inflight", "done", "dead", "discarded")

#: What a pending row waits for besides its due time: a stock count (a compare-and-swap on
#: the local quantity, which counts the sales not yet acknowledged) waits for every earlier
#: sale of its destination that is not done yet, so that a sale held in doubt never lets a
#: later count overtake it. Stock deltas and other sales do not depend on it: they go on.
_FREE = (" AND NOT (outbox.kind = 'inventory.set' AND EXISTS (SELECT 1 FROM outbox AS o"
         " WHERE o.destination = outbox.destination AND o.kind = 'order.create'"
         " AND o.state IN ('pending', 'inflight') AND o.id < outbox.id))")
# (INDEXED BY: the partial index of migration 10; without the hint the planner walks every
# pending row of the destination to find none batched)
_DUE_BATCH = ("SELECT batch_id FROM outbox INDEXED BY outbox_pending_batched"  # noqa: S608
              " WHERE destination = ? AND state = 'pending'"
              " AND batch_id IS NOT NULL AND next_attempt_at <= ?" + _FREE +
              " ORDER BY id LIMIT 1")
_DUE_ROW = ("SELECT * FROM outbox WHERE destination = ? AND state = 'pending'"  # noqa: S608
            " AND next_attempt_at <= ?" + _FREE + " ORDER BY id LIMIT 1")
#: Anything pending and due (free or not): when nothing is, a claim writes nothing.
_ANY_DUE = ("SELECT 1 FROM outbox WHERE destination = ? AND state = 'pending'"
            " AND next_attempt_at <= ? LIMIT 1")
_DUE_MEMBERS = ("SELECT * FROM outbox WHERE destination = ? AND kind = ?"  # noqa: S608
                " AND state = 'pending' AND batch_id IS NULL AND solo = 0"
                " AND next_attempt_at <= ?" + _FREE + " ORDER BY id LIMIT ?")


def new_key() -> str:
    """35 characters: inside every upstream's limit (Square refunds: 45)."""
    return "ed-" + secrets.token_hex(16)


def enqueue(conn: sqlite3.Connection, destination: str, payload: Payload, now: str) -> int:
    """Queue ``payload`` for ``destination`` in the caller's transaction; the row's id.

    The row's kind and subject come from the payload; its idempotency key is fixed here,
    for every attempt, forever. ``now`` (UTC ISO, from the caller's clock) is when it is due.
    """
    cur = conn.execute(
        "INSERT INTO outbox (destination, kind, subject_id, idempotency_key, payload,"
        " created_at, updated_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (destination, payload.KIND.value, payload.subject, new_key(),
         json.dumps(payload.to_json(), sort_keys=True, separators=(",", ":")), now, now, now),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def stop_unsent(conn: sqlite3.Connection, kind: str, subject_id: str, target: str,
                reason: str, now: str) -> bool:
    """Stop ``subject_id``'s live rows of ``kind`` that were never sent in doubt, in the
    caller's transaction: ``discarded`` (never sent) or ``dead`` (held for a manager).

    Returns False and changes nothing when a row is in flight or an earlier send's outcome
    is unknown: it may have been applied upstream, so it is not the caller's to stop.
    """
    if target not in ("discarded", "dead"):
        raise ValueError(f"cannot stop a row into {target!r}")
    rows = conn.execute("SELECT id, state, outcome_unknown FROM outbox WHERE kind = ? AND"
                        " subject_id = ? AND state IN ('pending', 'inflight')",
                        (kind, subject_id)).fetchall()
    if any(r[1] == "inflight" or r[2] for r in rows):
        return False
    conn.executemany("UPDATE outbox SET state = ?, last_error = ?, lease_until = NULL,"
                     " updated_at = ? WHERE id = ? AND state = 'pending'",
                     [(target, reason, now, r[0]) for r in rows])
    return True


def close_dead(conn: sqlite3.Connection, kind: str, subject_id: str, target: str, note: str,
               now: str) -> int:
    """Close ``subject_id``'s dead rows of ``kind`` in the caller's transaction: ``done``
    (what they carried happened, as read back upstream) or ``discarded`` (it did not and
    never will). Only dead rows: a live row settles by its own answer."""
    if target not in ("done", "discarded"):
        raise ValueError(f"cannot close a dead row into {target!r}")
    cur = conn.execute("UPDATE outbox SET state = ?, last_error = coalesce(last_error || '; ',"
                       " '') || ?, updated_at = ? WHERE kind = ? AND subject_id = ? AND"
                       " state = 'dead'", (target, note, now, kind, subject_id))
    return cur.rowcount


@dataclass(frozen=True, slots=True)
class QueueDepth:
    destination: str
    pending: int
    inflight: int
    dead: int
    oldest_pending_at: str | None


def depths(conn: sqlite3.Connection, destinations: tuple[str, ...]) -> list[QueueDepth]:
    """Per destination: rows waiting, in flight and dead, and the oldest one waiting."""
    counts: dict[tuple[str, str], int] = {}
    for row in conn.execute(
        "SELECT destination, state, count(*) FROM outbox"
        " WHERE state IN ('pending', 'inflight', 'dead') GROUP BY destination, state"
    ):
        counts[(row[0], row[1])] = row[2]
    names = sorted(set(destinations) | {d for d, _ in counts})
    oldest = {d: conn.execute(  # one index probe each (outbox_open_age), not a scan
        "SELECT min(created_at) FROM outbox WHERE destination = ?"
        " AND state IN ('pending', 'inflight')", (d,)).fetchone()[0] for d in names}
    return [QueueDepth(d, counts.get((d, "pending"), 0), counts.get((d, "inflight"), 0),
                       counts.get((d, "dead"), 0), oldest.get(d)) for d in names]


class TxRunner(Protocol):
    """Runs plain functions over a sqlite3 connection: writes in a durable transaction."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


Event = tuple[str, dict[str, Any]]


class OutboxHooks(Protocol):
    """The business side of an outcome, run inside the transaction that records it.

    Each returns the events to publish; they are published only after the commit.
    """

    def applied(self, conn: sqlite3.Connection, row: OutboxRow,
                result: Mapping[str, Any]) -> list[Event]: ...

    def failed(self, conn: sqlite3.Connection, row: OutboxRow,
               failure: RowFailure) -> list[Event]: ...


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    lease_seconds: float = 60.0
    max_attempts: int = 12
    backoff_initial: float = 2.0
    backoff_max: float = 300.0


def _row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(id=r["id"], destination=r["destination"], kind=r["kind"],
                     subject_id=r["subject_id"], idempotency_key=r["idempotency_key"],
                     payload=json.loads(r["payload"]), attempts=r["attempts"],
                     last_error=r["last_error"], created_at=r["created_at"])


def job_dict(r: sqlite3.Row, *, secrets_shown: bool = True) -> dict[str, Any]:
    """A row as ``GET /v1/sync/jobs`` shows it; without ``secrets_shown`` the payload's
    secret fields (``sync.core.contract.SECRET_FIELDS``: payment-method tokens) are redacted."""
    payload = json.loads(r["payload"])
    if not secrets_shown and isinstance(payload, dict):
        payload = redacted(r["kind"], payload)
    return {"id": r["id"], "destination": r["destination"], "kind": r["kind"],
            "subject_id": r["subject_id"], "state": r["state"], "attempts": r["attempts"],
            "next_attempt_at": r["next_attempt_at"], "last_error": r["last_error"],
            "outcome_unknown": bool(r["outcome_unknown"]), "batch_id": r["batch_id"],
            "created_at": r["created_at"], "updated_at": r["updated_at"],
            "payload": payload}


class OutboxStore:
    def __init__(self, runner: TxRunner, clock: Clock, hooks: OutboxHooks,
                 settings: OutboxSettings | None = None,
                 rand: Callable[[], float] | None = None,
                 publish: Callable[[str, dict[str, Any]], object] | None = None) -> None:
        self._runner = runner
        self._clock = clock
        self._hooks = hooks
        self._publish = publish
        self.settings = settings or OutboxSettings()
        self._rand = rand or random.random

    def _now(self) -> str:
        return utc_iso(self._clock.now())

    def _later(self, seconds: float) -> str:
        return utc_iso(self._clock.now() + timedelta(seconds=seconds))

    # -- start ----------------------------------------------------------------------------

    async def recover_leases(self, destination: str | None = None) -> int:
        """Rows left in flight (by a crash, or by a worker that died) go back to pending;
        their outcome is unknown. ``destination``: only that destination's rows."""
        now = self._now()

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                # the lease was taken when the send went out: that is when its answer was lost
                "UPDATE outbox SET state = 'pending', lease_until = NULL, outcome_unknown = 1,"
                " doubt_at = updated_at, next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'inflight'"
                " AND destination = coalesce(?, destination)", (now, now, destination))
            return cur.rowcount

        count = await self._runner.write(write)
        if count:
            log.warning("%d %s outbox rows were left in flight; they will be read back"
                        " upstream before any resend", count, destination or "")
        return count

    # -- claim ----------------------------------------------------------------------------

    async def claim(self, gateway: Gateway) -> Work | None:
        """The next due work of ``gateway``'s destination, leased; None when nothing is due.

        A worker is woken by every payment, refund, order and stock event, most of which
        queue nothing for it: whether anything is due is read first, on a reader, so that
        such a wake-up takes no turn of the writer (a card sale's events made two empty
        write transactions a worker, beside the sale's own commits)."""
        destination = gateway.destination
        now = self._now()
        if not await self._runner.read(lambda conn: conn.execute(
                _ANY_DUE, (destination, now)).fetchone() is not None):
            return None
        lease = self._later(self.settings.lease_seconds)

        def write(conn: sqlite3.Connection) -> Work | None:
            batch = conn.execute(_DUE_BATCH, (destination, now)).fetchone()
            if batch is not None:
                return self._lease_batch(conn, batch[0], lease, now)
            first = conn.execute(_DUE_ROW, (destination, now)).fetchone()
            if first is None:
                return None
            limit = gateway.batch_limit(first["kind"])
            if limit <= 1 or first["solo"]:
                return self._lease_single(conn, first, lease, now)
            members = conn.execute(_DUE_MEMBERS, (destination, first["kind"], now,
                                                  limit)).fetchall()
            rows = tuple(_row(r) for r in members)
            payload = gateway.batch_payload(first["kind"], rows)
            key = "edb-" + secrets.token_hex(16)
            cur = conn.execute(
                "INSERT INTO outbox_batches (destination, kind, idempotency_key, payload,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (destination, first["kind"], key,
                 json.dumps(payload, sort_keys=True, separators=(",", ":")), now))
            batch_id = cur.lastrowid
            conn.executemany("UPDATE outbox SET batch_id = ? WHERE id = ?",
                             [(batch_id, r.id) for r in rows])
            return self._lease_batch(conn, batch_id, lease, now)

        return await self._runner.write(write)

    def _lease_single(self, conn: sqlite3.Connection, r: sqlite3.Row, lease: str,
                      now: str) -> Work:
        conn.execute("UPDATE outbox SET state = 'inflight', lease_until = ?, updated_at = ?"
                     " WHERE id = ?", (lease, now, r["id"]))
        row = _row(r)
        return Work(destination=row.destination, kind=row.kind,
                    idempotency_key=row.idempotency_key, rows=(row,), payload=row.payload,
                    attempt=row.attempts, outcome_unknown=bool(r["outcome_unknown"]),
                    doubt_at=r["doubt_at"])

    def _lease_batch(self, conn: sqlite3.Connection, batch_id: Any, lease: str,
                     now: str) -> Work:
        b = conn.execute("SELECT * FROM outbox_batches WHERE id = ?", (batch_id,)).fetchone()
        members = conn.execute("SELECT * FROM outbox WHERE batch_id = ? AND state = 'pending'"
                               " ORDER BY id", (batch_id,)).fetchall()
        conn.execute("UPDATE outbox SET state = 'inflight', lease_until = ?, updated_at = ?"
                     " WHERE batch_id = ? AND state = 'pending'", (lease, now, batch_id))
        rows = tuple(_row(r) for r in members)
        return Work(destination=b["destination"], kind=b["kind"],
                    idempotency_key=b["idempotency_key"], rows=rows,
                    payload=json.loads(b["payload"]), batch_id=batch_id,
                    attempt=max(r.attempts for r in rows),
                    outcome_unknown=any(r["outcome_unknown"] for r in members),
                    doubt_at=max((r["doubt_at"] for r in members if r["doubt_at"]),
                                 default=None))

    async def next_due_in(self, destination: str) -> float | None:
        """Seconds until the next pending row of ``destination`` is due; None if none."""

        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT min(next_attempt_at) FROM outbox WHERE destination = ?"
                               " AND state = 'pending'", (destination,)).fetchone()
            return row[0] if row else None

        stamp = await self._runner.read(read)
        if stamp is None:
            return None
        due = datetime.fromisoformat(stamp)
        return max(0.0, (due - self._clock.now()).total_seconds())

    # -- outcomes -------------------------------------------------------------------------

    async def complete(self, work: Work, result: WorkResult) -> None:
        now = self._now()
        ids = {r.id for r in work.rows}
        unaccounted = ids - set(result.applied) - set(result.dead) - set(result.conflict) \
            - set(result.retry_apart)
        by_id = {r.id: r for r in work.rows}

        def write(conn: sqlite3.Connection) -> list[Event]:
            events: list[Event] = []
            for row_id, answer in result.applied.items():
                conn.execute("UPDATE outbox SET state = 'done', result = ?, lease_until = NULL,"
                             " outcome_unknown = 0, last_error = NULL, updated_at = ?"
                             " WHERE id = ? AND state = 'inflight'",
                             (json.dumps(answer, separators=(",", ":")), now, row_id))
                events += self._hooks.applied(conn, by_id[row_id], answer)
            for failures, prefix in ((result.dead, ""), (result.conflict, "conflict: ")):
                for row_id, failure in failures.items():
                    conn.execute("UPDATE outbox SET state = 'dead', lease_until = NULL,"
                                 " outcome_unknown = max(outcome_unknown, ?),"
                                 " last_error = ?, updated_at = ? WHERE id = ?",
                                 (int(failure.outcome_unknown),
                                  f"{prefix}{failure.code}: {failure.message}", now, row_id))
                    events += self._hooks.failed(conn, by_id[row_id],
                                                 _with_doubt(conn, row_id, failure))
            for row_id in result.retry_apart:
                conn.execute("UPDATE outbox SET state = 'pending', batch_id = NULL,"
                             " lease_until = NULL, outcome_unknown = 0, updated_at = ?,"
                             " next_attempt_at = ? WHERE id = ?", (now, now, row_id))
            conn.executemany("UPDATE outbox SET solo = 1 WHERE id = ?",
                             [(row_id,) for row_id in result.send_alone])
            for row_id in unaccounted:
                log.error("gateway %s left row %d without an outcome; retrying it",
                          work.destination, row_id)
                conn.execute("UPDATE outbox SET state = 'pending', lease_until = NULL,"
                             " outcome_unknown = 1, doubt_at = ?, updated_at = ? WHERE id = ?",
                             (now, now, row_id))
            return events

        self._emit(await self._runner.write(write))

    def _emit(self, events: list[Event]) -> None:
        if self._publish is not None:
            for kind, data in events:
                self._publish(kind, data)

    async def release(self, work: Work) -> None:
        """Give the work back untouched (the breaker refused it before any send)."""
        now = self._now()
        ids = [r.id for r in work.rows]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE outbox SET state = 'pending', lease_until = NULL,"
                             " updated_at = ? WHERE id = ? AND state = 'inflight'",
                             [(now, i) for i in ids])

        await self._runner.write(write)

    async def retry_later(self, work: Work, error: str, *, outcome_unknown: bool,
                          wait: float | None = None, counts: bool = True,
                          new_doubt: bool = False) -> bool:
        """Put the work back for later; return True when the rows went to ``dead`` instead.

        ``counts=False`` (a throttle: the upstream is healthy and asked us to wait) does
        not use up an attempt. ``new_doubt``: this attempt's answer was lost now
        (``doubt_at`` becomes now; a row in doubt without one gets now too).
        """
        now = self._now()
        attempts = work.attempt + 1 if counts else work.attempt
        exhausted = counts and attempts >= self.settings.max_attempts
        if wait is None:
            base = min(self.settings.backoff_max,
                       self.settings.backoff_initial * 2 ** (attempts - 1))
            wait = base * (0.5 + 0.5 * self._rand())
        due = self._later(wait)
        ids = [r.id for r in work.rows]
        by_id = {r.id: r for r in work.rows}

        def write(conn: sqlite3.Connection) -> list[Event]:
            events: list[Event] = []
            for row_id in ids:
                if exhausted:
                    conn.execute("UPDATE outbox SET state = 'dead', attempts = ?,"
                                 " lease_until = NULL, last_error = ?,"
                                 " outcome_unknown = max(outcome_unknown, ?),"
                                 " updated_at = ? WHERE id = ?",
                                 (attempts, f"gave up after {attempts} attempts: {error}",
                                  int(outcome_unknown), now, row_id))
                    events += self._hooks.failed(conn, by_id[row_id], _with_doubt(
                        conn, row_id, RowFailure("ERR-6003", f"gave up: {error}",
                                                 outcome_unknown=outcome_unknown
                                                 or work.outcome_unknown)))
                else:
                    conn.execute("UPDATE outbox SET state = 'pending', attempts = ?,"
                                 " lease_until = NULL, last_error = ?,"
                                 " doubt_at = CASE WHEN ? THEN ? WHEN ? OR outcome_unknown"
                                 " THEN coalesce(doubt_at, ?) ELSE doubt_at END,"
                                 " outcome_unknown = max(outcome_unknown, ?),"
                                 " next_attempt_at = ?, updated_at = ? WHERE id = ?",
                                 (attempts, error, int(new_doubt), now, int(outcome_unknown),
                                  now, int(outcome_unknown), due, now, row_id))
            return events

        self._emit(await self._runner.write(write))
        return exhausted

    async def kill(self, work: Work, failure: RowFailure) -> None:
        """Every row of the work failed for good."""
        await self.complete(work, WorkResult(dead={r.id: failure for r in work.rows}))

    # -- jobs API -------------------------------------------------------------------------

    async def jobs(self, state: str | None, destination: str | None, limit: int, *,
                   secrets_shown: bool = False) -> list[dict[str, Any]]:
        """Outbox rows as ``GET /v1/sync/jobs`` lists them; payment-method tokens only with
        ``secrets_shown`` (the manager scope)."""
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = "SELECT * FROM outbox WHERE 1 = 1"
            args: list[Any] = []
            if state:
                sql += " AND state = ?"
                args.append(state)
            if destination:
                sql += " AND destination = ?"
                args.append(destination)
            sql += " ORDER BY id LIMIT ?"
            args.append(limit)
            return [job_dict(r, secrets_shown=secrets_shown)
                    for r in conn.execute(sql, args).fetchall()]

        return await self._runner.read(read)

    async def retry_dead(self, job_id: int,
                         extra: Callable[[sqlite3.Connection, dict[str, Any]], None]
                         | None = None) -> dict[str, Any] | None:
        """A dead job back to pending with a fresh count of attempts (same key)."""
        return await self._move(job_id, "pending", extra)

    async def discard(self, job_id: int,
                      extra: Callable[[sqlite3.Connection, dict[str, Any]], None]
                      | None = None) -> dict[str, Any] | None:
        return await self._move(job_id, "discarded", extra)

    async def _move(self, job_id: int, target: str,
                    extra: Callable[[sqlite3.Connection, dict[str, Any]], None] | None,
                    ) -> dict[str, Any] | None:
        now = self._now()

        def write(conn: sqlite3.Connection) -> dict[str, Any] | None:
            r = conn.execute("SELECT * FROM outbox WHERE id = ?", (job_id,)).fetchone()
            if r is None:
                return None
            if r["state"] != "dead":
                raise JobStateError(job_id, r["state"])
            # A row whose last send may have been applied goes out again in its batch, under
            # the batch's key and variables (the upstream replays it); a row refused for
            # sure is batched anew under a new key (the old key would replay the refusal).
            conn.execute("UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?,"
                         " batch_id = CASE WHEN outcome_unknown = 1 THEN batch_id END,"
                         " updated_at = ? WHERE id = ?", (target, now, now, job_id))
            moved = job_dict(conn.execute("SELECT * FROM outbox WHERE id = ?",
                                          (job_id,)).fetchone())
            if extra is not None:
                extra(conn, moved)
            return moved

        return await self._runner.write(write)


def _with_doubt(conn: sqlite3.Connection, row_id: int, failure: RowFailure) -> RowFailure:
    """``failure`` as the row's whole history says it: a send of this row that was ever in
    doubt may have been applied, whatever a later attempt was told (a refusal of a resend
    proves nothing about the first send)."""
    found = conn.execute("SELECT outcome_unknown FROM outbox WHERE id = ?",
                         (row_id,)).fetchone()
    if failure.outcome_unknown or found is None or not found[0]:
        return failure
    return replace(failure, outcome_unknown=True)


class JobStateError(SyncError):
    """Only a dead job can be retried or discarded."""

    def __init__(self, job_id: int, state: str) -> None:
        super().__init__(f"job {job_id} is {state}, not dead")
        self.job_id = job_id
        self.state = state
