"""Identifiers: a prefix that says what it names, then 16 base32 characters.

The 80 bits behind the characters are the time the id was made (40 bits: hundredths of a
second since 1970, wall clock, enough until the year 2318), then 40 random bits; the
characters are RFC 4648's base32 alphabet, lower case, in ASCII order (``2``-``7`` then
``a``-``z``), so ids made later sort after ids made earlier. That is for SQLite: a new
payment's or order's id lands at the end of its unique index (and of the indexes that
name it: order lines, a payment's order) instead of a random page, so each commit rewrites
one page there rather than one per id, and the pages stay full (bench/years.py). Ids name
records, they are no secrets (every call that takes one needs a token); the random part
keeps two made in the same hundredth apart, on one box or several, and leaves nothing to
count. The wall clock going back only costs locality, never uniqueness.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Final

_SORTED: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
                                 b"234567abcdefghijklmnopqrstuvwxyz")
_STAMP_MASK: Final = (1 << 40) - 1


def new_id(prefix: str, now: float | None = None) -> str:
    """``prefix_`` and 16 characters; ``now`` (seconds since 1970) for the time part."""
    stamp = int((time.time() if now is None else now) * 100) & _STAMP_MASK
    raw = (stamp << 40 | secrets.randbits(40)).to_bytes(10, "big")
    return f"{prefix}_{base64.b32encode(raw).translate(_SORTED).decode('ascii')}"
