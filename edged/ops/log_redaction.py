"""A filter on the root log handler that takes secrets out of every line before it is
written: bearer tokens (``edg_…``), ``Authorization:`` and ``Cookie:`` values, the status
page's session id, pairing codes and pairing proofs.

The daemon never logs these on purpose; this is the net under what it does not control:
a library quoting the bytes of a request it refused, an exception's text, a header dict in
a debug line. It rewrites the formatted message (and the traceback text) of each record, so
every handler of the root logger writes the redacted line (``edged run`` installs it).
"""

from __future__ import annotations

import logging
import re
from typing import Final

HIDDEN: Final = "[redacted]"

_CODE: Final = re.compile(r"\b[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}\b")
_CODE_SHAPE: Final = re.compile(r"[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]")
_RULES: Final = (
    # a bearer token anywhere, whatever surrounds it
    (re.compile(r"(edg_)[A-Za-z0-9_\-]+", re.IGNORECASE), r"\1" + HIDDEN),
    # a header's value, as a line, a bytes repr or a dict entry: up to the end of the value
    (re.compile(r"((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]*",
                re.IGNORECASE), r"\1" + HIDDEN),
    (re.compile(r"((?:set-)?cookie['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n}]*", re.IGNORECASE),
     r"\1" + HIDDEN),
    # the session cookie wherever it is quoted without its header
    (re.compile(r"((?:__Host-)?edged_session=)[^;\s'\",}]*", re.IGNORECASE), r"\1" + HIDDEN),
    # a pairing code as `edged pair` prints it, and code or proof fields of a body
    (_CODE, HIDDEN),
    (re.compile(r"((?:code|proof)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.IGNORECASE),
     r"\1" + HIDDEN),
)


def _suspect(text: str) -> bool:
    """Whether a rule could apply: a microsecond on a line that holds nothing (most do;
    every payment logs one), where a case-blind regex took ten."""
    low = text.lower()
    return ("edg_" in low or "authoriz" in low or "cookie" in low or "session" in low
            or "code" in low or "proof" in low
            or ("-" in text and _CODE_SHAPE.search(text) is not None))


def redact(text: str) -> str:
    """``text`` with every secret the rules know replaced by ``[redacted]``."""
    if not _suspect(text):
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and traceback text with :func:`redact`; drops nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format
            message = f"{record.msg} {record.args!r}"
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on every handler of ``logger`` (the root's)."""
    target = logger or logging.getLogger()
    redacting = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    return redacting
