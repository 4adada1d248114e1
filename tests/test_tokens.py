"""Token life cycle: list, revoke (refused on the next call), scopes, never in URLs or logs."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from edged.lan import tokens
from edged.lan.token_cache import announce_revocation
from edged.store.database import open_sync
from edged.store.migrations import MIGRATIONS
from tests.daemon_process import DaemonProcess, run_cli, write_config
from tests.helpers import make_config, running


def test_list_shows_name_scope_created_last_used_and_never_the_secret(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "edged.toml", log_level="DEBUG")
    with DaemonProcess(data, config=config) as daemon:
        lane = daemon.create_token("lane-1")
        wall = daemon.create_token("wall", scope="monitor")
        assert daemon.get("/v1/terminals", token=lane).status == 200
        listed = run_cli(data, "token", "list", config=config).stdout
        lines = listed.splitlines()
        assert lines[0].split() == ["NAME", "SCOPE", "CREATED", "LAST", "USED"]
        by_name = {line.split()[0]: line.split() for line in lines[1:]}
        assert by_name["lane-1"][1] == "register"
        assert by_name["lane-1"][3].startswith(str(datetime.now(UTC).year))  # used just now
        assert by_name["wall"][1:4:2] == ["monitor", "-"]  # never used
        for secret in (lane, wall):
            assert secret not in listed
            assert tokens.hash_token(secret) not in listed

        # revoked: the very next call is refused, although it just worked
        assert daemon.get("/v1/terminals", token=wall).status == 200
        done = run_cli(data, "token", "revoke", "wall", config=config)
        assert "revoked" in done.stdout
        refused = daemon.get("/v1/terminals", token=wall)
        assert (refused.status, refused.json()["error"]["code"]) == (401, "ERR-5002")
        assert daemon.get("/v1/terminals", token=lane).status == 200
        again = run_cli(data, "token", "revoke", "wall", config=config, check=False)
        assert again.returncode == 1 and "no token named 'wall'" in again.stderr
        names = [r.split()[0] for r in
                 run_cli(data, "token", "list", config=config).stdout.splitlines()[1:]]
        assert names == ["lane-1"]
        assert "wall" in run_cli(data, "token", "list", "--all", config=config).stdout

        # a name in use cannot be taken twice; a revoked one can
        dup = run_cli(data, "token", "create", "lane-1", config=config, check=False)
        assert dup.returncode == 1 and "revoke it first" in dup.stderr
        assert daemon.create_token("wall", scope="monitor") != wall

        # tokens never in URLs: a token in the query string is not a credential
        url_token = daemon.get(f"/v1/terminals?access_token={lane}&token={lane}")
        assert url_token.status == 401
        audit = run_cli(data, "audit", "verify", config=config).stdout
        assert "audit chain OK" in audit
    logged = daemon.stderr_text()
    for secret in (lane, wall):
        assert secret not in logged
        assert secret[4:20] not in logged
        assert tokens.hash_token(secret) not in logged


async def test_monitor_reads_and_nothing_else(tmp_path: Path) -> None:
    async with running(make_config(tmp_path / "data")) as api:
        wall = await api.daemon.db.write(lambda c: tokens.create(c, "wall", "monitor"))
        for path in ("/v1/terminals", "/v1/payments", "/v1/sync"):
            status, _ = await api.get(path, token=wall)
            assert status == 200, path
        status, body = await api.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                                       "method": "cash"}, token=wall)
        assert (status, body["error"]["code"]) == (403, "ERR-5003")
        assert "monitor" in body["error"]["message"]
        assert api.count("payments") == 0
        status, body = await api.get("/v1/reports/day", token=wall)
        assert (status, body["error"]["code"]) == (403, "ERR-5003")
        # the register still writes, the manager still reads reports
        status, _ = await api.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                                    "method": "cash"})
        assert status == 201
        status, _ = await api.get("/v1/reports/day", token=api.manager_token)
        assert status == 200


async def test_revocation_in_another_connection_is_seen_at_once(tmp_path: Path) -> None:
    async with running(make_config(tmp_path / "data")) as api:
        for _ in range(3):
            assert (await api.get("/v1/terminals"))[0] == 200
        conn = open_sync(api.daemon.db.path)  # the CLI's way: another connection
        conn.execute("BEGIN IMMEDIATE")
        assert tokens.revoke(conn, "register-1") == 1
        conn.execute("COMMIT")
        conn.close()
        announce_revocation(api.daemon.db.path)  # once committed, as the CLI does
        status, body = await api.get("/v1/terminals")
        assert (status, body["error"]["code"]) == (401, "ERR-5002")


def test_migration_keeps_tokens_and_what_refers_to_them(tmp_path: Path) -> None:
    path = tmp_path / "edged.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    for version, name, sql in MIGRATIONS:
        if name.startswith("token scope monitor"):
            break
        raw.executescript(sql)
        raw.execute("INSERT INTO schema_migrations VALUES (?, ?, 'then')", (version, name))
    raw.execute("INSERT INTO tokens (id, name, scope, token_hash, created_at)"
                " VALUES (7, 'lane-1', 'register', 'h7', '2026-01-01T00:00:00Z')")
    raw.execute("INSERT INTO sessions VALUES ('s', 7, 'now', 'later')")
    raw.commit()
    raw.close()
    conn = open_sync(path)
    row = conn.execute("SELECT id, name, scope, last_used_at FROM tokens").fetchone()
    assert tuple(row) == (7, "lane-1", "register", None)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.execute("BEGIN IMMEDIATE")
    tokens.create(conn, "wall", "monitor")
    conn.execute("COMMIT")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'sessions'").fetchone()[0]
    assert "REFERENCES tokens(id)" in sql
    conn.close()
