"""The keyed audit chain (issue 17, point 6).

What an attacker with the database file (and not the audit key) can do, and what
`edged audit verify` says: an entry edited and the chain hashed again with plain SHA-256
(the formula is public) is caught; so is the same with every entry marked plain; a tail
cut off is caught with the head the journal printed at start or the end-of-day report
named (``--expect-head``). A chain written before keyed chains still verifies, its keyed
part starting at the daemon's first start with a key; so does a chain written before
compact entries (migration 11), continued by them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from edged.store import audit, migrations
from edged.store.database import open_sync
from tests.daemon_process import DaemonProcess, free_port, run_cli

HEAD_RE = re.compile(r"audit chain: (\d+) entries, head (\d+:[0-9a-f]{64})")


def _sha(prev: str, at: str, actor: str, action: str, subject: str, data: str) -> str:
    """The plain chain's formula, as anyone can read it in the code."""
    return hashlib.sha256("\x1f".join((prev, at, actor, action, subject, data))
                          .encode()).hexdigest()


def _mac2(key: bytes, prev: str, at: str, actor: str, action: str, subject: str,
          data: str) -> str:
    """The keyed formula of issue 17 (version 2), as the daemon wrote it until migration 11."""
    material = "\x1f".join((prev, at, actor, action, subject, data)).encode()
    return hmac.new(key, b"2\x1f" + material, hashlib.sha256).hexdigest()


def _rehash(db: Path, downgrade: bool = False) -> None:
    """What an attacker with the file and not the key does after editing an entry."""
    conn = sqlite3.connect(db)
    prev = audit.GENESIS
    rows = conn.execute("SELECT seq, at, actor, action, subject, data FROM audit ORDER BY seq")
    for seq, at, actor, action, subject, data in rows.fetchall():
        digest = _sha(prev, at, actor, action, subject, data)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (prev + "~", digest + "~", seq))  # the unique index, while moving
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?",
                     (prev, digest, seq))
        prev = digest
    if downgrade:
        conn.execute("UPDATE audit SET version = 1")
    conn.commit()
    conn.close()


def _verify(data: Path, *extra: str) -> tuple[int, str]:
    done = run_cli(data, "audit", "verify", *extra, check=False)
    return done.returncode, done.stdout + done.stderr


def _history(data: Path) -> str:
    """A daemon start (the head goes to the journal), then money and tokens moving."""
    with DaemonProcess(data) as daemon:
        token = daemon.create_token("lane-1")
        for i in range(3):
            assert daemon.post("/v1/payments", {"amount": 100 + i, "currency": "EUR",
                                                "method": "cash"},
                               token=token, key=f"audit-{i}").status == 201
    with DaemonProcess(data) as daemon:  # the next start names the head
        match = HEAD_RE.search(daemon.stderr_text())
        assert match, daemon.stderr_text()
        return match.group(2)


def test_an_edited_chain_hashed_again_without_the_key_is_caught(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _history(data)
    assert _verify(data)[0] == 0
    conn = sqlite3.connect(data / "edged.db")
    conn.execute("UPDATE audit SET data = replace(data, '100', '900')"
                 " WHERE action = 'payment.approved'")
    conn.commit()
    conn.close()
    _rehash(data / "edged.db")
    code, out = _verify(data)
    assert code == 1 and "BROKEN" in out and "without the key" in out, out
    _rehash(data / "edged.db", downgrade=True)  # every entry "plain": the key says no
    code, out = _verify(data)
    assert code == 1 and "BROKEN" in out and "no entry is keyed" in out, out


def test_a_cut_tail_is_caught_with_the_head_the_journal_printed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = _history(data)
    code, out = _verify(data, "--expect-head", head)
    assert code == 0 and f"holds {head}" in out, out
    seq = int(head.split(":")[0])
    conn = sqlite3.connect(data / "edged.db")
    conn.execute("DELETE FROM audit WHERE seq >= ?", (seq - 1,))
    conn.commit()
    conn.close()
    assert _verify(data)[0] == 0  # what is left is a good chain...
    code, out = _verify(data, "--expect-head", head)  # ...that lost its end
    assert code == 1 and "does not hold the expected head" in out, out
    assert _verify(data, "--expect-head", "nonsense")[0] == 2


def test_the_key_is_outside_the_database_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _history(data)
    key = data / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_bytes()
    for name in ("edged.db", "edged.db-wal"):
        path = data / name
        if path.exists():
            assert secret not in path.read_bytes()
            assert secret.hex() not in path.read_bytes().decode("latin-1")
    key.chmod(0o644)
    code, out = _verify(data)
    assert code == 1 and "chmod 600" in out, out


def test_a_chain_from_before_still_verifies_and_its_keyed_part_follows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conn = open_sync(data / "edged.db")
    prev = audit.GENESIS
    for i in range(4):  # written as the daemon did before keyed chains: plain SHA-256
        body = json.dumps({"amount": i}, separators=(",", ":"))
        digest = _sha(prev, f"2026-01-0{i + 1}T00:00:00.000Z", "cli", "token.created",
                      f"t{i}", body)
        conn.execute("INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash)"
                     " VALUES (?, 'cli', 'token.created', ?, ?, ?, ?)",
                     (f"2026-01-0{i + 1}T00:00:00.000Z", f"t{i}", body, prev, digest))
        prev = digest
    conn.commit()
    conn.close()
    assert not (data / "audit.key").exists()
    code, out = _verify(data)
    assert code == 0 and "4 entries, not keyed" in out, out  # not made by verify either
    assert not (data / "audit.key").exists()
    head = _history(data)
    code, out = _verify(data, "--expect-head", head)
    assert code == 0 and "keyed since entry 5" in out, out
    # the plain part is still checked...
    conn = sqlite3.connect(data / "edged.db")
    conn.execute("UPDATE audit SET subject = 'mallory' WHERE seq = 2")
    conn.commit()
    code, out = _verify(data)
    assert code == 1 and "at entry 2" in out, out
    conn.execute("UPDATE audit SET subject = 't1' WHERE seq = 2")
    # ...and no plain entry may follow the keyed part
    top = audit.head(conn)
    assert top is not None
    last, seq = top.hash, top.seq  # the hex of the keyed head, as a forger would chain
    at = "2026-12-01T00:00:00.000Z"
    conn.execute("INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash)"
                 " VALUES (?, 'x', 'payment.approved', 'p', '{}', ?, ?)",
                 (at, last, _sha(last, at, "x", "payment.approved", "p", "{}")))
    conn.commit()
    conn.close()
    code, out = _verify(data)
    assert code == 1 and f"at entry {seq + 1}" in out and "plain entry after" in out, out


def test_verify_walks_a_chain_fed_from_two_sources(tmp_path: Path) -> None:
    """One function over an iterable: an archive of closed days, then the database."""
    data = tmp_path / "data"
    _history(data)
    conn = open_sync(data / "edged.db")
    chain = list(audit.entries(conn))
    key = conn.audit_key().secret
    conn.close()
    archived, live = chain[:3], chain[3:]
    result = audit.verify(iter(archived + live), key)
    assert result.ok and result.entries == len(chain)
    assert not audit.verify(iter(archived[:2] + live), key).ok  # a day missing between
    assert not audit.verify(iter(chain), b"k" * 32).ok  # another key


def test_the_end_of_day_report_names_the_head(tmp_path: Path) -> None:
    data = tmp_path / "data"
    head = _history(data)
    report = json.loads(run_cli(data, "report", "day").stdout)
    assert report["audit"]["head"] == head
    assert report["audit"]["entries"] == int(head.split(":")[0])
    csv = run_cli(data, "report", "day", "--csv").stdout
    assert f"audit_head,,{head}," in csv


def _old_file(data: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file as migration 10 left it: two plain entries (version 1), then three keyed ones
    as issue 17 wrote them (version 2: hex hashes, the previous one stored, the unique index
    on it). Returns the head the journal printed then."""
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS",
                      tuple(m for m in migrations.MIGRATIONS if m[0] <= 10))
        conn = open_sync(data / "edged.db")
    key = conn.audit_key().secret
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_chain'").fetchone()
    prev = audit.GENESIS
    for i in range(5):
        at, body = f"2026-03-0{i + 1}T10:00:00.000Z", json.dumps({"amount": 100 + i})
        version = 1 if i < 2 else 2
        digest = (_sha(prev, at, "cli", "payment.approved", f"p{i}", body) if version == 1
                  else _mac2(key, prev, at, "cli", "payment.approved", f"p{i}", body))
        conn.execute("INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash,"
                     " version) VALUES (?, 'cli', 'payment.approved', ?, ?, ?, ?, ?)",
                     (at, f"p{i}", body, prev, digest, version))
        prev = digest
    conn.commit()
    conn.close()
    return f"5:{prev}"


def test_a_chain_from_before_compact_entries_verifies_with_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgraded in place: old entries stay as written and verify by their own formula; new
    ones are compact (version 3) and chain onto the last old one; the heads printed before
    and after the upgrade are both held; an edit in any part is found."""
    data = tmp_path / "data"
    old_head = _old_file(data, monkeypatch)
    new_head = _history(data)  # the daemon opens the file: migration 11, then payments
    code, out = _verify(data, "--expect-head", old_head)
    assert code == 0 and f"holds {old_head}" in out and "keyed since entry 3" in out, out
    code, out = _verify(data, "--expect-head", new_head)
    assert code == 0 and f"head {new_head}" in out, out
    conn = sqlite3.connect(data / "edged.db")
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_chain'").fetchone()
    rows = conn.execute("SELECT seq, version, prev_hash, typeof(hash), length(hash) FROM audit"
                        " ORDER BY seq").fetchall()
    assert [r[1] for r in rows[:6]] == [1, 1, 2, 2, 2, 3], rows
    assert all(r[1:] == (3, "", "blob", 32) for r in rows[5:]), rows
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1][0] == int(new_head.split(":")[0])
    for seq, column in ((4, "data"), (7, "data"), (7, "at")):  # a version 2, then 3 entry
        (before,) = conn.execute(f"SELECT {column} FROM audit WHERE seq = ?",  # noqa: S608
                                 (seq,)).fetchone()
        conn.execute(f"UPDATE audit SET {column} = replace({column}, '1', '9')"  # noqa: S608
                     " WHERE seq = ?", (seq,))
        conn.commit()
        code, out = _verify(data)
        assert code == 1 and f"at entry {seq}" in out, (seq, column, out)
        conn.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (before, seq))  # noqa: S608
        conn.commit()
    assert _verify(data)[0] == 0
    conn.close()


def test_compact_entries_removed_or_moved_are_caught_with_or_without_the_key(
        tmp_path: Path) -> None:
    """A compact entry stores no previous hash: its MAC covers the one before it and its
    own seq. An entry taken out of the middle, or the last one put back under another seq,
    fails with the key; without it (a restored box) the gap in the seqs still shows."""
    data = tmp_path / "data"
    _history(data)
    conn = open_sync(data / "edged.db")
    key = conn.audit_key().secret
    whole = list(audit.entries(conn))
    assert len(whole) >= 4 and {e.version for e in whole} == {audit.COMPACT}
    assert audit.verify(iter(whole), key).ok
    unkeyed = audit.check_file(conn, None, None)
    assert unkeyed.ok and unkeyed.unchecked == len(whole)
    gap = whole[:2] + whole[3:]
    assert audit.verify(iter(gap), key).broken_at == whole[3].seq
    assert audit.verify(iter(gap), None, links_without_key=True).broken_at == whole[3].seq
    conn.execute("DELETE FROM audit WHERE seq = ?", (whole[2].seq,))
    conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > ?", (whole[2].seq,))
    conn.commit()
    result = audit.check(conn)  # renumbered so the seqs run on: the MACs say no
    assert not result.ok and result.broken_at == whole[2].seq, result
    assert "removed, inserted or edited" in result.reason
    conn.close()


def test_the_upgrade_frees_the_old_index_without_writing_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 11 drops the chain's unique index (a year's is 118 MB). SQLite as Debian
    builds it zeroes freed pages (SECURE_DELETE), which would write the whole index into
    the WAL at the upgrade, past its 64 MB bound; the migration runs with FAST instead."""
    data = tmp_path / "data"
    _old_file(data, monkeypatch)
    conn = sqlite3.connect(data / "edged.db")
    prev, rows = conn.execute("SELECT hash FROM audit ORDER BY seq DESC").fetchone()[0], []
    for i in range(20_000):  # the plain formula: enough for an index of a few hundred pages
        at, body = "2026-03-09T10:00:00.000Z", f'{{"n":{i}}}'
        prev = hashlib.sha256(f"{prev}{i}".encode()).hexdigest()
        rows.append((at, body, prev if i else "x", prev))
    conn.executemany("INSERT INTO audit (at, actor, action, subject, data, prev_hash, hash,"
                     " version) VALUES (?, 'cli', 'x', 's', ?, ?, ?, 2)", rows)
    conn.commit()
    (index_pages,) = conn.execute("SELECT count(*) FROM dbstat WHERE name = 'audit_chain'")\
        .fetchone()
    conn.close()
    assert index_pages > 300
    default = sqlite3.connect(":memory:").execute("PRAGMA secure_delete").fetchone()[0]
    upgraded = open_sync(data / "edged.db")  # applies migration 11; commands never checkpoint
    wal_pages = (data / "edged.db-wal").stat().st_size // 4096
    assert wal_pages < index_pages // 10, (wal_pages, index_pages)
    assert upgraded.execute("SELECT freelist_count FROM pragma_freelist_count").fetchone()[0] \
        >= index_pages
    assert upgraded.execute("PRAGMA secure_delete").fetchone()[0] == default
    upgraded.close()


def test_a_box_restored_without_its_audit_key_does_not_start_until_it_is_back(
        tmp_path: Path) -> None:
    """A daemon started on a keyed chain whose key is missing (a restore that did not
    bring ``audit.key`` back) refuses to start and makes no key: a new key made silently at
    the first write would leave every entry before it unverifiable."""
    data = tmp_path / "data"
    _history(data)
    key = data / "audit.key"
    saved = key.read_bytes()
    key.unlink()
    done = run_cli(data, "run", "--listen", f"127.0.0.1:{free_port()}", check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "audit.key" in done.stderr and "put back" in done.stderr, done.stderr
    assert not key.exists()
    key.write_bytes(saved)
    key.chmod(0o600)
    with DaemonProcess(data):
        pass
    code, out = _verify(data)
    assert code == 0 and "lost key" not in out, out


def test_a_lost_audit_key_is_replaced_only_when_asked_and_the_rest_still_verifies(
        tmp_path: Path) -> None:
    """``edged run --replace-lost-audit-key``: a new key, an ``audit.key_replaced`` entry;
    the entries of the lost key are checked for their links, every later one for its MAC,
    so an edit after the replacement is still caught."""
    data = tmp_path / "data"
    _history(data)
    (data / "audit.key").unlink()
    with DaemonProcess(data, extra_args=["--replace-lost-audit-key"]) as daemon:
        token = daemon.create_token("lane-2")
        assert daemon.post("/v1/payments", {"amount": 555, "currency": "EUR",
                                            "method": "cash"},
                           token=token, key="after-the-key").status == 201
    assert (data / "audit.key").exists()
    code, out = _verify(data)
    assert code == 0 and "made with a lost key: links only" in out, out
    conn = sqlite3.connect(data / "edged.db")
    replaced = conn.execute("SELECT seq FROM audit WHERE action = 'audit.key_replaced'"
                            ).fetchone()[0]
    conn.execute("UPDATE audit SET data = replace(data, '555', '999') WHERE seq > ?"
                 " AND action = 'payment.approved'", (replaced,))
    conn.commit()
    conn.close()
    code, out = _verify(data)
    assert code == 1 and "BROKEN" in out, out
