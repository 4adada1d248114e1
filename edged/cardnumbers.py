"""Card numbers never reach storage or logs (PCI-DSS).

A run of 13 to 19 digits (spaces or dashes between groups allowed) that passes the Luhn
check is treated as a primary account number.
"""

from __future__ import annotations

import re
from typing import Any

_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _pan_runs(text: str) -> list[str]:
    found = []
    for match in _RUN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        # every window of 13-19 digits inside a longer run counts too
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            found.append(digits)
    return found


def contains_pan(value: Any) -> bool:
    """True when any string or integer inside a decoded JSON value looks like a PAN."""
    if isinstance(value, str):
        return bool(_pan_runs(value))
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return bool(_pan_runs(str(abs(value))))
    if isinstance(value, dict):
        return any(contains_pan(k) or contains_pan(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_pan(v) for v in value)
    return False


def mask(text: str) -> str:
    """Replace every PAN-like run by its last four digits behind asterisks."""

    def _cut(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return "*" * (len(digits) - 4) + digits[-4:]
        return match.group()

    return _RUN.sub(_cut, text)
