"""The store-LAN commands of ``edged``: tls, pair, discover (see edged/cli.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from edged.config import Config

Common = Callable[[argparse.ArgumentParser], None]
ConfigOf = Callable[[argparse.Namespace], Config]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: Common) -> None:
    tls = sub.add_parser("tls", help="the daemon's TLS certificate")
    tsub = tls.add_subparsers(dest="action", required=True)
    fp = tsub.add_parser("fingerprint", help="print the SHA-256 fingerprint registers pin"
                         " (last line); makes the certificate if there is none yet")
    common(fp)


def dispatch(args: argparse.Namespace, config: ConfigOf) -> int | None:
    """Run a LAN command; None if ``args`` is not one."""
    if args.command == "tls":
        return _fingerprint(config(args))
    return None


def _fingerprint(cfg: Config) -> int:
    from edged import tls  # noqa: PLC0415  (cryptography only when needed)

    now = datetime.now(UTC)
    try:
        info = tls.load(cfg.data_dir, now)
        if info is None:
            if not cfg.api.tls:
                print(f"edged: no certificate in {cfg.data_dir} and TLS is off"
                      f" ({cfg.source}: [api] tls = false)", file=sys.stderr)
                return 1
            info, _ = tls.ensure(cfg, now)
    except tls.TlsError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    print(f"certificate {info.cert_path}, valid until {info.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"names: {', '.join(info.dns_names + info.addresses)}")
    if info.superseded:
        print(f"supersedes: {info.superseded}")
    print(info.fingerprint)
    return 0
