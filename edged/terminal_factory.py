"""Builds the driver of each ``[[terminals]]`` entry, and checks its options at load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from drivers.base import Terminal
from drivers.sim import SimSettings, SimTerminal
from sync.clock import Clock

if TYPE_CHECKING:
    from drivers.concert import ConcertSettings
    from edged.config import Config, TerminalConfig

# Kinds whose driver this build has; the others are accepted by the schema but refused here.
_BUILT = ("sim", "concert")


def concert_settings(options: Mapping[str, Any]) -> ConcertSettings:
    """``[[terminals]]`` options to settings; ``ValueError(key, message)`` on the first fault."""
    from drivers.concert import ConcertSettings  # noqa: PLC0415  (pyserial only when used)

    known = {f.name: f for f in fields(ConcertSettings)}
    for key, value in options.items():
        if key not in known:
            raise ValueError(key, f"unknown key for a concert terminal (known: "
                             f"{', '.join(known)})")
        want = {"int": int, "float": float, "bool": bool, "str": str}.get(str(known[key].type))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if want is not None and (not isinstance(value, want)
                                 or (want is int and isinstance(value, bool))):
            raise ValueError(key, f"expected {want.__name__}, got {value!r}")
    if "port" not in options:
        raise ValueError("port", "is required: a device path or a pyserial URL")
    try:
        values: dict[str, Any] = {k: float(v) if str(known[k].type) == "float" else v
                                  for k, v in options.items()}
        return ConcertSettings(**values)
    except ValueError as exc:
        message = str(exc)
        key = message.split(" ", 1)[0]
        raise ValueError(key if key in known else "port", message) from None


def validate_options(term: TerminalConfig, cfg: Config) -> tuple[str, str] | None:
    """``(key, message)`` for the first bad option of a terminal, or None."""
    if term.kind not in _BUILT:
        return ("kind", f"the {term.kind} driver is not in this build yet")
    try:
        if term.kind == "sim":
            SimSettings.from_options(dict(term.options))
        elif term.kind == "concert":
            concert_settings(term.options)
    except ValueError as exc:
        key, message = exc.args if len(exc.args) == 2 else ("?", str(exc))
        return (str(key), str(message))
    return None


def build_terminal(term: TerminalConfig, clock: Clock) -> Terminal:
    if term.kind == "sim":
        return SimTerminal(term.id, SimSettings.from_options(dict(term.options)), clock)
    if term.kind == "concert":
        from drivers.concert import ConcertTerminal  # noqa: PLC0415

        return ConcertTerminal(term.id, concert_settings(term.options), clock=clock)
    raise ValueError(f"no driver for terminal kind {term.kind}")
