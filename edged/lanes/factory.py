"""Builds the driver of each ``[[terminals]]`` entry, and checks its options at load.

Cloud kinds (``stripe_reader``, ``square_terminal``) need their processor configured
(``[stripe]`` / ``[square]``): their calls go through that destination's breaker and rate
limiter, handed over as :class:`CloudLinks` by the sync runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from drivers.base import Terminal
from drivers.cloud.poll import CloudSettings
from drivers.sim import SimSettings, SimTerminal
from edged.config import Config, TerminalConfig
from edged.errors import ConfigError
from sync.core.clock import Clock

if TYPE_CHECKING:
    from drivers.concert.session import ConcertSettings
    from drivers.zvt.session import ZvtSettings
    from sync.square_api.terminal import SquareTerminalClient
    from sync.stripe_api.terminal import StripeTerminalClient

# Kinds whose driver this build has; the others are accepted by the schema but refused here.
_BUILT = ("sim", "concert", "zvt", "stripe_reader", "square_terminal")
#: The option naming the device of a cloud kind, and the processor it needs.
CLOUD = {"stripe_reader": ("reader_id", "stripe"), "square_terminal": ("device_id", "square")}


@dataclass
class CloudLinks:
    """The processors' Terminal clients, built once on first use and shared by the lanes."""

    stripe: Callable[[], StripeTerminalClient] | None = None
    square: Callable[[], SquareTerminalClient] | None = None
    _built: dict[str, Any] = field(default_factory=dict)

    def stripe_client(self) -> StripeTerminalClient:
        if self.stripe is None:
            raise ValueError("stripe_reader terminals need [stripe] configured")
        if "stripe" not in self._built:
            self._built["stripe"] = self.stripe()
        client: StripeTerminalClient = self._built["stripe"]
        return client

    def square_client(self) -> SquareTerminalClient:
        if self.square is None:
            raise ValueError("square_terminal terminals need [square] configured")
        if "square" not in self._built:
            self._built["square"] = self.square()
        client: SquareTerminalClient = self._built["square"]
        return client

    @property
    def clients(self) -> list[Any]:
        return list(self._built.values())

    async def close(self) -> None:
        for client in self._built.values():
            await client.close()
        self._built.clear()


def concert_settings(options: Mapping[str, Any],
                     customer_timeout: float | None = None) -> ConcertSettings:
    """``[[terminals]]`` options to settings; ``ValueError(key, message)`` on the first fault."""
    from drivers.concert.session import ConcertSettings  # noqa: PLC0415  (pyserial only when used)

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
        if customer_timeout is not None and "customer_timeout" not in options:
            values["customer_timeout"] = customer_timeout
        return ConcertSettings(**values)
    except ValueError as exc:
        message = str(exc)
        key = message.split(" ", 1)[0]
        raise ValueError(key if key in known else "port", message) from None


def zvt_settings(options: Mapping[str, Any], currency: str,
                 customer_timeout: float | None = None) -> ZvtSettings:
    """``[[terminals]]`` options of a zvt lane to settings; ``ValueError(key, message)``."""
    from drivers.zvt.session import ZvtSettings, check_address  # noqa: PLC0415

    known = {f.name: f for f in fields(ZvtSettings)}
    for key, value in options.items():
        if key not in known or key == "currency":
            raise ValueError(key, "unknown key for a zvt terminal (known: "
                             f"{', '.join(k for k in known if k != 'currency')})")
        want = {"int": int, "float": float, "str": str}.get(str(known[key].type))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if want is not None and (not isinstance(value, want) or isinstance(value, bool)):
            raise ValueError(key, f"expected {want.__name__}, got {value!r}")
    for key, example in (("address", '"tcp://10.0.0.20:20007" or "serial:///dev/ttyUSB0"'),
                         ("password", '"000000", the terminal\'s six digits')):
        if key not in options:
            raise ValueError(key, f"is required: {example}")
        if key == "address":
            try:
                check_address(options["address"])
            except ValueError as exc:
                raise ValueError("address", str(exc)) from None
    values: dict[str, Any] = {k: float(v) if str(known[k].type) == "float" else v
                              for k, v in options.items()}
    if customer_timeout is not None and "customer_timeout" not in options:
        values["customer_timeout"] = customer_timeout
    try:
        return ZvtSettings(currency=currency, **values)
    except ValueError as exc:
        message = str(exc)
        key = message.split(" ", 1)[0]
        raise ValueError(key if key in known else "address", message) from None


def cloud_settings(term: TerminalConfig) -> CloudSettings:
    device_key, _ = CLOUD[term.kind]
    extra = ("ping_interval",) if term.kind == "square_terminal" else ()
    return CloudSettings.from_options(term.options, device_key, term.customer_timeout, extra)


def check_terminals(cfg: Config) -> Config:
    """The options of every ``[[terminals]]`` entry, checked by the driver that will run it
    (the config's own parser knows no driver); :class:`ConfigError` naming the file and the
    key of the first fault. Returns ``cfg``."""
    for i, term in enumerate(cfg.terminals):
        problem = validate_options(term, cfg)
        if problem is not None:
            key, message = problem
            raise ConfigError(f"{cfg.source}: terminals[{i}].{key}: {message}")
    return cfg


def validate_options(term: TerminalConfig, cfg: Config) -> tuple[str, str] | None:
    """``(key, message)`` for the first bad option of a terminal, or None."""
    if term.kind not in _BUILT:
        return ("kind", f"the {term.kind} driver is not in this build yet")
    try:
        if term.kind == "sim":
            SimSettings.from_options(dict(term.options))
        elif term.kind == "concert":
            concert_settings(term.options, term.customer_timeout)
            from drivers.concert.messages import CURRENCY_NUMERIC  # noqa: PLC0415

            if cfg.store.currency.upper() not in CURRENCY_NUMERIC:
                return ("kind", f"a concert lane cannot take the store currency"
                        f" {cfg.store.currency} ([store] currency); it takes"
                        f" {', '.join(sorted(CURRENCY_NUMERIC))}")
        elif term.kind == "zvt":
            zvt_settings(term.options, cfg.store.currency, term.customer_timeout)
            from drivers.concert.messages import CURRENCY_NUMERIC as ZVT_CURRENCIES  # noqa: PLC0415

            if cfg.store.currency.upper() not in ZVT_CURRENCIES:
                return ("kind", f"a zvt lane cannot take the store currency"
                        f" {cfg.store.currency} ([store] currency)")
        else:
            cloud_settings(term)
            processor = CLOUD[term.kind][1]
            if processor not in cfg.destinations:
                return ("kind", f"{term.kind} terminals need [{processor}] configured (and"
                        f" its secret: `edged secret set {processor}."
                        f"{'key' if processor == 'stripe' else 'token'}`)")
    except ValueError as exc:
        key, message = exc.args if len(exc.args) == 2 else ("?", str(exc))
        return (str(key), str(message))
    return None


def build_terminal(term: TerminalConfig, clock: Clock,
                   links: CloudLinks | None = None, currency: str = "EUR") -> Terminal:
    if term.kind == "sim":
        settings = SimSettings.from_options(dict(term.options))
        return SimTerminal(term.id, settings, clock, customer_timeout=term.customer_timeout)
    if term.kind == "concert":
        from drivers.concert.adapter import ConcertTerminal  # noqa: PLC0415

        return ConcertTerminal(term.id, concert_settings(term.options, term.customer_timeout),
                               clock=clock)
    if term.kind == "zvt":
        from drivers.zvt.adapter import ZvtTerminal  # noqa: PLC0415

        return ZvtTerminal(term.id, zvt_settings(term.options, currency, term.customer_timeout),
                           clock=clock)
    links = links or CloudLinks()
    if term.kind == "stripe_reader":
        from drivers.stripe_reader import StripeReaderTerminal  # noqa: PLC0415

        return StripeReaderTerminal(term.id, cloud_settings(term), links.stripe_client(), clock)
    if term.kind == "square_terminal":
        from drivers.square_terminal import SquareTerminal  # noqa: PLC0415

        return SquareTerminal(term.id, cloud_settings(term), links.square_client(), clock)
    raise ValueError(f"no driver for terminal kind {term.kind}")
