"""Token payments through the state machine, against the Stripe fake and the real SDK.

Each test guards one defect of issue 7: a restart that turned waiting token payments
`unknown` (1), a forward given up in doubt recorded `failed` (2), an upstream decline over a
manager's resolution (3), and a token payment left waiting while the link is down (6).
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from edged.config import OfflineConfig
from edged.store import secrets
from edged.store.database import open_sync
from edged.upstream.sync_hooks import StoreHooks
from sync.core.gateway import OutboxRow, RowFailure
from tests.clock import ManualClock
from tests.daemon_process import UNLIMITED_API, DaemonProcess
from tests.fakes.stripe import FakeStripe
from tests.helpers import running
from tests.test_sync_e2e import (
    STRIPE_KEY,
    _toml,
    e2e_config,
    intents_for,
    jobs,
    new_token,
    payment_state,
    prepare,
    process_api,
    reaches,
    token_payment,
    until,
)

pytestmark = pytest.mark.timeout(90)


def stripe_daemon_config(path: Path, stripe: FakeStripe) -> Path:
    sections = {
        "api": dict(UNLIMITED_API),
        "stripe": {"base_url": stripe.base_url},
        "sync": {"request_timeout": 5.0, "breaker_break_seconds": 1.0, "quick_retries": 1},
    }
    path.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n"
                                                    for k, v in keys.items())
                            for name, keys in sections.items()), encoding="utf-8")
    return path


async def test_token_payment_waiting_at_sigkill_is_forwarded_once_after_restart(
        tmp_path: Path) -> None:
    """Defect 1: restart recovery only touches card payments running on a terminal."""
    data = tmp_path / "data"
    data.mkdir()
    async with FakeStripe() as stripe:
        config = stripe_daemon_config(tmp_path / "edged.toml", stripe)
        secrets.cli_set(data, "stripe.key", io.StringIO(STRIPE_KEY + "\n"), env={})
        token = new_token(data, "lane-1")
        await stripe.faults.refuse()
        daemon = DaemonProcess(data, config=config)
        try:
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                status, body = await token_payment(api, 1200)
                assert status == 202 and body["state"] == "pending", body
                payment_id = body["id"]
            await asyncio.to_thread(daemon.kill)
            await stripe.faults.restore()
            daemon = daemon.restarted()
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                await until(partial(reaches, api, payment_id, "approved"),
                            "the waiting token payment to be approved after the restart")
        finally:
            await asyncio.to_thread(daemon.close)
    assert len(intents_for(stripe, payment_id)) == 1
    assert set(stripe.executions.values()) == {1}


async def test_forward_given_up_in_doubt_is_unknown_and_a_retry_settles_it(
        tmp_path: Path) -> None:
    """Defect 2: out of attempts after a 500 whose outcome is unknown: `unknown`, not
    `failed`; a manager's retry of the dead job that succeeds makes it `approved`."""
    async with FakeStripe() as stripe:
        cfg = e2e_config(tmp_path / "data", None, stripe, max_attempts=2)
        prepare(cfg, None)
        async with running(cfg) as api:
            stripe.faults.fail(500, fail_after_apply=True)  # charged; every answer lost
            status, body = await token_payment(api, 1500)
            assert status == 202, body
            payment_id = body["id"]
            (job,) = await until(partial(jobs, api, "dead", "stripe"), "the forward to die")
            assert job["outcome_unknown"] is True
            assert await payment_state(api, payment_id) == "unknown"
            _, listed = await api.get("/v1/payments?state=unknown")
            assert [p["id"] for p in listed["data"]] == [payment_id]
            await stripe.faults.restore()
            status, body = await api.post(f"/v1/sync/jobs/{job['id']}/retry", {},
                                          token=api.manager_token)
            assert status == 200, body
            await until(partial(reaches, api, payment_id, "approved"),
                        "the manager's retry to settle the payment")
            _, settled = await api.get(f"/v1/payments/{payment_id}")
            assert settled["failure"] is None, settled  # the doubt no longer holds
    assert len(intents_for(stripe, payment_id)) == 1


# -- defect 3: upstream outcomes go through the table -----------------------------------------


def _hook_db(tmp_path: Path, state: str) -> tuple[sqlite3.Connection, OutboxRow]:
    conn = open_sync(tmp_path / "edged.db")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO payments (id, method, state, amount, currency, processor, token,"
                 " created_at, updated_at) VALUES ('pay-1', 'token', ?, 700, 'EUR', 'stripe',"
                 " 'pm_x', 't0', 't0')", (state,))
    payload = {"payment_id": "pay-1", "amount": 700, "currency": "EUR", "token": "pm_x",
               "reference": None, "created_at": "t0"}
    row = OutboxRow(id=1, destination="stripe", kind="payment.forward", subject_id="pay-1",
                    idempotency_key="ed-1", payload=payload, attempts=1, last_error=None,
                    created_at="t0")
    return conn, row


@pytest.mark.parametrize("state", ["approved", "canceled", "failed", "declined"])
def test_a_forward_decline_never_overwrites_a_settled_payment(tmp_path: Path,
                                                              state: str) -> None:
    """Defect 3: e.g. a manager resolved the payment approved from Stripe's dashboard, then
    a retried job replays a decline: the payment keeps its state, the manager is alerted."""
    conn, row = _hook_db(tmp_path, state)
    try:
        events = StoreHooks(ManualClock()).failed(
            conn, row, RowFailure("ERR-6071", "Your card was declined."))
        after = conn.execute("SELECT state, updated_at FROM payments").fetchone()
        assert tuple(after) == (state, "t0")
        assert [kind for kind, _ in events] == ["alert"], events
        assert events[0][1]["kind"] == "payment.conflict"
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_a_forward_approval_settles_a_payment_left_unknown(tmp_path: Path) -> None:
    """The processor's own answer may settle what was in doubt (a manager's retry)."""
    conn, row = _hook_db(tmp_path, "unknown")
    try:
        StoreHooks(ManualClock()).applied(conn, row, {"processor_ref": "pi_1"})
        after = conn.execute("SELECT state, processor_ref FROM payments").fetchone()
        assert tuple(after) == ("approved", "pi_1")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# -- defect 6: an answer within a bounded time ------------------------------------------------


async def test_a_token_payment_answers_within_the_forward_wait_and_is_charged_once(
        tmp_path: Path) -> None:
    """Defect 6 as a register sees it: Stripe takes the request and says nothing. Within
    the forward wait the long-poll answers: not failed (the send in flight may charge the
    card) but unknown; when Stripe answers, its answer settles the payment, charged once.
    (The other outcomes of the wait are tested on a manual clock: test_forward_deadlines.)"""
    async with FakeStripe() as stripe:
        cfg = e2e_config(tmp_path / "data", None, stripe,
                         offline=OfflineConfig(forward_wait_seconds=1.0))
        prepare(cfg, None)
        async with running(cfg) as api:
            stripe.faults.hang()
            status, body = await token_payment(api, 1300)
            assert status == 202, body
            payment_id = body["id"]
            _, polled = await api.get(f"/v1/payments/{payment_id}?wait=20")
            assert polled["state"] == "unknown", polled
            assert "may be charged" in polled["failure"]
            await stripe.faults.restore()
            await until(partial(reaches, api, payment_id, "approved"),
                        "Stripe's answer to settle the payment")
    assert len(intents_for(stripe, payment_id)) == 1


def test_a_stored_payment_the_processor_refuses_for_good_is_forward_declined(
        tmp_path: Path) -> None:
    """Accepted offline, then refused for good (not a decline: e.g. the token is not valid):
    the money is not taken, so it no longer counts as stored against the offline caps."""
    conn, row = _hook_db(tmp_path, "stored")
    try:
        events = StoreHooks(ManualClock()).failed(
            conn, row, RowFailure("ERR-6070", "No such PaymentMethod: 'pm_x'"))
        assert conn.execute("SELECT state FROM payments").fetchone()[0] == "forward_declined"
        assert ("alert", {"kind": "payment.forward_failed", "payment": "pay-1",
                          "state": "forward_declined",
                          "message": "No such PaymentMethod: 'pm_x'"}) in events
        conn.execute("ROLLBACK")
    finally:
        conn.close()
