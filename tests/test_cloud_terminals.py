"""Cloud terminal lanes end to end: the daemon's HTTP API, the real stripe and squareup SDKs,
the loopback fakes of Stripe Terminal and Square Terminal.

Every test drives a real daemon through ``/v1`` (in-process, or a subprocess for the
SIGKILL) and judges both sides: the payment the register sees, and what the processor
holds (PaymentIntents, the reader's action, checkouts, keys). Nothing sleeps for timing:
every wait polls with a bound.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import pytest
from aiohttp import web

from edged.app import Daemon
from edged.config import Config, OfflineConfig, ProcessorConfig, SyncConfig, TerminalConfig
from edged.config.upkeep import StorageConfig
from edged.lan import tokens
from edged.store import secrets
from edged.store.database import open_sync
from sync.core.breaker import BreakerSettings, CircuitBreaker
from sync.core.clock import SystemClock
from sync.core.limiter import TokenBucket, TokenBucketSettings
from sync.stripe_api.terminal import StripeTerminalClient, StripeTerminalSettings
from tests.daemon_process import UNLIMITED_API, DaemonProcess
from tests.event_tap import EventTap, breaker_opened
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe
from tests.helpers import Api, make_config, running
from tests.small_disk import fill, small_filesystem

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

STRIPE_KEY = "sk_test_cloud"
SQUARE_TOKEN = "sq-test-cloud"  # noqa: S105 - the fake takes any non-empty token
READER = "tmr_FakeCounter1"
DEVICE = "995CS397A6475287"
WAIT = 15.0
POLL = {"poll_interval": 0.02, "poll_max": 0.1, "link_grace": 30.0}


async def until(probe: Callable[[], Awaitable[T | None]], what: str,
                timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 f" (last: {value!r})")
        await asyncio.sleep(0.02)


def cloud_config(data_dir: Path, stripe: FakeStripe | None, square: FakeSquare | None, *,
                 customer_timeout: float = 30.0) -> Config:
    lanes = []
    if stripe is not None:
        lanes.append(TerminalConfig(id="reader-1", kind="stripe_reader",
                                    options={"reader_id": READER, **POLL},
                                    heartbeat_seconds=0.2, max_backoff_seconds=0.2,
                                    customer_timeout=customer_timeout))
    if square is not None:
        lanes.append(TerminalConfig(id="square-1", kind="square_terminal",
                                    options={"device_id": DEVICE, **POLL},
                                    heartbeat_seconds=0.2, max_backoff_seconds=0.2,
                                    customer_timeout=customer_timeout))
    cfg = replace(
        make_config(data_dir), terminals=tuple(lanes),
        stripe=ProcessorConfig(base_url=stripe.base_url) if stripe else None,
        square=ProcessorConfig(base_url=square.base_url) if square else None,
        sync=SyncConfig(request_timeout=5.0, breaker_break_seconds=0.5, quick_retries=1))
    data_dir.mkdir(parents=True, exist_ok=True)
    if stripe is not None:
        secrets.cli_set(data_dir, "stripe.key", io.StringIO(STRIPE_KEY + "\n"), env={})
    if square is not None:
        secrets.cli_set(data_dir, "square.token", io.StringIO(SQUARE_TOKEN + "\n"), env={})
    return cfg


@asynccontextmanager
async def fakes(stripe: bool = True, square: bool = True
                ) -> AsyncIterator[tuple[FakeStripe, FakeSquare]]:
    async with FakeStripe(rate=None) as st, FakeSquare(rate=None) as sq:
        st.add_reader(READER)
        sq.add_device(DEVICE)
        yield st, sq


async def pay(api: Api, terminal: str, amount: int = 1250,
              key: str | None = None, currency: str = "EUR") -> tuple[int, Any]:
    return await api.post("/v1/payments", {"amount": amount, "currency": currency,
                                           "method": "card_present", "terminal": terminal},
                          key=key)


async def final(api: Api, payment_id: str) -> dict[str, Any]:
    status, body = await api.get(f"/v1/payments/{payment_id}?wait=10")
    assert status == 200, body
    assert body["state"] not in ("pending", "in_progress"), body
    return dict(body)


async def lane_state(api: Api, terminal: str) -> str:
    status, body = await api.get(f"/v1/terminals/{terminal}")
    assert status == 200, body
    return str(body["state"])


def reader_intent(st: FakeStripe) -> Callable[[], Awaitable[str | None]]:
    async def probe() -> str | None:
        return st.reader_intent(READER) if st.readers[READER]["action"] and \
            st.readers[READER]["action"]["status"] == "in_progress" else None
    return probe


def square_checkout(sq: FakeSquare) -> Callable[[], Awaitable[str | None]]:
    async def probe() -> str | None:
        live = [c for c in sq.device_checkouts(DEVICE) if c["status"] == "PENDING"]
        return str(live[-1]["id"]) if live else None
    return probe


# -- Stripe reader ------------------------------------------------------------------------


async def test_stripe_reader_approves_with_the_card_from_the_charge(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        calls_before = st.stats.requests
        status, body = await pay(api, "reader-1", 1250)
        assert status == 202, body
        intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
        pi = st.payment_intents[intent_id]
        assert pi["allowed_payment_method_types"] == ["card_present"]
        assert pi["metadata"] == {"edged_payment_id": body["id"]}
        assert pi["amount"] == 1250 and pi["currency"] == "eur"
        st.present_payment_method(READER, "4242424242424242")
        done = await final(api, body["id"])
        assert done["state"] == "approved", done
        assert (done["brand"], done["last4"]) == ("VISA", "4242")
        assert done["processor_ref"] == intent_id
        assert done["auth_code"]
        assert pi["status"] == "succeeded"
        creates = [r for r in st.requests if r.path == "/v1/payment_intents"]
        assert len(creates) == 1
        assert creates[0].headers["Idempotency-Key"] == f"edged-{body['id']}-pi"
        # the register's answer needed two calls; the rest is polling that stopped at the end
        polls = st.stats.by_path[f"GET /v1/terminal/readers/{READER}"]
        assert st.stats.requests - calls_before >= 3
        assert "4242424242424242" not in json.dumps(done)
        after = st.stats.requests
        await asyncio.sleep(0.3)  # heartbeats go on, payment polling does not
        # one read per poll: the reader's action comes with its PaymentIntent and charge
        assert st.stats.by_path[f"GET /v1/payment_intents/{intent_id}"] == 0
        reads = [r for r in st.requests if r.path == f"/v1/terminal/readers/{READER}"]
        assert "latest_charge" in reads[-1].query_string
        assert st.stats.requests - after <= 3, (polls, st.stats.by_path)


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want


async def test_stripe_reader_decline_carries_stripes_code(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        status, body = await pay(api, "reader-1", 990)
        assert status == 202, body
        await until(reader_intent(st), "the reader to get the PaymentIntent")
        st.present_payment_method(READER, "4000000000009995")
        done = await final(api, body["id"])
        assert done["state"] == "declined", done
        assert "insufficient_funds" in done["failure"]
        assert done["raw_status"] == "insufficient_funds"
        assert await until(lambda: _is(lane_state(api, "reader-1"), "online"), "lane free")
        # Stripe keeps a declined PaymentIntent open (requires_payment_method) for another
        # attempt; edged makes none, so it cancels it: no reader can charge it later
        intent = done["processor_ref"]

        async def canceled() -> bool | None:
            return st.payment_intents[intent]["status"] == "canceled" or None
        await until(canceled, "the declined PaymentIntent cancelled")
        assert st.stats.by_path[f"POST /v1/payment_intents/{intent}/cancel"] == 1


async def test_stripe_reader_cancel_from_the_register(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        status, body = await pay(api, "reader-1", 500)
        assert status == 202, body
        intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
        status, canceled = await api.post(f"/v1/payments/{body['id']}/cancel", {})
        assert status == 200, canceled
        assert canceled["state"] == "canceled", canceled
        assert st.payment_intents[intent_id]["status"] == "canceled"
        action = st.readers[READER]["action"]
        assert action is None or action["status"] != "in_progress"
        assert st.stats.by_path[f"POST /v1/terminal/readers/{READER}/cancel_action"] == 1
        # the customer taps too late: nothing to charge
        with pytest.raises(Exception, match="no in-progress action"):
            st.present_payment_method(READER)


async def test_stripe_reader_offline_and_busy_answer_at_once(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        # offline at Stripe but not yet seen by the heartbeat: process_payment_intent says
        st.set_reader_status(READER, "offline")
        status, body = await pay(api, "reader-1", 700, key="k-offline")
        assert status == 503, body
        assert body["error"]["code"] == "ERR-3003"
        assert "terminal_reader_offline" in body["error"]["message"]
        failed = await api.get("/v1/payments?state=failed")
        assert len(failed[1]["data"]) == 1
        assert all(pi["status"] == "canceled" for pi in st.payment_intents.values())
        assert await lane_state(api, "reader-1") == "offline"
        status, body = await pay(api, "reader-1", 700, key="k-offline")
        assert (status, body["error"]["code"]) == (503, "ERR-3003")
        st.set_reader_status(READER, "online")
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader back")
        # the same key goes through now that the reader is back (the refusal was not kept)
        status, body = await pay(api, "reader-1", 700, key="k-offline")
        assert status == 202, body
        await until(reader_intent(st), "the reader to get the PaymentIntent")
        st.present_payment_method(READER)
        assert (await final(api, body["id"]))["state"] == "approved"

        # busy with another integration's action: Stripe's terminal_reader_busy
        st.occupy_reader(READER)
        status, body = await pay(api, "reader-1", 800)
        assert status == 409, body
        assert body["error"]["code"] == "ERR-3002"
        assert "terminal_reader_busy" in body["error"]["message"]


async def test_stripe_link_lost_mid_payment_and_restored(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        status, body = await pay(api, "reader-1", 1500)
        assert status == 202, body
        await until(reader_intent(st), "the reader to get the PaymentIntent")
        await st.faults.refuse()
        refused_from = st.stats.requests
        st.present_payment_method(READER)  # the customer pays while the link is down
        await asyncio.sleep(0.3)
        status, still = await api.get(f"/v1/payments/{body['id']}")
        assert still["state"] == "in_progress", still
        await st.faults.restore()
        done = await final(api, body["id"])
        assert done["state"] == "approved", done
        assert st.stats.requests > refused_from


async def test_stripe_cancel_while_the_link_is_down_waits_for_it(tmp_path: Path) -> None:
    """A register's cancel during an outage is not an unknown: the stop is sent when the
    link returns (within link_grace), and Stripe's answer decides.

    The cancel call waits (up to 10 s) for the payment to end; the outage lasts while it
    waits, until the stop has been refused and tried again (the breaker opened twice)."""
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        status, body = await pay(api, "reader-1", 1700)
        assert status == 202, body
        intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
        async with EventTap(api, "sync") as breaker:
            await st.faults.refuse()
            cancel = asyncio.ensure_future(api.post(f"/v1/payments/{body['id']}/cancel", {}))
            await until(lambda: _holds(breaker.count(breaker_opened("stripe")) >= 2),
                        "the stop to meet the outage")
            status, still = await api.get(f"/v1/payments/{body['id']}")
            assert still["state"] == "in_progress", still
            await st.faults.restore()
            status, answer = await cancel
        assert answer["state"] in ("in_progress", "canceled"), answer
        done = await final(api, body["id"])
        assert done["state"] == "canceled", done
        assert st.payment_intents[intent_id]["status"] == "canceled"


async def test_stripe_lost_answer_to_the_create_is_read_back(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        st.faults.fail(500, count=1, fail_after_apply=True)
        status, body = await pay(api, "reader-1", 1800)
        assert status == 202, body
        assert len(st.payment_intents) == 1
        # the create happened; its answer was lost: the daemon finds it and never creates
        # another one under another key, then hands it to the reader
        intent_id = await until(reader_intent(st), "the reader to get the PaymentIntent")
        assert intent_id in st.payment_intents
        st.present_payment_method(READER)
        done = await final(api, body["id"])
        assert done["state"] == "approved", done
        assert len(st.payment_intents) == 1
        keys = {r.headers.get("Idempotency-Key") for r in st.requests
                if r.path == "/v1/payment_intents" and r.method == "POST"}
        assert keys <= {f"edged-{body['id']}-pi"}


@pytest.mark.parametrize(("took", "pays"), [(True, True), (True, False), (False, False)])
async def test_a_reader_refusal_other_than_offline_or_busy_is_read_back(
        tmp_path: Path, took: bool, pays: bool) -> None:
    """Issue 16 item 8. Only ``terminal_reader_offline`` and ``terminal_reader_busy`` say
    nothing reached the reader. Another refusal of ``process_payment_intent`` (a reader
    timeout) is followed by reading the PaymentIntent back: charged meanwhile → approved;
    not charged → stopped and canceled at Stripe, then ``failed`` (503, nothing charged)."""
    async with fakes(square=False) as (st, _), running(cloud_config(tmp_path, st, None)) as api:
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        st.refuse_next_process(READER, took=took, then=(
            lambda: st.present_payment_method(READER)) if pays else None)
        status, body = await pay(api, "reader-1", 1900)
        [intent] = st.payment_intents.values()
        if pays:
            assert status == 202, body
            done = await final(api, body["id"])
            assert done["state"] == "approved", done
            assert done["processor_ref"] == intent["id"] and intent["status"] == "succeeded"
        else:
            assert (status, body["error"]["code"]) == (503, "ERR-3003"), body
            assert "nothing was charged" in body["error"]["message"]
            assert intent["status"] == "canceled"
            _, failed = await api.get("/v1/payments?state=failed")
            assert len(failed["data"]) == 1
            action = st.readers[READER]["action"]
            assert action is None or action["status"] != "in_progress"  # the reader is free
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the lane free")


class HeldCreateStripe(FakeStripe):
    """Holds every PaymentIntent create until ``release`` is set, and notes, as each
    ``process_payment_intent`` arrives, which payments the daemon's database file holds."""

    def __init__(self, db: Path) -> None:
        super().__init__(rate=None)
        self.db = db
        self.creating = asyncio.Event()
        self.release = asyncio.Event()
        self.stored_at_process: list[list[tuple[str, str]]] = []

    async def _h_pi_create(self, request: web.Request) -> web.Response:
        self.creating.set()
        await self.release.wait()
        return await super()._h_pi_create(request)

    async def _h_reader_process(self, request: web.Request) -> web.Response:
        self.stored_at_process.append(stored_payments(self.db))
        return await super()._h_reader_process(request)


def stored_payments(db: Path) -> list[tuple[str, str]]:
    """The payments committed to the database file (read-only, as any other process)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, state FROM payments")]
    finally:
        conn.close()


async def test_the_payment_is_written_while_its_paymentintent_is_created(
        tmp_path: Path) -> None:
    """Issue 22 item 4. Stripe: a PaymentIntent waits in ``requires_payment_method`` until
    ``process_payment_intent`` hands it to a reader; nothing can charge it before. So its
    create goes out while the payment is written (the commit no longer waits for Stripe's
    round trip), the reader is handed it only once the payment is in the database file, and
    its id is stored before the register is answered."""
    st = HeldCreateStripe(tmp_path / "edged.db")
    async with st, running(cloud_config(tmp_path, st, None)) as api:
        st.add_reader(READER)
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        sale = asyncio.ensure_future(pay(api, "reader-1", 2100, key="k-beside"))
        await asyncio.wait_for(st.creating.wait(), WAIT)
        # Stripe holds the create: the payment is written meanwhile, not after
        written = await until(lambda: _holds(bool(stored_payments(st.db))),
                              "the payment written during the create", timeout=5.0)
        assert written
        [(payment_id, state)] = stored_payments(st.db)
        assert state == "in_progress"
        assert not sale.done() and st.stored_at_process == []
        st.release.set()
        status, body = await sale
        assert status == 202, body
        assert body["id"] == payment_id
        assert st.stored_at_process == [[(payment_id, "in_progress")]]
        [intent_id] = st.payment_intents
        assert body["processor_ref"] == intent_id  # the 202 names it, though written after
        _, now = await api.get(f"/v1/payments/{payment_id}")
        assert now["processor_ref"] == intent_id
        status, replay = await pay(api, "reader-1", 2100, key="k-beside")
        assert (status, replay) == (202, body)  # and so does its replay
        st.present_payment_method(READER)
        done = await final(api, payment_id)
        assert (done["state"], done["processor_ref"]) == ("approved", intent_id), done


async def test_a_paymentintent_refused_while_the_payment_is_written(tmp_path: Path) -> None:
    """Stripe refuses the create of a PaymentIntent below its minimum charge amount
    (docs.stripe.com/currencies: EUR 0.50; a 400 ``invalid_request_error``,
    ``amount_too_small``, param ``amount``), after the payment was written beside it. That
    refuses the sale as asked, not the reader: the register hears 422 ERR-3010 at once with
    Stripe's reason, the payment is stored ``failed`` (nothing was charged, no reader had
    anything), and the lane stays online: the next sale goes through at once (before,
    503 ERR-3003 and the lane offline until the next heartbeat)."""
    st = HeldCreateStripe(tmp_path / "edged.db")
    st.release.set()
    async with st, running(cloud_config(tmp_path, st, None)) as api:
        st.add_reader(READER)
        await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader online")
        status, body = await pay(api, "reader-1", 30, key="k-too-small")
        assert (status, body["error"]["code"]) == (422, "ERR-3010"), body
        assert "amount_too_small" in body["error"]["message"]
        assert "nothing was charged" in body["error"]["message"]
        [(payment_id, state)] = stored_payments(st.db)
        assert (payment_id, state) == (body["error"]["details"]["payment"], "failed")
        _, failed = await api.get(f"/v1/payments/{payment_id}")
        assert failed["failure"].startswith("the processor refused the sale: amount_too_small")
        assert "nothing was charged" in failed["failure"], failed
        assert st.payment_intents == {} and st.stored_at_process == []
        assert await lane_state(api, "reader-1") == "online"  # at once, no heartbeat
        status, again = await pay(api, "reader-1", 2200, key="k-next-sale")
        assert status == 202, again
        await until(reader_intent(st), "the reader to get the PaymentIntent")
        st.present_payment_method(READER)
        assert (await final(api, again["id"]))["state"] == "approved"


async def test_a_payment_the_full_disk_refused_leaves_no_paymentintent_open(
        tmp_path: Path) -> None:
    """The PaymentIntent is created beside the payment's write (issue 22 item 4). When
    the write fails (the data directory's file system full: SQLite's own refusal, the
    space guard off), the register hears 503 ERR-1019 and nothing is stored; the
    PaymentIntent no reader has is cancelled at Stripe, and the lane is idle, not left
    holding the sale: once space returns the next sale goes through."""
    with small_filesystem(tmp_path / "small") as small:
        async with fakes(square=False) as (st, _):
            cfg = replace(cloud_config(small / "data", st, None),
                          storage=StorageConfig(min_free_mb=0))
            async with running(cfg) as api:
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "reader")
                filler = fill(small)
                status, body = 0, {}
                for n in range(100):  # free pages inside the file take a few sales first
                    status, body = await pay(api, "reader-1", 1000 + n, key=f"full-{n}")
                    if status != 202:
                        break
                    await until(reader_intent(st), "the reader to get the PaymentIntent")
                    st.present_payment_method(READER)
                    await final(api, body["id"])
                assert (status, body["error"]["code"]) == (503, "ERR-1019"), body
                refused = [pi for pi in st.payment_intents.values()
                           if pi["status"] != "succeeded"]
                assert len(refused) == 1  # the one created beside the failed write

                async def cancelled() -> bool | None:
                    return refused[0]["status"] == "canceled" or None
                await until(cancelled, "the unused PaymentIntent cancelled")
                assert st.reader_intent(READER) != refused[0]["id"]
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "lane idle")
                filler.unlink()
                status, again = await pay(api, "reader-1", 4200, key="after-space")
                assert status == 202, again
                await until(reader_intent(st), "the reader to get the PaymentIntent")
                st.present_payment_method(READER)
                assert (await final(api, again["id"]))["state"] == "approved"


# -- Square Terminal ----------------------------------------------------------------------


async def test_square_terminal_completed_with_payment_ids(tmp_path: Path) -> None:
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        status, body = await pay(api, "square-1", 2300, key="k-square")
        assert status == 202, body
        checkout_id = await until(square_checkout(sq), "the checkout")
        assert body["processor_ref"] == checkout_id  # the 202 names the checkout
        assert await pay(api, "square-1", 2300, key="k-square") == (202, body)  # its replay
        checkout = sq.checkouts[checkout_id]
        assert checkout["amount_money"] == {"amount": 2300, "currency": "EUR"}
        assert checkout["device_options"]["device_id"] == DEVICE
        sq.checkout_in_progress(checkout_id)
        square_payment = sq.checkout_complete(checkout_id)
        done = await final(api, body["id"])
        assert done["state"] == "approved", done
        assert done["processor_ref"] == square_payment
        assert (done["brand"], done["last4"]) == ("VISA", "1111")
        assert sq.executions[f"edged-{body['id']}-co"] == 1


async def test_square_decline_then_customer_timeout_is_declined(tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path, None, None)
    async with fakes(stripe=False) as (_, sq):
        cfg = cloud_config(tmp_path, None, sq, customer_timeout=0.6)
        async with running(cfg) as api:
            await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device")
            status, body = await pay(api, "square-1", 410)
            checkout_id = await until(square_checkout(sq), "the checkout")
            sq.checkout_declined(checkout_id)  # stays IN_PROGRESS while the customer retries
            await until(lambda: _holds(sq.checkouts[checkout_id]["status"] ==
                                       "CANCEL_REQUESTED"), "the cancel at the timeout")
            sq.checkout_canceled(checkout_id, "SELLER_CANCELED")
            done = await final(api, body["id"])
            assert done["state"] == "declined", done
            assert "did not pay" in done["failure"]

            # untouched checkout (PENDING) at the timeout: canceled
            status, body = await pay(api, "square-1", 420)
            assert status == 202, body
            done = await final(api, body["id"])
            assert done["state"] == "canceled", done


async def test_square_link_lost_mid_payment_and_restored(tmp_path: Path) -> None:
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        status, body = await pay(api, "square-1", 1900)
        assert status == 202, body
        checkout_id = await until(square_checkout(sq), "the checkout")
        await sq.faults.refuse()
        refused_from = sq.stats.requests
        sq.checkout_in_progress(checkout_id)
        sq.checkout_complete(checkout_id)  # the customer pays while the link is down
        await asyncio.sleep(0.3)
        status, still = await api.get(f"/v1/payments/{body['id']}")
        assert still["state"] == "in_progress", still
        await sq.faults.restore()
        done = await final(api, body["id"])
        assert done["state"] == "approved", done
        assert sq.stats.requests > refused_from
        assert sq.executions[f"edged-{body['id']}-co"] == 1


async def test_square_cancel_while_the_link_is_down_waits_for_it(tmp_path: Path) -> None:
    """As with Stripe: the cancel call waits for the payment to end while the outage lasts,
    until the stop has been refused and tried again (the breaker opened twice)."""
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        status, body = await pay(api, "square-1", 1300)
        assert status == 202, body
        checkout_id = await until(square_checkout(sq), "the checkout")
        async with EventTap(api, "sync") as breaker:
            await sq.faults.refuse()
            cancel = asyncio.ensure_future(api.post(f"/v1/payments/{body['id']}/cancel", {}))
            await until(lambda: _holds(breaker.count(breaker_opened("square")) >= 2),
                        "the stop to meet the outage")
            status, still = await api.get(f"/v1/payments/{body['id']}")
            assert still["state"] == "in_progress", still
            await sq.faults.restore()
            await cancel
        done = await final(api, body["id"])
        assert done["state"] == "canceled", done
        assert sq.checkouts[checkout_id]["status"] == "CANCELED"


async def _holds(value: bool) -> bool:
    return value


async def test_square_cancel_from_the_register(tmp_path: Path) -> None:
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        status, body = await pay(api, "square-1", 610)
        checkout_id = await until(square_checkout(sq), "the checkout")
        status, canceled = await api.post(f"/v1/payments/{body['id']}/cancel", {})
        assert status == 200, canceled
        assert canceled["state"] == "canceled", canceled
        assert sq.checkouts[checkout_id]["status"] == "CANCELED"


async def test_a_checkout_square_refuses_refuses_the_sale_not_the_terminal(
        tmp_path: Path) -> None:
    """The store's terminals take EUR; the Square account behind the lane is a British
    seller's, which takes GBP only. Square refuses the checkout: a 400 ``INVALID_VALUE`` on
    ``checkout.amount_money.currency`` (``INVALID_VALUE`` is among the codes Square's
    OpenAPI lists for ``CreateTerminalCheckout``; the words are those Square's developer
    forum shows for a payment in another currency). None of the codes it lists names a
    device, and a checkout for an offline Terminal is accepted and left ``PENDING``: the
    refusal is of the sale as asked. The register hears 422 ERR-3010 with Square's code and
    words (which tell the technician what to fix), the payment is ``failed`` with nothing
    made, and the lane stays online: once the account takes the sale's currency (the fake's
    switched) the next sale goes through at once, with no PING first (before: 503 ERR-3003,
    retryable, and the lane held offline, which sent the technician to the Terminal)."""
    async with FakeSquare(rate=None, currency="GBP") as sq, \
            running(cloud_config(tmp_path, None, sq)) as api:
        sq.add_device(DEVICE)
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        calls = sq.stats.requests
        status, body = await pay(api, "square-1", 1500, key="k-euros")
        assert (status, body["error"]["code"]) == (422, "ERR-3010"), body
        message = body["error"]["message"]
        assert "INVALID_VALUE" in message and "only process payments in GBP" in message
        assert "nothing was charged" in message
        payment_id = body["error"]["details"]["payment"]
        _, failed = await api.get(f"/v1/payments/{payment_id}")
        assert failed["state"] == "failed", failed
        assert failed["failure"].startswith("the processor refused the sale:"), failed
        assert sq.checkouts == {}
        assert await lane_state(api, "square-1") == "online"
        assert sq.stats.requests == calls + 1  # the refused create alone: no PING since
        sq.currency = "EUR"
        status, again = await pay(api, "square-1", 1500, key="k-euros")  # the key forgotten
        assert status == 202, again
        checkout_id = await until(square_checkout(sq), "the checkout")
        sq.checkout_in_progress(checkout_id)
        sq.checkout_complete(checkout_id)
        assert (await final(api, again["id"]))["state"] == "approved"


# -- Square availability, as Square documents it (issue 16 item 1) ------------------------


class OffsetClock:
    """The fake's monotonic clock, moved forward by the test (deadlines at Square)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_a_healthy_square_terminal_takes_payments_without_the_devices_api(
        tmp_path: Path) -> None:
    """Square's OpenAPI: ``Device.id`` is synthetic (``device:…``), not the Terminal API's
    ``device_id``, so ``GET /v2/devices/{device_id}`` is a 404 for a healthy Terminal; a
    ``PING`` terminal action tells whether it answers. The lane never reads the Devices API:
    it pings, and the checkout decides."""
    async with fakes(stripe=False) as (_, sq), running(cloud_config(tmp_path, None, sq)) as api:
        assert not any(d == DEVICE for d in sq.devices)  # the Devices API's id is another
        await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device online")
        status, body = await pay(api, "square-1", 1250)
        assert status == 202, body
        checkout_id = await until(square_checkout(sq), "the checkout")
        # the checkout's id is stored before the register is answered (item 7)
        assert api.count("payments", f"id = '{body['id']}' AND processor_ref = "
                                      f"'{checkout_id}'") == 1
        sq.checkout_complete(checkout_id)
        assert (await final(api, body["id"]))["state"] == "approved"
        pings = [r for r in sq.requests if r.path == "/v2/terminals/actions"]
        assert pings and all(r.json()["action"] == {"device_id": DEVICE, "type": "PING",
                                                    "deadline_duration": "PT30S"}
                             for r in pings)
        assert not [r for r in sq.requests if r.path.startswith("/v2/devices")]


async def test_an_offline_terminal_is_a_checkout_still_pending_at_its_deadline(
        tmp_path: Path) -> None:
    """Square accepts a checkout for a Terminal that is off and keeps it PENDING until its
    deadline: the payment is canceled once Square confirms the cancel (never approved
    without COMPLETED), and the lane is offline until the Terminal answers a PING."""
    clock = OffsetClock()
    async with FakeSquare(rate=None, clock=clock) as sq:
        sq.add_device(DEVICE)
        cfg = cloud_config(tmp_path, None, sq, customer_timeout=0.6)
        async with running(cfg) as api:
            await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device")
            sq.set_device_status(DEVICE, "OFFLINE")  # not seen yet: no PING is due
            status, body = await pay(api, "square-1", 620)
            assert status == 202, body
            done = await final(api, body["id"])
            assert done["state"] == "canceled", done
            assert "never showed the checkout" in done["failure"]
            [checkout] = sq.device_checkouts(DEVICE)
            assert checkout["status"] == "CANCELED" and not checkout.get("payment_ids")
            # at once, before any heartbeat: the lane knows the Terminal did not show it
            status, refused = await pay(api, "square-1", 625)
            assert (status, refused["error"]["code"]) == (503, "ERR-3003"), refused
            assert "never showed the checkout" in refused["error"]["message"]
            await until(lambda: _is(lane_state(api, "square-1"), "offline"), "offline")
            status, refused = await pay(api, "square-1", 630)
            assert (status, refused["error"]["code"]) == (503, "ERR-3003"), refused
            assert len(sq.checkouts) == 1  # nothing sent to a lane known offline
            await until(lambda: _holds(any(a["status"] == "PENDING"
                                           for a in sq.actions.values())), "a PING sent")
            clock.offset += 31  # the PING's deadline passes unanswered: still offline
            await asyncio.sleep(0.5)
            assert await lane_state(api, "square-1") == "offline"
            sq.set_device_status(DEVICE, "AVAILABLE")
            await until(lambda: _is(lane_state(api, "square-1"), "online"), "back online")
            timed_out = [a for a in sq.actions.values() if a["status"] == "CANCELED"]
            assert timed_out and {a["cancel_reason"] for a in timed_out} == {"TIMED_OUT"}


async def test_a_read_that_cannot_say_never_turns_the_lane_offline(tmp_path: Path) -> None:
    """Square unreachable, or a PING not answered yet: the lane stays as it was, and a
    payment's checkout decides (here: the link is back and the customer pays)."""
    async with fakes(stripe=False) as (_, sq):
        cfg = cloud_config(tmp_path, None, sq)
        cfg = replace(cfg, terminals=tuple(
            replace(t, options={**t.options, "ping_interval": 0.1}) for t in cfg.terminals))
        async with running(cfg) as api:
            await until(lambda: _is(lane_state(api, "square-1"), "online"), "the device")
            await sq.faults.refuse()
            before = sq.stats.requests
            await asyncio.sleep(0.6)  # heartbeats every 0.2 s try to ping and cannot
            assert await lane_state(api, "square-1") == "online"
            sq.reachable[DEVICE] = False  # PINGs go unanswered, not yet timed out
            await sq.faults.restore()
            await until(lambda: _holds(sq.stats.requests > before), "a PING read")
            await asyncio.sleep(0.5)
            assert await lane_state(api, "square-1") == "online"
            sq.reachable[DEVICE] = True
            status, body = await pay(api, "square-1", 700)
            assert status == 202, body
            checkout_id = await until(square_checkout(sq), "the checkout")
            sq.checkout_complete(checkout_id)
            assert (await final(api, body["id"]))["state"] == "approved"


# -- SIGKILL and reconciliation -----------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def process_config(path: Path, st: FakeStripe, sq: FakeSquare) -> Path:
    lines = ["[api]", *(f"{k} = {_toml(v)}" for k, v in UNLIMITED_API.items()),
             "[stripe]", f"base_url = {_toml(st.base_url)}",
             "[square]", f"base_url = {_toml(sq.base_url)}",
             "[sync]", "request_timeout = 5.0", "breaker_break_seconds = 0.5",
             "quick_retries = 1"]
    for lane, kind, key, device in (("reader-1", "stripe_reader", "reader_id", READER),
                                    ("square-1", "square_terminal", "device_id", DEVICE)):
        lines += ["[[terminals]]", f"id = {_toml(lane)}", f"kind = {_toml(kind)}",
                  f"{key} = {_toml(device)}", "customer_timeout = 30.0",
                  "heartbeat_seconds = 0.5", *(f"{k} = {_toml(v)}" for k, v in POLL.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def process_daemon(tmp_path: Path, data: Path, st: FakeStripe, sq: FakeSquare
                   ) -> tuple[DaemonProcess, str]:
    """A daemon as its own process (not started) on both fakes, and a register's token."""
    cloud_config(data, st, sq)  # the secrets
    config = process_config(tmp_path / "edged.toml", st, sq)
    return DaemonProcess(data, config=config), new_token(data)


def new_token(data_dir: Path) -> str:
    conn = open_sync(data_dir / "edged.db")
    try:
        conn.execute("BEGIN IMMEDIATE")
        token = tokens.create(conn, "lane-1", "register")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return token


@asynccontextmanager
async def process_api(daemon: DaemonProcess, token: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(cast(Daemon, daemon), session, token, token)


@dataclass
class Restartable:
    """The daemon as a process of its own, killed and started again by a test."""

    daemon: DaemonProcess
    token: str

    def api(self) -> AbstractAsyncContextManager[Api]:
        return process_api(self.daemon, self.token)

    async def restart(self) -> None:
        self.daemon = self.daemon.restarted()
        await asyncio.to_thread(self.daemon.start)


@asynccontextmanager
async def search_lagging(tmp_path: Path) -> AsyncIterator[tuple[FakeStripe, Restartable]]:
    """Both fakes, Stripe's search lagging for the whole test (Stripe's docs: new objects
    are searchable "in under 1 minute"; the fake's ``search_delay``), and the daemon
    started with its reader lane online: what a restart finds must come from elsewhere."""
    async with fakes(square=True) as (st, sq):
        st.search_delay = 3600.0
        daemon, token = process_daemon(tmp_path, tmp_path / "data", st, sq)
        box = Restartable(daemon, token)
        try:
            await asyncio.to_thread(daemon.start)
            async with box.api() as api:
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "reader")
            yield st, box
        finally:
            await asyncio.to_thread(box.daemon.close)


async def test_sigkill_mid_payment_then_restart_reconciles(tmp_path: Path) -> None:
    """Killed while three payments wait on their terminals: one the customer paid while
    the daemon was down, one still waiting on the reader, one on the Square Terminal.
    At the restart each is read back before anything is sent, and ends as the processor
    says."""
    data = tmp_path / "data"
    async with fakes() as (st, sq):
        daemon, token = process_daemon(tmp_path, data, st, sq)
        try:
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "reader")
                await until(lambda: _is(lane_state(api, "square-1"), "online"), "device")
                status, paid = await pay(api, "reader-1", 1111)
                assert status == 202, paid
                intent_paid = await until(reader_intent(st), "the first PaymentIntent")
                status, waiting = await api.post("/v1/payments", {
                    "amount": 2222, "currency": "EUR", "method": "card_present",
                    "terminal": "square-1", "reference": "sale-42"})
                assert status == 202, waiting
                checkout_id = await until(square_checkout(sq), "the checkout")
            await asyncio.to_thread(daemon.kill)
            st.present_payment_method(READER)  # paid while the daemon was dead
            sq.checkout_in_progress(checkout_id)
            sq.checkout_complete(checkout_id)

            daemon = daemon.restarted()
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                done = await final(api, paid["id"])
                assert done["state"] == "approved", done
                assert done["processor_ref"] == intent_paid
                assert done["last4"] == "4242"
                done = await final(api, waiting["id"])
                assert done["state"] == "approved", done
                # a second reader payment, killed while the customer had not paid yet
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "reader")
                status, pending = await pay(api, "reader-1", 3333)
                assert status == 202, pending
                intent_open = await until(reader_intent(st), "the second PaymentIntent")
            creates_before = st.stats.by_path["POST /v1/payment_intents"]
            await asyncio.to_thread(daemon.kill)
            daemon = daemon.restarted()
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                done = await final(api, pending["id"])
                assert done["state"] == "canceled", done
                assert st.payment_intents[intent_open]["status"] == "canceled"
                assert st.stats.by_path["POST /v1/payment_intents"] == creates_before
                # killed again; meanwhile another integration took the reader over: the
                # restart cancels our PaymentIntent and leaves the other action alone
                await until(lambda: _is(lane_state(api, "reader-1"), "online"), "reader")
                status, third = await pay(api, "reader-1", 4444)
                assert status == 202, third
                intent_third = await until(reader_intent(st), "the third PaymentIntent")
            await asyncio.to_thread(daemon.kill)
            st.occupy_reader(READER, "pi_someone_else")
            cancels = st.stats.by_path[f"POST /v1/terminal/readers/{READER}/cancel_action"]
            daemon = daemon.restarted()
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                done = await final(api, third["id"])
                assert done["state"] == "canceled", done
                assert st.payment_intents[intent_third]["status"] == "canceled"
                assert st.reader_intent(READER) == "pi_someone_else"
                assert st.readers[READER]["action"]["status"] == "in_progress"
                assert st.stats.by_path[
                    f"POST /v1/terminal/readers/{READER}/cancel_action"] == cancels
        finally:
            await asyncio.to_thread(daemon.close)


async def another_integrations_sale(st: FakeStripe) -> str:
    """Another integration on the account takes the reader over: its own PaymentIntent
    (no edged metadata), handed to the reader as Stripe's API does it."""
    auth = {"Authorization": "Bearer sk_test_other"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{st.base_url}/v1/payment_intents", headers=auth, data={
                "amount": "999", "currency": "eur",
                "allowed_payment_method_types[0]": "card_present"}) as r:
            assert r.status == 200, await r.text()
            other = str((await r.json())["id"])
        async with http.post(f"{st.base_url}/v1/terminal/readers/{READER}"
                             "/process_payment_intent", headers=auth,
                             data={"payment_intent": other}) as r:
            assert r.status == 200, await r.text()
    return other


@pytest.mark.parametrize("reader", ["still_shows_it", "taken_over"])
async def test_killed_before_the_paymentintents_id_was_stored(tmp_path: Path,
                                                              reader: str) -> None:
    """Issue 22 item 4 moved the PaymentIntent's id out of the payment's first commit: it is
    stored right after ``process_payment_intent``. Killed in between, the payment is on disk
    ``in_progress`` with no id, while the reader holds the PaymentIntent and the customer
    pays. Stripe's search is eventually consistent (its docs: new objects show up to a
    minute late; "for read-after-write flows ... use the various list APIs"; the fake's
    ``search_delay`` lags its search, never its list), so the restart must not depend on
    it. The reader's action names the PaymentIntent while it still shows it; once another
    integration has taken the reader over, Stripe's list of PaymentIntents created since the
    payment does. Either way its metadata names the payment, and the payment ends approved
    with that id, nothing created again (before the list, the taken-over case ended
    ``canceled`` while Stripe showed it charged)."""
    data = tmp_path / "data"
    async with search_lagging(tmp_path) as (st, box):
        async with box.api() as api:
            status, paid = await pay(api, "reader-1", 2300)
            assert status == 202, paid
            intent_id = await until(reader_intent(st), "the PaymentIntent on the reader")
        await asyncio.to_thread(box.daemon.kill)
        # what a kill between process_payment_intent and the id's commit leaves
        conn = open_sync(data / "edged.db")
        try:
            conn.execute("UPDATE payments SET processor_ref = NULL WHERE id = ?",
                         (paid["id"],))
        finally:
            conn.close()
        assert stored_payments(data / "edged.db") == [(paid["id"], "in_progress")]
        st.present_payment_method(READER)  # paid while the daemon was dead
        if reader == "taken_over":
            other = await another_integrations_sale(st)
            assert st.reader_intent(READER) == other
        creates = st.stats.by_path["POST /v1/payment_intents"]
        await box.restart()
        async with box.api() as api:
            done = await final(api, paid["id"])
            assert (done["state"], done["processor_ref"]) == ("approved", intent_id), done
        assert st.stats.by_path["POST /v1/payment_intents"] == creates
        assert st.payment_intents[intent_id]["status"] == "succeeded"


async def test_a_list_too_long_to_read_through_proves_nothing() -> None:
    """The restart's list of PaymentIntents (``list_intent``) pages as Stripe's list APIs
    do (newest first, ``limit`` at most 100, ``starting_after`` the last id, ``has_more``),
    so on a busy account the payment's own may sit pages down. Read through, it is found;
    cut short by the pages allowed, a miss is ``complete=False``: the recovery then leaves
    the payment ``unknown`` instead of saying no PaymentIntent was made."""
    async with fakes(square=False) as (st, _):
        auth = {"Authorization": "Bearer sk_test_other"}
        async with aiohttp.ClientSession() as http:
            for n in range(101):  # ours first, then a hundred of other lanes' or stores'
                meta = {"metadata[edged_payment_id]": "pay-ours"} if n == 0 else {}
                async with http.post(f"{st.base_url}/v1/payment_intents", headers=auth,
                                     data={"amount": str(100 + n), "currency": "eur",
                                           "allowed_payment_method_types[0]": "card_present",
                                           **meta}) as r:
                    assert r.status == 200, await r.text()
        ours = st.find_by_metadata("edged_payment_id", "pay-ours")[0]["id"]
        clock = SystemClock()
        client = StripeTerminalClient(
            StripeTerminalSettings(base_url=st.base_url), lambda: "sk_test_lane", clock,
            CircuitBreaker("stripe", BreakerSettings.processors(), clock),
            TokenBucket(TokenBucketSettings.stripe(), clock, name="stripe"))
        try:
            since = int(time.time()) - 600
            short = await client.list_intent("pay-ours", since, pages=1)
            assert (short.intent, short.complete) == (None, False)
            whole = await client.list_intent("pay-ours", since, pages=2)
            assert whole.complete and whole.intent is not None
            assert whole.intent.id == ours
            none = await client.list_intent("pay-never-made", since)
            assert (none.intent, none.complete) == (None, True)
            later = await client.list_intent("pay-ours", int(time.time()) + 60)
            assert (later.intent, later.complete) == (None, True)  # created before the bound
        finally:
            await client.close()


@pytest.mark.parametrize("create", ["never_went_out", "made_not_handed"])
async def test_killed_while_the_paymentintent_was_created(tmp_path: Path, create: str) -> None:
    """The create runs beside the payment's write (issue 22 item 4): killed with the
    payment on disk and the create unanswered, the restart cannot tell from Stripe's search
    whether a PaymentIntent was made (its docs: searchable "in under 1 minute"; "for
    read-after-write flows ... use the various list APIs"). It lists the PaymentIntents
    created since the payment: none → ``canceled``, "no PaymentIntent was made"; one that
    no reader got → cancelled at Stripe, ``canceled``. Never created again, never handed to
    the reader, whose action was never this payment's."""
    data = tmp_path / "data"
    async with search_lagging(tmp_path) as (st, box):
        async with box.api() as api:
            st.faults.hang(after_apply=create != "never_went_out")
            started = asyncio.create_task(pay(api, "reader-1", 2700))
            await st.faults.wait_hung(1)

            async def written() -> bool | None:
                return bool(stored_payments(data / "edged.db")) or None
            await until(written, "the payment on disk")
            await asyncio.to_thread(box.daemon.kill)
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)
        await st.faults.restore()
        [(payment_id, state)] = stored_payments(data / "edged.db")
        assert state == "in_progress"
        made = list(st.payment_intents)
        assert len(made) == (0 if create == "never_went_out" else 1)
        creates = st.stats.by_path["POST /v1/payment_intents"]
        await box.restart()
        async with box.api() as api:
            done = await final(api, payment_id)
        assert done["state"] == "canceled", done
        assert st.stats.by_path["GET /v1/payment_intents"] >= 1  # the list was read
        assert st.stats.by_path["POST /v1/payment_intents"] == creates
        assert st.stats.by_path[f"POST /v1/terminal/readers/{READER}"
                                "/process_payment_intent"] == 0
        if create == "never_went_out":
            assert "no PaymentIntent was made" in (done["failure"] or ""), done
            assert st.payment_intents == {}
        else:
            assert st.payment_intents[made[0]]["status"] == "canceled"


@pytest.mark.parametrize("create", ["never_went_out", "made_then_key_forgotten"])
async def test_a_restart_never_creates_a_square_checkout(tmp_path: Path, create: str) -> None:
    """Issue 16 item 7. Killed while the checkout's create had no answer: at the restart
    the payment is read back (by the checkout's stored id, else by a search of the
    device's checkouts for its note), never created again: a create re-sent after a stop
    would put a real checkout in front of a customer when the first one never went out,
    or make a second one once Square forgot the key (Square publishes no retention)."""
    data = tmp_path / "data"
    async with fakes() as (st, sq):
        daemon, token = process_daemon(tmp_path, data, st, sq)
        try:
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                await until(lambda: _is(lane_state(api, "square-1"), "online"), "device")
                sq.faults.hang(after_apply=create != "never_went_out")
                started = asyncio.create_task(pay(api, "square-1", 2500))
                await sq.faults.wait_hung(1)
                await asyncio.to_thread(daemon.kill)
            started.cancel()
            await asyncio.gather(started, return_exceptions=True)
            await sq.faults.restore()
            made = len(sq.checkouts)
            assert made == (0 if create == "never_went_out" else 1)
            if create != "never_went_out":
                sq.forget_keys()
            creates = sq.stats.by_path["POST /v2/terminals/checkouts"]

            daemon = daemon.restarted()
            await asyncio.to_thread(daemon.start)
            async with process_api(daemon, token) as api:
                _, listed = await api.get("/v1/payments")
                [payment] = listed["data"]
                done = await final(api, payment["id"])
                assert sq.stats.by_path["POST /v2/terminals/checkouts"] == creates
                assert len(sq.checkouts) == made
                if create == "never_went_out":
                    assert done["state"] == "unknown", done  # nothing at Square to read
                else:
                    [checkout] = sq.checkouts.values()
                    assert checkout["status"] == "CANCELED"
                    assert done["state"] == "canceled", done
                    assert sq.stats.by_path["POST /v2/terminals/checkouts/search"] >= 1
        finally:
            await asyncio.to_thread(daemon.close)


# -- payment methods ----------------------------------------------------------------------


async def methods(api: Api, terminal: str) -> dict[str, dict[str, Any]]:
    status, body = await api.get(f"/v1/payment-methods?terminal={terminal}")
    assert status == 200, body
    assert body["terminal"] == terminal
    return {m["method"]: m for m in body["methods"]}


async def test_payment_methods_follow_the_lane_and_the_link(tmp_path: Path) -> None:
    async with fakes(square=False) as (st, _):
        cfg = replace(cloud_config(tmp_path, st, None),
                      offline=OfflineConfig(enabled=True, max_payment=3000,
                                            max_stored_total=5000))
        async with running(cfg) as api:
            await until(lambda: _is(lane_state(api, "reader-1"), "online"), "the reader")
            now = await methods(api, "reader-1")
            assert {k: v["available"] for k, v in now.items()} == \
                {"cash": True, "card_present": True, "token": True}
            assert now["token"]["processors"] == ["stripe"]
            assert all(v["reason"] is None for v in now.values())

            # busy: a payment waits on the reader
            status, body = await pay(api, "reader-1", 1000)
            await until(reader_intent(st), "the reader to get the PaymentIntent")
            now = await methods(api, "reader-1")
            assert now["card_present"]["available"] is False
            assert body["id"] in now["card_present"]["reason"]
            assert now["cash"]["available"] and now["token"]["available"]
            st.present_payment_method(READER)
            await final(api, body["id"])

            # the reader goes offline at Stripe: the heartbeat sees it
            st.set_reader_status(READER, "offline")
            await until(lambda: _is(lane_state(api, "reader-1"), "offline"), "offline")
            now = await methods(api, "reader-1")
            assert now["card_present"]["available"] is False
            assert "offline" in now["card_present"]["reason"]
            assert now["token"]["available"] is True
            st.set_reader_status(READER, "online")

            # the link is down: the breaker opens; tokens are taken offline, with the room
            await st.faults.refuse()
            await until(lambda: _token_offline(api), "token offline with room")
            now = await methods(api, "reader-1")
            assert now["card_present"]["available"] is False
            assert now["token"]["room"] == {"currency": "EUR", "left": 5000,
                                            "max_payment": 3000}
            assert "unreachable" in now["token"]["reason"]
            await st.faults.restore()

        status, body = await api_get_unknown(cfg)
        assert status == 404 and body["error"]["code"] == "ERR-3006"


async def _token_offline(api: Api) -> bool:
    now = await methods(api, "reader-1")
    return "room" in now["token"] and now["token"]["available"] is True


async def api_get_unknown(cfg: Config) -> tuple[int, Any]:
    async with running(replace(cfg, stripe=None, terminals=(
            TerminalConfig(id="sim-1", kind="sim", options={"delay": 0.05}),))) as api:
        now = await methods(api, "sim-1")
        assert now["token"] == {"method": "token", "available": False,
                                "reason": "no processor is configured for this lane"
                                " ([stripe] or [square])"}
        return await api.get("/v1/payment-methods?terminal=nope")
