"""Manual capture and void, end to end: the daemon's HTTP API, the real SDKs, the fakes.

``capture: "manual"`` on a cloud lane's card payment or a token payment ends it
``authorized``; ``POST /v1/payments/{id}/capture {amount?}`` and ``.../void`` then go to
the processor through the outbox; the payment moves through the state table when the
processor answers. Judged on both sides: the payment and the processor's objects.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edged.config import TerminalConfig
from tests.fakes.stripe import FakeStripe
from tests.helpers import Api, running
from tests.test_cloud_terminals import (
    READER,
    _is,
    cloud_config,
    fakes,
    lane_state,
    reader_intent,
    square_checkout,
    until,
)

pytestmark = pytest.mark.timeout(60)


async def manual_card(api: Api, terminal: str, amount: int) -> dict[str, Any]:
    status, body = await api.post("/v1/payments", {
        "amount": amount, "currency": "EUR", "method": "card_present", "terminal": terminal,
        "capture": "manual"})
    assert status == 202, body
    assert body["capture"] == "manual"
    return dict(body)


async def state_is(api: Api, payment_id: str, want: str) -> dict[str, Any] | None:
    status, body = await api.get(f"/v1/payments/{payment_id}")
    assert status == 200, body
    return dict(body) if body["state"] == want else None


async def reach(api: Api, payment_id: str, want: str) -> dict[str, Any]:
    return await until(lambda: state_is(api, payment_id, want), f"{payment_id} {want}")


async def authorized_on_reader(api: Api, st: FakeStripe, amount: int) -> tuple[str, str]:
    body = await manual_card(api, "reader-1", amount)
    intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
    assert st.payment_intents[intent_id]["capture_method"] == "manual"
    st.present_payment_method(READER)
    held = await reach(api, body["id"], "authorized")
    assert held["captured"] is None and held["last4"] == "4242"
    assert held["processor"] == "stripe" and held["processor_ref"] == intent_id
    assert st.payment_intents[intent_id]["status"] == "requires_capture"
    return body["id"], intent_id


async def test_stripe_reader_manual_capture_full_and_partial(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader")
        pid, intent_id = await authorized_on_reader(api, st, 1250)
        # the register's long-poll answers at authorized: it can act on it
        status, waited = await api.get(f"/v1/payments/{pid}?wait=5")
        assert waited["state"] == "authorized"
        status, body = await api.post(f"/v1/payments/{pid}/capture", {"amount": 2000})
        assert status == 422 and body["error"]["code"] == "ERR-2013", body
        status, body = await api.post(f"/v1/payments/{pid}/capture", {})
        assert status == 202, body
        assert body["state"] == "authorized"
        done = await reach(api, pid, "approved")
        assert done["captured"] == 1250
        assert st.payment_intents[intent_id]["status"] == "succeeded"
        status, body = await api.post(f"/v1/payments/{pid}/capture", {})
        assert status == 409 and body["error"]["code"] == "ERR-2012", body

        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader again")
        pid, intent_id = await authorized_on_reader(api, st, 1000)
        status, body = await api.post(f"/v1/payments/{pid}/capture", {"amount": 800})
        assert status == 202, body
        done = await reach(api, pid, "approved")
        assert done["captured"] == 800
        assert st.payment_intents[intent_id]["amount_received"] == 800
        # void after a partial capture refunds what was taken
        status, refund = await api.post(f"/v1/payments/{pid}/void", {})
        assert status == 202, refund
        assert refund["amount"] == 800 and refund["reason"] == "void"
        await until(lambda: _refund_done(api, pid), "the refund at Stripe")
        (re,) = [r for r in st.refunds.values() if r["payment_intent"] == intent_id]
        assert re["amount"] == 800


async def _refund_done(api: Api, pid: str) -> bool:
    _, body = await api.get(f"/v1/payments/{pid}")
    return bool(body["refunds"]) and body["refunds"][-1]["state"] == "succeeded"


async def test_stripe_reader_void_before_and_after_capture(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader")
        pid, intent_id = await authorized_on_reader(api, st, 640)
        status, body = await api.post(f"/v1/payments/{pid}/void", {})
        assert status == 202, body
        done = await reach(api, pid, "canceled")
        assert st.payment_intents[intent_id]["status"] == "canceled"
        assert not st.refunds
        status, body = await api.post(f"/v1/payments/{pid}/void", {})
        assert status == 409 and body["error"]["code"] == "ERR-2014", body
        assert done["captured"] is None

        # an automatic payment (captured at once): void refunds it in full
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader again")
        status, body = await api.post("/v1/payments", {
            "amount": 990, "currency": "EUR", "method": "card_present",
            "terminal": "reader-1"})
        assert status == 202, body
        intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
        st.present_payment_method(READER)
        await reach(api, body["id"], "approved")
        status, refund = await api.post(f"/v1/payments/{body['id']}/void", {})
        assert status == 202, refund
        assert refund["amount"] == 990
        await until(lambda: _refund_done(api, body["id"]), "the refund at Stripe")
        assert [r["amount"] for r in st.refunds.values()
                if r["payment_intent"] == intent_id] == [990]


async def test_square_manual_capture_and_void(tmp_path: Path) -> None:
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device")
        body = await manual_card(api, "square-1", 1500)
        checkout_id = await until(square_checkout(sq), "the checkout")
        assert sq.checkouts[checkout_id]["payment_options"] == {"autocomplete": False}
        square_payment = sq.checkout_complete(checkout_id)
        held = await reach(api, body["id"], "authorized")
        assert held["processor_ref"] == square_payment
        assert sq.payments[square_payment]["status"] == "APPROVED"
        status, err = await api.post(f"/v1/payments/{body['id']}/capture", {"amount": 1000})
        assert status == 422 and err["error"]["code"] == "ERR-3009", err
        status, _ = await api.post(f"/v1/payments/{body['id']}/capture", {})
        assert status == 202
        done = await reach(api, body["id"], "approved")
        assert done["captured"] == 1500
        assert sq.payments[square_payment]["status"] == "COMPLETED"

        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device again")
        body = await manual_card(api, "square-1", 700)
        checkout_id = await until(square_checkout(sq), "the checkout")
        square_payment = sq.checkout_complete(checkout_id)
        await reach(api, body["id"], "authorized")
        status, _ = await api.post(f"/v1/payments/{body['id']}/void", {})
        assert status == 202
        await reach(api, body["id"], "canceled")
        assert sq.payments[square_payment]["status"] == "CANCELED"


async def test_token_manual_capture_partial(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        status, body = await api.post("/v1/payments", {
            "amount": 3000, "currency": "EUR", "method": "token", "token": "pm_card_visa",
            "processor": "stripe", "capture": "manual"})
        assert status == 202, body
        held = await reach(api, body["id"], "authorized")
        pi = st.payment_intents[held["processor_ref"]]
        assert pi["status"] == "requires_capture" and pi["capture_method"] == "manual"
        status, body2 = await api.post(f"/v1/payments/{body['id']}/capture", {"amount": 2500})
        assert status == 202, body2
        done = await reach(api, body["id"], "approved")
        assert done["captured"] == 2500 and pi["amount_received"] == 2500


async def test_what_cannot_hold_an_authorisation_says_so(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _):
        cfg = cloud_config(tmp_path, st, None)
        cfg = replace(cfg, terminals=(*cfg.terminals, TerminalConfig(
            id="sim-1", kind="sim", options={"delay": 0.05})))
        async with running(cfg) as api:
            status, body = await api.post("/v1/payments", {
                "amount": 500, "currency": "EUR", "method": "card_present",
                "terminal": "sim-1", "capture": "manual"})
            assert status == 422 and body["error"]["code"] == "ERR-3008", body
            assert "sim" in body["error"]["message"]
            status, body = await api.post("/v1/payments", {
                "amount": 500, "currency": "EUR", "method": "cash", "capture": "manual"})
            assert status == 422 and body["error"]["code"] == "ERR-2015", body
            status, cash = await api.post("/v1/payments", {
                "amount": 500, "currency": "EUR", "method": "cash"})
            status, body = await api.post(f"/v1/payments/{cash['id']}/capture", {})
            assert status == 409 and body["error"]["code"] == "ERR-2012", body
            assert api.count("outbox") == 0


async def test_an_uncaptured_authorisation_is_raised_before_it_lapses(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader")
        pid, _ = await authorized_on_reader(api, st, 4200)
        alerts = api.daemon.services.manager.alerts
        assert not [a for a in await alerts.evaluate()
                    if a["key"].startswith("payment.authorized")]
        conn = sqlite3.connect(api.daemon.db.path)
        conn.execute("UPDATE payments SET finished_at = '2020-01-01T00:00:00.000Z' WHERE"
                     " id = ?", (pid,))
        conn.commit()
        conn.close()
        await alerts.evaluate()  # raises it, unless the centre's own look just did
        conn = sqlite3.connect(api.daemon.db.path)
        row = conn.execute("SELECT message FROM alerts WHERE key = ? AND cleared_at IS NULL",
                           (f"payment.authorized:{pid}",)).fetchone()
        conn.close()
        assert row is not None
        assert "48 hours" in row[0] and "capture" in row[0].lower()
        status, _ = await api.post(f"/v1/payments/{pid}/void", {})
        assert status == 202
        await reach(api, pid, "canceled")
        await alerts.evaluate()  # (the alert centre also looks by itself after the event)
        assert api.count("alerts", f"key = 'payment.authorized:{pid}' AND cleared_at IS NOT"
                         " NULL") == 1


