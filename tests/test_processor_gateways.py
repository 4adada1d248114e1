"""The Stripe and Square gateways against the loopback fakes, over real HTTP, real SDKs.

Time is a ManualClock for the limiters and the fakes; the only real waits are the HTTP
round trips (and one short client timeout per processor).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest
import stripe
from square import AsyncSquare

from sync.core.errors import (
    OutcomeUnknown,
    PermanentError,
    RefusedInDoubt,
    Throttled,
    TransientError,
)
from sync.core.gateway import OutboxRow, RowFailure, Work, WorkResult
from sync.square_api.gateway import SquareGateway, SquareSettings, square_key
from sync.stripe_api.gateway import StripeGateway, StripeSettings
from tests.clock import ManualClock
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe

STRIPE_KEY = "sk_test_edged0001"
SQUARE_TOKEN = "sq-test-token"  # noqa: S105 - a test double's token
PI_PATH = "POST /v1/payment_intents"
REFUND_PATH = "POST /v1/refunds"

_ids = iter(range(1, 10_000))


def make_work(destination: str, kind: str, payload: Mapping[str, Any], key: str | None = None,
              *, unknown: bool = False, row_id: int | None = None) -> Work:
    rid = row_id if row_id is not None else next(_ids)
    key = key or f"ed-{rid:032x}"  # 35 characters, like edged.outbox.new_key()
    row = OutboxRow(id=rid, destination=destination, kind=kind, subject_id=str(rid),
                    idempotency_key=key, payload=payload, attempts=0, last_error=None,
                    created_at="2026-11-26T12:00:00.000Z")
    return Work(destination=destination, kind=kind, idempotency_key=key, rows=(row,),
                payload=payload, outcome_unknown=unknown)


def again(work: Work, *, unknown: bool = True) -> Work:
    """The same row sent again (same key, same payload), as the engine does."""
    return Work(destination=work.destination, kind=work.kind, idempotency_key=work.idempotency_key,
                rows=work.rows, payload=work.payload, attempt=work.attempt + 1,
                outcome_unknown=unknown)


def applied(result: WorkResult, work: Work) -> Mapping[str, Any]:
    assert not result.dead and not result.conflict, result
    return result.applied[work.rows[0].id]


def dead(result: WorkResult, work: Work) -> RowFailure:
    assert not result.applied, result
    return result.dead[work.rows[0].id]


def forward(token: str, *, amount: int = 1250, payment_id: str = "pay_1",
            reference: str | None = "R-1", **extra: Any) -> dict[str, Any]:
    return {"payment_id": payment_id, "amount": amount, "currency": "EUR", "token": token,
            "reference": reference, "created_at": "2026-11-26T11:59:00.000Z", **extra}


def refund(processor_ref: str, amount: int, *, refund_id: str = "ref_1",
           reason: str | None = "returned") -> dict[str, Any]:
    return {"refund_id": refund_id, "payment_id": "pay_1", "processor_ref": processor_ref,
            "amount": amount, "currency": "EUR", "reason": reason}


async def settle_tasks(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- Stripe ---------------------------------------------------------------------------------


class StripeEnv:
    def __init__(self, fake: FakeStripe, clock: ManualClock, key: list[str | None]) -> None:
        self.fake, self.clock, self.key = fake, clock, key
        self.gateway = StripeGateway(StripeSettings(base_url=fake.base_url, timeout=5.0),
                                     lambda: key[0], clock)

    async def send(self, work: Work) -> WorkResult:
        return await self.gateway.send(work)

    def posts(self, path: str = PI_PATH) -> int:
        return self.fake.stats.by_path[path]


@pytest.fixture
async def stripe_env() -> AsyncIterator[StripeEnv]:
    clock = ManualClock()
    async with FakeStripe(rate=None, clock=clock.monotonic) as fake:
        env = StripeEnv(fake, clock, [STRIPE_KEY])
        try:
            yield env
        finally:
            await env.gateway.close()


async def stripe_auth(fake: FakeStripe, amount: int) -> str:
    """A card payment authorised and not captured (what a card-present flow leaves)."""
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": fake.base_url},
                                 http_client=http, max_network_retries=0)
    try:
        pi = await client.v1.payment_intents.create_async(
            {"amount": amount, "currency": "eur", "confirm": True,
             "payment_method": "pm_card_visa", "capture_method": "manual"})
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
    assert pi.status == "requires_capture"
    return pi.id


async def test_stripe_forward_approved_and_replayed(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    answer = applied(await stripe_env.send(work), work)
    assert answer["status"] == "succeeded" and answer["processor_ref"].startswith("pi_")
    pi = fake.payment_intents[answer["processor_ref"]]
    assert (pi["amount"], pi["currency"], pi["metadata"]) == (
        1250, "eur", {"edged_payment_id": "pay_1"})
    assert pi["payment_method_types"] == ["card"]
    sent = next(r for r in fake.requests if r.path == "/v1/payment_intents")
    assert sent.headers["Idempotency-Key"] == work.idempotency_key
    assert "off_session=true" in sent.body.decode()

    # the same row again (say the daemon crashed before recording the answer): same object
    assert applied(await stripe_env.send(again(work, unknown=False)), work) == answer
    assert fake.executions[work.idempotency_key] == 1 and fake.replays[work.idempotency_key] == 1
    assert len(fake.payment_intents) == 1


def test_stripe_brand_and_last4_come_from_the_expanded_charge() -> None:
    """The fake's charges carry no card details; Stripe's expanded latest_charge does."""
    pi = stripe.PaymentIntent.construct_from({
        "id": "pi_x", "object": "payment_intent", "status": "succeeded",
        "latest_charge": {"id": "ch_x", "object": "charge", "payment_method_details": {
            "type": "card", "card": {"brand": "visa", "last4": "4242", "exp_year": 2030}}},
    }, STRIPE_KEY)
    work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    settled = StripeGateway._settle_payment(work.rows[0], pi)
    assert settled is not None
    assert applied(settled, work) == {"processor_ref": "pi_x", "status": "succeeded",
                                      "brand": "visa", "last4": "4242"}


async def test_stripe_forward_declined_is_dead_and_never_resent(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    work = make_work("stripe", "payment.forward",
                     forward("pm_card_chargeDeclinedInsufficientFunds"))
    failure = dead(await stripe_env.send(work), work)
    assert failure.code == "ERR-6071"
    assert "insufficient funds" in failure.message and "insufficient_funds" in failure.message

    # an attempt in doubt reads the declined PaymentIntent back: still dead, nothing sent
    failure = dead(await stripe_env.send(again(work)), work)
    assert failure.code == "ERR-6071"
    assert stripe_env.posts() == 1 and fake.executions[work.idempotency_key] == 1


async def test_stripe_lost_answer_is_read_back_not_resent(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    work = make_work("stripe", "payment.forward", forward("pm_card_mastercard"))
    fake.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await stripe_env.send(work)
    assert len(fake.payment_intents) == 1  # the charge was made; its answer was lost

    answer = applied(await stripe_env.send(again(work)), work)
    assert answer["status"] == "succeeded"
    assert answer["processor_ref"] == next(iter(fake.payment_intents))
    assert stripe_env.posts() == 1, "read back, not resent"
    assert len(fake.charges) == 1 and fake.executions[work.idempotency_key] == 1


async def test_stripe_search_lag_waits_for_the_read_back() -> None:
    """Search is eventually consistent: a miss resends under the same key, which only
    replays the stored 500 (no second charge) until search shows the PaymentIntent."""
    clock = ManualClock()
    async with FakeStripe(rate=None, clock=clock.monotonic, search_delay=30.0) as fake:
        env = StripeEnv(fake, clock, [STRIPE_KEY])
        try:
            work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
            fake.faults.fail(500, count=1, fail_after_apply=True)
            with pytest.raises(OutcomeUnknown):
                await env.send(work)
            with pytest.raises(OutcomeUnknown, match="replayed"):
                await env.send(again(work))
            assert fake.replays[work.idempotency_key] == 1
            clock.advance(31.0)
            answer = applied(await env.send(again(work)), work)
            assert answer["processor_ref"] in fake.payment_intents
            assert len(fake.payment_intents) == 1 and len(fake.charges) == 1
            assert fake.executions[work.idempotency_key] == 1
        finally:
            await env.gateway.close()


async def test_stripe_500_before_execution_is_sent_again(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    fake.faults.fail(503, count=1)
    with pytest.raises(OutcomeUnknown):
        await stripe_env.send(work)
    assert not fake.payment_intents
    answer = applied(await stripe_env.send(again(work)), work)  # searched, found nothing, sent
    assert answer["status"] == "succeeded" and len(fake.payment_intents) == 1
    assert stripe_env.posts() == 2 and fake.executions[work.idempotency_key] == 1


async def test_stripe_timeout_after_apply_is_read_back() -> None:
    clock = ManualClock()
    async with FakeStripe(rate=None, clock=clock.monotonic) as fake:
        gateway = StripeGateway(StripeSettings(base_url=fake.base_url, timeout=0.3),
                                lambda: STRIPE_KEY, clock)
        try:
            work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
            fake.faults.hang(after_apply=True)
            with pytest.raises(OutcomeUnknown):
                await gateway.send(work)
            await fake.faults.restore()
            answer = applied(await gateway.send(again(work)), work)
            assert answer["processor_ref"] in fake.payment_intents
            assert fake.stats.by_path[PI_PATH] == 1 and len(fake.charges) == 1
        finally:
            await gateway.close()


async def test_stripe_key_reused_with_another_body(stripe_env: StripeEnv) -> None:
    work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    applied(await stripe_env.send(work), work)
    other = make_work("stripe", "payment.forward", forward("pm_card_visa", amount=999),
                      key=work.idempotency_key)
    with pytest.raises(RefusedInDoubt) as refused:  # the first request under it ran
        await stripe_env.send(other)
    assert refused.value.code == "ERR-6073"


async def test_stripe_invalid_request_is_permanent(stripe_env: StripeEnv) -> None:
    work = make_work("stripe", "payment.forward", forward("tok_not_a_payment_method"))
    with pytest.raises(PermanentError) as refused:
        await stripe_env.send(work)
    assert refused.value.code == "ERR-6070" and "resource_missing" in refused.value.message


async def test_stripe_refunds_full_partial_refused_and_read_back(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    pay = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    pi = applied(await stripe_env.send(pay), pay)["processor_ref"]

    part = make_work("stripe", "refund.create", refund(pi, 500, refund_id="ref_part"))
    answer = applied(await stripe_env.send(part), part)
    assert answer["status"] == "succeeded" and answer["processor_ref"].startswith("re_")
    stored = fake.refunds[answer["processor_ref"]]
    assert stored["amount"] == 500 and stored["metadata"]["edged_refund_id"] == "ref_part"
    assert stored["metadata"]["edged_reason"] == "returned" and stored["reason"] is None

    too_much = make_work("stripe", "refund.create", refund(pi, 800, refund_id="ref_big"))
    failure = dead(await stripe_env.send(too_much), too_much)
    assert failure.code == "ERR-6074" and "amount_too_large" in failure.message

    rest = make_work("stripe", "refund.create",
                     refund(pi, 750, refund_id="ref_rest", reason="requested_by_customer"))
    fake.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await stripe_env.send(rest)
    answer = applied(await stripe_env.send(again(rest)), rest)  # listed, matched by metadata
    assert fake.refunds[answer["processor_ref"]]["reason"] == "requested_by_customer"
    assert stripe_env.posts(REFUND_PATH) == 3 and len(fake.refunds) == 2
    charge = fake.charges[fake.payment_intents[pi]["latest_charge"]]
    assert charge["refunded"] is True and charge["amount_refunded"] == 1250

    full_pay = make_work("stripe", "payment.forward",
                         forward("pm_card_visa", amount=900, payment_id="pay_2"))
    pi2 = applied(await stripe_env.send(full_pay), full_pay)["processor_ref"]
    full = make_work("stripe", "refund.create", refund(pi2, 900, refund_id="ref_full"))
    assert applied(await stripe_env.send(full), full)["status"] == "succeeded"
    again_full = make_work("stripe", "refund.create", refund(pi2, 100, refund_id="ref_more"))
    failure = dead(await stripe_env.send(again_full), again_full)
    assert failure.code == "ERR-6074" and "already been refunded" in failure.message


async def test_stripe_capture_and_cancel(stripe_env: StripeEnv) -> None:
    fake = stripe_env.fake
    pi = await stripe_auth(fake, 700)
    capture = make_work("stripe", "payment.capture",
                        {"payment_id": "pay_c", "processor_ref": pi, "amount": 600})
    fake.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await stripe_env.send(capture)
    answer = applied(await stripe_env.send(again(capture)), capture)  # retrieved, not resent
    assert answer == {"processor_ref": pi, "status": "succeeded", "amount": 600}
    assert stripe_env.posts(f"POST /v1/payment_intents/{pi}/capture") == 1

    pi2 = await stripe_auth(fake, 400)
    cancel = make_work("stripe", "payment.cancel", {"payment_id": "pay_d", "processor_ref": pi2})
    assert applied(await stripe_env.send(cancel), cancel) == {"processor_ref": pi2,
                                                             "status": "canceled"}
    assert fake.payment_intents[pi2]["status"] == "canceled"
    sent = next(r for r in fake.requests if r.path.endswith("/cancel"))
    assert sent.headers["Idempotency-Key"] == cancel.idempotency_key

    late = make_work("stripe", "payment.cancel", {"payment_id": "pay_c", "processor_ref": pi})
    with pytest.raises(PermanentError) as refused:
        await stripe_env.send(late)
    assert refused.value.code == "ERR-6070" and "succeeded" in refused.value.message


async def test_stripe_429_throttles_and_blocks_the_bucket(stripe_env: StripeEnv) -> None:
    fake, clock, gateway = stripe_env.fake, stripe_env.clock, stripe_env.gateway
    fake.faults.throttle(count=1, retry_after=2.0)
    work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
    with pytest.raises(Throttled) as throttled:
        await gateway.send(work)
    assert throttled.value.wait == pytest.approx(2.0)
    assert gateway.bucket.snapshot().blocked_for == pytest.approx(2.0)

    task = asyncio.create_task(gateway.send(again(work, unknown=False)))
    await settle_tasks()
    assert not task.done() and clock.sleeping == 1
    assert fake.stats.requests == 1  # nothing sent while blocked
    clock.advance(1.5)
    await settle_tasks()
    assert not task.done()
    clock.advance(0.5)
    assert applied(await task, work)["status"] == "succeeded"
    assert gateway.bucket.snapshot().consecutive_429 == 0


async def test_stripe_unreachable_and_credentials() -> None:
    clock = ManualClock()
    key: list[str | None] = [None]
    async with FakeStripe(rate=None, api_key=STRIPE_KEY, clock=clock.monotonic) as fake:
        env = StripeEnv(fake, clock, key)
        try:
            work = make_work("stripe", "payment.forward", forward("pm_card_visa"))
            with pytest.raises(TransientError, match=r"edged secret set stripe\.key"):
                await env.send(work)
            assert fake.stats.requests == 0

            # refused before any connection is pooled (a pooled one that the server dropped
            # would be a send whose outcome is unknown)
            key[0] = STRIPE_KEY
            await fake.faults.refuse()
            with pytest.raises(TransientError) as unreachable:
                await env.send(work)
            assert not isinstance(unreachable.value, Throttled)
            assert "nothing was sent" in str(unreachable.value)
            await fake.faults.restore()

            key[0] = "sk_test_revoked0001"
            with pytest.raises(TransientError, match="ERR-6072") as refused:
                await env.send(work)
            assert "edged secret set stripe.key" in str(refused.value)
            assert "revoked" not in str(refused.value)

            key[0] = STRIPE_KEY  # a new key is picked up without a restart
            assert applied(await env.send(work), work)["status"] == "succeeded"
        finally:
            await env.gateway.close()


# -- Square ---------------------------------------------------------------------------------


class SquareEnv:
    def __init__(self, fake: FakeSquare, clock: ManualClock, token: list[str | None],
                 timeout: float = 5.0) -> None:
        self.fake, self.clock, self.token = fake, clock, token
        self.gateway = SquareGateway(
            SquareSettings(base_url=fake.base_url, location_id="LSTORE01", timeout=timeout),
            lambda: token[0], clock)

    async def send(self, work: Work) -> WorkResult:
        return await self.gateway.send(work)


@pytest.fixture
async def square_env() -> AsyncIterator[SquareEnv]:
    clock = ManualClock()
    async with FakeSquare(token=SQUARE_TOKEN, rate=None, clock=clock.monotonic) as fake:
        env = SquareEnv(fake, clock, [SQUARE_TOKEN])
        try:
            yield env
        finally:
            await env.gateway.close()


async def square_auth(fake: FakeSquare, amount: int, key: str) -> str:
    """A card payment authorised and not completed (delayed capture)."""
    async with httpx.AsyncClient() as http:
        sq = AsyncSquare(token=SQUARE_TOKEN, base_url=fake.base_url, httpx_client=http)
        r = await sq.payments.create(source_id="cnon:card-nonce-ok", idempotency_key=key,
                                     amount_money={"amount": amount, "currency": "EUR"},
                                     autocomplete=False, request_options={"max_retries": 0})
    assert r.payment is not None and r.payment.status == "APPROVED"
    payment_id: str | None = r.payment.id
    assert payment_id is not None
    return payment_id


def count(fake: FakeSquare, method: str, path: str) -> int:
    return fake.stats.by_path[f"{method} {path}"]


async def test_square_forward_approved_and_replayed(square_env: SquareEnv) -> None:
    fake = square_env.fake
    work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok",
                                                         location_id="LSTORE01"))
    answer = applied(await square_env.send(work), work)
    assert answer["status"] == "COMPLETED"
    assert (answer["brand"], answer["last4"]) == ("VISA", "1111")
    payment = fake.payments[answer["processor_ref"]]
    assert payment["amount_money"] == {"amount": 1250, "currency": "EUR"}
    assert (payment["reference_id"], payment["location_id"], payment["note"]) == (
        "R-1", "LSTORE01", "edged pay_1")
    body = fake.requests[0].json()
    assert body["idempotency_key"] == work.idempotency_key

    assert applied(await square_env.send(again(work, unknown=False)), work) == answer
    assert fake.executions[work.idempotency_key] == 1 and len(fake.payments) == 1


async def test_square_forward_declined_is_dead(square_env: SquareEnv) -> None:
    fake = square_env.fake
    work = make_work("square", "payment.forward", forward("cnon:card-nonce-declined"))
    failure = dead(await square_env.send(work), work)
    assert failure.code == "ERR-6071" and "CARD_DECLINED" in failure.message
    failure = dead(await square_env.send(again(work)), work)  # replayed decline: still dead
    assert failure.code == "ERR-6071"
    assert fake.executions[work.idempotency_key] == 1 and len(fake.payments) == 1


async def test_square_lost_answer_is_read_back_by_its_key(square_env: SquareEnv) -> None:
    fake = square_env.fake
    work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
    fake.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await square_env.send(work)
    assert fake.stats.requests == 1, "the SDK must not retry by itself"
    answer = applied(await square_env.send(again(work)), work)
    assert answer["processor_ref"] == next(iter(fake.payments))
    assert len(fake.payments) == 1 and fake.executions[work.idempotency_key] == 1
    assert fake.replays[work.idempotency_key] == 1


async def test_square_timeout_after_apply_is_read_back() -> None:
    clock = ManualClock()
    async with FakeSquare(token=SQUARE_TOKEN, rate=None, clock=clock.monotonic) as fake:
        env = SquareEnv(fake, clock, [SQUARE_TOKEN], timeout=0.3)
        try:
            work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
            fake.faults.hang(after_apply=True)
            with pytest.raises(OutcomeUnknown):
                await env.send(work)
            await fake.faults.restore()
            answer = applied(await env.send(again(work)), work)
            assert answer["processor_ref"] in fake.payments and len(fake.payments) == 1
        finally:
            await env.gateway.close()


async def test_square_refunds_full_partial_refused_and_lost(square_env: SquareEnv) -> None:
    fake = square_env.fake
    pay = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
    pid = applied(await square_env.send(pay), pay)["processor_ref"]

    part = make_work("square", "refund.create", refund(pid, 500, refund_id="ref_part"))
    answer = applied(await square_env.send(part), part)
    assert answer["status"] == "PENDING"
    stored = fake.refunds[answer["processor_ref"]]
    assert stored["amount_money"] == {"amount": 500, "currency": "EUR"}
    assert stored["payment_id"] == pid and stored["reason"] == "returned"

    too_much = make_work("square", "refund.create", refund(pid, 800, refund_id="ref_big"))
    failure = dead(await square_env.send(too_much), too_much)
    assert failure.code == "ERR-6074" and "REFUND_AMOUNT_INVALID" in failure.message

    rest = make_work("square", "refund.create", refund(pid, 750, refund_id="ref_rest"))
    fake.faults.fail(502, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await square_env.send(rest)
    applied(await square_env.send(again(rest)), rest)
    assert len(fake.refunds) == 2 and fake.executions[rest.idempotency_key] == 1
    assert fake.payments[pid]["refunded_money"]["amount"] == 1250

    unknown = make_work("square", "refund.create", refund("NO-SUCH-PAYMENT", 100))
    assert dead(await square_env.send(unknown), unknown).code == "ERR-6074"


async def test_square_capture_and_cancel(square_env: SquareEnv) -> None:
    fake = square_env.fake
    held = await square_auth(fake, 700, "auth-1")
    wrong = make_work("square", "payment.capture",
                      {"payment_id": "pay_c", "processor_ref": held, "amount": 600})
    with pytest.raises(PermanentError) as refused:
        await square_env.send(wrong)
    assert refused.value.code == "ERR-6070"
    assert count(fake, "POST", f"/v2/payments/{held}/complete") == 0

    capture = make_work("square", "payment.capture",
                        {"payment_id": "pay_c", "processor_ref": held, "amount": 700})
    assert applied(await square_env.send(capture), capture) == {
        "processor_ref": held, "status": "COMPLETED", "amount": 700}
    assert applied(await square_env.send(again(capture)), capture)["status"] == "COMPLETED"
    assert count(fake, "POST", f"/v2/payments/{held}/complete") == 1  # read back the 2nd time

    other = await square_auth(fake, 400, "auth-2")
    cancel = make_work("square", "payment.cancel", {"payment_id": "pay_d",
                                                    "processor_ref": other})
    fake.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await square_env.send(cancel)
    assert applied(await square_env.send(again(cancel)), cancel) == {
        "processor_ref": other, "status": "CANCELED"}
    assert count(fake, "POST", f"/v2/payments/{other}/cancel") == 1

    late = make_work("square", "payment.cancel", {"payment_id": "pay_c", "processor_ref": held})
    with pytest.raises(PermanentError) as refused:
        await square_env.send(late)
    assert refused.value.code == "ERR-6070" and "COMPLETED" in refused.value.message


async def test_square_429_throttles_and_blocks_the_bucket(square_env: SquareEnv) -> None:
    fake, clock, gateway = square_env.fake, square_env.clock, square_env.gateway
    fake.faults.throttle(count=1, retry_after=3.0)
    work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
    with pytest.raises(Throttled) as throttled:
        await gateway.send(work)
    assert throttled.value.wait == pytest.approx(3.0)
    assert fake.stats.requests == 1, "the SDK must not retry the 429 by itself"

    task = asyncio.create_task(gateway.send(again(work, unknown=False)))
    await settle_tasks()
    assert not task.done() and clock.sleeping == 1 and fake.stats.requests == 1
    clock.advance(3.0)
    assert applied(await task, work)["status"] == "COMPLETED"


async def test_square_unreachable_and_credentials() -> None:
    clock = ManualClock()
    token: list[str | None] = [None]
    async with FakeSquare(token=SQUARE_TOKEN, rate=None, clock=clock.monotonic) as fake:
        env = SquareEnv(fake, clock, token)
        try:
            work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
            with pytest.raises(TransientError, match=r"edged secret set square\.token"):
                await env.send(work)
            assert fake.stats.requests == 0

            token[0] = SQUARE_TOKEN
            await fake.faults.refuse()
            with pytest.raises(TransientError, match="nothing was sent"):
                await env.send(work)
            await fake.faults.restore()

            token[0] = "sq-revoked"
            with pytest.raises(TransientError, match="ERR-6072"):
                await env.send(work)

            token[0] = SQUARE_TOKEN
            assert applied(await env.send(work), work)["status"] == "COMPLETED"
        finally:
            await env.gateway.close()


async def test_square_key_reused_with_another_body(square_env: SquareEnv) -> None:
    work = make_work("square", "payment.forward", forward("cnon:card-nonce-ok"))
    applied(await square_env.send(work), work)
    other = make_work("square", "payment.forward", forward("cnon:card-nonce-ok", amount=1),
                      key=work.idempotency_key)
    with pytest.raises(RefusedInDoubt) as refused:  # the first request under it ran
        await square_env.send(other)
    assert refused.value.code == "ERR-6073"


def test_square_keys_fit_45_characters() -> None:
    short = "ed-" + "a" * 32
    assert square_key(short) == short
    long = "edb-" + "b" * 60
    assert len(square_key(long)) <= 45 and square_key(long) == square_key(long)
    assert square_key(long) != square_key(long + "c")


# -- both -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda clock: StripeGateway(StripeSettings(base_url="http://127.0.0.1:9"), lambda: "k",
                                clock),
    lambda clock: SquareGateway(SquareSettings(base_url="http://127.0.0.1:9"), lambda: "k",
                                clock),
])
async def test_unknown_kind_and_batches_are_refused(make: Callable[[ManualClock], Any]) -> None:
    gateway = make(ManualClock())
    try:
        assert gateway.batch_limit("payment.forward") == 1
        work = make_work(gateway.destination, "order.create", {"x": 1})
        with pytest.raises(PermanentError):
            await gateway.send(work)
    finally:
        await gateway.close()
