"""The commands of a box kept for years: backup create, archive, restore (see edged/cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from edged.config import Config

Common = Callable[[argparse.ArgumentParser], None]
ConfigOf = Callable[[argparse.Namespace], Config]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: Common) -> None:
    bak = sub.add_parser("backup", help="consistent copies of the database")
    bsub = bak.add_subparsers(dest="action", required=True)
    create = bsub.add_parser("create", help="copy the database (online, while the daemon"
                             " runs) to PATH, then check the copy (integrity, audit chain)")
    create.add_argument("path")
    common(create)

    arc = sub.add_parser("archive", help="move the closed days before DATE (payments,"
                         " refunds, orders, audit entries) to DATA_DIR/edged-archive.db")
    arc.add_argument("--before", required=True, metavar="YYYY-MM-DD",
                     help="the first day kept in the live database ([manager] timezone)")
    common(arc)

    res = sub.add_parser("restore", help="bring a data directory back from the off-box"
                         " replica ([replica] url): database, archive, and the secrets key if"
                         " it was kept there")
    res.add_argument("--from", dest="source", required=True, metavar="REPLICA",
                     help="the replica: /path, file:///path or s3://bucket/path (S3"
                     " credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; endpoint"
                     " and region from --config's [replica])")
    res.add_argument("--force", action="store_true",
                     help="replace a database already in the data directory")
    common(res)


def dispatch(args: argparse.Namespace, config: ConfigOf) -> int | None:
    """Run one of these commands; None if ``args`` is not one."""
    if args.command == "backup":
        return _backup(args, config(args))
    if args.command == "archive":
        return _archive(args, config(args))
    if args.command == "restore":
        return _restore(args, config(args))
    return None


def _backup(args: argparse.Namespace, cfg: Config) -> int:
    from edged.upkeep import backup  # noqa: PLC0415

    try:
        result = backup.create(cfg.data_dir, Path(args.path))
    except backup.BackupError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    archive = f" (archive: {result.archive})" if result.archive else ""
    print(f"backup {result.path}{archive}: {result.bytes} bytes, {result.payments} payments;"
          f" integrity_check ok, audit chain ok ({result.audit_entries} entries);"
          f" {result.seconds:.1f} s")
    return 0


def _archive(args: argparse.Namespace, cfg: Config) -> int:
    from edged.ops import reports  # noqa: PLC0415
    from edged.upkeep import archive  # noqa: PLC0415

    try:
        day = reports.parse_date(args.before)
    except ValueError:
        print(f"edged: --before must be YYYY-MM-DD, not {args.before!r}", file=sys.stderr)
        return 2
    db = cfg.data_dir / "edged.db"
    if not db.exists():
        print(f"edged: no database at {db} (use --data-dir)", file=sys.stderr)
        return 1
    try:
        result = archive.run(db, day, cfg.manager.timezone)
    except archive.ArchiveError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    moved = ", ".join(f"{n} {t}" for t, n in result.moved.items())
    print(f"archived before {result.cutoff} to {result.path}: {moved}")
    return 0


def _restore(args: argparse.Namespace, cfg: Config) -> int:
    from edged.upkeep import replica  # noqa: PLC0415

    env = dict(os.environ)
    creds = {}
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        creds = {"replica.access_key_id": env["AWS_ACCESS_KEY_ID"],
                 "replica.secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    try:
        done = replica.restore(args.source, cfg.data_dir, replica=cfg.replica,
                               credentials=creds, force=args.force, env=env)
    except replica.ReplicaError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    print(f"restored {done.db}" + (f" and {done.archive}" if done.archive else "")
          + f": {done.payments} payments (the last at {done.last_payment_at}),"
          f" integrity_check ok, audit chain ok ({done.audit_entries} entries)")
    if done.unkeyed_checks:
        print(f"{done.unkeyed_checks} keyed audit entries were checked for their links only:"
              f" the audit key is not in the replica; put the key you kept at"
              f" {cfg.data_dir / 'audit.key'} (0600) or in systemd's LoadCredential= file,"
              " then run `edged audit verify`")
    if done.key is not None:
        print(f"the secrets key came back from the replica: {done.key}")
    elif done.secrets_stored and not (cfg.data_dir / "secret.key").exists():
        print(f"{done.secrets_stored} stored secrets need their key, which is not in the"
              " replica: put the key you kept at"
              f" {cfg.data_dir / 'secret.key'} (0600) or in systemd's LoadCredential= file,"
              " or set the secrets again (edged secret set)")
    return 0
