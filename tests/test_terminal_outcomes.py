"""What a terminal's ending means for the payment (issue 7 defects 4 and 5).

A real daemon, a Concert lane on a pty simulator, driven through ``/v1`` only.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from drivers.simulators.concert import Behaviour, ConcertSimulator
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
