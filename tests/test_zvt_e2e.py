"""ZVT lanes end to end: the HTTP API of a real daemon, the driver, the terminal simulator
on TCP (and on a pty for the serial line).

Every test drives the daemon only through ``/v1`` and the terminal only through the
simulator's control API; its request log and journal prove what reached the terminal and
what it booked. Timers are small settings; state changes are polled with bounded waits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.simulators.zvt import TEST_CARD, Behaviour, ZvtSimulator
from drivers.zvt import messages as m
from edged.config import TerminalConfig
from tests.daemon_process import UNLIMITED_API, DaemonProcess
from tests.helpers import Api, make_config, running

T = TypeVar("T")

LANE = "lane-z"
PASSWORD = "123456"
ZVT = {"password": PASSWORD, "ack_timeout": 1.0, "link_timeout": 0.3,
       "completion_timeout": 1.5, "customer_timeout": 5.0, "poll_interval": 0.02}
WAIT = 10.0


def make_sim(kind: str = "tcp", **kwargs: Any) -> ZvtSimulator:
    options = {"password": PASSWORD, "slow_delay": 3.0, "ack_timeout": 1.0,
               "link_timeout": 0.3, **kwargs}
    return ZvtSimulator(tcp_port=0, **options) if kind == "tcp" else \
        ZvtSimulator(pty=True, **options)


@pytest.fixture
def sim() -> Iterator[ZvtSimulator]:
    simulator = make_sim()
    simulator.start()
    yield simulator
    simulator.stop()


def lane_config(sim: ZvtSimulator) -> TerminalConfig:
    return TerminalConfig(id=LANE, kind="zvt", options={"address": sim.address, **ZVT},
                          heartbeat_seconds=0.2, max_backoff_seconds=0.3)


async def until(check: Callable[[], Awaitable[T | None]], what: str,
                timeout: float = WAIT) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def lane_state(api: Api, state: str) -> dict[str, Any] | None:
    status, view = await api.get(f"/v1/terminals/{LANE}")
    assert status == 200, view
    return dict(view) if view["state"] == state else None


@pytest.fixture
async def api(tmp_path: Path, sim: ZvtSimulator) -> AsyncIterator[Api]:
    cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
    async with running(cfg) as client:
        await until(lambda: lane_state(client, "online"), "the lane online at start")
        yield client


async def pay(api: Api, amount: int, key: str | None = None) -> dict[str, Any]:
    status, body = await api.post("/v1/payments", {"amount": amount, "currency": "EUR",
                                                   "method": "card_present",
                                                   "terminal": LANE}, key=key)
    assert status == 202, body
    return dict(body)


async def final(api: Api, payment_id: str, state: str | None = None) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await api.get(f"/v1/payments/{payment_id}?wait=2")
        assert status == 200, body
        done = body["state"] != "in_progress" and (state is None or body["state"] == state)
        return dict(body) if done else None

    return await until(check, f"payment {payment_id} to end {state or ''}")


def no_card_number_stored(data_dir: Path) -> None:
    for path in data_dir.glob("edged.db*"):
        assert TEST_CARD.encode() not in path.read_bytes(), f"a PAN in {path.name}"


def commands(sim: ZvtSimulator) -> list[m.Cmd | None]:
    return [r.command.cmd for r in sim.requests
            if r.command.cmd is not m.Cmd.STATUS_ENQUIRY]


# -- sales ------------------------------------------------------------------------------


async def test_approval_keeps_the_receipt_never_the_card_number(
        api: Api, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.LEAKY_RECEIPT)  # a PT that prints the whole number
    done = await final(api, (await pay(api, 1250))["id"])
    assert done["state"] == "approved"
    assert (done["amount"], done["last4"], done["brand"]) == (1250, TEST_CARD[-4:], "visa")
    (booked,) = sim.journal
    assert done["processor_ref"] == f"{booked.receipt:04d}"
    assert "Kartenzahlung" in done["receipt"]
    assert TEST_CARD not in done["receipt"]
    no_card_number_stored(api.daemon.db.path.parent)
    (sale,) = sim.transactions()
    assert (sale.command.amount, sale.command.currency) == (1250, "EUR")
    await until(lambda: lane_state(api, "online"), "the lane free again")


async def test_decline_and_abort_with_their_codes(api: Api, sim: ZvtSimulator) -> None:
    declined = await final(api, (await pay(api, 1313))["id"])
    assert (declined["state"], declined["raw_status"]) == ("declined", "05")
    assert "declined by the card issuer" in declined["failure"]
    unreadable = await final(api, (await pay(api, 1314))["id"])
    assert (unreadable["state"], unreadable["raw_status"]) == ("declined", "64")
    assert "card not readable" in unreadable["failure"]
    sim.push(Behaviour.ABORT)
    aborted = await final(api, (await pay(api, 600))["id"])
    assert (aborted["state"], aborted["raw_status"]) == ("canceled", "6C")
    sim.push(Behaviour.REFUSE)
    status, body = await api.post("/v1/payments", {"amount": 700, "currency": "EUR",
                                                   "method": "card_present",
                                                   "terminal": LANE})
    assert status == 202, body
    refused = await final(api, body["id"])
    assert refused["state"] == "failed"  # 84 xx: the PT started nothing
    assert "84 83" in refused["failure"]
    assert sim.journal == []


async def test_cancel_from_the_register(api: Api, sim: ZvtSimulator) -> None:
    sim.push(Behaviour.SLOW)
    paid = await pay(api, 2000)
    await until(lambda: asyncio.sleep(0, sim.transactions()), "the PT to take the sale")
    status, body = await api.post(f"/v1/payments/{paid['id']}/cancel", {})
    assert status == 200, body
    assert body["state"] == "canceled"
    assert body["raw_status"] == "6C"
    assert sim.journal == []
    assert commands(sim)[-1] is m.Cmd.AUTHORISATION  # the 06 B0 is no new transaction
    assert sim.abort_commands == 1


async def test_cancel_too_late_then_the_outcome_from_the_terminal(
        api: Api, sim: ZvtSimulator) -> None:
    first = await final(api, (await pay(api, 1000))["id"])
    sim.push(Behaviour.NO_COMPLETION)  # approved and booked; the Completion never comes
    paid = await pay(api, 2100)
    await until(lambda: asyncio.sleep(0, len(sim.journal) == 2), "the PT to book it")
    status, body = await api.post(f"/v1/payments/{paid['id']}/cancel", {})
    assert status == 409, body
    assert body["error"]["code"] == "ERR-2030"
    # approved without Completion is never "approved": unknown, then the lane asks the
    # terminal (Repeat receipt) before anything else, and its record settles it
    settled = await final(api, paid["id"], "approved")
    assert settled["processor_ref"] == f"{sim.journal[-1].receipt:04d}"
    assert first["state"] == "approved"
    rows = api.count("audit", f"subject = '{paid['id']}' AND action = 'payment.unknown'"
                     " AND actor = 'terminal'")
    assert rows == 1
    assert api.count("audit", f"subject = '{paid['id']}' AND action = 'payment.approved'"
                     " AND actor = 'terminal'") == 1


async def test_a_lost_answer_is_settled_by_repeat_receipt_before_the_next_sale(
        api: Api, sim: ZvtSimulator) -> None:
    first = await final(api, (await pay(api, 1000))["id"])
    sim.push(Behaviour.DROP)  # accepted, booked, line gone
    lost = await pay(api, 1500)
    settled = await final(api, lost["id"], "approved")
    assert settled["processor_ref"] == f"{sim.journal[1].receipt:04d}"
    await until(lambda: lane_state(api, "online"), "the lane free after settling")
    after = await final(api, (await pay(api, 800))["id"])
    assert after["state"] == "approved"
    assert commands(sim) == [m.Cmd.REGISTRATION, m.Cmd.AUTHORISATION, m.Cmd.AUTHORISATION,
                             m.Cmd.REGISTRATION, m.Cmd.REPEAT_RECEIPT, m.Cmd.AUTHORISATION]
    assert [e.amount for e in sim.journal] == [1000, 1500, 800]  # charged once each
    assert first["state"] == "approved"


async def test_an_unbooked_lost_sale_is_settled_declined(api: Api, sim: ZvtSimulator) -> None:
    await final(api, (await pay(api, 1000))["id"])
    sim.push(Behaviour.DROP_UNBOOKED)
    lost = await pay(api, 1600)
    settled = await final(api, lost["id"], "declined")
    assert "not booked" in settled["failure"]
    assert [e.amount for e in sim.journal] == [1000]


# -- void, refund, end of day ----------------------------------------------------------


async def test_void_is_a_reversal_and_refund_a_credit(api: Api, sim: ZvtSimulator) -> None:
    paid = await final(api, (await pay(api, 3000))["id"])
    status, voided = await api.post(f"/v1/payments/{paid['id']}/void", {})
    assert status == 202, voided

    async def refund_state(refund_id: str, state: str) -> dict[str, Any] | None:
        _, body = await api.get(f"/v1/payments/{paid['id']}")
        (ref,) = [r for r in body["refunds"] if r["id"] == refund_id]
        return ref if ref["state"] == state else None

    done = await until(lambda: refund_state(voided["id"], "succeeded"), "the reversal")
    reversal = sim.transactions()[-1].command
    assert (reversal.cmd, reversal.receipt) == (m.Cmd.REVERSAL, int(paid["processor_ref"]))
    assert done["processor_ref"] == f"{sim.journal[-1].receipt:04d}"
    other = await final(api, (await pay(api, 2000))["id"])
    status, refund = await api.post(f"/v1/payments/{other['id']}/refunds", {"amount": 500})
    assert status == 202, refund
    await until(lambda: asyncio.sleep(0, sim.transactions()[-1].command.cmd is m.Cmd.REFUND
                                      and len(sim.journal) == 4), "the refund booked")
    credit = sim.transactions()[-1].command
    assert (credit.amount, credit.password) == (500, PASSWORD)


async def test_a_refund_whose_answer_was_lost_is_settled_by_the_terminal(
        api: Api, sim: ZvtSimulator) -> None:
    paid = await final(api, (await pay(api, 2500))["id"])
    sim.push(Behaviour.DROP)  # the PT books the refund, the line drops before the result
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 700})
    assert status == 202, refund

    async def refund_row() -> dict[str, Any] | None:
        _, body = await api.get(f"/v1/payments/{paid['id']}")
        (row,) = body["refunds"]
        return row if row["state"] == "succeeded" else None

    done = await until(refund_row, "the refund settled")
    assert done["processor_ref"] == f"{sim.journal[-1].receipt:04d}"
    assert api.count("audit", f"subject = '{refund['id']}' AND action = 'refund.unknown'") == 1
    assert api.count("audit", f"subject = '{refund['id']}' AND action = 'refund.succeeded'"
                     " AND actor = 'terminal'") == 1
    assert [e.kind for e in sim.journal] == ["sale", "refund"]  # refunded once


async def test_end_of_day_matches_then_a_mismatch_raises_an_alert(
        api: Api, sim: ZvtSimulator) -> None:
    await final(api, (await pay(api, 1000))["id"])
    paid = await final(api, (await pay(api, 2000))["id"])
    status, _ = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 300})
    assert status == 202
    await until(lambda: lane_state(api, "online"), "the lane free after the refund")
    status, refused = await api.post(f"/v1/terminals/{LANE}/end-of-day", {})
    assert (status, refused["error"]["code"]) == (403, "ERR-5003")
    status, day = await api.post(f"/v1/terminals/{LANE}/end-of-day", {},
                                 token=api.manager_token)
    assert status == 201, day
    assert (day["terminal_total"], day["daemon_total"], day["mismatch"]) == (2700, 2700, False)
    assert "Kassenschnitt" in day["detail"]["receipt"]

    # the PT takes one cent less than asked: the payment is unknown, the PT's total is not
    sim.push(Behaviour.OTHER_AMOUNT)
    odd = await final(api, (await pay(api, 500))["id"])
    assert odd["state"] == "unknown"
    assert odd["terminal_figures"] == {"amount": 499}
    status, second = await api.post(f"/v1/terminals/{LANE}/end-of-day", {},
                                    token=api.manager_token)
    assert status == 201, second
    assert (second["terminal_total"], second["daemon_total"], second["mismatch"]) == \
        (499, 0, True)
    await api.daemon.services.manager.alerts.evaluate()
    _, alerts = await api.get("/v1/alerts?state=open", token=api.manager_token)
    kinds = {a["kind"]: a for a in alerts["data"]}
    assert kinds["terminal_totals_mismatch"]["subject"] == LANE
    status, report = await api.get("/v1/reports/day", token=api.manager_token)
    assert status == 200
    assert [(t["terminal_total"], t["mismatch"]) for t in report["terminal_settlements"]] == \
        [(2700, False), (499, True)]
    assert [r.command.cmd for r in sim.requests].count(m.Cmd.END_OF_DAY) == 2


async def test_end_of_day_on_a_lane_without_one(tmp_path: Path) -> None:
    async with running(make_config(tmp_path / "data")) as api:
        status, body = await api.post("/v1/terminals/sim-1/end-of-day", {},
                                      token=api.manager_token)
        assert (status, body["error"]["code"]) == (422, "ERR-3020")
        assert api.count("terminal_settlements") == 0


async def test_heartbeat_reconnects_a_closed_line_and_registers_again(
        api: Api, sim: ZvtSimulator) -> None:
    await until(lambda: asyncio.sleep(0, m.Cmd.STATUS_ENQUIRY in
                                      [r.command.cmd for r in sim.requests]),
                "a Status enquiry")
    sim.drop()  # the PT closed the line: the next heartbeat opens it and registers again
    await until(lambda: asyncio.sleep(0, sim.registrations >= 2), "a new registration")
    await until(lambda: lane_state(api, "online"), "the lane online again")
    done = await final(api, (await pay(api, 900))["id"])
    assert done["state"] == "approved"


async def test_a_terminal_gone_is_offline_within_a_heartbeat(tmp_path: Path) -> None:
    sim = make_sim()
    sim.start()
    port = int(sim.address.rsplit(":", 1)[1])
    cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
    async with running(cfg) as api:
        await until(lambda: lane_state(api, "online"), "the lane online")
        sim.stop()
        offline = await until(lambda: lane_state(api, "offline"), "the lane offline")
        assert offline["detail"]
        status, refused = await api.post("/v1/payments", {
            "amount": 300, "currency": "EUR", "method": "card_present", "terminal": LANE})
        assert (status, refused["error"]["code"]) == (503, "ERR-3003")
        assert api.count("payments") == 0
        with ZvtSimulator(tcp_port=port, password=PASSWORD) as back:
            await until(lambda: lane_state(api, "online"), "the lane online again")
            done = await final(api, (await pay(api, 1250))["id"])
            assert done["state"] == "approved"
            assert back.registrations == 1


# -- the serial line --------------------------------------------------------------------


async def test_a_serial_lane_with_nak_and_bad_crc(tmp_path: Path) -> None:
    with make_sim("pty") as sim:
        cfg = make_config(tmp_path / "data", terminals=(lane_config(sim),))
        async with running(cfg) as api:
            await until(lambda: lane_state(api, "online"), "the serial lane online")
            sim.push(Behaviour.NAK_FIRST, Behaviour.CORRUPT_CRC)
            first = await final(api, (await pay(api, 1100))["id"])
            second = await final(api, (await pay(api, 1200))["id"])
            assert (first["state"], second["state"]) == ("approved", "approved")
            assert (sim.naks_sent, sim.naks_received) == (1, 1)
            assert [e.amount for e in sim.journal] == [1100, 1200]
            declined = await final(api, (await pay(api, 1313))["id"])
            assert declined["state"] == "declined"


# -- a real process killed mid-transaction ------------------------------------------------


def write_daemon_config(path: Path, address: str) -> Path:
    lines = ["[api]", *(f"{k} = {v!r}" for k, v in UNLIMITED_API.items()), "",
             "[[terminals]]", f'id = "{LANE}"', 'kind = "zvt"', f'address = "{address}"',
             *(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
               for k, v in ZVT.items()),
             "heartbeat_seconds = 0.2", "max_backoff_seconds = 0.3"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sigkill_mid_sale_is_recovered_at_restart_and_never_charged_twice(
        tmp_path: Path) -> None:
    with make_sim(slow_delay=1.5) as sim:
        config = write_daemon_config(tmp_path / "edged.toml", sim.address)
        body = {"amount": 4321, "currency": "EUR", "method": "card_present", "terminal": LANE}
        with DaemonProcess(tmp_path / "data", config=config) as first:
            register = first.create_token("register-1")
            warm = first.post("/v1/payments", {**body, "amount": 1000}, token=register,
                              key="sale-0")
            assert warm.status == 202, warm.text
            done = first.request("GET", f"/v1/payments/{warm.json()['id']}?wait=10",
                                 token=register, timeout=15).json()
            assert done["state"] == "approved"
            sim.push(Behaviour.SLOW)  # the customer is still at the terminal
            started = first.post("/v1/payments", body, token=register, key="sale-1")
            assert started.status == 202, started.text
            payment = started.json()
            assert sim.wait_for(2, m.Cmd.AUTHORISATION)
            first.kill()

        with first.restarted() as second:
            after = second.request("GET", f"/v1/payments/{payment['id']}?wait=10",
                                   token=register, timeout=15).json()
            assert after["state"] == "approved", after  # the PT's record, read at start
            assert after["processor_ref"] == f"{sim.journal[-1].receipt:04d}"
            again = second.post("/v1/payments", body, token=register, key="sale-1")
            assert again.status == started.status
            assert again.headers.get("Idempotent-Replayed") == "true"
            assert again.json() == payment

        assert [t.command.amount for t in sim.transactions()] == [1000, 4321]
        assert [e.amount for e in sim.journal] == [1000, 4321]
        assert m.Cmd.REPEAT_RECEIPT in [r.command.cmd for r in sim.requests]

    conn = sqlite3.connect(first.db_path)
    try:
        rows = conn.execute("SELECT actor, action FROM audit WHERE subject = ? ORDER BY seq",
                            (payment["id"],)).fetchall()
        assert rows == [("token:register-1", "payment.started"),
                        ("recovery", "payment.approved")]
    finally:
        conn.close()
