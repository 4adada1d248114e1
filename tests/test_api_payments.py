"""Payments through the real HTTP API on 127.0.0.1, against a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from tests.helpers import Api, make_config, running


async def test_cash_payment_is_approved_and_durable(api: Api) -> None:
    status, body = await api.post("/v1/payments", {"amount": 1250, "currency": "EUR",
                                                   "method": "cash", "reference": "R-1"})
    assert status == 201
    assert body["state"] == "approved"
    assert (body["amount"], body["currency"]) == (1250, "EUR")
    assert api.count("payments", f"id = '{body['id']}' AND state = 'approved'") == 1


async def test_same_key_same_body_replays_the_first_answer(api: Api) -> None:
    payment = {"amount": 500, "currency": "EUR", "method": "cash"}
    first = await api.post("/v1/payments", payment, key="k-replay")
    async with api.session.post(api.base + "/v1/payments", json=payment,
                                headers=api.headers("k-replay")) as r:
        again = (r.status, await r.json())
        assert r.headers["Idempotent-Replayed"] == "true"
    assert again == first
    assert api.count("payments") == 1


async def test_answers_are_utf8_json_and_a_replay_is_the_same_answer(api: Api) -> None:
    payment = {"amount": 650, "currency": "EUR", "method": "cash", "reference": "Café ☕"}
    answers = []
    for _ in range(2):
        async with api.session.post(api.base + "/v1/payments", json=payment,
                                    headers=api.headers("k-utf8")) as r:
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            answers.append((r.status, await r.read()))
    assert answers[0] == answers[1]  # byte for byte, from the stored answer
    status, raw = answers[0]
    assert status == 201
    assert "Café ☕".encode() in raw


async def test_same_key_other_body_is_refused_and_changes_nothing(api: Api) -> None:
    await api.post("/v1/payments", {"amount": 500, "currency": "EUR", "method": "cash"},
                   key="k-1")
    status, body = await api.post("/v1/payments",
                                  {"amount": 501, "currency": "EUR", "method": "cash"},
                                  key="k-1")
    assert status == 409
    assert body["error"]["code"] == "ERR-1009"
    assert api.count("payments") == 1


async def test_keys_belong_to_their_token(api: Api) -> None:
    payment = {"amount": 500, "currency": "EUR", "method": "cash"}
    _, a = await api.post("/v1/payments", payment, key="shared")
    _, b = await api.post("/v1/payments", payment, key="shared", token=api.manager_token)
    assert a["id"] != b["id"]


async def test_concurrent_requests_with_one_key_make_one_payment(api: Api) -> None:
    payment = {"amount": 700, "currency": "EUR", "method": "card_present"}
    answers = await asyncio.gather(*(api.post("/v1/payments", payment, key="same")
                                     for _ in range(8)))
    assert {status for status, _ in answers} == {202}
    assert len({body["id"] for _, body in answers}) == 1
    assert api.count("payments") == 1


async def test_concurrent_cash_with_one_key_is_one_payment_and_one_audit_entry(
        api: Api) -> None:
    # A plain cash payment looks its key up inside its own write (no read beforehand): the
    # second writer's stored answer replaces its write, which leaves no trace.
    payment = {"amount": 900, "currency": "EUR", "method": "cash"}
    answers = []

    async def post() -> None:
        async with api.session.post(api.base + "/v1/payments", json=payment,
                                    headers=api.headers("cash-same")) as r:
            answers.append((r.status, await r.json(), r.headers.get("Idempotent-Replayed")))

    await asyncio.gather(*(post() for _ in range(8)))
    assert {status for status, _, _ in answers} == {201}
    assert len({body["id"] for _, body, _ in answers}) == 1
    assert sorted(str(flag) for _, _, flag in answers) == ["None"] + ["true"] * 7
    assert api.count("payments") == 1
    assert api.count("audit", "action = 'payment.approved'") == 1
    assert api.count("idempotency") == 1


async def test_a_stored_key_refuses_another_body_before_checking_it(api: Api) -> None:
    await api.post("/v1/payments", {"amount": 500, "currency": "EUR", "method": "cash"},
                   key="k-order")
    # Not a plain cash body (cash never takes a terminal): looked up first, refused as a
    # reused key exactly as before, not for its own fault.
    status, body = await api.post("/v1/payments", {"amount": 500, "currency": "EUR",
                                                   "method": "cash", "terminal": "sim-1"},
                                  key="k-order")
    assert (status, body["error"]["code"]) == (409, "ERR-1009")


async def test_card_present_on_sim_long_polls_to_approved(api: Api) -> None:
    status, body = await api.post("/v1/payments", {"amount": 1250, "currency": "EUR",
                                                   "method": "card_present",
                                                   "terminal": "sim-1"})
    assert status == 202
    assert body["state"] == "in_progress"
    status, done = await api.get(f"/v1/payments/{body['id']}?wait=10")
    assert status == 200
    assert done["state"] == "approved"
    assert done["last4"] == "4242"
    assert done["auth_code"]


async def test_sim_declines_amounts_ending_in_13(api: Api) -> None:
    _, body = await api.post("/v1/payments", {"amount": 1013, "currency": "EUR",
                                              "method": "card_present"})
    _, done = await api.get(f"/v1/payments/{body['id']}?wait=10")
    assert done["state"] == "declined"


async def test_one_transaction_per_terminal_and_cancel(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, sim={"delay": 600})) as api:
        _, first = await api.post("/v1/payments", {"amount": 900, "currency": "EUR",
                                                   "method": "card_present"})
        status, busy = await api.post("/v1/payments", {"amount": 901, "currency": "EUR",
                                                       "method": "card_present"})
        assert status == 409
        assert busy["error"]["code"] == "ERR-3002"
        assert busy["error"]["retryable"] is True
        assert api.count("payments") == 1
        _, terminal = await api.get("/v1/terminals/sim-1")
        assert terminal["state"] == "busy"
        assert terminal["busy_with"] == first["id"]

        # a long-poll whose time runs out answers the payment as it stands, still running
        status, waited = await api.get(f"/v1/payments/{first['id']}?wait=0.2")
        assert (status, waited["state"]) == (200, "in_progress")

        status, canceled = await api.post(f"/v1/payments/{first['id']}/cancel", {})
        assert status == 200
        assert canceled["state"] == "canceled"
        _, terminal = await api.get("/v1/terminals/sim-1")
        assert terminal["state"] == "online"


async def test_cancel_of_an_approved_payment_is_refused(api: Api) -> None:
    _, paid = await api.post("/v1/payments", {"amount": 300, "currency": "EUR",
                                              "method": "cash"})
    status, body = await api.post(f"/v1/payments/{paid['id']}/cancel", {})
    assert status == 409
    assert body["error"]["code"] == "ERR-2005"


async def test_cash_refunds_up_to_the_amount(api: Api) -> None:
    _, paid = await api.post("/v1/payments", {"amount": 1000, "currency": "EUR",
                                              "method": "cash"})
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds",
                                    {"amount": 600, "reason": "returned"})
    assert status == 201
    assert refund["state"] == "succeeded"
    status, too_much = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 401})
    assert status == 422
    assert too_much["error"]["code"] == "ERR-2007"
    _, after = await api.get(f"/v1/payments/{paid['id']}")
    assert after["refunded"] == 600
    assert api.count("refunds") == 1


async def test_card_refund_runs_on_the_terminal(api: Api) -> None:
    _, paid = await api.post("/v1/payments", {"amount": 2000, "currency": "EUR",
                                              "method": "card_present"})
    await api.get(f"/v1/payments/{paid['id']}?wait=10")
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 2000})
    assert status == 202
    assert refund["state"] == "pending"
    for _ in range(200):
        _, payment = await api.get(f"/v1/payments/{paid['id']}?wait=0")
        if payment["refunds"][0]["state"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert payment["refunds"][0]["state"] == "succeeded"


async def test_list_pages_with_a_cursor(api: Api) -> None:
    ids = []
    for i in range(5):
        _, body = await api.post("/v1/payments", {"amount": 100 + i, "currency": "EUR",
                                                  "method": "cash"})
        ids.append(body["id"])
    seen = []
    cursor = ""
    while True:
        _, page = await api.get(f"/v1/payments?limit=2&cursor={cursor}")
        seen += [p["id"] for p in page["data"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
    status, bad = await api.get("/v1/payments?cursor=nonsense")
    assert status == 400
    assert bad["error"]["code"] == "ERR-1013"


async def test_replay_survives_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    payment = {"amount": 4200, "currency": "EUR", "method": "cash"}
    async with running(cfg) as api:
        _, first = await api.post("/v1/payments", payment, key="restart-key")
        token = api.token
    async with running(cfg) as api:
        status, again = await api.post("/v1/payments", payment, key="restart-key", token=token)
        assert status == 201
        assert again["id"] == first["id"]
        assert api.count("payments") == 1


async def test_unknown_payment_is_resolved_by_a_manager_with_audit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sim={"delay": 0.01, "unknown_suffix": 99})
    async with running(cfg) as api:
        _, paid = await api.post("/v1/payments", {"amount": 1099, "currency": "EUR",
                                                  "method": "card_present"})
        _, silent = await api.get(f"/v1/payments/{paid['id']}?wait=10")
        assert silent["state"] == "unknown"
        body = {"outcome": "approved", "note": "journal shows approval 123456"}
        status, refused = await api.post(f"/v1/payments/{paid['id']}/resolve", body)
        assert status == 403
        assert refused["error"]["code"] == "ERR-5003"
        status, resolved = await api.post(f"/v1/payments/{paid['id']}/resolve", body,
                                          key="resolve-1", token=api.manager_token)
        assert status == 200
        assert resolved["state"] == "approved"
        assert api.count("audit", f"action = 'payment.resolved' AND subject = '{paid['id']}'"
                         " AND actor = 'token:manager-1'") == 1
        status, again = await api.post(f"/v1/payments/{paid['id']}/resolve", body,
                                       key="resolve-1", token=api.manager_token)
        assert (status, again) == (200, resolved)  # the first answer, not a second resolve
        status, twice = await api.post(f"/v1/payments/{paid['id']}/resolve", body,
                                       token=api.manager_token)
        assert (status, twice["error"]["code"]) == (409, "ERR-2008")
        assert api.count("audit", "action = 'payment.resolved'") == 1


async def test_payment_left_in_progress_is_unknown_after_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sim={"delay": 600})
    async with running(cfg) as api:
        _, paid = await api.post("/v1/payments", {"amount": 1500, "currency": "EUR",
                                                  "method": "card_present"})
        db_path = api.daemon.db.path
    # the clean stop above leaves it in progress, as a power cut would
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT state FROM payments").fetchone()[0] == "in_progress"
    conn.close()
    async with running(cfg) as api:
        _, after = await api.get(f"/v1/payments/{paid['id']}")
        assert after["state"] == "unknown"
        assert api.count("audit", "actor = 'recovery'") == 1


async def test_cancel_names_its_payment_and_never_aborts_another(tmp_path: Path) -> None:
    """Defect 8: a cancel for a payment the lane is not running gets 409 ERR-3007 and the
    lane's own transaction goes on (here: a payment whose end could not be recorded stayed
    in_progress while the lane moved on to the next customer)."""
    async with running(make_config(tmp_path, sim={"delay": 600})) as api:
        _, running_now = await api.post("/v1/payments", {"amount": 900, "currency": "EUR",
                                                         "method": "card_present"})
        conn = sqlite3.connect(api.daemon.db.path)
        conn.execute("INSERT INTO payments (id, method, state, amount, currency, terminal_id,"
                     " created_at, updated_at) VALUES ('pay_stale', 'card_present',"
                     " 'in_progress', 500, 'EUR', 'sim-1', 't0', 't0')")
        conn.commit()
        conn.close()
        status, body = await api.post("/v1/payments/pay_stale/cancel", {})
        assert status == 409, body
        assert body["error"]["code"] == "ERR-3007"
        assert running_now["id"] in body["error"]["message"]
        _, terminal = await api.get("/v1/terminals/sim-1")
        assert terminal["busy_with"] == running_now["id"]
        _, still = await api.get(f"/v1/payments/{running_now['id']}")
        assert still["state"] == "in_progress"
        status, canceled = await api.post(f"/v1/payments/{running_now['id']}/cancel", {})
        assert status == 200 and canceled["state"] == "canceled", canceled


async def test_sync_jobs_show_payment_method_tokens_to_managers_only(tmp_path: Path) -> None:
    from edged.config import ProcessorConfig  # noqa: PLC0415

    # Stripe configured but unreachable and without a key: the forward row waits in the outbox
    cfg = make_config(tmp_path / "data", stripe=ProcessorConfig(base_url="http://127.0.0.1:9"))
    async with running(cfg) as api:
        status, payment = await api.post("/v1/payments", {
            "amount": 1200, "currency": "EUR", "method": "token",
            "token": "pm_1SecretCardToken", "processor": "stripe"})
        assert status == 202, payment
        status, jobs = await api.get("/v1/sync/jobs", token=api.token)  # a register
        assert status == 200
        (job,) = jobs["data"]
        assert job["payload"]["token"] == "[redacted]"
        assert job["payload"]["amount"] == 1200  # the rest stays readable
        assert "pm_1SecretCardToken" not in str(jobs)
        status, jobs = await api.get("/v1/sync/jobs", token=api.manager_token)
        assert jobs["data"][0]["payload"]["token"] == "pm_1SecretCardToken"


async def test_once_a_register_can_read_the_outcome_the_lane_takes_the_next_sale(
        tmp_path: Path) -> None:
    """The lane is free by the time a terminal's outcome is committed, so a register that
    polls (without a long-poll) and starts the next sale at once is never told busy."""
    async with running(make_config(tmp_path, sim={"delay": 0.02})) as api:
        payments = api.daemon.payments
        record = payments._finish_payment
        answers: list[tuple[int, Any]] = []
        asked = asyncio.Event()

        async def then_next_sale(result: Any, payment_id: str) -> None:
            await record(result, payment_id)  # committed: a GET now reads the final state
            if not answers:
                _, seen = await api.get(f"/v1/payments/{payment_id}")
                assert seen["state"] == "approved", seen
                answers.append(await api.post("/v1/payments", {
                    "amount": 1200, "currency": "EUR", "method": "card_present"}))
                asked.set()

        payments._finish_payment = then_next_sale  # type: ignore[method-assign]
        _, first = await api.post("/v1/payments", {"amount": 1100, "currency": "EUR",
                                                   "method": "card_present"})
        _, done = await api.get(f"/v1/payments/{first['id']}?wait=10")
        assert done["state"] == "approved"
        await asyncio.wait_for(asked.wait(), 10)
        ((status, second),) = answers
        assert status == 202, second
        _, after = await api.get(f"/v1/payments/{second['id']}?wait=10")
        assert after["state"] == "approved"
