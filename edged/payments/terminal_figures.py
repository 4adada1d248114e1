"""The "other figures" rule: a terminal that approved what was not asked is not an approval.

A terminal's answer names an amount, a currency and the POS it answers; when any of them is
not the request's, the terminal took something, but not what was asked: the payment (or
refund) is ``unknown`` and a person compares with the terminal's journal. One rule for
sales and refunds.
"""

from __future__ import annotations

from typing import Any

from drivers.base import TransactionResult


def other_figures(amount: int, currency: str, result: TransactionResult) -> dict[str, Any]:
    """What the terminal reported where it differs from the request (empty: it agrees)."""
    other: dict[str, Any] = {}
    if result.amount != amount:
        other["amount"] = result.amount
    if result.currency and result.currency.upper() != currency.upper():
        other["currency"] = result.currency
    if result.other_pos is not None:
        other["pos"] = result.other_pos
    return other


def describe(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in figures.items())


__all__ = ["describe", "other_figures"]
