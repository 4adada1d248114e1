"""``POST /v1/webhooks/shopify`` through real HTTP on loopback, the fake Shopify sending.

Published facts these rest on (shopify.dev, "Deliver webhooks through HTTPS"; facts file):
``X-Shopify-Hmac-SHA256`` is base64(HMAC-SHA256(the app's client secret, the raw body));
``X-Shopify-Webhook-Id`` is the same on every retry of one delivery; one change may be
delivered under several webhook ids; deliveries come out of order; after a secret is
rotated Shopify may sign with the old one for up to an hour; the answer must come within
five seconds, or Shopify counts the delivery failed and retries it.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema

from edged.store import secrets
from sync.core.clock import Clock
from tests.daemon_process import DaemonProcess
from tests.fakes.shopify import FakeShopify, SeededVariant, load_admin_schema
from tests.fakes.shopify_webhook_sender import sign
from tests.helpers import Api, running
from tests.shopify_inbound import (
    OffsetClock,
    inbound_config,
    inbox,
    item,
    prepare,
    subscribe,
    until,
)
from tests.test_hostile_input import _closed_within

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


@asynccontextmanager
async def daemon(tmp_path: Path, schema: GraphQLSchema, *, clock: Clock | None = None,
                 webhook_secret: str | None = "", **shopify: Any
                 ) -> AsyncIterator[tuple[FakeShopify, Api, SeededVariant]]:
    async with FakeShopify(schema=schema) as shop:
        tea = shop.seed_variant("TEA", price="4.50", available=40)
        cfg = inbound_config(tmp_path / "data", shop, **shopify)
        prepare(cfg, shop, [tea], webhook_secret=webhook_secret)
        async with running(cfg, clock) as api:
            await until(lambda: _pulled(api), "the first catalogue pull")
            subscribe(shop, api)
            yield shop, api, tea


async def _pulled(api: Api) -> bool:
    status, body = await api.get("/v1/sync")
    catalogue = body["shopify"]["catalogue"]
    return status == 200 and catalogue is not None and catalogue["applied_at"] is not None


async def post(api: Api, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with api.session.post(f"{api.base}/v1/webhooks/shopify", data=body,
                                headers=headers) as resp:
        return resp.status, await resp.json()


async def price(api: Api) -> int:
    return int((await item(api, "TEA"))["price"])


def rows(api: Api, where: str = "1=1") -> int:
    return api.count("webhook_inbox", where)


async def test_a_signed_delivery_is_stored_answered_then_processed(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        shop.admin.reprice(tea.variant_id, "5.00")
        await shop.webhooks.drain()
        (d,) = [x for x in shop.webhooks.deliveries if x.topic == "products/update"]
        assert d.status == 200, d.answer
        assert d.answer == {"received": True, "id": d.answer["id"], "state": "pending",
                            "replayed": False}
        await until(lambda: _state_is(api, d.answer["id"], "done"), "the delivery processed")
        assert await price(api) == 500
        (row,) = [r for r in await inbox(api) if r["id"] == d.answer["id"]]
        assert (row["via"], row["topic"], row["webhook_id"]) == \
            ("webhook", "products/update", d.webhook_id)
        assert row["event_id"] == d.event_id and "repriced 450 -> 500" in row["outcome"]
        stored = api.count("webhook_inbox", f"id = {d.answer['id']} AND body LIKE '%variants%'")
        assert stored == 0, "the inbox keeps a digest of the payload, not the payload"
    shop.assert_no_rejections()


async def _state_is(api: Api, row_id: int, state: str) -> bool:
    return any(r["id"] == row_id and r["state"] == state for r in await inbox(api))


async def test_a_forged_delivery_is_refused_and_leaves_nothing(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        before = rows(api)
        url = f"{api.base}/v1/webhooks/shopify"
        forged = shop.webhooks.forged(url, "products/delete", {"id": 1})
        good = json.dumps({"id": 2}).encode()
        altered = shop.webhooks.headers("products/delete", good)  # signs {"id": 2}
        await shop.webhooks.drain()
        status, body = await post(api, json.dumps({"id": 3}).encode(), altered)
        unsigned = dict(altered)
        del unsigned["X-Shopify-Hmac-SHA256"]
        status2, body2 = await post(api, good, unsigned)
        assert (forged.status, forged.answer["error"]["code"]) == (401, "ERR-1030")
        assert (status, body["error"]["code"]) == (401, "ERR-1030")
        assert (status2, body2["error"]["code"]) == (401, "ERR-1030")
        assert rows(api) == before, "a refused delivery stored something"
        assert (await item(api, "TEA"))["active"] is True
        _, sync = await api.get("/v1/sync")
        assert sync["shopify"]["webhooks"]["refused"] == 3


async def test_a_replayed_delivery_is_stored_once(tmp_path: Path,
                                                  admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        shop.admin.reprice(tea.variant_id, "5.00")
        await shop.webhooks.drain()
        (first,) = [d for d in shop.webhooks.deliveries if d.topic == "products/update"]
        again = shop.webhooks.replay(first)
        await shop.webhooks.drain()
        assert again.status == 200 and again.answer["replayed"] is True
        assert again.answer["id"] == first.answer["id"]
        assert rows(api, f"delivery_id = '{first.webhook_id}'") == 1
        await until(lambda: _state_is(api, first.answer["id"], "done"), "processing")
        (row,) = [r for r in await inbox(api) if r["id"] == first.answer["id"]]
        assert row["seen_again"] == 1
    shop.assert_no_rejections()


async def test_one_change_delivered_twice_is_processed_once(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        shop.admin.reprice(tea.variant_id, "5.00")
        await shop.webhooks.drain()
        (first,) = [d for d in shop.webhooks.deliveries if d.topic == "products/update"]
        second = shop.webhooks.duplicate(first)  # another webhook id, the same event
        await shop.webhooks.drain()
        assert second.status == 200 and second.answer["state"] == "duplicate"
        (row,) = [r for r in await inbox(api) if r["id"] == second.answer["id"]]
        assert row["duplicate_of"] == first.answer["id"]
        await until(lambda: _state_is(api, first.answer["id"], "done"), "processing")
        reads = [c for c in shop.calls if "product" in c.root_fields]
        assert len(reads) == 1, "the duplicate was processed"
    shop.assert_no_rejections()


async def test_out_of_order_deliveries_keep_the_later_state(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        real_now = shop.now
        shop.webhooks.paused = True  # the two changes reach the daemon in the wrong order
        at = [real_now() + timedelta(minutes=1)]
        shop.now = lambda: at[0]
        shop.admin.reprice(tea.variant_id, "5.00")
        at[0] += timedelta(minutes=5)
        shop.admin.reprice(tea.variant_id, "6.00")
        shop.now = real_now
        older, newer = shop.webhooks.held
        shop.webhooks.held = []
        shop.webhooks.paused = False
        (late,) = shop.webhooks.emit(*newer)
        await shop.webhooks.drain()
        await until(lambda: _state_is(api, late.answer["id"], "done"), "the later change")
        (early,) = shop.webhooks.emit(*older)
        await shop.webhooks.drain()
        assert early.status == 200 and early.answer["state"] == "ignored"
        (row,) = [r for r in await inbox(api) if r["id"] == early.answer["id"]]
        assert "out of order" in row["outcome"] and row["duplicate_of"] == late.answer["id"]
        assert await price(api) == 600
    shop.assert_no_rejections()


async def test_the_previous_secret_is_accepted_for_an_hour_after_a_rotation(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    clock = OffsetClock()
    async with daemon(tmp_path, admin_schema, clock=clock) as (shop, api, tea):
        old = shop.webhooks.secret
        data = api.daemon.cfg.data_dir
        secrets.cli_set(data, "shopify.webhook_secret", io.StringIO("the-new-secret\n"),
                        env={})
        shop.webhooks.secret = "the-new-secret"  # noqa: S105
        clock.advance(2.0)  # the daemon reads the secrets again at most once a second
        payload = {"id": 424242}  # a product the store does not have
        (by_new,) = shop.webhooks.emit("products/delete", payload)
        (by_old,) = shop.webhooks.emit("products/delete", payload, sign_with=old)
        await shop.webhooks.drain()
        assert by_new.status == 200, by_new.answer
        assert by_old.status == 200, by_old.answer
        clock.advance(61 * 60.0)  # an hour after the rotation
        (late_old,) = shop.webhooks.emit("products/delete", payload, sign_with=old)
        (late_new,) = shop.webhooks.emit("products/delete", payload)
        await shop.webhooks.drain()
        assert (late_old.status, late_old.answer["error"]["code"]) == (401, "ERR-1030")
        assert late_new.status == 200
        assert rows(api, f"delivery_id = '{late_old.webhook_id}'") == 0


async def test_a_delivery_over_the_limit_is_413_and_stores_nothing(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema, webhook_max_body_bytes=2048) as (shop, api, _):
        before = rows(api)
        big = json.dumps({"id": 1, "padding": "x" * 4000}).encode()
        status, body = await post(api, big, shop.webhooks.headers("products/update", big))

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for start in range(0, len(big), 512):
                yield big[start:start + 512]

        async with api.session.post(f"{api.base}/v1/webhooks/shopify", data=chunks(),
                                    headers=shop.webhooks.headers("products/update",
                                                                  big)) as resp:
            chunked = resp.status, (await resp.json())["error"]["code"]
        assert (status, body["error"]["code"]) == (413, "ERR-1033")
        assert chunked == (413, "ERR-1033")
        assert rows(api) == before


async def test_a_delivery_whose_body_never_arrives_is_a_408(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with FakeShopify(schema=admin_schema) as shop:
        cfg = inbound_config(tmp_path / "data", shop, catalogue="paged")
        cfg = replace(cfg, api=replace(cfg.api, body_timeout=0.5))
        prepare(cfg, shop)
        async with running(cfg) as api:
            body = b'{"id": 1}'
            headers = "".join(f"{k}: {v}\r\n" for k, v in
                              shop.webhooks.headers("products/delete", body).items())
            head = (f"POST /v1/webhooks/shopify HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                    "Content-Length: 100\r\n\r\n{").encode()
            out = await asyncio.to_thread(_closed_within, api.daemon.port, head)
            assert out.startswith(b"HTTP/1.1 408"), out[:100]
            assert b"ERR-1018" in out
            assert rows(api) == 0


async def test_headers_missing_no_secret_and_a_foreign_host(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema, webhook_secret=None) as (shop, api, _):
        body = json.dumps({"id": 1}).encode()
        headers = shop.webhooks.headers("products/delete", body)
        status, answer = await post(api, body, headers)
        assert (status, answer["error"]["code"], answer["error"]["retryable"]) == \
            (503, "ERR-1031", True)
        assert rows(api) == 0
    async with daemon(tmp_path / "two", admin_schema) as (shop, api, _):
        body = json.dumps({"id": 1}).encode()
        headers = shop.webhooks.headers("products/delete", body)
        no_id = {k: v for k, v in headers.items() if k != "X-Shopify-Webhook-Id"}
        status, answer = await post(api, body, no_id)
        assert (status, answer["error"]["code"]) == (400, "ERR-1032")
        foreign = dict(headers, Host="evil.example")
        status, answer = await post(api, body, foreign)
        assert (status, answer["error"]["code"]) == (421, "ERR-5004")
        before = rows(api)
        status, answer = await post(api, body, headers)  # no bearer token: fine
        assert status == 200 and answer["received"] is True
        assert rows(api) == before + 1


async def test_a_secret_set_while_the_daemon_runs_counts_within_a_second(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """The README's order of steps: the daemon runs with webhooks registered, then a manager
    runs `edged secret set shopify.webhook_secret`. Deliveries refused with ERR-1031 before
    it are accepted within a second after it, without a restart (Shopify retries a 503)."""
    clock = OffsetClock()
    async with daemon(tmp_path, admin_schema, webhook_secret=None, clock=clock) as \
            (shop, api, _):
        body = json.dumps({"id": 1}).encode()
        status, answer = await post(api, body, shop.webhooks.headers("products/delete", body))
        assert (status, answer["error"]["code"]) == (503, "ERR-1031")
        secrets.cli_set(api.daemon.cfg.data_dir, "shopify.webhook_secret",
                        io.StringIO(shop.webhooks.secret + "\n"), env={})
        clock.advance(1.5)  # the daemon reads the secrets again at most once a second
        status, answer = await post(api, body, shop.webhooks.headers("products/delete", body))
        assert status == 200 and answer["received"] is True, answer


async def test_the_answer_does_not_wait_for_the_processing(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """Shopify hangs while the daemon reads the product back: the delivery is stored and
    answered 200 all the same; the processing ends once Shopify answers again."""
    async with daemon(tmp_path, admin_schema) as (shop, api, tea):
        shop.admin.reprice(tea.variant_id, "5.00")  # the delivery goes out...
        shop.faults.hang()  # ...and the read it causes will hang
        await shop.webhooks.drain()
        (d,) = [x for x in shop.webhooks.deliveries if x.topic == "products/update"]
        assert d.status == 200 and d.answer["state"] == "pending"
        await shop.faults.wait_hung(1)  # the worker is inside its read, held
        assert await _state_is(api, d.answer["id"], "pending")
        await shop.faults.restore()
        await until(lambda: _state_is(api, d.answer["id"], "done"), "processing after")
        assert await price(api) == 500


async def test_a_delivery_answered_survives_a_crash(tmp_path: Path,
                                                    admin_schema: GraphQLSchema) -> None:
    """SIGKILL after the 200 and before the processing: the restarted daemon processes it."""
    data = tmp_path / "data"
    async with FakeShopify(schema=admin_schema) as shop:
        tea = shop.seed_variant("TEA", price="4.50", available=40)
        cfg = inbound_config(data, shop, catalogue="paged")
        prepare(cfg, shop, [tea])
        config = tmp_path / "edged.toml"
        config.write_text(
            "[shopify]\n"
            f'shop = "{shop.webhooks.shop_domain}"\n'
            f'location_id = "{shop.default_location_id}"\n'
            f'api_version = "{cfg.shopify.api_version if cfg.shopify else ""}"\n'
            f'admin_url = "{shop.base_url}/admin/api"\n'
            'catalogue_pull = "paged"\npoll_interval_seconds = 3600.0\n'
            "[sync]\nrequest_timeout = 5.0\npull_interval_seconds = 3600.0\n",
            encoding="utf-8")
        process = DaemonProcess(data, config=config)
        try:
            await asyncio.to_thread(process.start)
            url = f"http://127.0.0.1:{process.port}/v1/webhooks/shopify"
            shop.webhooks.subscribe(url, ["products/update"])
            shop.faults.hang()  # the processing cannot read the product back
            shop.admin.reprice(tea.variant_id, "5.00")
            await shop.webhooks.drain()
            (d,) = shop.webhooks.deliveries
            assert d.status == 200, d.answer
            await asyncio.to_thread(process.kill)
            await shop.faults.restore()
            process = process.restarted()
            await asyncio.to_thread(process.start)
            token = await asyncio.to_thread(process.create_token, "lane-1")

            async def repriced() -> bool:
                answer = await asyncio.to_thread(process.get, "/v1/items?sku=TEA",
                                                 token=token)
                return answer.status == 200 and answer.json()["price"] == 500

            await until(repriced, "the delivery processed after the restart")
        finally:
            await asyncio.to_thread(process.close)


async def test_a_webhook_with_a_body_is_never_parsed_before_it_is_verified(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """A body that is not JSON, signed: stored as ignored (unreadable) and answered 200 —
    Shopify would otherwise retry it for four hours; unsigned: 401."""
    async with daemon(tmp_path, admin_schema) as (shop, api, _):
        body = b"\xff not json"
        headers = shop.webhooks.headers("products/update", body)
        status, answer = await post(api, body, headers)
        assert status == 200 and answer["state"] == "ignored"
        (row,) = [r for r in await inbox(api) if r["id"] == answer["id"]]
        assert row["outcome"].startswith("unreadable payload")
        bad = dict(headers, **{"X-Shopify-Hmac-SHA256": sign("nope", body)})
        status, answer = await post(api, body, bad)
        assert status == 401


async def test_the_inbox_is_for_managers(tmp_path: Path,
                                         admin_schema: GraphQLSchema) -> None:
    async with daemon(tmp_path, admin_schema) as (_, api, _):
        status, body = await api.get("/v1/shopify/inbox")
        assert (status, body["error"]["code"]) == (403, "ERR-5003")
        status, body = await api.get("/v1/shopify/inbox?state=nonsense",
                                     token=api.manager_token)
        assert (status, body["error"]["code"]) == (400, "ERR-1013")
        status, body = await api.get("/v1/sync")
        assert set(body["shopify"]["inbox"]) >= {"pending", "done", "duplicate", "ignored",
                                                 "failed", "by_via"}

