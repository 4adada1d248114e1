"""The store-LAN commands of ``edged``: token, tls, pair, discover (see edged/cli.py)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from edged.config import Config
from edged.errors import TlsError
from edged.lan import tokens
from edged.lan.token_cache import RECHECK_SECONDS, announce_revocation
from edged.store import audit
from edged.store.database import open_sync
from edged.store.patient import write_patiently

Common = Callable[[argparse.ArgumentParser], None]
ConfigOf = Callable[[argparse.Namespace], Config]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: Common) -> None:
    tls = sub.add_parser("tls", help="the daemon's TLS certificate")
    tsub = tls.add_subparsers(dest="action", required=True)
    fp = tsub.add_parser("fingerprint", help="print the SHA-256 fingerprint registers pin"
                         " (last line); makes the certificate if there is none yet")
    common(fp)

    pair = sub.add_parser("pair", help="a one-time code a register trades for its token"
                          " (POST /v1/pair), bound to the certificate; the short fingerprint"
                          " beside it, the code alone on the last line")
    pair.add_argument("--name", help="the token's name (default: the name the register sends)")
    pair.add_argument("--scope", choices=("register", "manager"), default="register")
    common(pair)

    disc = sub.add_parser("discover", help="list the edged daemons announced on the LAN")
    disc.add_argument("--timeout", type=float, default=3.0, metavar="S",
                      help="seconds to listen (default 3)")
    disc.add_argument("--json", action="store_true")
    disc.add_argument("--interface", action="append", default=[], metavar="NAME_OR_ADDR",
                      help="listen on this interface only (repeatable; default: all)")
    common(disc)


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
    if args.command == "pair":
        return _pair(args, config(args))
    if args.command == "discover":
        return _discover(args)
    return None


def _discover(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from edged.lan import discovery  # noqa: PLC0415  (zeroconf only when needed)

    if not 0 < args.timeout <= 600:
        print("edged: --timeout must be more than 0 and at most 600 seconds", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(discovery.discover(args.timeout, tuple(args.interface)))
    except (discovery.DiscoveryError, OSError) as exc:
        print(f"edged: cannot listen for mDNS: {exc}", file=sys.stderr)
        return 1
    from edged.lan.pairing import short_fingerprint  # noqa: PLC0415

    if args.json:
        print(json.dumps([{**f.as_dict(), "short_fingerprint": short_fingerprint(
            f.fingerprint) if f.fingerprint else ""} for f in found], indent=2))
        return 0
    rows: list[dict[str, object]] = [
        {"name": f.name, "store": f.store, "addresses": ",".join(f.addresses),
         "port": f.port, "tls": "yes" if f.tls else "no",
         "fingerprint": short_fingerprint(f.fingerprint) if f.fingerprint else "-"}
        for f in found]
    _print_table(["NAME", "STORE", "ADDRESSES", "PORT", "TLS", "FINGERPRINT (compare with"
                  " edged pair)"], ["name", "store", "addresses", "port", "tls", "fingerprint"],
                 rows)
    if not found:
        print(f"(no edged daemon heard in {args.timeout:g} s)", file=sys.stderr)
    return 0


def _pair(args: argparse.Namespace, cfg: Config) -> int:
    from edged.lan import pairing  # noqa: PLC0415

    try:
        fingerprint = _served_fingerprint(cfg)
    except TlsError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    try:
        code = write_patiently(cfg.data_dir / "edged.db", lambda conn: pairing.create(
            conn, args.scope, args.name, datetime.now(UTC), fingerprint=fingerprint))
    except pairing.PairingError as exc:
        print(f"edged: {exc.message}", file=sys.stderr)
        return 1
    minutes = int(pairing.CODE_TTL.total_seconds() // 60)
    who = f"token {args.name!r}" if args.name else "a token named by the register"
    print(f"pairing code for {who} ({args.scope} scope): works once, for {minutes} minutes")
    if fingerprint:
        print("bound to this certificate; the register must show the same fingerprint:")
    else:
        print("no TLS: the code works on this box only (plain HTTP on loopback)")
        if (cfg.data_dir / "tls.crt").exists():
            print("edged: this data dir holds a TLS certificate but this configuration has no"
                  " TLS: if the daemon serves HTTPS, make the code with its own --config"
                  " (a register cannot redeem this one over HTTPS)", file=sys.stderr)
    print(f"fingerprint {pairing.short_fingerprint(fingerprint)}   code {code}")
    print(code)
    return 0


def _served_fingerprint(cfg: Config) -> str:
    """The fingerprint of the certificate the daemon serves with ``cfg`` ("" without TLS);
    made now if TLS is on and there is none yet (as the daemon would at its start)."""
    if not cfg.api.tls:
        return ""
    from edged.lan import tls  # noqa: PLC0415  (cryptography only when needed)

    now = datetime.now(UTC)
    info = tls.load(cfg.data_dir, now)
    if info is None:
        info, _ = tls.ensure(cfg, now)
    return info.fingerprint


def _token(args: argparse.Namespace, cfg: Config) -> int:

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
        return 0
    try:
        announce_revocation(path)
    except OSError as exc:  # committed all the same: the daemon reads it again within 1 s
        print(f"token {args.name} revoked; the running daemon could not be told at once"
              f" ({exc}): it refuses the token within {RECHECK_SECONDS:g} s",
              file=sys.stderr)
        return 0
    print(f"token {args.name} revoked; its next call gets 401")
    return 0


def _table(rows: list[dict[str, object]], revoked: bool) -> None:
    head = ["NAME", "SCOPE", "CREATED", "LAST USED"] + (["REVOKED"] if revoked else [])
    keys = ["name", "scope", "created_at", "last_used_at"] + (["revoked_at"] if revoked
                                                              else [])
    _print_table(head, keys, rows)


def _print_table(head: list[str], keys: list[str], rows: list[dict[str, object]]) -> None:
    cells = [[str(r[k] or "-") for k in keys] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    for line in [head, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _fingerprint(cfg: Config) -> int:
    from edged.lan import tls  # noqa: PLC0415  (cryptography only when needed)

    now = datetime.now(UTC)
    try:
        info = tls.load(cfg.data_dir, now)
        if info is None:
            if not cfg.api.tls:
                print(f"edged: no certificate in {cfg.data_dir} and TLS is off"
                      f" ({cfg.source}: [api] tls = false)", file=sys.stderr)
                return 1
            info, _ = tls.ensure(cfg, now)
    except TlsError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    print(f"certificate {info.cert_path}, valid until {info.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"names: {', '.join(info.dns_names + info.addresses)}")
    if info.superseded:
        print(f"supersedes: {info.superseded}")
    print(info.fingerprint)
    return 0
