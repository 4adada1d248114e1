"""The store-LAN commands of ``edged``: token, tls, pair, discover (see edged/cli.py)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from edged import audit, tokens
from edged.config import Config
from edged.store.database import open_sync

Common = Callable[[argparse.ArgumentParser], None]
ConfigOf = Callable[[argparse.Namespace], Config]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: Common) -> None:
    tls = sub.add_parser("tls", help="the daemon's TLS certificate")
    tsub = tls.add_subparsers(dest="action", required=True)
    fp = tsub.add_parser("fingerprint", help="print the SHA-256 fingerprint registers pin"
                         " (last line); makes the certificate if there is none yet")
    common(fp)


def add_token_commands(tsub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: Common) -> None:
    lst = tsub.add_parser("list", help="name, scope, created, last used (never the secret)")
    lst.add_argument("--all", action="store_true", help="revoked tokens too")
    lst.add_argument("--json", action="store_true")
    common(lst)
    rev = tsub.add_parser("revoke", help="refuse the token NAME from its next call on")
    rev.add_argument("name")
    common(rev)


def dispatch(args: argparse.Namespace, config: ConfigOf) -> int | None:
    """Run a LAN command; None if ``args`` is not one."""
    if args.command == "tls":
        return _fingerprint(config(args))
    if args.command == "token":
        return _token(args, config(args))
    return None


def _token(args: argparse.Namespace, cfg: Config) -> int:
    from edged.cli import write_patiently  # noqa: PLC0415  (cli imports this module)

    path = cfg.data_dir / "edged.db"
    if args.action == "list":
        conn = open_sync(path)
        try:
            rows = tokens.listing(conn, args.all)
        finally:
            conn.close()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _table(rows, args.all)
        return 0

    def change(conn: sqlite3.Connection) -> str:
        if args.action == "create":
            secret = tokens.create_unique(conn, args.name, args.scope)
            audit.append(conn, "cli", "token.created", args.name, {"scope": args.scope})
            return secret
        if tokens.revoke(conn, args.name) == 0:
            raise tokens.TokenError(f"no token named {args.name!r} is in use"
                                    " (edged token list)")
        audit.append(conn, "cli", "token.revoked", args.name, {})
        return ""

    try:
        secret = write_patiently(path, change)
    except tokens.TokenError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    if args.action == "create":
        print(secret)
        print(f"token for {args.name} ({args.scope}); shown once, keep it safe",
              file=sys.stderr)
    else:
        print(f"token {args.name} revoked; its next call gets 401")
    return 0


def _table(rows: list[dict[str, object]], revoked: bool) -> None:
    head = ["NAME", "SCOPE", "CREATED", "LAST USED"] + (["REVOKED"] if revoked else [])
    keys = ["name", "scope", "created_at", "last_used_at"] + (["revoked_at"] if revoked
                                                              else [])
    cells = [[str(r[k] or "-") for k in keys] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    for line in [head, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


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
