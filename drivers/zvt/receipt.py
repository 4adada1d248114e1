"""Receipt text from the terminal, made safe to keep: no run of digits that could be a PAN.

A ZVT terminal that prints through the register (Print Line, Print Text-Block) sends the
receipt as the customer would read it. Terminals mask the card number there, but a
misconfigured one may not, and a line may carry an unmasked number in an additional text.
Before any other code sees a line, every run of 12 or more digits (single spaces, dashes
or dots between them allowed) keeps its last four digits and has the others replaced by
``*``: more than the 13-19 digits of a PAN, so a split or short number is cut too. Shorter
numbers (terminal id, trace, receipt and authorisation numbers, amounts) stay readable.
"""

from __future__ import annotations

import re

_RUN = re.compile(r"\d(?:[ .-]?\d){11,}")


def _mask(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(ch.isdigit() for ch in text)
    seen = 0
    out = []
    for ch in text:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > digits - 4 else "*")
        else:
            out.append(ch)
    return "".join(out)


def scrub(text: str) -> str:
    """``text`` with every PAN-like digit run cut to its last four digits."""
    return _RUN.sub(_mask, text)
