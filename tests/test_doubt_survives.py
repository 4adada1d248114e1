"""A send that may have charged stays in doubt whatever a later attempt hears (issue 16 item 4).

A real daemon in-process, the real squareup SDK against the Square fake (which checks every
request against Square's published OpenAPI description). Each test rests on Square's
documented idempotency: the same key with the same body answers the first answer again;
another body under a key that was used is refused ``IDEMPOTENCY_KEY_REUSED`` (which itself
proves the first request ran); Square publishes no retention of keys.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edged.config import Config, ProcessorConfig, SyncConfig
from edged.store import secrets
from tests.fakes.square import FakeSquare
from tests.helpers import Api, make_config, running

pytestmark = pytest.mark.timeout(90)

SQUARE_TOKEN = "sq-test-doubt"  # noqa: S105 - the fake takes any non-empty token
CARD = "cnon:card-nonce-ok"
WAIT = 20.0


def square_config(data_dir: Path, sq: FakeSquare, location: str | None = None) -> Config:
    cfg = replace(make_config(data_dir),
                  square=ProcessorConfig(base_url=sq.base_url, location_id=location),
                  sync=SyncConfig(request_timeout=5.0, breaker_break_seconds=0.5,
                                  quick_retries=1))
    data_dir.mkdir(parents=True, exist_ok=True)
    secrets.cli_set(data_dir, "square.token", io.StringIO(SQUARE_TOKEN + "\n"), env={})
    return cfg


async def until(probe: Callable[[], Awaitable[Any]], what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.05)


def db_value(api: Api, sql: str) -> Any:
    conn = sqlite3.connect(api.daemon.db.path)
    try:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


async def token_payment(api: Api, amount: int) -> dict[str, Any]:
    status, body = await api.post("/v1/payments", {"amount": amount, "currency": "EUR",
                                                   "method": "token", "token": CARD,
                                                   "processor": "square"})
    assert status == 202, body
    return dict(body)


async def state_of(api: Api, payment_id: str) -> str:
    _, body = await api.get(f"/v1/payments/{payment_id}")
    return str(body["state"])


async def test_a_resend_after_a_config_change_carries_the_first_body(tmp_path: Path) -> None:
    """The issue's case: ``[square] location_id`` changed between two attempts of a forward
    whose first answer was lost. The resend's body is rebuilt from the row's stored
    payload, so Square answers the first payment again: approved, charged once (before:
    another body under the key, IDEMPOTENCY_KEY_REUSED, and the payment ``failed``)."""
    async with FakeSquare(rate=None) as sq:
        sq.faults.fail(500, fail_after_apply=True)  # charged; every answer lost
        async with running(square_config(tmp_path / "data", sq, "LOC-A")) as api:
            paid = await token_payment(api, 1500)
            await until(lambda: _holds(db_value(api, "SELECT count(*) FROM outbox WHERE"
                                                     " outcome_unknown = 1") == 1),
                        "a send in doubt")
        await sq.faults.restore()
        async with running(square_config(tmp_path / "data", sq, "LOC-B")) as api:
            await until(lambda: _is(state_of(api, paid["id"]), "approved"), "approved")
        [payment] = sq.payments.values()
        assert payment["location_id"] == "LOC-A" and payment["note"] == f"edged {paid['id']}"
        assert not [e for e in sq.errors if e["code"] == "IDEMPOTENCY_KEY_REUSED"]


async def test_a_key_seen_with_another_body_is_unknown_never_failed(tmp_path: Path) -> None:
    """``IDEMPOTENCY_KEY_REUSED`` proves a request under the key ran: the payment may be
    charged, so it is ``unknown`` (before: ``failed``, although the card may be charged)."""
    async with FakeSquare(rate=None) as sq, \
            running(square_config(tmp_path / "data", sq)) as api:
        await sq.faults.refuse()  # nothing is sent yet: the forward waits
        paid = await token_payment(api, 1600)
        key = await until(lambda: _value(db_value(api, "SELECT idempotency_key FROM outbox"
                                                       " WHERE attempts > 0")), "an attempt")
        sq.saw_key("payments", key, {"source_id": CARD, "idempotency_key": key,
                                     "amount_money": {"amount": 1, "currency": "EUR"}})
        await sq.faults.restore()
        await until(lambda: _is(state_of(api, paid["id"]), "unknown"), "unknown")
        _, body = await api.get(f"/v1/payments/{paid['id']}")
        assert "ERR-6073" in body["failure"]
        _, dead = await api.get("/v1/sync/jobs?state=dead", token=api.manager_token)
        [job] = dead["data"]
        assert job["outcome_unknown"] is True


async def test_a_refund_in_doubt_then_refused_is_unknown_and_holds_its_money(
        tmp_path: Path) -> None:
    """A refund whose first answer was lost, then refused for good once Square forgot the
    key (REFUND_AMOUNT_INVALID: it had refunded it): ``unknown``, never ``failed``, and the
    amount stays held (before: ``failed``, and the full amount could be refunded again)."""
    async with FakeSquare(rate=None) as sq, \
            running(square_config(tmp_path / "data", sq)) as api:
        paid = await token_payment(api, 2000)
        await until(lambda: _is(state_of(api, paid["id"]), "approved"), "approved")
        sq.faults.fail(500, count=1, fail_after_apply=True)
        status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds",
                                        {"amount": 2000, "reason": "returned"})
        assert status == 202, refund
        await until(lambda: _holds(db_value(api, "SELECT count(*) FROM outbox WHERE kind ="
                                                 " 'refund.create' AND outcome_unknown = 1"
                                                 " AND state = 'pending'") == 1),
                    "the refund's send in doubt")
        assert len(sq.refunds) == 1
        sq.forget_keys()

        async def refund_state() -> str | None:
            _, body = await api.get(f"/v1/payments/{paid['id']}")
            state = body["refunds"][0]["state"]
            return None if state == "queued" else str(state)

        assert await until(refund_state, "the refund to settle") == "unknown"
        assert any(e["code"] == "REFUND_AMOUNT_INVALID" for e in sq.errors)
        status, again = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 2000})
        assert (status, again["error"]["code"]) == (422, "ERR-2007"), again
        assert len(sq.refunds) == 1


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want


async def _holds(value: bool) -> bool:
    return value


async def _value(value: Any) -> Any:
    return value
