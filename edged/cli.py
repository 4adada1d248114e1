"""The ``edged`` command: run, check-config, token, items, audit, report, simulate, shopify."""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import TypeVar

from edged import event_loop
from edged.config import Config, load, with_overrides
from edged.errors import ConfigError, TlsError
from edged.inbound import cli as shopify_cli
from edged.lan import cli as lan_cli
from edged.lan import tokens
from edged.lanes.factory import check_terminals
from edged.store import audit
from edged.store.database import open_sync
from edged.store.patient import write_patiently
from edged.upkeep import cli as upkeep_cli

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="The store daemon.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE", help="TOML file (default: embedded)")
        sp.add_argument("--data-dir", metavar="DIR", help="where edged.db lives")

    run = sub.add_parser("run", help="start the daemon")
    common(run)
    run.add_argument("--listen", metavar="HOST:PORT")
    run.add_argument("--replace-lost-audit-key", action="store_true",
                     help="start although the audit chain's key is missing: a new key, and"
                          " the entries the lost one made checked for their links only")

    chk = sub.add_parser("check-config", help="check a configuration file and exit")
    chk.add_argument("file")
    chk.add_argument("--data-dir", metavar="DIR")

    tok = sub.add_parser("token", help="API tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a token; it is printed once")
    create.add_argument("name")
    create.add_argument("--scope", choices=tokens.SCOPES, default="register")
    common(create)
    lan_cli.add_token_commands(tsub, common)

    items = sub.add_parser("items", help="the catalogue")
    isub = items.add_subparsers(dest="action", required=True)
    imp = isub.add_parser("import", help="seed the catalogue from CSV or JSON")
    imp.add_argument("file")
    common(imp)

    sec = sub.add_parser("secret", help="encrypted credentials")
    ssub = sec.add_subparsers(dest="action", required=True)
    sset = ssub.add_parser("set", help="store NAME, the value read from standard input")
    sset.add_argument("name")
    common(sset)
    rot = ssub.add_parser("rotate-key", help="encrypt every stored secret again under a new"
                          " key, in one transaction; the old key is kept until it succeeds")
    rot.add_argument("--key-file", metavar="FILE", help="the key file to rotate (default:"
                     " DATA_DIR/secret.key; for systemd, the file LoadCredential= names)")
    common(rot)

    aud = sub.add_parser("audit", help="the audit chain")
    asub = aud.add_subparsers(dest="action", required=True)
    ver = asub.add_parser("verify", help="check the keyed hash chain")
    ver.add_argument("--expect-head", metavar="SEQ:HASH",
                     help="a head the journal or an end-of-day report named: the chain must"
                     " still hold it (no entry cut from its end)")
    common(ver)

    rep = sub.add_parser("report", help="reports read from the database")
    rsub = rep.add_subparsers(dest="action", required=True)
    day = rsub.add_parser("day", help="the end-of-day report (JSON, or CSV with --csv)")
    day.add_argument("--date", metavar="YYYY-MM-DD", help="default: today in [manager].timezone")
    day.add_argument("--csv", action="store_true", help="CSV instead of JSON")
    common(day)

    lan_cli.add_commands(sub, common)
    upkeep_cli.add_commands(sub, common)
    shopify_cli.add_commands(sub, common)

    sim = sub.add_parser("simulate", help="run a terminal simulator")
    sim.add_argument("kind", choices=("concert", "zvt"))
    sim.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal")
    sim.add_argument("--link", metavar="PATH", help="keep a stable symlink to the pty here")
    sim.add_argument("--behaviour", default="auto",
                     help="auto (approve; amounts ending in 13 decline), approve, decline, …")
    sim.add_argument("--data-dir", metavar="DIR")
    sim.add_argument("--tcp", type=int, metavar="PORT", help="zvt: listen on this TCP port")
    sim.add_argument("--password", metavar="DIGITS", help="zvt: refuse other passwords")
    sim.add_argument("--slow-delay", type=float, default=10.0, metavar="S",
                     help="zvt: seconds a slow customer takes (amounts ending in 77)")
    return p


def _config(args: argparse.Namespace) -> Config:
    cfg = check_terminals(load(getattr(args, "config", None)))
    return with_overrides(cfg, data_dir=getattr(args, "data_dir", None),
                          listen=getattr(args, "listen", None))


def _db_path(args: argparse.Namespace) -> Path:
    return _config(args).data_dir / "edged.db"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"edged: configuration error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if (done := lan_cli.dispatch(args, _config)) is not None:
        return done
    if (done := upkeep_cli.dispatch(args, _config)) is not None:
        return done
    if (done := shopify_cli.dispatch(args, _config)) is not None:
        return done
    if args.command == "run":
        cfg = _config(args)
        logging.basicConfig(level=cfg.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from edged.ops import log_redaction  # noqa: PLC0415

        log_redaction.install()  # no token, session id or pairing code in any line
        # httpx (the squareup SDK's client) and the stripe SDK log every request at INFO: a
        # cloud lane's polls would fill the journal; edged logs what the calls mean instead
        for chatty in ("httpx", "stripe"):
            logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
        return event_loop.run(_serve(cfg, args.replace_lost_audit_key), os.environ)
    if args.command == "check-config":
        cfg = check_terminals(load(args.file))
        print(f"{args.file}: OK — store {cfg.store.id}, {len(cfg.terminals)} terminal(s),"
              f" destinations: {', '.join(cfg.destinations) or 'none'}")
        return 0
    if args.command == "items":
        from edged.stock import catalog_import  # noqa: PLC0415  (only this command reads a catalogue)

        path = Path(args.file)
        try:
            rows = catalog_import.parse(path)
        except (OSError, catalog_import.ImportFileError) as exc:
            print(f"edged: {exc}", file=sys.stderr)
            return 1
        count = write_patiently(_db_path(args),
                                lambda conn: catalog_import.apply(conn, rows, str(path)))
        print(f"imported {count} items from {path}")
        return 0
    if args.command == "secret":
        from edged.store import secrets  # noqa: PLC0415  (cryptography only when needed)

        try:
            if args.action == "rotate-key":
                key_file = Path(args.key_file) if args.key_file else None
                print(secrets.rotate_key(_config(args).data_dir, key_file))
            else:
                print(secrets.cli_set(_config(args).data_dir, args.name, sys.stdin))
        except secrets.SecretError as exc:
            print(f"edged: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "audit":
        return _audit_verify(args)
    if args.command == "report":
        return _report(args)
    if args.command == "simulate":
        if args.kind == "zvt":
            from drivers.simulators import zvt  # noqa: PLC0415

            return zvt.run_cli(args.tcp, args.pty, args.link, args.behaviour, args.password,
                               args.slow_delay)
        from drivers.simulators.concert import run_cli  # noqa: PLC0415

        return run_cli(args.link, args.behaviour)
    raise AssertionError(args.command)


def _audit_verify(args: argparse.Namespace) -> int:
    if args.expect_head:
        try:
            audit.parse_head(args.expect_head)
        except ValueError:
            print("edged: --expect-head must be SEQ:HASH as the journal prints it (or the 64"
                  " hex digits of HASH)", file=sys.stderr)
            return 2
    from edged.upkeep.archive import archive_path  # noqa: PLC0415  (only for this command)

    conn = open_sync(_db_path(args))
    archived = archive_path(_db_path(args).parent)  # what `edged archive` moved out
    arch = sqlite3.connect(f"file:{archived}?mode=ro", uri=True) if archived.exists() \
        else None
    try:
        result = audit.check(conn, args.expect_head, arch)
    finally:
        conn.close()
        if arch is not None:
            arch.close()
    keyed = f", keyed since entry {result.keyed_from}" if result.keyed_from else \
        ", not keyed"
    if result.ok:
        held = f", holds {args.expect_head}" if args.expect_head else ""
        links = f" ({result.unchecked} made with a lost key: links only)" \
            if result.unchecked else ""
        print(f"audit chain OK: {result.entries} entries{links}{keyed}{held};"
              f" head {result.head}")
        return 0
    where = f" at entry {result.broken_at}" if result.broken_at is not None else ""
    print(f"audit chain BROKEN{where}: {result.reason} ({result.entries} good entries{keyed};"
          f" last good {result.head or 'none'})", file=sys.stderr)
    return 1


def _report(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from edged.ops import reports  # noqa: PLC0415

    cfg = _config(args)
    zone = cfg.manager.timezone
    now = datetime.now(UTC)
    try:
        day = reports.parse_date(args.date) if args.date else reports.today(now, zone)
    except ValueError:
        print(f"edged: --date must be YYYY-MM-DD, not {args.date!r}", file=sys.stderr)
        return 2
    path = cfg.data_dir / "edged.db"
    if not path.exists():
        print(f"edged: no database at {path} (use --data-dir)", file=sys.stderr)
        return 1
    conn = open_sync(path)
    try:
        report = reports.day_report(conn, reports.bounds(day, zone), now)
    finally:
        conn.close()
    if args.csv:
        sys.stdout.write(reports.to_csv(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


async def _serve(cfg: Config, replace_lost_audit_key: bool = False) -> int:
    from edged.app import serve  # noqa: PLC0415  (keeps `edged token` light)
    from edged.store.audit_key import AuditKeyError  # noqa: PLC0415

    try:
        return await serve(cfg, replace_lost_audit_key=replace_lost_audit_key)
    except (TlsError, AuditKeyError) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
