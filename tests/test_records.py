"""A new payment's answer is built from what was inserted: it must equal the read-back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edged.payments import records
from edged.payments.states import PaymentState
from edged.store.database import open_sync

NOW = "2026-12-01T18:00:00.000Z"

NEW_PAYMENTS: list[dict[str, Any]] = [
    {"method": "cash", "state": PaymentState.APPROVED, "amount": 1250, "currency": "EUR",
     "reference": "R-1", "created_at": NOW, "updated_at": NOW, "finished_at": NOW},
    {"method": "cash", "state": PaymentState.APPROVED, "amount": 1, "currency": "EUR",
     "reference": None, "created_at": NOW, "updated_at": NOW, "finished_at": NOW},
    {"method": "card_present", "state": PaymentState.IN_PROGRESS, "amount": 990,
     "currency": "EUR", "terminal_id": "lane-1", "reference": "café ☕",
     "processor_ref": "pi_123", "processor": "stripe", "capture": "manual",
     "created_at": NOW, "updated_at": NOW},
    {"method": "card_present", "state": PaymentState.IN_PROGRESS, "amount": 990,
     "currency": "GBP", "terminal_id": "sim-1", "reference": None, "processor_ref": None,
     "processor": None, "capture": "automatic", "created_at": NOW, "updated_at": NOW},
    {"method": "token", "state": PaymentState.STORED, "amount": 500, "currency": "USD",
     "reference": "T", "processor": "square", "token": "cnon:abc", "capture": "automatic",
     "created_at": NOW, "updated_at": NOW, "stored_at": NOW},
    {"method": "token", "state": PaymentState.PENDING, "amount": 500, "currency": "USD",
     "reference": None, "processor": "stripe", "token": "pm_card_visa", "capture": "manual",
     "created_at": NOW, "updated_at": NOW, "stored_at": None},
]


@pytest.mark.parametrize("columns", NEW_PAYMENTS, ids=lambda c: f"{c['method']}-{c['state']}")
def test_a_new_payments_answer_is_what_reading_it_back_gives(tmp_path: Path,
                                                            columns: dict[str, Any]) -> None:
    conn = open_sync(tmp_path / "edged.db")
    conn.execute("BEGIN IMMEDIATE")
    built = records.insert_payment(conn, id="pay_test", **columns)
    read = records.get_payment(conn, "pay_test")
    conn.execute("COMMIT")
    assert built == read
    assert list(built) == list(read)  # the same keys in the same order: the same JSON
    assert "token" not in built  # a payment method token is never shown


def test_only_columns_of_a_new_payment_are_taken(tmp_path: Path) -> None:
    conn = open_sync(tmp_path / "edged.db")
    with pytest.raises(ValueError, match="not a column"):
        records.insert_payment(conn, id="pay_x", method="cash", state="approved", amount=1,
                               currency="EUR", created_at=NOW, updated_at=NOW,
                               **{"amount) VALUES (1); --": 1})
    with pytest.raises(ValueError, match="not a column"):
        records.insert_payment(conn, id="pay_x", terminal_figures="{}")
