"""The outbox contract: one dataclass per kind, stored as JSON under stable field names."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from edged.store import Database
from sync.core import outbox
from sync.core.contract import (
    PAYLOADS,
    ContractError,
    InventoryAdjust,
    OrderCreate,
    OrderLine,
    OrderTransaction,
    OutboxKind,
    PaymentForward,
    RefundCreate,
    decode,
    redacted,
)


def test_every_kind_has_one_payload_class() -> None:
    assert set(PAYLOADS) == set(OutboxKind)
    assert all(cls.KIND is kind for kind, cls in PAYLOADS.items())


def test_rows_written_before_the_contract_still_read() -> None:
    # JSON exactly as edged wrote it before the payloads were typed
    old_forward = {"payment_id": "pay_1", "amount": 1250, "currency": "EUR", "token": "pm_x",
                   "reference": None, "created_at": "2026-11-26T12:00:00Z"}
    assert decode("payment.forward", old_forward) == PaymentForward(
        payment_id="pay_1", amount=1250, currency="EUR", token="pm_x",
        created_at="2026-11-26T12:00:00Z")
    old_order = {"order_id": "ord_1", "reference": "R-1", "currency": "EUR",
                 "processed_at": "2026-11-26T12:00:00Z",
                 "source_identifier": "edged://store-1/orders/ord_1",
                 "lines": [{"variant_id": "gid://shopify/ProductVariant/1", "sku": "TEA-1",
                            "title": "Tea", "quantity": 2, "price": 450}],
                 "transactions": [{"payment_id": "pay_1", "method": "cash", "gateway": "cash",
                                   "amount": 900, "currency": "EUR", "auth_code": None,
                                   "processed_at": "2026-11-26T12:00:00Z"}]}
    order = decode("order.create", old_order)
    assert isinstance(order, OrderCreate)
    assert order.lines[0] == OrderLine(quantity=2, price=450, title="Tea", sku="TEA-1",
                                       variant_id="gid://shopify/ProductVariant/1")
    assert order.transactions[0] == OrderTransaction(
        amount=900, currency="EUR", payment_id="pay_1", method="cash", gateway="cash",
        processed_at="2026-11-26T12:00:00Z")
    assert order.to_json() == old_order  # same field names both ways
    old_refund = {"refund_id": "ref_1", "payment_id": "pay_1", "processor_ref": "pi_1",
                  "amount": 100, "currency": "EUR", "reason": "damaged"}
    assert RefundCreate.from_json(old_refund).to_json() == old_refund


@pytest.mark.parametrize(("kind", "payload", "complaint"), [
    ("payment.forward", {"payment_id": "p", "amount": "12", "currency": "EUR", "token": "t"},
     "'amount' must be an integer"),
    ("payment.forward", {"payment_id": "p", "amount": True, "currency": "EUR", "token": "t"},
     "'amount' must be an integer"),
    ("payment.forward", {"payment_id": "p", "amount": 0, "currency": "EUR", "token": "t"},
     "'amount' must be positive"),
    ("payment.forward", {"payment_id": "p", "amount": 5, "currency": "EUR"},
     "'token' is missing"),
    ("refund.create", {"refund_id": "r", "payment_id": "p", "processor_ref": "",
                       "amount": 5, "currency": "EUR"}, "'processor_ref' is empty"),
    ("order.create", {"order_id": "o", "currency": "EUR", "processed_at": "t",
                      "source_identifier": "s", "lines": [{"quantity": 1}]},
     "'lines[0].price' is missing"),
    ("inventory.adjust", [1, 2], "must be an object"),
    ("no.such.kind", {}, "unknown outbox kind"),
])
def test_a_payload_that_does_not_fit_is_a_permanent_contract_error(
        kind: str, payload: object, complaint: str) -> None:
    with pytest.raises(ContractError, match=re.escape(complaint)) as caught:
        decode(kind, payload)
    assert caught.value.code == "ERR-6004"


def test_enqueue_takes_kind_subject_and_time_from_its_arguments(tmp_path: Path) -> None:
    async def schema() -> None:
        db = Database(tmp_path / "edged.db")
        await db.open()
        await db.close()

    import asyncio  # noqa: PLC0415
    asyncio.run(schema())
    conn = sqlite3.connect(tmp_path / "edged.db")
    conn.row_factory = sqlite3.Row
    payload = InventoryAdjust(adjustment_id="adj_1", delta_id=7, reason="received",
                              inventory_item_id="gid://shopify/InventoryItem/1", delta=3)
    with conn:
        row_id = outbox.enqueue(conn, "shopify", payload, "2026-11-26T12:00:00Z")
    r = conn.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone()
    assert (r["kind"], r["subject_id"], r["next_attempt_at"]) == (
        "inventory.adjust", "adj_1", "2026-11-26T12:00:00Z")
    assert InventoryAdjust.from_json(json.loads(r["payload"])) == payload
    assert r["idempotency_key"].startswith("ed-") and len(r["idempotency_key"]) == 35


def test_payment_method_tokens_are_the_redacted_fields() -> None:
    forward = PaymentForward(payment_id="p", amount=5, currency="EUR", token="pm_secret")
    shown = redacted("payment.forward", forward.to_json())
    assert shown["token"] == "[redacted]" and shown["amount"] == 5
    assert redacted("inventory.adjust", {"delta": 1}) == {"delta": 1}
