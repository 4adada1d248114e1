"""Tokens kept in memory: a revocation from any process still fails the very next call.

The CLI's own revocation against a daemon process is in ``tests/test_tokens.py``; here the
daemon runs in-process on a manual clock, so the re-read of a kept token can be shown.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edged.lan import tokens
from edged.lan.token_cache import (
    RECHECK_SECONDS,
    PrincipalCache,
    announce_revocation,
    read_stamp,
    stamp_path,
)
from tests.clock import ManualClock
from tests.helpers import Api, make_config, running


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Api, ManualClock]]:
    clock = ManualClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    async with running(make_config(tmp_path / "data"), clock) as api:
        yield api, clock


def _revoke_behind_its_back(api: Api, name: str) -> None:
    """A revocation committed without its stamp: a manual UPDATE, or a CLI killed between
    its commit and the stamp."""
    conn = sqlite3.connect(api.daemon.db.path, isolation_level=None)
    try:
        conn.execute("UPDATE tokens SET revoked_at = '2026-11-26T12:00:00.000Z'"
                     " WHERE name = ?", (name,))
    finally:
        conn.close()


async def test_an_announced_revocation_fails_the_next_call_with_no_time_passing(
        setup: tuple[Api, ManualClock]) -> None:
    api, _ = setup
    for _ in range(3):  # kept in memory from the first call on
        assert (await api.get("/v1/terminals"))[0] == 200
    _revoke_behind_its_back(api, "register-1")
    announce_revocation(api.daemon.db.path)
    status, body = await api.get("/v1/terminals")
    assert (status, body["error"]["code"]) == (401, "ERR-5002")
    # the other token, forgotten with it, is read again and still works
    assert (await api.get("/v1/terminals", token=api.manager_token))[0] == 200


async def test_a_revocation_without_its_stamp_is_seen_within_the_recheck_time(
        setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    assert (await api.get("/v1/terminals"))[0] == 200
    _revoke_behind_its_back(api, "register-1")
    clock.advance(RECHECK_SECONDS)
    status, body = await api.get("/v1/terminals")
    assert (status, body["error"]["code"]) == (401, "ERR-5002")
    status, body = await api.post("/v1/payments",
                                  {"amount": 100, "currency": "EUR", "method": "cash"})
    assert (status, body["error"]["code"]) == (401, "ERR-5002")
    assert api.count("payments") == 0


async def test_unknown_tokens_are_never_kept_and_a_use_is_written_once_a_minute(
        setup: tuple[Api, ManualClock]) -> None:
    api, clock = setup
    cache = api.daemon.services.principals
    for n in range(5):  # more would meet the limit on unknown tokens (429)
        status, _ = await api.get("/v1/terminals", token=f"edg_wrong{n}")
        assert status == 401
    assert len(cache) == 0

    writes = api.daemon.db.stats.writes
    for _ in range(5):
        assert (await api.get("/v1/terminals"))[0] == 200
    assert len(cache) == 1
    assert api.daemon.db.stats.writes == writes + 1  # the first use, not five
    assert api.count("tokens", "last_used_at = '2026-11-26T12:00:00.000Z'") == 1
    clock.advance(61)
    assert (await api.get("/v1/terminals"))[0] == 200
    assert api.daemon.db.stats.writes == writes + 2
    assert api.count("tokens", "last_used_at = '2026-11-26T12:01:01.000Z'") == 1


def _principal(name: str = "lane-1") -> tokens.Principal:
    return tokens.Principal(1, name, "register")


def test_a_row_read_before_a_revocation_is_not_kept_after_it(tmp_path: Path) -> None:
    db_path = tmp_path / "edged.db"
    cache = PrincipalCache(stamp_path(db_path))
    stamp = cache.check()  # a call begins ...
    announce_revocation(db_path)  # ... a revocation lands while its row is being read ...
    assert cache.check() != stamp  # ... and another call sees the new stamp
    cache.put("d1", _principal(), stamp, 10.0)  # the first call's row may predate it
    assert cache.get("d1", 10.0) is None
    cache.put("d1", _principal(), cache.check(), 10.0)
    assert cache.get("d1", 10.0) == _principal()


def test_a_new_stamp_forgets_every_token_and_an_old_entry_is_read_again(tmp_path: Path) -> None:
    db_path = tmp_path / "edged.db"
    cache = PrincipalCache(stamp_path(db_path))
    assert read_stamp(stamp_path(db_path)) == b""  # no revocation yet
    stamp = cache.check()
    cache.put("d1", _principal("a"), stamp, 10.0)
    cache.put("d2", _principal("b"), stamp, 10.0)
    assert cache.get("d1", 10.0 + RECHECK_SECONDS / 2) == _principal("a")
    assert cache.get("d1", 10.0 + RECHECK_SECONDS) is None  # too old: read it again
    assert cache.get("d2", 9.0) is None  # a clock that went back: read it again
    cache.put("d1", _principal("a"), stamp, 20.0)
    announce_revocation(db_path)
    announce_revocation(db_path)
    cache.check()
    assert len(cache) == 0
    assert len(read_stamp(stamp_path(db_path))) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.revoked"]  # no scratch left


def test_an_unreadable_stamp_keeps_nothing_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = stamp_path(tmp_path / "edged.db")
    cache = PrincipalCache(path)
    cache.put("d1", _principal(), cache.check(), 10.0)
    path.mkdir()  # something that cannot be read as a stamp
    for _ in range(3):
        stamp = cache.check()
        assert stamp is None
        cache.put("d1", _principal(), stamp, 10.0)
        assert cache.get("d1", 10.0) is None  # read from the table on every call
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    path.rmdir()
    announce_revocation(tmp_path / "edged.db")
    stamp = cache.check()
    cache.put("d1", _principal(), stamp, 10.0)
    assert cache.get("d1", 10.0) == _principal()
    assert "can be read again" in caplog.records[-1].getMessage()


def test_a_fifo_in_place_of_the_stamp_does_not_block_and_a_revocation_replaces_it(
        tmp_path: Path) -> None:
    path = stamp_path(tmp_path / "edged.db")
    os.mkfifo(path)
    cache = PrincipalCache(path)
    stamp = cache.check()  # returns at once: no writer is waited for
    cache.put("d1", _principal(), stamp, 10.0)
    announce_revocation(tmp_path / "edged.db")
    cache.check()
    assert cache.get("d1", 10.0) is None
    assert path.is_file()


def test_the_stamp_is_read_again_only_when_its_file_was_replaced_or_written(
        tmp_path: Path) -> None:
    """The daemon keeps the stamp file open and looks at it with one fstat per call; a
    revocation's rename (and any write in place) is seen on the very next call."""
    from edged.lan.token_cache import StampFile, ensure_stamp

    db_path = tmp_path / "edged.db"
    path = stamp_path(db_path)
    ensure_stamp(path)
    assert path.read_bytes() == b"" and (path.stat().st_mode & 0o777) == 0o644
    watched = StampFile(path)
    assert watched.read() == b""
    opened = [e for e in os.listdir("/proc/self/fd")]
    assert watched.read() == b"" and os.listdir("/proc/self/fd") == opened  # nothing opened
    announce_revocation(db_path)
    first = watched.read()
    assert first is not None and len(first) == 32
    announce_revocation(db_path)
    second = watched.read()
    assert second is not None and second != first
    with open(path, "r+b") as f:  # in place, same size
        f.write(b"x" * 32)
        os.utime(f.fileno(), ns=(0, 0))
    assert watched.read() == b"x" * 32
    path.unlink()
    assert watched.read() == b""
    watched.close()
