"""Money: integer minor units plus an ISO 4217 code. Never a float.

The currency table lives in ``sync.core.money`` (sync may not import edged); this module adds
what the register API needs on top of it.
"""

from __future__ import annotations

from sync.core.money import CURRENCY_EXPONENTS

# Largest amount accepted in one call: fits comfortably in SQLite's 64-bit integers and in
# every upstream's limits (Stripe: 99,999,999 minor units).
MAX_AMOUNT = 99_999_999


def is_known_currency(code: str) -> bool:
    """Exactly an upper-case ISO 4217 code the daemon knows (``eur`` is refused)."""
    return code in CURRENCY_EXPONENTS

