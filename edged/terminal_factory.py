"""Builds the driver of each ``[[terminals]]`` entry, and checks its options at load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.base import Terminal
from drivers.sim import SimSettings, SimTerminal
from sync.clock import Clock

if TYPE_CHECKING:
    from edged.config import Config, TerminalConfig

# Kinds whose driver this build has; the others are accepted by the schema but refused here.
_BUILT = ("sim", "concert")


def validate_options(term: TerminalConfig, cfg: Config) -> tuple[str, str] | None:
    """``(key, message)`` for the first bad option of a terminal, or None."""
    if term.kind not in _BUILT:
        return ("kind", f"the {term.kind} driver is not in this build yet")
    try:
        if term.kind == "sim":
            SimSettings.from_options(dict(term.options))
        elif term.kind == "concert":
            from drivers.concert import ConcertSettings  # noqa: PLC0415

            ConcertSettings.from_options(dict(term.options))
    except ValueError as exc:
        key, message = exc.args if len(exc.args) == 2 else ("?", str(exc))
        return (str(key), str(message))
    return None


def build_terminal(term: TerminalConfig, clock: Clock) -> Terminal:
    if term.kind == "sim":
        return SimTerminal(term.id, SimSettings.from_options(dict(term.options)), clock)
    if term.kind == "concert":
        from drivers.concert import ConcertSettings, ConcertTerminal  # noqa: PLC0415

        return ConcertTerminal(term.id, ConcertSettings.from_options(dict(term.options)))
    raise ValueError(f"no driver for terminal kind {term.kind}")
