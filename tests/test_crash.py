"""Crash and stop tests on a real daemon process (docs/design.md: the data, payments; README: the API).

(a) SIGKILL mid-load: ten registers take cash payments and record the sales they pay,
    over real HTTP, each request with its own Idempotency-Key; the daemon is killed while
    requests are in flight and restarted on the same data dir. Every acknowledged payment
    and order must be there, nothing may be half-written, a replay with the same key must
    answer the same id, the audit chain must verify.
(b) SIGTERM mid-load: every request in flight either completes (2xx, durable) or is
    refused cleanly (503 ERR-1016, or no connection once the listener is closed); the
    process exits 0, logs a clean stop and leaves the WAL checkpointed.

No timing is asserted: the kill and the stop are triggered by a count of acknowledged
requests, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon_process import (
    UNLIMITED_API,
    DaemonProcess,
    create_tokens,
    free_port,
    run_cli,
    write_catalogue,
    write_config,
)

CLIENTS = 10
PAIRS_PER_CLIENT = 40          # bounded load: at most 10 x 40 payments + 40 orders
TRIGGER_AFTER_ACKS = 240       # kill / stop once this many requests were acknowledged
REQUEST_TIMEOUT = 20.0
LOAD_TIMEOUT = 60.0

CATALOGUE = [
    {"sku": f"SKU-{n}", "barcode": f"400000000{n}", "title": f"Item {n}", "price": price,
     "variant_id": 1000 + n, "inventory_item_id": 2000 + n, "quantity": 100_000}
    for n, price in enumerate((199, 250, 1299, 45, 800))
]


# -- the load -----------------------------------------------------------------------------


@dataclass
class Attempt:
    """One POST as a register saw it."""

    client: int
    kind: str                     # "payment" | "order"
    path: str
    key: str
    token: str
    body: dict[str, Any]
    started: float
    ended: float | None = None
    status: int | None = None
    answer: Any = None
    error: str | None = None      # the exception's class (and errno) when no answer came
    detail: str = ""

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def answered_id(self) -> str | None:
        return self.answer.get("id") if self.acked and isinstance(self.answer, dict) else None

    def in_flight_at(self, moment: float) -> bool:
        return self.started <= moment and (self.ended is None or self.ended >= moment)


@dataclass
class Load:
    base_url: str
    tokens: list[str]
    trigger_after: int
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    attempts: list[Attempt] = field(default_factory=list)
    acked: int = 0
    trigger: asyncio.Event = field(default_factory=asyncio.Event)

    async def drive(self) -> None:
        await asyncio.gather(*(self._client(i, t) for i, t in enumerate(self.tokens)))
        self.trigger.set()  # the load ran out before the trigger: the caller notices

    async def _client(self, n: int, token: str) -> None:
        rnd = random.Random(f"{self.run}-{n}")
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(self.base_url, headers=headers,
                                         timeout=timeout) as session:
            for j in range(PAIRS_PER_CLIENT):
                lines: list[dict[str, Any]] = [
                    {"sku": item["sku"], "quantity": rnd.randint(1, 3), "price": item["price"]}
                    for item in rnd.sample(CATALOGUE, rnd.randint(1, 2))]
                total = sum(ln["quantity"] * ln["price"] for ln in lines)
                pay = await self._post(session, n, token, "payment", "/v1/payments",
                                       f"{self.run}-c{n}-pay-{j}",
                                       {"amount": total, "currency": "EUR", "method": "cash",
                                        "reference": f"{self.run}-c{n}-{j}"})
                if not pay.acked:
                    return
                order = await self._post(session, n, token, "order", "/v1/orders",
                                         f"{self.run}-c{n}-ord-{j}",
                                         {"reference": f"{self.run}-c{n}-{j}", "lines": lines,
                                          "payments": [pay.answered_id]})
                if not order.acked:
                    return

    async def _post(self, session: aiohttp.ClientSession, n: int, token: str, kind: str,
                    path: str, key: str, body: dict[str, Any]) -> Attempt:
        att = Attempt(n, kind, path, key, token, body, time.monotonic())
        self.attempts.append(att)
        try:
            async with session.post(path, json=body,
                                    headers={"Idempotency-Key": key}) as resp:
                text = await resp.text()
                att.status = resp.status
                att.answer = json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            att.error = type(exc).__name__
            if isinstance(exc, aiohttp.ClientOSError) and exc.errno is not None:
                att.error += f"/{errno.errorcode.get(exc.errno, exc.errno)}"
            att.detail = str(exc)
        att.ended = time.monotonic()
        if att.acked:
            self.acked += 1
            if self.acked >= self.trigger_after:
                self.trigger.set()
        return att

    def acknowledged(self, kind: str | None = None) -> list[Attempt]:
        return [a for a in self.attempts if a.acked and (kind is None or a.kind == kind)]


async def _load_until_trigger(load: Load, on_trigger: Any) -> float:
    """Run the load; call ``on_trigger()`` once enough requests were acknowledged, while the
    other registers still wait for answers; return the moment it was called."""
    driver = asyncio.create_task(load.drive())
    await asyncio.wait_for(load.trigger.wait(), LOAD_TIMEOUT)
    moment = time.monotonic()
    on_trigger()
    await asyncio.wait_for(driver, LOAD_TIMEOUT)
    return moment


# -- set-up -------------------------------------------------------------------------------


@dataclass
class Store:
    data_dir: Path
    config: Path
    tokens: list[str]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    data = tmp_path / "data"
    data.mkdir()
    # Shopify queueing on; should a sync worker try to send, it meets a closed local port.
    config = write_config(tmp_path / "edged.toml", shopify=True, api=UNLIMITED_API,
                          shopify_admin_url=f"http://127.0.0.1:{free_port()}/admin/api")
    run_cli(data, "items", "import", str(write_catalogue(tmp_path / "items.csv", CATALOGUE)),
            config=config)
    tokens = create_tokens(data, [f"register-{n}" for n in range(CLIENTS)])
    return Store(data, config, list(tokens.values()))


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Every daemon a test starts is registered here and always cleaned up."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.close()


def _start(daemons: list[DaemonProcess], proc: DaemonProcess) -> DaemonProcess:
    daemons.append(proc)
    return proc.start()


@contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only look at the daemon's file, beside the daemon or after it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


# -- what must hold in the file -----------------------------------------------------------


def store_problems(conn: sqlite3.Connection) -> list[str]:
    """Everything half-written or dangling in the store, as readable sentences."""
    problems: list[str] = []
    q = conn.execute
    if (ok := q("PRAGMA integrity_check").fetchone()[0]) != "ok":
        problems.append(f"integrity_check: {ok}")
    if fk := q("PRAGMA foreign_key_check").fetchall():
        problems.append(f"foreign keys broken: {[tuple(r) for r in fk][:5]}")
    for o in q("SELECT id, reference, total FROM orders").fetchall():
        lines = q("SELECT count(*) n, coalesce(sum(quantity), 0) qty,"
                  " coalesce(sum(quantity * price), 0) amount FROM order_lines"
                  " WHERE order_id = ?", (o["id"],)).fetchone()
        deltas = q("SELECT count(*) n, coalesce(sum(delta), 0) total FROM stock_deltas"
                   " WHERE source = 'sale' AND source_id = ?", (o["id"],)).fetchone()
        rows = q("SELECT count(*) FROM outbox WHERE destination = 'shopify'"
                 " AND kind = 'order.create' AND subject_id = ?", (o["id"],)).fetchone()[0]
        paid = q("SELECT count(*) n, coalesce(sum(amount), 0) amount FROM payments"
                 " WHERE order_id = ?", (o["id"],)).fetchone()
        if lines["n"] == 0:
            problems.append(f"order {o['id']} has no lines")
        if lines["amount"] != o["total"]:
            problems.append(f"order {o['id']}: lines add to {lines['amount']}, total"
                            f" {o['total']}")
        if deltas["n"] != lines["n"] or deltas["total"] != -lines["qty"]:
            problems.append(f"order {o['id']}: {lines['n']} lines of {lines['qty']} units but"
                            f" {deltas['n']} sale deltas of {deltas['total']}")
        if rows != 1:
            problems.append(f"order {o['id']}: {rows} shopify order.create outbox rows")
        if paid["n"] == 0 or paid["amount"] != o["total"]:
            problems.append(f"order {o['id']}: {paid['n']} payments of {paid['amount']} for"
                            f" a total of {o['total']}")
    for r in q("SELECT id, state FROM payments WHERE state IN ('pending', 'in_progress')"):
        problems.append(f"payment {r['id']} left {r['state']}")
    for r in q("SELECT id, order_id FROM payments WHERE order_id IS NOT NULL"
               " AND order_id NOT IN (SELECT id FROM orders)"):
        problems.append(f"payment {r['id']} points at a missing order {r['order_id']}")
    for r in q("SELECT id, destination, kind, subject_id FROM outbox"):
        tables = ("orders",) if r["kind"] == "order.create" else (
            "orders", "payments", "refunds", "adjustments")
        if not any(q(f"SELECT 1 FROM {t} WHERE id = ?",  # noqa: S608
                     (r["subject_id"],)).fetchone() for t in tables):
            problems.append(f"outbox row {r['id']} ({r['destination']} {r['kind']}) for a"
                            f" missing {r['subject_id']}")
    for r in q("SELECT scope, key, path, status, response FROM idempotency"):
        answer_id = json.loads(r["response"]).get("id")
        table = {"/v1/payments": "payments", "/v1/orders": "orders"}.get(r["path"])
        if table is None:
            problems.append(f"unexpected idempotency row for {r['path']}")
        elif q(f"SELECT 1 FROM {table} WHERE id = ?", (answer_id,)).fetchone() is None:  # noqa: S608
            problems.append(f"key {r['key']} answers {answer_id}, which is not in {table}")
    # Every business row was written with its key and its audit entry, in one transaction.
    for table, path, action in (("payments", "/v1/payments", "payment.approved"),
                                ("orders", "/v1/orders", "order.created")):
        rows = q(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
        keys = q("SELECT count(*) FROM idempotency WHERE path = ?", (path,)).fetchone()[0]
        audited = q(f"SELECT count(*) FROM audit WHERE action = ? AND subject IN"  # noqa: S608
                    f" (SELECT id FROM {table})", (action,)).fetchone()[0]
        entries = q("SELECT count(*) FROM audit WHERE action = ?", (action,)).fetchone()[0]
        if not rows == keys == audited == entries:
            problems.append(f"{table}: {rows} rows, {keys} stored answers, {audited} audited,"
                            f" {entries} {action} audit entries")
    return problems


def keys_stored(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT key FROM idempotency")}


def durability_problems(conn: sqlite3.Connection, load: Load) -> list[str]:
    """Every acknowledged request is in the file, as it was answered."""
    problems = []
    for a in load.acknowledged():
        if a.kind == "payment":
            row = conn.execute("SELECT amount, state FROM payments WHERE id = ?",
                               (a.answered_id,)).fetchone()
            if row is None or row["amount"] != a.body["amount"]:
                problems.append(f"acknowledged payment {a.answered_id} ({a.key}) is {row}")
        else:
            row = conn.execute("SELECT reference, total FROM orders WHERE id = ?",
                               (a.answered_id,)).fetchone()
            paid_by = {r[0] for r in conn.execute("SELECT id FROM payments WHERE order_id = ?",
                                                  (a.answered_id,))}
            if row is None or row["reference"] != a.body["reference"]:
                problems.append(f"acknowledged order {a.answered_id} ({a.key}) is {row}")
            elif paid_by != set(a.body["payments"]):
                problems.append(f"order {a.answered_id} is paid by {paid_by}, not"
                                f" {a.body['payments']}")
    return problems


# -- (a) SIGKILL --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigkill_mid_load_loses_nothing_acknowledged(store: Store,
                                                     daemons: list[DaemonProcess]) -> None:
    first = _start(daemons, DaemonProcess(store.data_dir, config=store.config))
    load = Load(first.base_url, store.tokens, TRIGGER_AFTER_ACKS)
    killed_at = asyncio.run(_load_until_trigger(load, first.send_sigkill))
    assert first.wait(timeout=30) == -9

    assert load.acked >= TRIGGER_AFTER_ACKS, (
        f"the load ended after {load.acked} acknowledgements, before the kill")
    in_flight = [a for a in load.attempts if a.in_flight_at(killed_at)]
    unanswered = [a for a in load.attempts if a.status is None]
    assert in_flight, "no request was in flight when the daemon was killed"
    assert unanswered, "every request was answered: the kill did not land mid-load"
    others = [a for a in load.attempts if a.status is not None and not a.acked]
    assert not others, f"refused during the load: {[(a.status, a.answer) for a in others][:5]}"

    print(f"\nSIGKILL after {load.acked} acknowledged of {len(load.attempts)} sent;"
          f" {len(in_flight)} in flight, {len(unanswered)} unanswered")
    second = _start(daemons, first.restarted())
    token_of = {a.key: a.token for a in load.attempts}

    # Every acknowledged payment answers by id after the restart, as it was acknowledged.
    for a in load.acknowledged("payment"):
        resp = second.get(f"/v1/payments/{a.answered_id}", token=a.token)
        assert resp.status == 200, (a.key, resp.status, resp.text)
        got = resp.json()
        assert (got["amount"], got["state"]) == (a.body["amount"], "approved"), got
    paid_order = {p: a.answered_id for a in load.acknowledged("order") for p in a.body["payments"]}
    for pid, oid in paid_order.items():
        resp = second.get(f"/v1/payments/{pid}", token=store.tokens[0])
        assert resp.json()["order_id"] == oid, resp.text

    with _db(second.db_path) as conn:
        assert durability_problems(conn, load) == []
        assert store_problems(conn) == []
        counts_before = conn.execute("SELECT (SELECT count(*) FROM payments),"
                                     " (SELECT count(*) FROM orders)").fetchone()[:]

    # A register that retries an acknowledged request gets the same answer, nothing more.
    for a in load.acknowledged():
        resp = second.post(a.path, a.body, token=a.token, key=a.key)
        assert resp.status == a.status, (a.key, resp.status, resp.text)
        assert resp.json()["id"] == a.answered_id, (a.key, resp.text)
        assert resp.headers.get("Idempotent-Replayed") == "true", (a.key, resp.headers)
    with _db(second.db_path) as conn:
        counts_after = conn.execute("SELECT (SELECT count(*) FROM payments),"
                                    " (SELECT count(*) FROM orders)").fetchone()[:]
    assert counts_after == counts_before, "a replay wrote a second payment or order"

    # A register that retries what the crash left unanswered gets one coherent answer:
    # the committed one replayed, or the operation done now, never twice.
    for a in unanswered:
        resp = second.post(a.path, a.body, token=token_of[a.key], key=a.key)
        assert resp.status == 201, (a.key, resp.status, resp.text)
        again = second.post(a.path, a.body, token=token_of[a.key], key=a.key)
        assert again.json()["id"] == resp.json()["id"]

    health = second.get("/healthz")
    assert health.status == 200 and health.json()["status"] == "ok", health.text
    sync = second.get("/v1/sync", token=store.tokens[0]).json()
    with _db(second.db_path) as conn:
        assert store_problems(conn) == []
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    shopify = next(d for d in sync["destinations"] if d["destination"] == "shopify")
    assert shopify["pending"] + shopify["inflight"] + shopify["dead"] == orders, sync

    assert second.terminate() == 0, second.stderr_text()
    verify = run_cli(store.data_dir, "audit", "verify", config=store.config, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- (b) SIGTERM --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm_mid_load_finishes_or_refuses_cleanly(store: Store,
                                                      daemons: list[DaemonProcess]) -> None:
    daemon = _start(daemons, DaemonProcess(store.data_dir, config=store.config))
    load = Load(daemon.base_url, store.tokens, TRIGGER_AFTER_ACKS)
    stopped_at = asyncio.run(_load_until_trigger(load, daemon.send_sigterm))
    status = daemon.wait(timeout=30)
    stderr = daemon.stderr_text()

    assert load.acked >= TRIGGER_AFTER_ACKS, (
        f"the load ended after {load.acked} acknowledgements, before the stop")
    in_flight = [a for a in load.attempts if a.in_flight_at(stopped_at)]
    assert in_flight, "no request was in flight when SIGTERM was sent"

    assert status == 0, stderr
    assert "edged stopped cleanly" in stderr, stderr
    wal = store.data_dir / "edged.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, (
        f"the WAL was left with {wal.stat().st_size} bytes: not checkpointed at stop")

    draining = [a for a in load.attempts if a.status == 503
                and (a.answer or {}).get("error", {}).get("code") == "ERR-1016"]
    no_answer = [a for a in load.attempts if a.status is None]
    wrong = [a for a in load.attempts
             if a.status is not None and not a.acked and a not in draining]
    assert not wrong, f"answers that are neither 2xx nor ERR-1016: " \
                      f"{[(a.key, a.status, a.answer) for a in wrong]}"
    # With the listener closed a register meets a refused connection. A request sent on a
    # kept-alive connection just as the daemon closed it idle is also never read; what is
    # checked below is that none of them was acted on.
    kinds = {(a.error or "").split("/")[0] for a in no_answer}
    print(f"\nSIGTERM after {load.acked} acknowledged of {len(load.attempts)} sent;"
          f" {len(in_flight)} in flight: {sum(a.acked for a in in_flight)} completed,"
          f" {sum(a in draining for a in in_flight)} ERR-1016; after it: {len(draining)}"
          f" ERR-1016 in all, no answer: {sorted(a.error or '' for a in no_answer)}")
    # ClientOSError: "Can not write request body" (closed idle) or ECONNRESET (closed with
    # the request unread).
    assert kinds <= {"ClientConnectorError", "ServerDisconnectedError", "ClientOSError"}, \
        [(a.error, a.detail) for a in no_answer]

    with _db(daemon.db_path) as conn:
        assert durability_problems(conn, load) == []
        assert store_problems(conn) == []
        stored = keys_stored(conn)
    acted_on = [(a.key, a.status, a.error) for a in draining + no_answer if a.key in stored]
    assert not acted_on, f"done but never acknowledged (the register was told no): {acted_on}"
    # Each request in flight at SIGTERM completed (and is durable, checked above) or was
    # answered ERR-1016: it was on an open connection, so it cannot meet a refusal.
    cut = [(a.key, a.status, a.error) for a in in_flight if not (a.acked or a in draining)]
    assert not cut, f"in flight at SIGTERM, neither completed nor answered ERR-1016: {cut}"

    verify = run_cli(store.data_dir, "audit", "verify", config=store.config, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = _start(daemons, daemon.restarted())
    assert again.get("/healthz").status == 200
    for a in load.acknowledged("payment"):
        assert again.get(f"/v1/payments/{a.answered_id}", token=a.token).status == 200
    assert again.terminate() == 0, again.stderr_text()
