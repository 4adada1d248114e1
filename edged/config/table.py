"""Reading one table of the TOML configuration: typed values, unknown keys refused, and
every complaint naming the file and the dotted key (used by :mod:`edged.config` and the
sections parsed beside it, such as :mod:`edged.config.upkeep`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from edged.errors import ConfigError

T = TypeVar("T")


class Table:
    """Reads one TOML table, naming the file and the dotted key in every complaint."""

    def __init__(self, data: Mapping[str, Any], where: str, source: str) -> None:
        self.data = dict(data)
        self.where = where
        self.source = source
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(name)}: {message}")

    def get(self, name: str, kind: type[T], default: T, check: Callable[[T], str | None]
            | None = None) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(name, f"expected {kind.__name__}, got {type(value).__name__} "
                                  f"{value!r}")
        if check is not None and (problem := check(value)):
            raise self.fail(name, problem)
        return value  # type: ignore[no-any-return]

    def require(self, name: str) -> str:
        if name not in self.data:
            raise self.fail(name, "is required")
        return self.get(name, str, "", non_empty)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key (see config.example.toml for every key)")


def non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def sub(parent: Table, name: str) -> Table | None:
    parent.seen.add(name)
    if name not in parent.data:
        return None
    value = parent.data[name]
    if not isinstance(value, dict):
        raise parent.fail(name, "must be a table")
    return Table(value, parent.key(name), parent.source)
