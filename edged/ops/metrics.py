"""Counters and gauges in the Prometheus text format, without a global registry."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

# Seconds: from a cached read (a few ms) to a long-poll or a slow upstream.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)


@dataclass
class _Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)


def _number(value: float) -> str:
    return repr(value) if value != int(value) else str(int(value))


class Metrics:
    """One registry per daemon; gauges may be computed at scrape time by callbacks."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._histograms: dict[str, _Histogram] = {}
        self._collectors: list[Callable[[Metrics], None]] = []
        self._async_collectors: list[Callable[[Metrics], Awaitable[None]]] = []

    def _family(self, name: str, kind: str, help_text: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(name, kind, help_text)
        return fam

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        self.inc_labels(name, help_text, tuple(sorted(labels.items())), amount)

    def inc_labels(self, name: str, help_text: str, labels: Labels,
                   amount: float = 1.0) -> None:
        """:meth:`inc` with the labels as (name, value) pairs already sorted by name (the
        per-request counters: no keyword dict to sort)."""
        fam = self._families.get(name) or self._family(name, "counter", help_text)
        values = fam.values
        values[labels] = values.get(labels, 0.0) + amount

    def set(self, name: str, help_text: str, value: float, **labels: str) -> None:
        fam = self._family(name, "gauge", help_text)
        fam.values[tuple(sorted(labels.items()))] = value

    def reset(self, name: str) -> None:
        """Forget a family's values (label sets that may disappear, refilled by a collector)."""
        fam = self._families.get(name)
        if fam is not None:
            fam.values.clear()

    def observe(self, name: str, help_text: str, value: float,
                buckets: tuple[float, ...] = DEFAULT_BUCKETS, **labels: str) -> None:
        """Count ``value`` in a histogram (cumulative buckets, sum and count)."""
        self.observe_labels(name, help_text, value, tuple(sorted(labels.items())), buckets)

    def observe_labels(self, name: str, help_text: str, value: float, key: Labels,
                       buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        """:meth:`observe` with the labels already sorted by name."""
        hist = self._histograms.get(name)
        if hist is None:
            hist = self._histograms[name] = _Histogram(name, help_text, buckets)
        counts = hist.counts.get(key)
        if counts is None:
            counts = hist.counts[key] = [0] * (len(hist.buckets) + 1)
        counts[bisect.bisect_left(hist.buckets, value)] += 1  # its own bucket; summed on output
        hist.sums[key] = hist.sums.get(key, 0.0) + value

    def async_collector(self, fn: Callable[[Metrics], Awaitable[None]]) -> None:
        """Like :meth:`collector`, for gauges that need the database; run by :meth:`refresh`."""
        self._async_collectors.append(fn)

    async def refresh(self) -> None:
        for fn in self._async_collectors:
            await fn(self)

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
                number = _number(value)
                out.append(f"{fam.name}{{{text}}} {number}" if text else f"{fam.name} {number}")
        for hist in sorted(self._histograms.values(), key=lambda h: h.name):
            out.append(f"# HELP {hist.name} {hist.help}")
            out.append(f"# TYPE {hist.name} histogram")
            for labels, counts in sorted(hist.counts.items()):
                pairs = [f'{k}="{_escape(v)}"' for k, v in labels]
                for bound, count in zip((*hist.buckets, float("inf")),
                                        itertools.accumulate(counts), strict=True):
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    text = ",".join([*pairs, 'le="' + le + '"'])
                    out.append(f"{hist.name}_bucket{{{text}}} {count}")
                text = ",".join(pairs)
                braces = f"{{{text}}}" if text else ""
                out.append(f"{hist.name}_sum{braces} {_number(hist.sums[labels])}")
                out.append(f"{hist.name}_count{braces} {sum(counts)}")
        return "\n".join(out) + "\n"
