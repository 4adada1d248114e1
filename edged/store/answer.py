"""An HTTP answer decided by a service, stored under the request's Idempotency-Key in the
transaction of the change it answers."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from edged.store import idempotency
from edged.store.idempotency import IdemRecord


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer decided by a service: status and JSON body."""

    status: int
    body: dict[str, Any]
    stored: bool = True  # False: the caller still has to store it under the key


def stored_answer(conn: sqlite3.Connection, idem: IdemRecord | None, status: int,
                  body: dict[str, Any]) -> Answer:
    """The answer, saved under the request's key in the transaction of its change."""
    if idem is not None:
        idempotency.save(conn, idem, status, body)
    return Answer(status, body)
