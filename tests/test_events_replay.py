"""/v1/events honours Last-Event-ID (issue 7, defect 16): a reconnecting client gets what
it missed from a bounded replay buffer, or an explicit ``reset`` event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.helpers import Api

CASH = {"currency": "EUR", "method": "cash"}


async def _read_events(api: Api, count: int, last_event_id: str | None = None,
                       kinds: str = "payment,sync") -> list[dict[str, Any]]:
    headers = api.headers()
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    out: list[dict[str, Any]] = []
    async with api.session.get(api.base + f"/v1/events?kinds={kinds}",
                               headers=headers) as stream:
        event: dict[str, Any] = {}
        while len(out) < count:
            line = (await asyncio.wait_for(stream.content.readline(), 5)).decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if not line:
                if event:
                    out.append(event)
                    event = {}
                continue
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value
    return out


async def _subscribed(api: Api, count: int) -> None:
    """Wait (bounded) until at least ``count`` streams are open."""
    async def poll() -> None:
        while api.daemon.bus.subscribers < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5.0)


async def test_a_reconnecting_client_gets_what_it_missed(api: Api) -> None:
    reader = asyncio.create_task(_read_events(api, 1))
    await _subscribed(api, api.daemon.bus.subscribers + 1)
    _, first = await api.post("/v1/payments", {"amount": 101, **CASH})
    (seen,) = await reader
    assert seen["data"]["id"] == first["id"]
    missed = [(await api.post("/v1/payments", {"amount": 102 + i, **CASH}))[1]["id"]
              for i in range(3)]
    got = await _read_events(api, 3, last_event_id=seen["id"])
    assert [e["event"] for e in got] == ["payment"] * 3
    assert [e["data"]["id"] for e in got] == missed
    # ids grow, so the client can resume from the last one again: nothing more missed
    streams = api.daemon.bus.subscribers  # closed streams linger until a keep-alive
    reader = asyncio.create_task(_read_events(api, 1, last_event_id=got[-1]["id"]))
    await _subscribed(api, streams + 1)
    _, live = await api.post("/v1/payments", {"amount": 200, **CASH})
    (after,) = await reader
    assert after["data"]["id"] == live["id"]


async def test_an_id_from_another_run_gets_a_reset(api: Api) -> None:
    (event,) = await _read_events(api, 1, last_event_id="0badc0de-42")
    assert event["event"] == "reset"
    assert "run" in event["data"]["reason"]
    assert event["id"] == api.daemon.bus.sse_id()


async def test_a_client_too_far_behind_gets_a_reset(api: Api) -> None:
    bus = api.daemon.bus
    bus.publish("sync", {"event": "first"})
    old = bus.sse_id()
    for i in range(1100):  # more than the replay buffer holds
        bus.publish("sync", {"event": "filler", "n": i})
    (event,) = await _read_events(api, 1, last_event_id=old)
    assert event["event"] == "reset"
    assert "missed" in event["data"]["reason"]
    # one within the buffer still replays
    recent = bus.sse_id(int(bus.sse_id().rsplit("-", 1)[1]) - 2)
    got = await _read_events(api, 2, last_event_id=recent)
    assert [e["data"]["n"] for e in got] == [1098, 1099]


async def test_a_garbage_last_event_id_gets_a_reset(api: Api) -> None:
    for bad in ("x", "-1", "9" * 400, api.daemon.bus.run + "-99999999"):
        (event,) = await _read_events(api, 1, last_event_id=bad)
        assert event["event"] == "reset"
