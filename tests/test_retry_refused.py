"""A manager's retry never charges a payment that is settled (issue 16 item 5).

A real daemon in-process, the real stripe SDK against the Stripe fake. Rests on Stripe's
documented idempotency: a request refused before execution (a 400) does not store its key,
so the same key sent again executes: a retry of a dead forward whose payment was recorded
``failed`` would charge the card.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from tests.fakes.stripe import FakeStripe
from tests.helpers import running
from tests.test_sync_e2e import (
    e2e_config,
    intents_for,
    jobs,
    payment_state,
    prepare,
    reaches,
    token_payment,
    until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("card", "fault", "settled"), [
    ("pm_card_visa", 400, "failed"),  # refused before anything was charged
    ("pm_card_chargeDeclined", None, "declined"),
])
async def test_a_dead_forward_of_a_settled_payment_is_not_retried(
        tmp_path: Path, card: str, fault: int | None, settled: str) -> None:
    async with FakeStripe() as stripe:
        cfg = e2e_config(tmp_path / "data", None, stripe)
        prepare(cfg, None)
        async with running(cfg) as api:
            if fault is not None:
                stripe.faults.fail(fault, count=1)
            status, body = await token_payment(api, 1500, card)
            assert status == 202, body
            payment_id = body["id"]
            await until(partial(reaches, api, payment_id, settled), f"the payment {settled}")
            (job,) = await until(partial(jobs, api, "dead", "stripe"), "the forward to die")
            charged = len(intents_for(stripe, payment_id))
            requests = stripe.stats.requests

            status, refused = await api.post(f"/v1/sync/jobs/{job['id']}/retry", {},
                                             token=api.manager_token)
            assert status == 409, refused
            assert refused["error"]["code"] == "ERR-6017"
            assert f"is {settled}" in refused["error"]["message"]
            assert await payment_state(api, payment_id) == settled
            (still,) = await jobs(api, "dead", "stripe")
            assert (still["id"], still["attempts"]) == (job["id"], job["attempts"])
            assert stripe.stats.requests == requests
            assert len(intents_for(stripe, payment_id)) == charged
            # the page offers no retry, and says why
            (still,) = await jobs(api, "dead", "stripe")
            assert f"is {settled}" in still["retry_refused"], still
            status, page = await api.get("/v1/status", token=api.manager_token)
            assert status == 200
            [dead] = page["dead_jobs"]
            assert dead["retry_refused"] == still["retry_refused"]
            # discarding it stays possible
            status, discarded = await api.post(f"/v1/sync/jobs/{job['id']}/discard", {},
                                               token=api.manager_token)
            assert status == 200 and discarded["state"] == "discarded", discarded
