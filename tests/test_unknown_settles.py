"""``unknown`` settles itself when the processor can say (issue 16 item 9).

Real daemons in-process, the real stripe and squareup SDKs against the fakes (the Square
fake checks every request against Square's published OpenAPI). Each test rests on what the
processor publishes: Stripe keeps a PaymentIntent's ``metadata`` and finds it by search,
which can lag (a miss proves nothing); a Square checkout is read by its id, a Square
payment lists its ``refund_ids``. Nothing is ever created again to find out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from edged.config import TerminalConfig
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe
from tests.helpers import Api, running
from tests.test_doubt_survives import square_config
from tests.test_sync_e2e import e2e_config, intents_for, jobs, prepare, token_payment

pytestmark = pytest.mark.timeout(90)

RECHECK = 0.5  # [sync] unknown_recheck_seconds for the tests
DEVICE = "995CS397A6475287"


async def until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.05)


async def payment(api: Api, payment_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/v1/payments/{payment_id}")
    assert status == 200, body
    return dict(body)


async def in_state(api: Api, payment_id: str, state: str) -> dict[str, Any] | None:
    body = await payment(api, payment_id)
    return body if body["state"] == state else None


async def test_a_forward_left_unknown_settles_when_the_link_returns(tmp_path: Path) -> None:
    """Charged, every answer lost until the forward gave up in doubt: ``unknown``. Once
    Stripe answers again the PaymentIntent is found by its metadata and the payment is
    approved, with no second PaymentIntent; its dead job is closed, not retryable."""
    async with FakeStripe(search_delay=1.0) as stripe:
        cfg = e2e_config(tmp_path / "data", None, stripe, max_attempts=2,
                         unknown_recheck_seconds=RECHECK)
        prepare(cfg, None)
        async with running(cfg) as api:
            stripe.faults.fail(500, fail_after_apply=True)  # charged; every answer lost
            status, body = await token_payment(api, 1500)
            assert status == 202, body
            pid = body["id"]
            unknown = await until(partial(in_state, api, pid, "unknown"), "unknown")
            assert unknown["processor_ref"] is None
            await asyncio.sleep(2 * RECHECK)
            still = await payment(api, pid)
            assert still["state"] == "unknown"  # the processor could not be asked
            await stripe.faults.restore()
            restored = asyncio.get_running_loop().time()
            done = await until(partial(in_state, api, pid, "approved"), "approved")
            took = asyncio.get_running_loop().time() - restored
            assert took < 60, took  # well within a minute of the link returning
            assert done["processor_ref"] == intents_for(stripe, pid)[0]["id"]
            assert done["last_checked_at"] is not None and done["failure"] is None
            assert len(intents_for(stripe, pid)) == 1
            assert not await jobs(api, "dead", "stripe")  # closed: done, never retried
            (closed,) = await jobs(api, "done", "stripe")
            assert "settled by reading stripe back" in closed["last_error"]


async def test_a_search_miss_proves_nothing_and_a_read_later_settles(tmp_path: Path) -> None:
    """Stripe's search can lag: the first read finds nothing, the payment stays unknown
    (checked, with the time), and a later read settles it."""
    async with FakeStripe(search_delay=2.0) as stripe:  # the first read comes well before
        cfg = e2e_config(tmp_path / "data", None, stripe, max_attempts=1,
                         unknown_recheck_seconds=RECHECK)
        prepare(cfg, None)
        async with running(cfg) as api:
            stripe.faults.fail(500, count=1, fail_after_apply=True)
            _, body = await token_payment(api, 1600)
            pid = body["id"]
            checked = await until(partial(_checked_while_unknown, api, pid),
                                  "a read that found nothing")
            assert checked["state"] == "unknown"
            done = await until(partial(in_state, api, pid, "approved"), "approved")
            assert done["last_checked_at"] >= checked["last_checked_at"]
            _, status = await api.get("/v1/status", token=api.manager_token)
            assert status["unknown_payments"] == []


async def _checked_while_unknown(api: Api, pid: str) -> dict[str, Any] | None:
    body = await payment(api, pid)
    return body if body["state"] == "unknown" and body["last_checked_at"] else None


async def test_a_square_terminal_sale_lost_with_the_link_settles_from_its_checkout(
        tmp_path: Path) -> None:
    """The customer paid while the link was down; the lane gave up (``unknown``). The
    checkout's id was stored before the register was answered: read back by it once Square
    answers, the sale is approved with Square's payment and card."""
    async with FakeSquare(rate=None) as sq:
        sq.add_device(DEVICE)
        lane = TerminalConfig(id="square-1", kind="square_terminal",
                              options={"device_id": DEVICE, "poll_interval": 0.02,
                                       "poll_max": 0.1, "link_grace": 0.5},
                              heartbeat_seconds=0.2, max_backoff_seconds=0.2,
                              customer_timeout=0.5)
        cfg = replace(square_config(tmp_path / "data", sq), terminals=(lane,))
        cfg = replace(cfg, sync=replace(cfg.sync, unknown_recheck_seconds=RECHECK))
        async with running(cfg) as api:
            await until(lambda: _lane_online(api), "the lane online")
            status, body = await api.post("/v1/payments", {
                "amount": 2300, "currency": "EUR", "method": "card_present",
                "terminal": "square-1"})
            assert status == 202, body
            pid = body["id"]
            [checkout] = sq.device_checkouts(DEVICE)
            await sq.faults.refuse()
            sq.checkout_in_progress(checkout["id"])
            square_payment = sq.checkout_complete(checkout["id"])
            lost = await until(partial(in_state, api, pid, "unknown"), "unknown")
            assert lost["processor_ref"] == checkout["id"]
            await sq.faults.restore()
            done = await until(partial(in_state, api, pid, "approved"), "approved")
            assert done["processor_ref"] == square_payment
            assert (done["brand"], done["last4"]) == ("VISA", "1111")
            assert len(sq.checkouts) == 1


async def _lane_online(api: Api) -> bool:
    _, body = await api.get("/v1/terminals/square-1")
    return bool(body["state"] == "online")


async def test_a_refund_left_unknown_settles_from_the_payments_refunds(tmp_path: Path) -> None:
    """A refund in doubt then refused once Square forgot its key (``unknown``): Square's
    payment lists one refund the daemon does not know, of that amount: ``succeeded``."""
    async with FakeSquare(rate=None) as sq:
        cfg = square_config(tmp_path / "data", sq)
        cfg = replace(cfg, sync=replace(cfg.sync, unknown_recheck_seconds=RECHECK))
        async with running(cfg) as api:
            status, paid = await api.post("/v1/payments", {
                "amount": 2000, "currency": "EUR", "method": "token",
                "token": "cnon:card-nonce-ok", "processor": "square"})
            assert status == 202, paid
            await until(partial(in_state, api, paid["id"], "approved"), "approved")
            sq.faults.fail(500, count=1, fail_after_apply=True)
            await sq.faults.refuse()  # the refund's answer is lost, and then the link
            status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds",
                                            {"amount": 2000})
            assert status == 202, refund
            await sq.faults.restore()
            sq.faults.fail(500, count=1, fail_after_apply=True)
            await until(lambda: _holds(len(sq.refunds) == 1), "the refund at Square")
            sq.forget_keys()

            async def refund_state() -> str:
                body = await payment(api, paid["id"])
                return str(body["refunds"][0]["state"])

            done = await until(lambda: _equals(refund_state(), "succeeded"), "succeeded")
            assert done
            body = await payment(api, paid["id"])
            [settled] = body["refunds"]
            assert settled["processor_ref"] == next(iter(sq.refunds))
            assert settled["last_checked_at"] is not None
            assert len(sq.refunds) == 1


async def test_other_figures_at_the_processor_stay_unknown_for_a_person(
        tmp_path: Path) -> None:
    """The PaymentIntent found carries another amount than the payment: nothing moves."""
    async with FakeStripe() as stripe:
        cfg = e2e_config(tmp_path / "data", None, stripe, max_attempts=1,
                         unknown_recheck_seconds=RECHECK)
        prepare(cfg, None)
        async with running(cfg) as api:
            stripe.faults.fail(500, count=1, fail_after_apply=True)
            _, body = await token_payment(api, 1700)
            pid = body["id"]
            [intent] = await until(lambda: _value(intents_for(stripe, pid)), "the intent")
            intent["amount"] = intent["amount_received"] = 1600
            checked = await until(partial(_checked_while_unknown, api, pid), "a read")
            assert "other figures" in checked["failure"] and "amount 1600" in checked["failure"]
            await asyncio.sleep(3 * RECHECK)
            assert (await payment(api, pid))["state"] == "unknown"


async def _holds(value: bool) -> bool:
    return value


async def _value(value: Any) -> Any:
    return value


async def _equals(value: Awaitable[str], want: str) -> bool:
    return await value == want
