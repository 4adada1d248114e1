"""The event loop the daemon runs on: uvloop when it is installed, asyncio's own otherwise.

uvloop spends about half the CPU of asyncio's selector loop per request (bench/README.md);
the daemon behaves the same on both, and runs on asyncio's where uvloop has no build.
``EDGED_EVENT_LOOP=asyncio`` forces asyncio's loop (to compare, or to rule uvloop out);
``EDGED_EVENT_LOOP=uvloop`` refuses to start without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from edged.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(env: Mapping[str, str]) -> tuple[str, LoopFactory | None]:
    """(the loop's name, its factory; None for asyncio's default)."""
    choice = env.get("EDGED_EVENT_LOOP", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ConfigError(f"EDGED_EVENT_LOOP must be one of {', '.join(CHOICES)},"
                          f" not {choice!r}")
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop  # noqa: PLC0415  (optional: a box without a build runs asyncio's)
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("EDGED_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], env: Mapping[str, str]) -> T:
    """Run ``main`` to the end on the chosen loop."""
    try:
        name, factory = loop_factory(env)
    except ConfigError:
        main.close()
        raise
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
