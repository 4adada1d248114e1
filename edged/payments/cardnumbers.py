"""Card numbers never reach storage or logs (PCI-DSS), and hostile JSON never reaches code.

A primary account number is a run of digits that starts like a card brand's number
(its issuer identification prefix), has that brand's length (13 to 19) and passes the
Luhn check, as card-data scanners tell them; a run of digits that passes Luhn alone is
not one (about one number in ten does: a millisecond timestamp, a receipt number). Digits
may be grouped by single spaces, dashes, dots or slashes (``4111.1111.1111.1111``), and
every window of a longer run counts too (so ``99`` + PAN + ``77`` is caught); a run of
more than :data:`MAX_RUN` digits is refused outright. Identifiers that cannot be card
numbers are not read: a UUID (with or without its dashes), a hex digest, and a GS1
product number (EAN/UPC/GTIN, by its check digit) in a ``barcode`` or ``sku`` field.

:func:`inspect` walks a decoded JSON value without recursion and reports the first
problem: nesting deeper than ``max_depth``, a lone UTF-16 surrogate in a string (not
valid Unicode: it cannot be hashed, stored or logged), or a card number.
"""

from __future__ import annotations

import enum
import re
from typing import Any

_RUN = re.compile(r"\d(?:[ ./-]?\d)*")
_SEPARATORS = re.compile(r"[ ./-]")
# A canonical UUID (8-4-4-4-12 hex digits) is an identifier, never a grouped card number;
# registers use UUIDs as Idempotency-Keys, and ~0.35 % of random ones hold a dash-grouped
# digit run that passes Luhn.
_UUID = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
                   r"(?![0-9A-Za-z])")


# 13 digits or more, grouped or not: a text without such a run holds no card number.
_LONG_RUN = re.compile(r"\d(?:[ ./-]?\d){12}")
_LONG_RUN_BYTES = re.compile(rb"[0-9](?:[ ./-]?[0-9]){12}")


# 64 hex digits are a SHA-256 or an HMAC-SHA256 (a pairing proof), never a card number;
# about one random digest in a hundred holds a digit run that passes Luhn.
_DIGEST = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{64}(?![0-9A-Za-z])")


# A UUID written without its dashes (Python's ``uuid4().hex``: 32 hex digits, its version
# 1-8 and RFC 9562's variant 8-b in their places, a letter among them) is never a card
# number; ~0.36 % of random ones hold a digit run that passes Luhn. Thirty-two decimal
# digits are no identifier of that kind: they are read.
_UUID_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{12}[1-8][0-9a-fA-F]{3}[89abAB]"
                       r"[0-9a-fA-F]{15}(?![0-9A-Za-z])")


def _blank_hex(match: re.Match[str]) -> str:
    found = match.group()
    return found if found.isdigit() else "u" * len(found)


def _without_uuids(text: str) -> str:
    """``text`` with its identifiers (UUIDs, hex digests) blanked out."""
    if "-" in text:
        text = _UUID.sub(lambda m: "u" * len(m.group()), text)
    if len(text) >= 32:
        text = _UUID_HEX.sub(_blank_hex, text)
    if len(text) >= 64:
        text = _DIGEST.sub(lambda m: "h" * len(m.group()), text)
    return text

MAX_RUN = 1000
"""Digits in one run beyond which it is refused unread (no field needs that many)."""

MAX_DEPTH = 32
"""Nesting of arrays and objects a body may have (the API's own bodies use 3)."""

# (prefix, lengths) of the card brands' numbers: Visa, Mastercard, Amex, Discover, JCB,
# Diners, UnionPay, Maestro, Mir, RuPay, Troy.
_BRANDS: tuple[tuple[tuple[str, ...], frozenset[int]], ...] = (
    (("4",), frozenset({13, 16, 19})),
    (("2200", "2201", "2202", "2203", "2204"), frozenset(range(16, 20))),
    (("60", "81", "82"), frozenset({16})),
    (("9792",), frozenset({16})),
    (("51", "52", "53", "54", "55", *(str(p) for p in range(2221, 2721))), frozenset({16})),
    (("34", "37"), frozenset({15})),
    (("6011", "65", *(str(p) for p in range(644, 650))), frozenset({16, 19})),
    (tuple(str(p) for p in range(3528, 3590)), frozenset(range(16, 20))),
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), frozenset(range(14, 20))),
    (("62",), frozenset(range(16, 20))),
    (("50", "56", "57", "58", "63", "67"), frozenset(range(13, 20))),
)
_PREFIXES: dict[str, frozenset[int]] = {}
for _prefixes, _lengths in _BRANDS:
    for _p in _prefixes:
        _PREFIXES[_p] = _PREFIXES.get(_p, frozenset()) | _lengths
_PREFIX_LENGTHS = sorted({len(p) for p in _PREFIXES})


GTIN_FIELDS = frozenset({"barcode", "sku"})
"""Fields that name a product: a GS1 number there (:func:`is_gtin`) is its barcode."""


def is_gtin(text: str) -> bool:
    """A GS1 product number: 8, 12, 13 or 14 digits, the last the GS1 check digit
    (weights 3 and 1 from the right). About one EAN-13 in ten also passes Luhn, and a
    store scans them all day; a card number is 15 to 19 digits but for a few old 13- and
    14-digit ones, and a GS1 check digit of its own on top of Luhn's."""
    if len(text) not in (8, 12, 13, 14) or not (text.isascii() and text.isdigit()):
        return False
    total = sum((ord(ch) - 48) * (1 if i % 2 else 3)
                for i, ch in enumerate(reversed(text[:-1])))
    return (10 - total % 10) % 10 == ord(text[-1]) - 48


class Problem(enum.Enum):
    TOO_DEEP = "too_deep"
    SURROGATE = "surrogate"
    CARD_NUMBER = "card_number"


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


def _brand_lengths(digits: str, start: int) -> frozenset[int]:
    found: frozenset[int] = frozenset()
    for size in _PREFIX_LENGTHS:
        lengths = _PREFIXES.get(digits[start:start + size])
        if lengths is not None:
            found |= lengths
    return found


def _run_has_pan(digits: str) -> bool:
    size = len(digits)
    if size > MAX_RUN:
        return True
    if size < 13:
        return False
    for start in range(size - 12):
        for length in _brand_lengths(digits, start):
            if start + length <= size and luhn_ok(digits[start:start + length]):
                return True
    return False


def _runs(text: str) -> list[tuple[int, int, str]]:
    """(start, end, digits) of every digit run (separators dropped) of 13 digits or more."""
    out = []
    for match in _RUN.finditer(text):
        if match.end() - match.start() < 13:
            continue
        digits = _SEPARATORS.sub("", match.group())
        if len(digits) >= 13:
            out.append((match.start(), match.end(), digits))
    return out


def text_has_pan(text: str) -> bool:
    if _LONG_RUN.search(text) is None:  # the common case, in one scan in C
        return False
    return any(_run_has_pan(digits) for _, _, digits in _runs(_without_uuids(text)))


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def inspect(value: Any, max_depth: int = MAX_DEPTH) -> Problem | None:
    """The first problem in a decoded JSON value, walking it iteratively."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                return Problem.SURROGATE
            if text_has_pan(item):
                return Problem.CARD_NUMBER
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if len(str(abs(item))) >= 13 and text_has_pan(str(abs(item))):
                return Problem.CARD_NUMBER
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return Problem.TOO_DEEP
            if isinstance(item, dict):
                for key, child in item.items():
                    stack.append((key, depth + 1))
                    if key in GTIN_FIELDS and isinstance(child, str) and is_gtin(child):
                        continue  # a product's barcode, not a card number
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return None


def plain(raw: bytes) -> bool:
    """Whether a JSON body's raw bytes cannot hold any :class:`Problem`, so that
    :func:`inspect` of its decoded value may be skipped: ASCII without escapes (so every
    decoded string and number is a run of these bytes, and no surrogate can appear), fewer
    brackets than :data:`MAX_DEPTH` and no run of 13 digits or more.
    """
    return (raw.isascii() and b"\\" not in raw
            and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
            and _LONG_RUN_BYTES.search(raw) is None)


def contains_pan(value: Any) -> bool:
    """True when any string or integer inside a decoded JSON value looks like a PAN."""
    return inspect(value, max_depth=1 << 30) is Problem.CARD_NUMBER


def mask(text: str) -> str:
    """Replace every run holding a PAN by asterisks and the run's last four digits."""

    def _cut(match: re.Match[str]) -> str:
        digits = _SEPARATORS.sub("", match.group())
        if len(digits) >= 13 and _run_has_pan(digits):
            return "*" * max(0, len(digits) - 4) + digits[-4:]
        return match.group()

    return _RUN.sub(_cut, text)
