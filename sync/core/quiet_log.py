"""A repeated error is logged once loudly, then quietly until it changes or clears.

A store whose link is down for hours would otherwise fill its journal with the same line
every few seconds.
"""

from __future__ import annotations

import logging


class RepeatFilter:
    """Per-key memory of the last message logged at its real level."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, str] = {}

    def log(self, key: str, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        if self._last.get(key) == text:
            self._logger.debug(msg, *args)
            return
        self._last[key] = text
        self._logger.log(level, msg, *args)

    def clear(self, key: str, msg: str, *args: object) -> None:
        """The condition is over: say so once (at INFO) and forget it."""
        if self._last.pop(key, None) is not None:
            self._logger.info(msg, *args)
