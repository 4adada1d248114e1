"""The bounds of a token payment (issue 7 defect 6), on a manual clock and a real store.

A token payment gets an answer the register can act on within ``forward_wait_seconds``:
stored within the offline caps, otherwise failed with its forward row cancelled (never
sent, never charged later) — unless a send is in flight or in doubt, when it may be charged
and becomes unknown for the processor's answer or a manager. A stored payment older than
``max_age_hours`` is held for a manager instead of being forwarded blindly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edged.config import OfflineConfig, ProcessorConfig
from edged.errors import CODES
from edged.events import EventBus
from edged.payments.token_payments import TokenPayments
from edged.store import Database
from edged.store.idempotency import IdemRecord
from edged.upstream.sync_hooks import StoreHooks, job_discarded
from sync.core.gateway import OutboxRow, Work, WorkResult
from sync.core.outbox import JobStateError, OutboxStore
from tests.clock import ManualClock
from tests.helpers import make_config

pytestmark = pytest.mark.timeout(30)


class Stripe:
    """Only what ``OutboxStore.claim`` asks of a gateway: nothing here is ever sent."""

    destination = "stripe"

    def batch_limit(self, kind: str) -> int:
        return 1

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        raise AssertionError("processor rows are never batched")


@dataclass
class Box:
    db: Database
    tokens: TokenPayments
    store: OutboxStore
    clock: ManualClock
    bus: EventBus

    async def pay(self, amount: int) -> str:
        idem = IdemRecord("t", f"k-{amount}-{self.clock.monotonic()}", "POST", "/v1/payments",
                          "h")
        answer = await self.tokens.create("stripe", amount, "EUR", None, "pm_card_visa", idem,
                                          "register-1")
        return str(answer.body["id"])

    async def payment(self, payment_id: str) -> dict[str, Any]:
        row = await self.db.read(lambda c: c.execute(
            "SELECT state, failure, stored_at FROM payments WHERE id = ?",
            (payment_id,)).fetchone())
        return dict(row)

    async def job(self, payment_id: str) -> dict[str, Any]:
        row = await self.db.read(lambda c: c.execute(
            "SELECT id, state, last_error FROM outbox WHERE subject_id = ?",
            (payment_id,)).fetchone())
        return dict(row)


@pytest.fixture
def offline() -> OfflineConfig:
    return OfflineConfig()


@pytest.fixture
async def box(tmp_path: Path, offline: OfflineConfig) -> AsyncIterator[Box]:
    clock = ManualClock()
    cfg = make_config(tmp_path / "data", stripe=ProcessorConfig(base_url="http://127.0.0.1:9"),
                      offline=offline)
    db = Database(cfg.data_dir / "edged.db")
    await db.open()
    bus = EventBus()
    store = OutboxStore(db, clock, StoreHooks(clock), publish=bus.publish)
    try:
        yield Box(db, TokenPayments(cfg, db, bus, clock), store, clock, bus)
    finally:
        await db.close()


async def test_unanswered_within_the_wait_it_fails_and_is_never_sent(box: Box) -> None:
    assert box.tokens._cfg.offline.forward_wait_seconds == 30.0  # the default
    task = asyncio.create_task(box.tokens.run_deadlines())
    try:
        payment_id = await box.pay(1200)
        box.clock.advance(29.0)
        await asyncio.sleep(0.05)
        assert (await box.payment(payment_id))["state"] == "pending"
        box.clock.advance(1.5)
        for _ in range(200):  # the deadline task's pass: real database threads
            if (await box.payment(payment_id))["state"] != "pending":
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    payment = await box.payment(payment_id)
    assert payment["state"] == "failed", payment
    assert payment["failure"].startswith("ERR-2018: stripe did not answer within 30 s")
    assert CODES["ERR-2018"].retryable
    job = await box.job(payment_id)
    assert job["state"] == "discarded" and job["last_error"].startswith("cancelled"), job
    assert await box.store.claim(Stripe()) is None  # nothing left to send
    with pytest.raises(JobStateError):  # and no manager can send it by mistake
        await box.store.retry_dead(job["id"])


@pytest.mark.parametrize("offline", [OfflineConfig(enabled=True, max_payment=5000,
                                                   max_stored_total=8000)])
async def test_with_offline_on_it_is_stored_within_the_caps(box: Box) -> None:
    small, large = await box.pay(4000), await box.pay(6000)
    box.clock.advance(31.0)
    done = await box.tokens.settle_overdue()
    assert done.stored == (small,) and done.failed == (large,), done
    assert (await box.payment(small))["stored_at"] is not None
    assert (await box.job(small))["state"] == "pending"  # forwarded when the link allows
    assert (await box.job(large))["state"] == "discarded"


async def test_a_send_in_flight_is_not_failed_and_the_answer_settles_it(box: Box) -> None:
    payment_id = await box.pay(1500)
    work = await box.store.claim(Stripe())
    assert work is not None  # the sender has it: it may be charged
    box.clock.advance(31.0)
    done = await box.tokens.settle_overdue()
    assert done.unknown == (payment_id,) and not done.failed, done
    assert (await box.job(payment_id))["state"] == "inflight"
    await box.store.complete(work, WorkResult(applied={work.rows[0].id: {
        "processor_ref": "pi_1"}}))
    assert (await box.payment(payment_id))["state"] == "approved"


async def test_a_send_in_doubt_is_not_failed(box: Box) -> None:
    payment_id = await box.pay(1600)
    work = await box.store.claim(Stripe())
    assert isinstance(work, Work)
    await box.store.retry_later(work, "stripe answered 500", outcome_unknown=True)
    box.clock.advance(31.0)
    done = await box.tokens.settle_overdue()
    assert done.unknown == (payment_id,), done
    assert (await box.job(payment_id))["state"] == "pending"  # still goes out, reads back


@pytest.mark.parametrize("offline", [OfflineConfig(enabled=True, max_age_hours=24)])
async def test_a_stored_payment_past_the_maximum_age_is_held_for_a_manager(box: Box) -> None:
    box.tokens.link_down = lambda destination: True
    payment_id = await box.pay(900)
    assert (await box.payment(payment_id))["state"] == "stored"
    sub = box.bus.subscribe(frozenset({"alert"}))
    box.clock.advance(23 * 3600.0)
    assert (await box.tokens.settle_overdue()).held == ()
    box.clock.advance(3601.0)
    done = await box.tokens.settle_overdue()
    assert done.held == (payment_id,), done
    job = await box.job(payment_id)
    assert job["state"] == "dead" and "max_age_hours" in job["last_error"], job
    assert (await box.payment(payment_id))["state"] == "stored"  # nothing taken yet
    alert = sub.queue.get_nowait().data
    assert alert["kind"] == "payment.stored_too_old" and alert["payment"] == payment_id
    # the manager forwards it anyway: it goes out and is not held again
    await box.store.retry_dead(job["id"])
    assert (await box.tokens.settle_overdue()).held == ()
    assert await box.store.claim(Stripe()) is not None


@pytest.mark.parametrize("offline", [OfflineConfig(enabled=True, max_age_hours=24)])
async def test_a_held_payment_whose_forward_a_manager_discards_is_not_collected(
        box: Box) -> None:
    """The manager's other choice: discard the held job (as POST /v1/sync/jobs/{id}/discard
    does). The payment is forward_declined (not taken) and leaves the offline total."""
    box.tokens.link_down = lambda destination: True
    payment_id = await box.pay(900)
    box.clock.advance(24 * 3600.0 + 1)
    assert (await box.tokens.settle_overdue()).held == (payment_id,)
    job = await box.job(payment_id)

    def consequence(conn: Any, moved: dict[str, Any]) -> None:
        events.extend(job_discarded(conn, moved["kind"], moved["subject_id"], "manager-1",
                                    "t-discard"))

    events: list[tuple[str, dict[str, Any]]] = []
    await box.store.discard(job["id"], consequence)
    payment = await box.payment(payment_id)
    assert payment["state"] == "forward_declined", payment
    assert "discarded by manager-1" in payment["failure"]
    assert events == [("payment", {"id": payment_id, "state": "forward_declined"})]
    total = await box.db.read(lambda c: c.execute(
        "SELECT coalesce(sum(amount), 0) FROM payments WHERE state = 'stored'").fetchone()[0])
    assert total == 0
