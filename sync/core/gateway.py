"""What the outbox engine hands a destination, and what it hands back.

A :class:`Work` is one upstream call: a single outbox row, or a batch whose members, key
and variables were fixed and stored before its first send. A gateway answers with a
:class:`WorkResult` (what was applied, what failed for good, what must be retried apart)
or raises one of ``sync.core.errors``: ``TransientError`` (nothing applied; try again later),
``OutcomeUnknown`` (maybe applied: the next attempt must read back before resending),
``PermanentError`` (every row of the work fails for good).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sync.core.errors import SyncError


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    destination: str
    kind: str
    subject_id: str
    idempotency_key: str
    payload: Mapping[str, Any]
    attempts: int
    last_error: str | None
    created_at: str


@dataclass(frozen=True, slots=True)
class Work:
    destination: str
    kind: str
    idempotency_key: str
    rows: tuple[OutboxRow, ...]
    payload: Mapping[str, Any]
    """A batch's stored variables, or the single row's payload."""
    batch_id: int | None = None
    attempt: int = 0
    """How many times this work was sent before (0: first send)."""
    outcome_unknown: bool = False
    """The previous attempt may have been applied: read back before resending."""
    doubt_at: str | None = None
    """When a send of it last went without an answer (UTC ISO), kept across restarts."""


@dataclass(frozen=True, slots=True)
class RowFailure:
    code: str
    message: str
    outcome_unknown: bool = False
    """The row died while an attempt's outcome was in doubt: it may have been applied."""


@dataclass(frozen=True, slots=True)
class WorkResult:
    applied: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    """Row id → what upstream answered (ids, quantities)."""
    dead: Mapping[int, RowFailure] = field(default_factory=dict)
    """Rows that failed for good; nothing of them was applied."""
    conflict: Mapping[int, RowFailure] = field(default_factory=dict)
    """Rows refused on a compare-and-swap: surfaced, never resent blindly."""
    retry_apart: tuple[int, ...] = ()
    """Rows of a refused batch that were not at fault: batch them again under a new key."""
    send_alone: tuple[int, ...] = ()
    """Rows (also in ``retry_apart``) to send one by one: a refused batch named no culprit."""


class PartialWork(SyncError):
    """A send that stopped part-way (a later call of a batch failed).

    ``result`` settles the rows an earlier call already decided (applied rows stay applied);
    ``cause`` (a ``sync.core.errors`` exception) decides, through the failure policy, what becomes
    of the others, which are sent again in the same batch, under the same keys.
    """

    def __init__(self, result: WorkResult, cause: Exception) -> None:
        super().__init__(result, cause)
        self.result = result
        self.cause = cause

    def __str__(self) -> str:
        return f"{len(self.result.applied)} row(s) applied, then: {self.cause}"


class Gateway(Protocol):
    """One destination (shopify, stripe, square)."""

    destination: str

    def batch_limit(self, kind: str) -> int:
        """How many rows of ``kind`` one call may carry (1: never batched)."""

    def batch_payload(self, kind: str, rows: tuple[OutboxRow, ...]) -> Mapping[str, Any]:
        """The variables of a batch, computed once and stored before the first send."""

    async def send(self, work: Work) -> WorkResult:
        """Make the upstream call(s) for ``work``."""

    async def close(self) -> None:
        """Release connections."""
