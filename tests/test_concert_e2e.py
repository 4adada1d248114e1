"""Concert lanes end to end: the HTTP API of a real daemon, the driver, a pty simulator.

Every test drives the daemon only through ``/v1`` and the terminal only through the
simulator's control API. Timers are small settings; nothing asserts on elapsed time:
state changes are polled with bounded waits, and the simulator's request log proves what
reached the terminal.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.simulators.concert import TEST_CARD, Behaviour, ConcertSimulator
from edged.config import TerminalConfig
from edged.events import Subscription
from tests.daemon_process import UNLIMITED_API, DaemonProcess, Response
from tests.helpers import Api, make_config, running

T = TypeVar("T")

LANE = "lane-1"
# Driver timers for tests: small, so a silent terminal is "unknown" within 2 s.
CONCERT = {"ack_timeout": 0.3, "frame_timeout": 0.5, "customer_timeout": 2.0,
           "poll_interval": 0.02}
HEARTBEAT = 0.1
MAX_BACKOFF = 0.2
WAIT = 10.0  # upper bound of every poll; a healthy run needs a fraction of it


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[ConcertSimulator]:
    simulator = ConcertSimulator(link=str(tmp_path / "concert0"), ack_timeout=0.3,
                                 frame_timeout=0.5, late_delay=0.1)
    simulator.start()
    yield simulator
    simulator.stop()


def lane_config(sim: ConcertSimulator, **overrides: Any) -> TerminalConfig:
    return TerminalConfig(id=LANE, kind="concert",
                          options={"port": sim.path, **CONCERT, **overrides},
                          heartbeat_seconds=HEARTBEAT, max_backoff_seconds=MAX_BACKOFF)


@pytest.fixture
async def api(tmp_path: Path, sim: ConcertSimulator) -> AsyncIterator[Api]:
    cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
    async with running(cfg) as client:
        await until(lambda: terminal_state(client, "online"), "the lane online at start")
        yield client


async def until(check: Callable[[], Awaitable[T | None]], what: str,
                timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def terminal(api: Api) -> dict[str, Any]:
    status, body = await api.get(f"/v1/terminals/{LANE}")
    assert status == 200, body
    return dict(body)


async def terminal_state(api: Api, state: str) -> dict[str, Any] | None:
    view = await terminal(api)
    return view if view["state"] == state else None


async def pay(api: Api, amount: int, key: str | None = None) -> dict[str, Any]:
    status, body = await api.post("/v1/payments", {"amount": amount, "currency": "EUR",
                                                   "method": "card_present",
                                                   "terminal": LANE}, key=key)
    assert status == 202, body
    assert body["state"] == "in_progress"
    return dict(body)


async def final(api: Api, payment_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/v1/payments/{payment_id}?wait={WAIT:g}")
    assert status == 200, body
    assert body["state"] != "in_progress", "the long-poll ended before the payment did"
    return dict(body)


async def requests_reach(sim: ConcertSimulator, count: int) -> None:
    assert await asyncio.to_thread(sim.wait_for_requests, count, WAIT), \
        f"the simulator never received request #{count}"


def drain(sub: Subscription) -> list[dict[str, Any]]:
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait().data)
    return events


def no_card_number_stored(data_dir: Path) -> None:
    for path in data_dir.glob("edged.db*"):
        assert TEST_CARD.encode() not in path.read_bytes(), f"a PAN in {path.name}"


# -- the register's point of view -----------------------------------------------------------


async def test_approved_sale(api: Api, sim: ConcertSimulator) -> None:
    paid = await pay(api, 1250)
    done = await final(api, paid["id"])
    assert done["state"] == "approved"
    assert done["amount"] == 1250
    assert done["last4"] == TEST_CARD[-4:]
    assert done["brand"] == "visa"
    assert done["processor_ref"] == "0000000001"
    (received,) = sim.requests
    assert (received.request.amount, received.request.currency) == (1250, "EUR")
    assert received.copies == 1
    assert api.count("audit", f"subject = '{paid['id']}' AND action = 'payment.approved'") == 1
    no_card_number_stored(api.daemon.db.path.parent)
    await until(lambda: terminal_state(api, "online"), "the lane online after the sale")


async def test_declined_sale(api: Api, sim: ConcertSimulator) -> None:
    first = await final(api, (await pay(api, 1313))["id"])  # AUTO declines ...13
    assert first["state"] == "declined"
    assert first["raw_status"] == "7"
    await until(lambda: terminal_state(api, "online"), "the lane free again")
    sim.push(Behaviour.DECLINE)
    second = await final(api, (await pay(api, 500))["id"])
    assert second["state"] == "declined"
    assert [r.request.amount for r in sim.requests] == [1313, 500]


async def test_nak_then_success(api: Api, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.NAK_FIRST)
    done = await final(api, (await pay(api, 990))["id"])
    assert done["state"] == "approved"
    (received,) = sim.requests  # one transaction, its request frame sent twice
    assert received.copies == 2
    assert sim.naks_sent == 1


async def test_silence_is_unknown_and_the_lane_is_busy_meanwhile(
        api: Api, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.SILENT)
    paid = await pay(api, 1500)
    await requests_reach(sim, 1)  # the terminal has taken the request
    view = await terminal(api)
    assert (view["state"], view["busy_with"]) == ("busy", paid["id"])
    _, listed = await api.get("/v1/terminals")
    assert [(t["id"], t["state"]) for t in listed["data"]] == [(LANE, "busy")]

    status, refused = await api.post("/v1/payments", {"amount": 200, "currency": "EUR",
                                                      "method": "card_present",
                                                      "terminal": LANE})
    assert status == 409
    assert refused["error"]["code"] == "ERR-3002"
    assert api.count("payments") == 1  # the refused one left nothing behind

    done = await final(api, paid["id"])
    assert done["state"] == "unknown"  # never declined: the card may have been charged
    assert "no answer" in (done["failure"] or "")
    assert api.count("audit", f"subject = '{paid['id']}' AND action = 'payment.unknown'") == 1

    # The lane is usable again and the next sale is an ordinary one.
    await until(lambda: terminal_state(api, "online"), "the lane free after the silence")
    after = await final(api, (await pay(api, 700))["id"])
    assert after["state"] == "approved"
    assert [r.request.amount for r in sim.requests] == [1500, 700]

    # A manager settles the unknown one from the terminal's journal, with an audit entry.
    body = {"outcome": "declined", "note": "journal: no transaction at 12:04"}
    status, refused = await api.post(f"/v1/payments/{paid['id']}/resolve", body)
    assert (status, refused["error"]["code"]) == (403, "ERR-5003")
    status, resolved = await api.post(f"/v1/payments/{paid['id']}/resolve", body,
                                      token=api.manager_token)
    assert status == 200
    assert resolved["state"] == "declined"
    assert api.count("audit", f"subject = '{paid['id']}' AND action = 'payment.resolved'"
                     " AND actor = 'token:manager-1'") == 1


async def test_idle_heartbeat_keeps_last_seen_fresh(api: Api, sim: ConcertSimulator) -> None:
    first = await terminal(api)
    assert first["state"] == "online"
    assert first["busy_with"] is None
    assert first["last_seen"] is not None

    async def newer() -> dict[str, Any] | None:
        view = await terminal(api)
        return view if view["last_seen"] > first["last_seen"] else None

    later = await until(newer, "a heartbeat to refresh last_seen")
    assert later["state"] == "online"
    assert sim.requests == ()  # probes are ENQ/EOT only: no transaction reached the terminal


async def test_unplugged_lane_goes_offline_and_comes_back(
        api: Api, sim: ConcertSimulator) -> None:
    sim.unplug()
    offline = await until(lambda: terminal_state(api, "offline"), "the lane offline")
    assert offline["detail"]

    # Card payments on the lane are refused at once and leave nothing behind ...
    status, refused = await api.post("/v1/payments", {"amount": 300, "currency": "EUR",
                                                      "method": "card_present",
                                                      "terminal": LANE})
    assert status == 503
    assert refused["error"]["code"] == "ERR-3003"
    assert refused["error"]["retryable"] is True
    assert api.count("payments") == 0
    # ... and nothing else is disturbed.
    status, cash = await api.post("/v1/payments", {"amount": 300, "currency": "EUR",
                                                   "method": "cash"})
    assert (status, cash["state"]) == (201, "approved")
    status, listed = await api.get("/v1/terminals")
    assert status == 200
    assert [(t["id"], t["state"]) for t in listed["data"]] == [(LANE, "offline")]

    sim.plug()  # the same link, a new pty: reopened on the backoff
    await until(lambda: terminal_state(api, "online"), "the lane online again")
    done = await final(api, (await pay(api, 1250))["id"])
    assert done["state"] == "approved"
    assert [r.request.amount for r in sim.requests] == [1250]


async def test_port_vanishing_mid_transaction_is_unknown_and_offline(
        api: Api, sim: ConcertSimulator) -> None:
    sim.push(Behaviour.SILENT)
    paid = await pay(api, 2500)
    await requests_reach(sim, 1)
    assert (await terminal(api))["state"] == "busy"
    events = api.daemon.bus.subscribe(frozenset({"terminal"}))
    try:
        sim.unplug()
        done = await final(api, paid["id"])
        assert done["state"] == "unknown"  # not failed, not declined: it was handed over
        assert "line lost" in (done["failure"] or "")
        await until(lambda: terminal_state(api, "offline"), "the lane offline")
        # The lane never claimed to be online while its port was gone.
        states = [e["state"] for e in drain(events)]
        assert states and states[0] == "offline", states
    finally:
        api.daemon.bus.unsubscribe(events)

    sim.plug()
    await until(lambda: terminal_state(api, "online"), "the lane online after the replug")
    after = await final(api, (await pay(api, 800))["id"])
    assert after["state"] == "approved"
    _, again = await api.get(f"/v1/payments/{paid['id']}")
    assert again["state"] == "unknown"  # nothing turned it into a retry or a decline
    assert [r.request.amount for r in sim.requests] == [2500, 800]


# -- a real process killed mid-transaction --------------------------------------------------


def write_daemon_config(path: Path, port: str) -> Path:
    lines = ["[api]", *(f"{k} = {v!r}" for k, v in UNLIMITED_API.items()),
             "", "[[terminals]]", f'id = "{LANE}"', 'kind = "concert"', f'port = "{port}"',
             "ack_timeout = 0.3", "frame_timeout = 0.5", "customer_timeout = 60.0",
             "poll_interval = 0.02", f"heartbeat_seconds = {HEARTBEAT}",
             f"max_backoff_seconds = {MAX_BACKOFF}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_final(daemon: DaemonProcess, payment_id: str, token: str) -> dict[str, Any]:
    resp = daemon.request("GET", f"/v1/payments/{payment_id}?wait={WAIT:g}", token=token,
                          timeout=WAIT + 5)
    assert resp.status == 200, resp.text
    return dict(resp.json())


def test_sigkill_mid_transaction_is_unknown_after_restart_and_never_charged_twice(
        tmp_path: Path, sim: ConcertSimulator) -> None:
    data = tmp_path / "data"
    config = write_daemon_config(tmp_path / "edged.toml", sim.path)
    body = {"amount": 4321, "currency": "EUR", "method": "card_present", "terminal": LANE}
    sim.push(Behaviour.SILENT)  # the customer is still at the terminal when the box dies

    with DaemonProcess(data, config=config) as first:
        register = first.create_token("register-1")
        manager = first.create_token("manager-1", scope="manager")
        started: Response = first.post("/v1/payments", body, token=register, key="sale-1")
        assert started.status == 202, started.text
        payment = started.json()
        assert payment["state"] == "in_progress"
        assert sim.wait_for_requests(1, WAIT)
        busy = first.get(f"/v1/terminals/{LANE}", token=register).json()
        assert (busy["state"], busy["busy_with"]) == ("busy", payment["id"])
        first.kill()

    with first.restarted() as second:
        after = second.get(f"/v1/payments/{payment['id']}", token=register).json()
        assert after["state"] == "unknown"
        assert "daemon stopped" in after["failure"]

        # The register retries with the same key: the first answer, and no second charge.
        again = second.post("/v1/payments", body, token=register, key="sale-1")
        assert again.status == started.status
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == payment

        # A new sale goes through; the terminal's log shows it right after the first one,
        # so the replay above started nothing.
        fresh = second.post("/v1/payments", {**body, "amount": 1200}, token=register,
                            key="sale-2")
        assert fresh.status == 202, fresh.text
        assert wait_final(second, fresh.json()["id"], register)["state"] == "approved"
        assert [r.request.amount for r in sim.requests] == [4321, 1200]

        resolved = second.post(f"/v1/payments/{payment['id']}/resolve",
                               {"outcome": "approved", "note": "journal: approved 4321"},
                               token=manager, key="resolve-1")
        assert resolved.status == 200, resolved.text
        assert resolved.json()["state"] == "approved"

    conn = sqlite3.connect(first.db_path)
    try:
        rows = conn.execute("SELECT actor, action FROM audit WHERE subject = ? ORDER BY seq",
                            (payment["id"],)).fetchall()
        assert rows == [("token:register-1", "payment.started"),
                        ("recovery", "payment.unknown"),
                        ("token:manager-1", "payment.resolved")]
        assert conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 2
    finally:
        conn.close()
