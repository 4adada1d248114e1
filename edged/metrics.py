"""Counters and gauges in the Prometheus text format, without a global registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)


class Metrics:
    """One registry per daemon; gauges may be computed at scrape time by callbacks."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[Callable[[Metrics], None]] = []

    def _family(self, name: str, kind: str, help_text: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, kind, help_text)
        return fam

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        fam = self._family(name, "counter", help_text)
        key = tuple(sorted(labels.items()))
        fam.values[key] = fam.values.get(key, 0.0) + amount

    def set(self, name: str, help_text: str, value: float, **labels: str) -> None:
        fam = self._family(name, "gauge", help_text)
        fam.values[tuple(sorted(labels.items()))] = value

    def collector(self, fn: Callable[[Metrics], None]) -> None:
        """Run ``fn`` before each scrape to refresh gauges read from elsewhere."""
        self._collectors.append(fn)

    def value(self, name: str, **labels: str) -> float | None:
        fam = self._families.get(name)
        return None if fam is None else fam.values.get(tuple(sorted(labels.items())))

    def render(self) -> str:
        for fn in self._collectors:
            fn(self)
        out = []
        for fam in sorted(self._families.values(), key=lambda f: f.name):
            out.append(f"# HELP {fam.name} {fam.help}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            for labels, value in sorted(fam.values.items()):
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                number = repr(value) if value != int(value) else str(int(value))
                out.append(f"{fam.name}{{{text}}} {number}" if text else f"{fam.name} {number}")
        return "\n".join(out) + "\n"
