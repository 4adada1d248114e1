"""The configuration: TOML (stdlib ``tomllib``) into frozen dataclasses.

With no file the embedded default applies: data in ``./var``, the API on
``127.0.0.1:8731``, one simulated terminal ``sim-1``, no cloud accounts. Unknown keys and
bad values stop the start with a message that names the key and the file.
``config.example.toml`` documents every key with its default.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from edged.config.table import Table, non_empty, sub
from edged.config.upkeep import BackupConfig, ReplicaConfig, RetentionConfig, StorageConfig
from edged.config.upkeep import parse as parse_upkeep
from edged.errors import ConfigError
from edged.money import is_known_currency

T = TypeVar("T")

TERMINAL_KINDS = ("sim", "concert", "zvt", "stripe_reader", "square_terminal")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    id: str = "store-1"
    currency: str = "EUR"
    data_dir: str = "./var"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: str = "127.0.0.1:8731"
    tls: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 65536
    rate_per_second: float = 50.0
    rate_burst: int = 100
    payment_rate_per_second: float = 10.0
    payment_rate_burst: int = 20
    anonymous_rate_per_second: float = 1.0
    """Calls without a valid token, per client address (a token guesser, a scanner)."""
    anonymous_rate_burst: int = 10
    body_timeout: float = 30.0
    """Seconds a request body may take to arrive (408 ERR-1018 after)."""
    header_timeout: float = 15.0
    """Seconds a connection may stay without a complete request (new or kept alive)."""
    max_connections: int = 512
    """Open connections at most (also kept under the process's file limit)."""
    max_connections_per_address: int = 64
    """Open connections at most from one client address (its oldest idle or
    unauthenticated one is closed to make room for its next)."""
    max_unauthenticated_per_address: int = 8
    """Requests without a valid token in flight at once from one client address."""
    max_streams_per_token: int = 8
    """Open event streams (GET /v1/events) at most per token or sign-in's token."""
    stream_max_seconds: float = 3600.0
    """An event stream ends after this long; the client reconnects with Last-Event-ID."""
    metrics_public: bool = False
    """True: GET /metrics answers any address without a token (a Prometheus on the LAN);
    False: a token of any scope, except from this box itself."""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    enabled: bool | None = None
    """None: advertise when the API listens beyond loopback."""
    interfaces: tuple[str, ...] = ()
    """Interface names or addresses to announce on; empty: every interface."""


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    id: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    heartbeat_seconds: float = 5.0
    max_backoff_seconds: float = 30.0
    customer_timeout: float = 120.0
    """Seconds the customer may take at the terminal (every kind)."""


@dataclass(frozen=True, slots=True)
class ShopifyConfig:
    shop: str
    location_id: str
    api_version: str = "2026-10"
    admin_url: str | None = None
    poll_interval_seconds: float = 60.0
    """Catch-up polling (always on): how often Shopify is read for what changed; also at
    once whenever the link comes back."""
    catalogue_pull: str = "bulk"
    """The whole catalogue: ``bulk`` (one bulk operation, every ``full_pull_hours``) or
    ``paged`` (page by page every ``[sync] pull_interval_seconds``)."""
    full_pull_hours: float = 24.0
    webhook_max_body_bytes: int = 1_048_576
    """A webhook delivery larger than this is refused (413)."""
    bulk_poll_seconds: float = 10.0
    """Longest wait between two reads of a running bulk operation."""
    assumed_restore_rate: float = 50.0
    """Points a second the local copy of Shopify's cost bucket regains until Shopify's first
    answer gives the shop's own figures (50: less than any plan restores)."""
    in_doubt_retry_seconds: float = 15.0
    """How long before a stock level read while the store's own change to it was on its way
    to Shopify is read again."""


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    base_url: str | None = None
    location_id: str | None = None


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    enabled: bool = False
    max_payment: int = 20000
    max_stored_total: int = 200000
    max_age_hours: int = 24
    forward_wait_seconds: float = 30.0
    """How long a token payment waits for its processor before the register gets an
    answer it can act on (stored, failed, or unknown when a send is in flight)."""


@dataclass(frozen=True, slots=True)
class SyncConfig:
    max_attempts: int = 12
    lease_seconds: float = 60.0
    request_timeout: float = 20.0
    pull_interval_seconds: float = 900.0
    breaker_break_seconds: float | None = None
    """How long an open breaker refuses calls; None: the default (Shopify 30 s, processors
    60 s; docs/design.md, sync)."""
    quick_retries: int = 3
    """Attempts of one upstream call inside a claim before the row goes back with a backoff."""
    unknown_recheck_seconds: float = 180.0
    """While a payment or refund is unknown, how often it is read back from its processor
    (and at once when the link returns)."""
    retry_backoff_seconds: float = 2.0
    """The first wait before a row whose send failed goes again; it doubles with every
    attempt (up to 300 s), with jitter."""


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    """The status page, its sign-in and the end-of-day report."""

    timezone: str = "UTC"
    """The store's time zone: where a report's day starts and ends."""
    session_minutes: int = 720
    """How long a status-page sign-in lasts."""


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """When a condition becomes an ``alert`` event (see edged/ops/alerts.py)."""

    check_seconds: float = 5.0
    oldest_pending_minutes: float = 60.0
    terminal_offline_minutes: float = 5.0
    stored_cap_ratio: float = 0.8
    stored_age_ratio: float = 0.8
    keep_days: int = 30


@dataclass(frozen=True, slots=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    terminals: tuple[TerminalConfig, ...] = (TerminalConfig(id="sim-1", kind="sim"),)
    shopify: ShopifyConfig | None = None
    stripe: ProcessorConfig | None = None
    square: ProcessorConfig | None = None
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    log_level: str = "INFO"
    source: str = "<embedded default>"
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    replica: ReplicaConfig | None = None
    backup: BackupConfig | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.store.data_dir)

    @property
    def on_loopback(self) -> bool:
        """True when the API listens on this box only."""
        return is_loopback(self.api.host)

    @property
    def advertise(self) -> bool:
        """Whether mDNS announces the daemon (``[discovery] enabled``, else off loopback)."""
        enabled = self.discovery.enabled
        return (not self.on_loopback) if enabled is None else enabled

    @property
    def destinations(self) -> tuple[str, ...]:
        names = []
        if self.shopify is not None:
            names.append("shopify")
        if self.stripe is not None:
            names.append("stripe")
        if self.square is not None:
            names.append("square")
        return tuple(names)

    def terminal(self, terminal_id: str) -> TerminalConfig | None:
        for t in self.terminals:
            if t.id == terminal_id:
                return t
        return None


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _listen(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, for example 127.0.0.1:8731"
    return None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_lan(cfg: Config) -> None:
    """A listen beyond loopback needs TLS: tokens and payments must not cross the LAN clear."""
    if cfg.api.tls or cfg.on_loopback:
        return
    raise ConfigError(
        f"{cfg.source}: api.listen = \"{cfg.api.listen}\" reaches beyond this box but"
        " api.tls = false, so tokens and payments would cross the store LAN in clear text."
        " Set tls = true under [api] (edged makes its own certificate at first start; pin"
        " it with `edged tls fingerprint`), or listen on 127.0.0.1")


def _interface(v: list[Any]) -> str | None:
    if not all(isinstance(x, str) and x.strip() for x in v):
        return "must be a list of interface names or addresses, such as [\"eth0\"]"
    return None


def _currency(v: str) -> str | None:
    return None if is_known_currency(v) else "is not an ISO 4217 currency code"


def _parse(data: Mapping[str, Any], source: str) -> Config:
    root = Table(data, "", source)
    store = StoreConfig()
    if (t := sub(root, "store")) is not None:
        store = StoreConfig(
            id=t.get("id", str, store.id, non_empty),
            currency=t.get("currency", str, store.currency, _currency),
            data_dir=t.get("data_dir", str, store.data_dir, non_empty),
        )
        t.done()
    api = ApiConfig()
    if (t := sub(root, "api")) is not None:
        hosts = t.get("allowed_hosts", list, [])
        if not all(isinstance(h, str) for h in hosts):
            raise t.fail("allowed_hosts", "must be a list of host names")
        api = ApiConfig(
            listen=t.get("listen", str, api.listen, _listen),
            tls=t.get("tls", bool, api.tls),
            allowed_hosts=tuple(hosts),
            max_body_bytes=t.get("max_body_bytes", int, api.max_body_bytes, _positive),
            rate_per_second=t.get("rate_per_second", float, api.rate_per_second, _positive),
            rate_burst=t.get("rate_burst", int, api.rate_burst, _positive),
            payment_rate_per_second=t.get("payment_rate_per_second", float,
                                          api.payment_rate_per_second, _positive),
            payment_rate_burst=t.get("payment_rate_burst", int, api.payment_rate_burst,
                                     _positive),
            anonymous_rate_per_second=t.get("anonymous_rate_per_second", float,
                                            api.anonymous_rate_per_second, _positive),
            anonymous_rate_burst=t.get("anonymous_rate_burst", int, api.anonymous_rate_burst,
                                       _positive),
            body_timeout=t.get("body_timeout", float, api.body_timeout, _positive),
            header_timeout=t.get("header_timeout", float, api.header_timeout, _positive),
            max_connections=t.get("max_connections", int, api.max_connections, _positive),
            max_connections_per_address=t.get("max_connections_per_address", int,
                                              api.max_connections_per_address, _positive),
            max_unauthenticated_per_address=t.get(
                "max_unauthenticated_per_address", int, api.max_unauthenticated_per_address,
                _positive),
            max_streams_per_token=t.get("max_streams_per_token", int,
                                        api.max_streams_per_token, _positive),
            stream_max_seconds=t.get("stream_max_seconds", float, api.stream_max_seconds,
                                     _positive),
            metrics_public=t.get("metrics_public", bool, api.metrics_public),
        )
        t.done()
    discovery = DiscoveryConfig()
    if (t := sub(root, "discovery")) is not None:
        interfaces: list[Any] = t.get("interfaces", list, [], _interface)
        discovery = DiscoveryConfig(
            enabled=t.get("enabled", bool, False) if "enabled" in t.data else None,
            interfaces=tuple(interfaces),
        )
        t.done()
    terminals = Config().terminals
    root.seen.add("terminals")
    if "terminals" in data:
        raw = data["terminals"]
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise root.fail("terminals", "must be an array of tables ([[terminals]])")
        parsed = []
        for i, entry in enumerate(raw):
            t = Table(entry, f"terminals[{i}]", source)
            tid = t.require("id")
            kind = t.get("kind", str, "sim")
            if kind not in TERMINAL_KINDS:
                raise t.fail("kind", f"must be one of {', '.join(TERMINAL_KINDS)}")
            heartbeat = t.get("heartbeat_seconds", float, 5.0, _positive)
            backoff = t.get("max_backoff_seconds", float, 30.0, _positive)
            customer = t.get("customer_timeout", float, 120.0, _positive)
            lane_keys = ("id", "kind", "heartbeat_seconds", "max_backoff_seconds",
                         "customer_timeout")
            t.seen.update(entry)
            options = {k: v for k, v in entry.items() if k not in lane_keys}
            parsed.append(TerminalConfig(id=tid, kind=kind, options=options,
                                         heartbeat_seconds=heartbeat,
                                         max_backoff_seconds=backoff,
                                         customer_timeout=customer))
        ids = [p.id for p in parsed]
        if len(set(ids)) != len(ids):
            raise root.fail("terminals", "two terminals share one id")
        terminals = tuple(parsed)
    shopify = None
    if (t := sub(root, "shopify")) is not None:
        shopify = ShopifyConfig(
            shop=t.require("shop"),
            location_id=t.require("location_id"),
            api_version=t.get("api_version", str, "2026-10", non_empty),
            admin_url=t.get("admin_url", str, "", None) or None,
            poll_interval_seconds=t.get("poll_interval_seconds", float, 60.0, _positive),
            catalogue_pull=t.get("catalogue_pull", str, "bulk",
                                 lambda v: None if v in ("bulk", "paged")
                                 else "must be bulk or paged"),
            full_pull_hours=t.get("full_pull_hours", float, 24.0, _positive),
            webhook_max_body_bytes=t.get("webhook_max_body_bytes", int, 1_048_576, _positive),
            bulk_poll_seconds=t.get("bulk_poll_seconds", float, 10.0, _positive),
            assumed_restore_rate=t.get("assumed_restore_rate", float, 50.0, _positive),
            in_doubt_retry_seconds=t.get("in_doubt_retry_seconds", float, 15.0, _positive),
        )
        t.done()
    processors: dict[str, ProcessorConfig | None] = {"stripe": None, "square": None}
    for name in processors:
        if (t := sub(root, name)) is not None:
            processors[name] = ProcessorConfig(
                base_url=t.get("base_url", str, "", None) or None,
                location_id=t.get("location_id", str, "", None) or None,
            )
            t.done()
    offline = OfflineConfig()
    if (t := sub(root, "offline")) is not None:
        offline = OfflineConfig(
            enabled=t.get("enabled", bool, offline.enabled),
            max_payment=t.get("max_payment", int, offline.max_payment, _positive),
            max_stored_total=t.get("max_stored_total", int, offline.max_stored_total,
                                   _positive),
            max_age_hours=t.get("max_age_hours", int, offline.max_age_hours, _positive),
            forward_wait_seconds=t.get("forward_wait_seconds", float,
                                       offline.forward_wait_seconds, _positive),
        )
        t.done()
    sync = SyncConfig()
    if (t := sub(root, "sync")) is not None:
        sync = SyncConfig(
            max_attempts=t.get("max_attempts", int, sync.max_attempts, _positive),
            lease_seconds=t.get("lease_seconds", float, sync.lease_seconds, _positive),
            request_timeout=t.get("request_timeout", float, sync.request_timeout, _positive),
            pull_interval_seconds=t.get("pull_interval_seconds", float,
                                        sync.pull_interval_seconds, _positive),
            breaker_break_seconds=t.get("breaker_break_seconds", float, 0.0, _positive) or None,
            quick_retries=t.get("quick_retries", int, sync.quick_retries, _positive),
            unknown_recheck_seconds=t.get("unknown_recheck_seconds", float,
                                          sync.unknown_recheck_seconds, _positive),
            retry_backoff_seconds=t.get("retry_backoff_seconds", float,
                                        sync.retry_backoff_seconds, _positive),
        )
        t.done()
    manager, alerts = _manager_alerts(root)
    log_level = "INFO"
    if (t := sub(root, "log")) is not None:
        log_level = t.get("level", str, "INFO",
                          lambda v: None if v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")
                          else "must be DEBUG, INFO, WARNING or ERROR").upper()
        t.done()
    upkeep = parse_upkeep(root, sub)
    root.done()
    cfg = Config(store=store, api=api, discovery=discovery, terminals=terminals, shopify=shopify,
                 stripe=processors["stripe"], square=processors["square"], offline=offline,
                 sync=sync, manager=manager, alerts=alerts, log_level=log_level,
                 source=source, retention=upkeep.retention, storage=upkeep.storage,
                 replica=upkeep.replica, backup=upkeep.backup)
    check_lan(cfg)
    return cfg


def _timezone(v: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a time zone name such as UTC or Europe/Berlin"
    return None


def _ratio(v: float) -> str | None:
    return None if 0 < v <= 1 else "must be more than 0 and at most 1"


def _manager_alerts(root: Table) -> tuple[ManagerConfig, AlertsConfig]:
    manager = ManagerConfig()
    if (t := sub(root, "manager")) is not None:
        manager = ManagerConfig(
            timezone=t.get("timezone", str, manager.timezone, _timezone),
            session_minutes=t.get("session_minutes", int, manager.session_minutes, _positive),
        )
        t.done()
    alerts = AlertsConfig()
    if (t := sub(root, "alerts")) is not None:
        alerts = AlertsConfig(
            check_seconds=t.get("check_seconds", float, alerts.check_seconds, _positive),
            oldest_pending_minutes=t.get("oldest_pending_minutes", float,
                                         alerts.oldest_pending_minutes, _positive),
            terminal_offline_minutes=t.get("terminal_offline_minutes", float,
                                           alerts.terminal_offline_minutes, _positive),
            stored_cap_ratio=t.get("stored_cap_ratio", float, alerts.stored_cap_ratio, _ratio),
            stored_age_ratio=t.get("stored_age_ratio", float, alerts.stored_age_ratio, _ratio),
            keep_days=t.get("keep_days", int, alerts.keep_days, _positive),
        )
        t.done()
    return manager, alerts


def load(path: str | Path | None) -> Config:
    """Load a file, or the embedded default when ``path`` is None."""
    if path is None:
        return _parse({}, "<embedded default>")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return _parse(data, str(p))


def with_overrides(cfg: Config, *, data_dir: str | None = None,
                   listen: str | None = None) -> Config:
    """Apply the command-line flags, which win over the file."""
    if data_dir is not None:
        cfg = replace(cfg, store=replace(cfg.store, data_dir=data_dir))
    if listen is not None:
        if (problem := _listen(listen)) is not None:
            raise ConfigError(f"--listen: {problem}")
        cfg = replace(cfg, api=replace(cfg.api, listen=listen))
        check_lan(replace(cfg, source="--listen"))
    return cfg
