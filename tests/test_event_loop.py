"""The daemon's event loop: uvloop when installed, asyncio's own when asked or without it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edged import event_loop
from edged.errors import ConfigError
from tests.daemon_process import DaemonProcess


def test_uvloop_by_default_and_asyncio_on_request() -> None:
    name, factory = event_loop.loop_factory({})
    assert name == "uvloop"  # a dependency wherever it builds (pyproject.toml)
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    assert event_loop.loop_factory({"EDGED_EVENT_LOOP": "asyncio"}) == ("asyncio", None)
    assert event_loop.loop_factory({"EDGED_EVENT_LOOP": "uvloop"})[0] == "uvloop"
    with pytest.raises(ConfigError):
        event_loop.loop_factory({"EDGED_EVENT_LOOP": "trio"})


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert event_loop.run(which(), {"EDGED_EVENT_LOOP": "asyncio"}).startswith("asyncio")
    assert event_loop.run(which(), {}).startswith("uvloop")


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_a_real_daemon_takes_a_payment_on_either_loop(tmp_path: Path, loop: str) -> None:
    with DaemonProcess(tmp_path / "data", env={"EDGED_EVENT_LOOP": loop}) as daemon:
        token = daemon.create_token("lane-1")
        resp = daemon.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                            "method": "cash"}, token=token, key="k-1")
        assert resp.status == 201, resp.text
        again = daemon.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                             "method": "cash"}, token=token, key="k-1")
        assert again.json() == resp.json()
        # start-up's objects are frozen out of the collector's walks (shorter pauses)
        metrics = daemon.get("/metrics").text
        frozen = [line for line in metrics.splitlines()
                  if line.startswith("edged_gc_frozen_objects ")]
        assert frozen and float(frozen[0].split()[1]) > 10_000, frozen
        assert daemon.terminate() == 0
        expected = "uvloop" if loop == "auto" else "asyncio"
        assert f"event loop: {expected}" in daemon.stderr_text()
