"""A full disk (issue 7, defect 17): the data directory on a 2 MiB tmpfs, filled up.

Writes answer 503 ERR-1019 (retryable) with one loud log line, not a traceback each;
an alert goes out; /healthz says the store cannot write. When space returns, writes work
again and the retried key is created exactly once. Needs root to mount the tmpfs (CI
runs as root).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edged.config.upkeep import StorageConfig
from tests.helpers import Api, make_config, running
from tests.small_disk import fill, small_filesystem


def body(i: int) -> dict[str, object]:
    return {"amount": 100 + i, "currency": "EUR", "method": "cash", "reference": f"full-{i}"}


async def test_a_full_disk_is_a_retryable_503_and_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with small_filesystem(tmp_path / "small") as small:
        # the space guard (ERR-1040) off: this is what happens when SQLite meets the full disk
        async with running(make_config(small / "data",
                                       storage=StorageConfig(min_free_mb=0))) as api:
            filler = fill(small)
            status, answer, key, i = 0, {}, "", 0
            for i in range(300):  # free pages inside the file may take a few writes first
                key = f"full-{i}"
                status, answer = await api.post("/v1/payments", body(i), key=key)
                if status != 201:
                    break
            assert status == 503, answer
            assert answer["error"]["code"] == "ERR-1019"
            assert answer["error"]["retryable"] is True
            for _ in range(5):  # the register retries: the same answer, no new log line
                assert await api.post("/v1/payments", body(i), key=key) == (status, answer)
            async with api.session.get(api.base + "/healthz") as r:
                assert r.status == 503
                assert "disk is full" in (await r.json())["database"]
            alerts = [e.data for e in api.daemon.bus.recent("alert")]
            assert any(a["alert"]["key"] == "store.full" and a["event"] == "raised"
                       for a in alerts)
            # one loud line per change of state, not one per request: a small write the
            # file's free pages still take may flip it back for a moment, nothing more
            loud = [r for r in caplog.records if "the store cannot write" in r.getMessage()]
            back = [r for r in caplog.records if "the store writes again" in r.getMessage()]
            assert len(loud) == len(back) + 1
            assert len(loud) <= 3
            assert not [r for r in caplog.records if "/v1/payments" in r.getMessage()]
            assert "Traceback" not in caplog.text
            assert not [r for r in caplog.records if r.exc_info]

            filler.unlink()  # space is back
            status, created = await api.post("/v1/payments", body(i), key=key)
            assert status == 201, created
            again, replayed = await api.post("/v1/payments", body(i), key=key)
            assert (again, replayed) == (201, created)
            assert _count(api, f"full-{i}") == 1
            async with api.session.get(api.base + "/healthz") as r:
                assert r.status == 200
            assert any(e.data["alert"]["key"] == "store.full" and e.data["event"] == "cleared"
                       for e in api.daemon.bus.recent("alert"))


def _count(api: Api, reference: str) -> int:
    return api.count("payments", f"reference = '{reference}'")
