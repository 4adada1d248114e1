"""Generate ``docs/payment-states.md`` from ``edged.payments.states``; ``--check`` fails when
it is stale (run by ``make test``; ``make docs`` regenerates it)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from enum import StrEnum

from edged.docgen import generated_doc
from edged.payments.states import (
    ACTOR_MEANING,
    ANSWERED,
    HAND_OVER,
    INITIAL_PAYMENT_STATES,
    INITIAL_REFUND_STATES,
    MAY_CHANGE_UPSTREAM,
    MAY_HAVE_BEEN_CHARGED,
    NOT_TAKEN,
    PAYMENT_MOVES,
    REFUND_HOLDS_MONEY,
    REFUND_MOVES,
    SETTLED,
    Actor,
    PaymentState,
    RefundState,
)


def _names(states: Iterable[StrEnum]) -> str:
    order = [*PaymentState, *RefundState]
    ordered = sorted(states, key=lambda s: next(i for i, o in enumerate(order)
                                                if o is s))
    return ", ".join(f"`{s.value}`" for s in ordered)


def _moves(table: Mapping[tuple[StrEnum, StrEnum], frozenset[Actor]],
           order: list[StrEnum]) -> list[str]:
    lines = ["| from | to | who may make the move |", "|---|---|---|"]
    for (old, new), actors in sorted(table.items(),
                                     key=lambda m: (order.index(m[0][0]), order.index(m[0][1]))):
        who = ", ".join(a.value for a in Actor if a in actors)
        lines.append(f"| `{old.value}` | `{new.value}` | {who} |")
    return lines


def render() -> str:
    lines = [
        "# Payment and refund states",
        "",
        "Generated from `edged/payments/states.py` by `make docs`; do not edit by hand.",
        "Every writer goes through this table; a move it does not list is refused and",
        "changes nothing.",
        "",
        "## Payments",
        "",
        f"A payment starts {_names(INITIAL_PAYMENT_STATES)} (cash is approved at once).",
        "",
        f"- **Settled** (nothing moves them any more): {_names(SETTLED)}.",
        f"- **Final for the register** (a long-poll answers; the register can act):"
        f" {_names(ANSWERED)}.",
        f"- **May still change upstream**: {_names(MAY_CHANGE_UPSTREAM)}.",
        f"- **Money not taken**: {_names(NOT_TAKEN)}.",
        f"- **May have been charged** (never `failed` from here):"
        f" {_names(MAY_HAVE_BEEN_CHARGED)}.",
        f"- **The register may hand over the goods**: {_names(HAND_OVER)}.",
        "",
    ]
    lines += _moves(PAYMENT_MOVES, list(PaymentState))  # type: ignore[arg-type]
    lines += ["", "## Refunds", "",
              f"A refund starts {_names(INITIAL_REFUND_STATES)}; those that hold money back"
              f" from what can still be refunded: {_names(REFUND_HOLDS_MONEY)}.", ""]
    lines += _moves(REFUND_MOVES, list(RefundState))  # type: ignore[arg-type]
    lines += ["", "## Who moves a payment", ""]
    lines += [f"- `{a.value}`: {ACTOR_MEANING[a]}" for a in Actor]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(generated_doc.main(sys.argv[1:], "docs/payment-states.md", render, "docs"))
