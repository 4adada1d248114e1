"""What a terminal's record is compared with when the daemon asks how a transaction ended.

A ZVT terminal repeats its last receipt (``06 20``); that receipt is the transaction in
doubt only if it is not the one before it. :func:`previous_reference` is that one: the
terminal's reference (the receipt number) of the latest other payment or refund on the
same lane, or ``None`` when the lane has none.
"""

from __future__ import annotations

import sqlite3


def previous_reference(conn: sqlite3.Connection, terminal_id: str | None,
                       subject_id: str) -> str | None:
    if not terminal_id:
        return None
    row = conn.execute(
        "SELECT ref FROM (SELECT processor_ref AS ref, coalesce(finished_at, updated_at) AS at"
        " FROM payments WHERE terminal_id = ? AND id != ? AND processor_ref IS NOT NULL"
        " UNION ALL SELECT processor_ref, updated_at FROM refunds WHERE terminal_id = ?"
        " AND id != ? AND processor_ref IS NOT NULL) ORDER BY at DESC LIMIT 1",
        (terminal_id, subject_id, terminal_id, subject_id)).fetchone()
    return str(row[0]) if row is not None else None
