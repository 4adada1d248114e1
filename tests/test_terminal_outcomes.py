"""What a terminal's ending means for the payment (issue 7 defects 4 and 5).

A real daemon, a Concert lane on a pty simulator, driven through ``/v1`` only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.concert.adapter import ConcertTerminal
from drivers.concert.messages import ConcertRequest
from drivers.concert.session import Phase
from drivers.simulators.concert import Behaviour, ConcertSimulator
from edged.store import Database
from tests.helpers import Api, make_config, running
from tests.test_concert_e2e import LANE, final, lane_config, terminal_state, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim(tmp_path: Path) -> ConcertSimulator:
    simulator = ConcertSimulator(link=str(tmp_path / "concert0"), ack_timeout=0.3,
                                 frame_timeout=0.5, late_delay=0.1)
    simulator.start()
    yield simulator  # type: ignore[misc]
    simulator.stop()


@pytest.fixture
async def api(tmp_path: Path, sim: ConcertSimulator) -> AsyncIterator[Api]:
    cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
    async with running(cfg) as client:
        await until(lambda: terminal_state(client, "online"), "the lane online at start")
        yield client


async def _card(api: Api, amount: int, currency: str = "EUR") -> dict[str, object]:
    status, body = await api.post("/v1/payments", {"amount": amount, "currency": currency,
                                                   "method": "card_present", "terminal": LANE})
    assert status == 202, body
    return dict(body)


@pytest.mark.parametrize(("behaviour", "figures"), [
    (Behaviour.OTHER_AMOUNT, {"amount": 1999}),
    (Behaviour.OTHER_POS, {"pos": "02"}),
    # issue 16 item 6: a currency the driver cannot name is not the one asked
    (Behaviour.OTHER_CURRENCY, {"currency": "999"}),
])
async def test_an_approval_of_other_figures_is_unknown_with_the_terminals_figures(
        api: Api, sim: ConcertSimulator, behaviour: Behaviour,
        figures: dict[str, object]) -> None:
    """Defect 4: never an ordinary approval; the manager sees what the terminal said."""
    sim.push(behaviour)
    body = await final(api, str((await _card(api, 2000))["id"]))
    assert body["state"] == "unknown", body
    assert body["terminal_figures"] == figures
    assert "other figures" in str(body["failure"])
    status, resolved = await api.post(f"/v1/payments/{body['id']}/resolve",
                                      {"outcome": "approved", "note": "journal: 19.99 taken"},
                                      token=api.manager_token)
    assert status == 200 and resolved["state"] == "approved", resolved
    assert resolved["terminal_figures"] == figures  # kept for the record


@pytest.mark.parametrize(("behaviour", "figures"), [
    (Behaviour.OTHER_AMOUNT, "amount 2999"),
    (Behaviour.OTHER_CURRENCY, "currency 999"),
])
async def test_a_refund_of_other_figures_is_unknown_and_holds_its_amount(
        api: Api, sim: ConcertSimulator, behaviour: Behaviour, figures: str) -> None:
    """Issue 16 item 6: a terminal refund is judged by the same rule as a sale: the
    terminal gave back something, but not what was asked; a person decides."""
    sim.push(Behaviour.APPROVE)
    paid = await final(api, str((await _card(api, 3000))["id"]))
    assert paid["state"] == "approved"
    sim.push(behaviour)
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 3000})
    assert status == 202, refund

    async def refund_state() -> dict[str, object] | None:
        _, body = await api.get(f"/v1/payments/{paid['id']}")
        found = body["refunds"][0]
        return None if found["state"] == "pending" else dict(found)

    ended = await until(refund_state, "the refund to end")
    assert ended["state"] == "unknown", ended
    assert "other figures" in str(ended["failure"]) and figures in str(ended["failure"])
    await until(lambda: terminal_state(api, "online"), "the lane free again")
    status, body = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 100})
    assert status == 422 and body["error"]["code"] == "ERR-2007", body  # held by the unknown


async def test_an_approval_of_the_asked_figures_is_approved(api: Api,
                                                            sim: ConcertSimulator) -> None:
    sim.push(Behaviour.APPROVE)
    body = await final(api, str((await _card(api, 2000))["id"]))
    assert body["state"] == "approved" and body["terminal_figures"] is None, body


async def test_a_request_the_driver_refuses_before_sending_is_failed(
        tmp_path: Path, sim: ConcertSimulator) -> None:
    """Defect 5: a currency the Concert lane cannot take (a configuration from before
    check-config refused it) never reaches the terminal: failed, not unknown."""
    cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
    cfg = replace(cfg, store=replace(cfg.store, currency="BRL"))
    async with running(cfg) as api:
        await until(lambda: terminal_state(api, "online"), "the lane online at start")
        body = await final(api, str((await _card(api, 2000, "BRL"))["id"]))
        assert body["state"] == "failed", body
        assert "nothing was charged" in str(body["failure"])
        assert not sim.requests, "the request reached the terminal"
        # The lane is freed just after the failure is committed; a reader may show the
        # committed state a moment before that (the register polls, it does not wait).
        view = await until(lambda: terminal_state(api, "online"), "the lane free again")
        assert view["busy_with"] is None


def test_check_config_refuses_a_store_currency_a_concert_lane_cannot_take(
        tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text('[store]\ncurrency = "BRL"\n\n[[terminals]]\nid = "lane-1"\n'
                    'kind = "concert"\nport = "/dev/ttyUSB0"\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "edged", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert "terminals[0].kind" in result.stderr and "BRL" in result.stderr
    assert "EUR" in result.stderr  # what the lane takes
    path.write_text(path.read_text().replace("BRL", "EUR"), encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "edged", "check-config", str(path)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr


async def test_a_refund_left_unknown_is_resolved_by_a_manager(api: Api,
                                                               sim: ConcertSimulator) -> None:
    """Defect 7: an unknown refund no longer blocks the rest of its payment: a manager
    resolves it (manager scope, idempotency key, audit), like a payment."""
    sim.push(Behaviour.APPROVE)
    paid = await final(api, str((await _card(api, 3000))["id"]))
    assert paid["state"] == "approved"
    sim.push(Behaviour.SILENT)  # the terminal goes quiet during the refund
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 3000})
    assert status == 202, refund

    async def refund_state() -> str | None:
        _, body = await api.get(f"/v1/payments/{paid['id']}")
        state = body["refunds"][0]["state"]
        return str(state) if state != "pending" else None

    assert await until(refund_state, "the silent refund to end") == "unknown"
    await until(lambda: terminal_state(api, "online"), "the lane free again")
    status, body = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 100})
    assert status == 422 and body["error"]["code"] == "ERR-2007", body  # held by the unknown

    path = f"/v1/refunds/{refund['id']}/resolve"
    decision = {"outcome": "failed", "note": "not in the terminal's journal"}
    status, body = await api.post(path, decision)
    assert status == 403 and body["error"]["code"] == "ERR-5003", body  # register scope
    status, resolved = await api.post(path, decision, key="resolve-1", token=api.manager_token)
    assert status == 200, resolved
    assert resolved["state"] == "failed" and "not in the terminal's journal" in \
        resolved["failure"]
    again = await api.post(path, decision, key="resolve-1", token=api.manager_token)
    assert again == (200, resolved)  # the same key replays the answer
    status, body = await api.post(path, {"outcome": "succeeded", "note": "x"},
                                  token=api.manager_token)
    assert status == 409 and body["error"]["code"] == "ERR-2016", body
    status, body = await api.post("/v1/refunds/ref_nope/resolve", decision,
                                  token=api.manager_token)
    assert status == 404 and body["error"]["code"] == "ERR-2017", body
    assert api.count("audit", f"action = 'refund.resolved' AND subject = '{refund['id']}'") == 1

    sim.push(Behaviour.APPROVE)
    status, second = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 3000})
    assert status == 202, second  # the whole amount can be refunded again


# -- the ENQ goes out while the payment is committed; the request only after it -----------


class WatchfulSimulator(ConcertSimulator):
    """Notes, when the terminal is about to charge a request, how its payment stands in
    the daemon's file (read on a connection of its own: only what is committed)."""

    def __init__(self, db_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db_path = db_path
        self.rows_when_charging: list[tuple[int, str | None]] = []

    def _act(self, request: ConcertRequest, behaviour: Behaviour) -> None:
        conn = sqlite3.connect(self.db_path)
        try:
            row = conn.execute("SELECT state FROM payments WHERE amount = ? ORDER BY n DESC",
                               (request.amount,)).fetchone()
        finally:
            conn.close()
        self.rows_when_charging.append((request.amount, row[0] if row else None))
        super()._act(request, behaviour)


class HeldWrites:
    """Holds the daemon's next card payment insert before the writer gets it, and then
    lets it through or makes the writer fail it as a full disk would."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.original = db.write
        self.go = asyncio.Event()
        self.fail = False
        self.held = 0

    async def write(self, fn: Callable[[sqlite3.Connection], Any], **kw: Any) -> Any:
        if fn.__qualname__.endswith("_create_card_present.<locals>.write") and not self.held:
            self.held += 1
            await self.go.wait()
            if self.fail:
                def full(conn: sqlite3.Connection) -> Any:
                    raise sqlite3.OperationalError("database or disk is full")
                return await self.original(full, **kw)
        return await self.original(fn, **kw)

    def __enter__(self) -> HeldWrites:
        self.db.write = self.write  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.write = self.original  # type: ignore[method-assign]


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[Api, WatchfulSimulator]]:
    data = tmp_path / "data"
    simulator = WatchfulSimulator(data / "edged.db", link=str(tmp_path / "concert0"),
                                  ack_timeout=0.3, frame_timeout=0.5, late_delay=0.1)
    simulator.start()
    try:
        cfg = make_config(data, terminals=(lane_config(simulator, hold_timeout=5.0),))
        async with running(cfg) as client:
            assert client.daemon.db.path == data / "edged.db"
            await until(lambda: terminal_state(client, "online"), "the lane online at start")
            yield client, simulator
    finally:
        simulator.stop()


async def held_phase(api: Api) -> bool:
    driver = api.daemon.terminals.driver(LANE)
    assert isinstance(driver, ConcertTerminal)
    return driver.phase is Phase.HELD


async def test_the_request_reaches_the_terminal_only_once_its_payment_is_committed(
        watched: tuple[Api, WatchfulSimulator]) -> None:
    api, sim = watched
    with HeldWrites(api.daemon.db) as writes:
        post = asyncio.create_task(_card(api, 2000))
        await until(lambda: held_phase(api), "the terminal's ACK to the ENQ")
        # the terminal answered the ENQ while the payment is not written: it has nothing
        assert sim.requests == () and api.count("payments") == 0
        writes.go.set()
        started = await post
    body = await final(api, str(started["id"]))
    assert body["state"] == "approved", body
    (received,) = sim.requests
    assert received.copies == 1
    assert sim.rows_when_charging == [(2000, "in_progress")]  # committed before it charged


async def test_a_failed_first_commit_leaves_the_terminal_nothing_to_charge(
        watched: tuple[Api, WatchfulSimulator]) -> None:
    api, sim = watched
    with HeldWrites(api.daemon.db) as writes:
        writes.fail = True
        post = asyncio.create_task(api.post("/v1/payments", {
            "amount": 2000, "currency": "EUR", "method": "card_present", "terminal": LANE}))
        await until(lambda: held_phase(api), "the terminal's ACK to the ENQ")
        closed = sim.sessions_closed_empty
        writes.go.set()
        status, body = await post
    assert status == 503 and body["error"]["code"] == "ERR-1019", body
    assert api.count("payments") == 0
    await until(lambda: _true(sim.sessions_closed_empty > closed), "the EOT to the terminal")
    assert sim.requests == () and sim.rows_when_charging == []
    view = await until(lambda: terminal_state(api, "online"), "the lane free again")
    assert view["busy_with"] is None
    # the lane works at once: the next sale is charged, once
    body = await final(api, str((await _card(api, 2400))["id"]))
    assert body["state"] == "approved", body
    assert [r.request.amount for r in sim.requests] == [2400]
    assert sim.rows_when_charging == [(2400, "in_progress")]


async def _true(value: bool) -> bool:
    return value
