"""The upstream fakes speak the wire formats the real SDKs and Shopify's schema accept.

Stripe and Square are driven through their real SDKs (stripe 16, squareup 46); Shopify through
plain HTTP with the exact documents the gateway is meant to send (see tests/fakes/shopify.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import pytest
import stripe
from graphql import GraphQLSchema
from square import AsyncSquare
from square.core.api_error import ApiError

from tests.clock import ManualClock
from tests.fakes import shopify as shopify_fake
from tests.fakes.shopify import FakeShopify, SchemaMissingError, load_admin_schema, webhook_hmac
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe

VERSION = shopify_fake.API_VERSION
TOKEN = {"X-Shopify-Access-Token": "shpat_test"}
NO_RETRY: Any = {"max_retries": 0}
SQUARE_TOKEN = "sq-test"  # noqa: S105 - a fake's token

PULL = """
query PullVariants($first: Int!, $after: String, $locationId: ID!) {
  productVariants(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id sku barcode price title updatedAt
      product { id title }
      inventoryItem {
        id
        inventoryLevel(locationId: $locationId) {
          quantities(names: ["available", "on_hand"]) { name quantity }
        }
      }
    }
  }
}
"""
LEVELS = """
query LevelsAtLocation($locationId: ID!, $first: Int!, $after: String) {
  location(id: $locationId) {
    inventoryLevels(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes { item { id sku variant { id } } quantities(names: ["available"]) { name quantity } }
    }
  }
}
"""
FIND_ORDER = """
query FindOrderByMarker($q: String!) {
  orders(first: 5, query: $q) { nodes { id name sourceIdentifier tags createdAt } }
}
"""
ADJUST = """
mutation Adjust($input: InventoryAdjustQuantitiesInput!, $key: String!) {
  inventoryAdjustQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup {
      id reason referenceDocumentUri
      changes { name delta quantityAfterChange item { id } location { id } }
    }
    userErrors { field message code }
  }
}
"""
ADJUST_NO_KEY = """
mutation Adjust($input: InventoryAdjustQuantitiesInput!) {
  inventoryAdjustQuantities(input: $input) { userErrors { field message code } }
}
"""
SET = """
mutation Set($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id changes { name delta quantityAfterChange } }
    userErrors { field message code }
  }
}
"""
ORDER_CREATE = """
mutation Sale($order: OrderCreateOrderInput!, $options: OrderCreateOptionsInput) {
  orderCreate(order: $order, options: $options) {
    order { id name sourceIdentifier }
    userErrors { field message code }
  }
}
"""


# -- fixtures & helpers ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def admin_schema() -> GraphQLSchema:
    """Shopify's Admin schema, built once for the session (fails clearly when missing)."""
    return load_admin_schema()


@pytest.fixture
async def shop(admin_schema: GraphQLSchema) -> AsyncIterator[FakeShopify]:
    async with FakeShopify(schema=admin_schema) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=TOKEN) as session:
        yield session


async def gql(session: aiohttp.ClientSession, fake: FakeShopify, query: str,
              variables: dict[str, Any] | None = None,
              version: str = VERSION) -> tuple[int, dict[str, Any]]:
    async with session.post(fake.graphql_url(version),
                            json={"query": query, "variables": variables or {}}) as r:
        return r.status, await r.json()


def adjust_input(fake: FakeShopify, item: str, delta: int, **change: Any) -> dict[str, Any]:
    return {
        "name": "available", "reason": "correction", "referenceDocumentUri": "edged://batch/1",
        "changes": [{"delta": delta, "inventoryItemId": item,
                     "locationId": fake.default_location_id, "changeFromQuantity": None,
                     **change}],
    }


def codes(body: dict[str, Any], field: str) -> list[str | None]:
    return [e["code"] for e in body["data"][field]["userErrors"]]


# -- Shopify ------------------------------------------------------------------------------------


def test_schema_missing_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("EDGED_SHOPIFY_SCHEMA", str(tmp_path / "nope.graphql"))
    with pytest.raises(SchemaMissingError, match="EDGED_SHOPIFY_SCHEMA"):
        load_admin_schema()
    monkeypatch.delenv("EDGED_SHOPIFY_SCHEMA")
    assert shopify_fake.schema_path() == Path(__file__).resolve().parent / "fixtures" / \
        "shopify" / "admin.graphql"


async def test_shopify_pull_shapes_paginate(shop: FakeShopify,
                                            http: aiohttp.ClientSession) -> None:
    seeded = [shop.seed_variant(f"SKU-{i}", price=f"{i}.50", barcode=f"40{i}", available=i)
              for i in range(3)]
    loc = shop.default_location_id
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        status, body = await gql(http, shop, PULL, {"first": 2, "after": after, "locationId": loc})
        assert status == 200
        page = body["data"]["productVariants"]
        seen += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert [n["sku"] for n in seen] == ["SKU-0", "SKU-1", "SKU-2"]
    last = seen[2]
    assert last["id"] == seeded[2].variant_id and last["price"] == "2.50"
    assert last["inventoryItem"]["inventoryLevel"]["quantities"] == [
        {"name": "available", "quantity": 2}, {"name": "on_hand", "quantity": 2}]
    cost = body["extensions"]["cost"]
    # Shopify's rules: 2 + first x (variant, product, item, level, quantities: 5 objects);
    # the last page returned one node
    assert cost["requestedQueryCost"] == 2 + 2 * 5 and cost["actualQueryCost"] == 2 + 1 * 5

    status, body = await gql(http, shop, LEVELS, {"locationId": loc, "first": 10})
    nodes = body["data"]["location"]["inventoryLevels"]["nodes"]
    assert [(n["item"]["sku"], n["quantities"][0]["quantity"]) for n in nodes] == [
        ("SKU-0", 0), ("SKU-1", 1), ("SKU-2", 2)]
    shop.assert_no_rejections()


async def test_shopify_rejects_what_shopify_does_not_have(
        shop: FakeShopify, http: aiohttp.ClientSession) -> None:
    status, body = await gql(http, shop, "{ productVariants(first: 1) { nodes { id stock } } }")
    assert status == 200
    assert body["errors"][0]["extensions"]["code"] == "undefinedField"
    assert "data" not in body
    assert [r.code for r in shop.rejected] == ["undefinedField"]
    with pytest.raises(AssertionError, match="undefinedField"):
        shop.assert_no_rejections()

    async with (
        aiohttp.ClientSession() as anonymous,  # no access token
        anonymous.post(shop.graphql_url(), json={"query": "{ shop { name } }"}) as r,
    ):
        assert r.status == 401


async def test_shopify_cost_throttle_and_max_cost(admin_schema: GraphQLSchema,
                                                  http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeShopify(schema=admin_schema, maximum_available=100, restore_rate=10,
                           clock=clock.monotonic, throttled_status=429) as fake:
        item = fake.seed_variant("A", available=100).inventory_item_id
        for i in range(10):
            status, body = await gql(http, fake, ADJUST,
                                     {"input": adjust_input(fake, item, -1), "key": f"k{i}"})
            assert status == 200 and body["data"]["inventoryAdjustQuantities"]["userErrors"] == []
        assert body["extensions"]["cost"] == {
            "requestedQueryCost": 10, "actualQueryCost": 10,
            "throttleStatus": {"maximumAvailable": 100.0, "currentlyAvailable": 0,
                               "restoreRate": 10.0}}
        status, body = await gql(http, fake, ADJUST,
                                 {"input": adjust_input(fake, item, -1), "key": "k10"})
        assert status == 429
        assert body["errors"] == [{"message": "Throttled", "extensions": {
            "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}]
        assert body["extensions"]["cost"]["requestedQueryCost"] == 10
        assert fake.quantity(item) == 90 and fake.stats.throttled == 1  # nothing applied
        clock.advance(1.0)  # 10 points restored
        status, body = await gql(http, fake, ADJUST,
                                 {"input": adjust_input(fake, item, -1), "key": "k10"})
        assert status == 200 and fake.quantity(item) == 89

        big = "{ products(first: 50) { nodes { variants(first: 50) { nodes { id } } } } }"
        clock.advance(100)
        status, body = await gql(http, fake, big)
        assert body["errors"][0]["extensions"]["code"] == "MAX_COST_EXCEEDED"
        # 2 + 50 products x (1 + a nested connection of 2 + 50 variants x 1)
        assert body["extensions"]["cost"]["requestedQueryCost"] == 2 + 50 * (1 + 2 + 50)
        assert body["errors"][0]["extensions"]["cost"] == 2652
        assert body["errors"][0]["message"].startswith(
            "Query cost is 2652, which exceeds the single query max cost limit (100).")


async def test_shopify_idempotent_adjust(shop: FakeShopify, http: aiohttp.ClientSession) -> None:
    item = shop.seed_variant("A", available=10).inventory_item_id
    inp = adjust_input(shop, item, -3)

    # Required from 2026-04: refused without it, nothing applied, no key used up.
    _, body = await gql(http, shop, ADJUST_NO_KEY, {"input": inp})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    _, body = await gql(http, shop, ADJUST, {"input": inp, "key": ""})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert shop.quantity(item) == 10

    _, first = await gql(http, shop, ADJUST, {"input": inp, "key": "batch-1"})
    group = first["data"]["inventoryAdjustQuantities"]["inventoryAdjustmentGroup"]
    assert [(c["name"], c["delta"], c["quantityAfterChange"]) for c in group["changes"]] == [
        ("available", -3, 7), ("on_hand", -3, 7)]
    _, again = await gql(http, shop, ADJUST, {"input": inp, "key": "batch-1"})
    assert again["data"] == first["data"]
    assert shop.quantity(item) == 7
    assert shop.applied_by_key["batch-1"] == 1 and shop.replays["batch-1"] == 1

    _, other = await gql(http, shop, ADJUST,
                         {"input": adjust_input(shop, item, -4), "key": "batch-1"})
    assert codes(other, "inventoryAdjustQuantities") == ["IDEMPOTENCY_KEY_PARAMETER_MISMATCH"]

    _, stale = await gql(http, shop, ADJUST, {
        "input": adjust_input(shop, item, -1, changeFromQuantity=8), "key": "b2"})
    assert codes(stale, "inventoryAdjustQuantities") == ["CHANGE_FROM_QUANTITY_STALE"]
    _, bad = await gql(http, shop, ADJUST, {
        "input": {**adjust_input(shop, item, -1, ledgerDocumentUri="edged://x"),
                  "referenceDocumentUri": "gid://shopify/Order/1"}, "key": "b3"})
    assert sorted(codes(bad, "inventoryAdjustQuantities")) == [  # type: ignore[type-var]
        "INVALID_AVAILABLE_DOCUMENT", "INVALID_REFERENCE_DOCUMENT"]
    _, unknown = await gql(http, shop, ADJUST, {
        "input": adjust_input(shop, "gid://shopify/InventoryItem/9", -1), "key": "b4"})
    assert codes(unknown, "inventoryAdjustQuantities") == ["INVALID_INVENTORY_ITEM"]

    missing = adjust_input(shop, item, -1)
    del missing["changes"][0]["changeFromQuantity"]
    _, body = await gql(http, shop, ADJUST, {"input": missing, "key": "b5"})
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    many = adjust_input(shop, item, -1)
    many["changes"] *= 251
    _, body = await gql(http, shop, ADJUST, {"input": many, "key": "b6"})
    assert body["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED"
    assert shop.quantity(item) == 7 and len(shop.adjustment_groups) == 1

    set_input = {"name": "available", "reason": "cycle_count_available",
                 "referenceDocumentUri": "edged://count/1", "quantities": [
                     {"inventoryItemId": item, "locationId": shop.default_location_id,
                      "quantity": 12, "changeFromQuantity": 6}]}
    _, body = await gql(http, shop, SET, {"input": set_input, "key": "count-1"})
    assert codes(body, "inventorySetQuantities") == ["CHANGE_FROM_QUANTITY_STALE"]
    set_input["quantities"][0]["changeFromQuantity"] = 7  # type: ignore[index]
    _, body = await gql(http, shop, SET, {"input": set_input, "key": "count-2"})
    assert codes(body, "inventorySetQuantities") == []
    assert shop.quantity(item) == 12


async def test_shopify_order_create_and_marker_lookup(admin_schema: GraphQLSchema,
                                                      http: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeShopify(schema=admin_schema, order_rate_limit=5, clock=clock.monotonic,
                           now=clock.now) as fake:
        v = fake.seed_variant("MUG", price="9.00", available=4)
        sale = {
            "sourceName": "edged", "sourceIdentifier": "edged-sale-42", "tags": ["edged"],
            "note": "till 1", "processedAt": "2026-11-26T11:59:00Z",
            "lineItems": [{"variantId": v.variant_id, "quantity": 3}],
            "transactions": [{"kind": "SALE", "status": "SUCCESS", "gateway": "cash",
                              "amountSet": {"shopMoney": {"amount": "27.00",
                                                          "currencyCode": "EUR"}}}],
            "metafields": [{"namespace": "edged", "key": "sale", "type": "single_line_text_field",
                            "value": "42"}],
        }
        _, body = await gql(http, fake, ORDER_CREATE, {
            "order": sale, "options": {"inventoryBehaviour": "DECREMENT_IGNORING_POLICY"}})
        order = body["data"]["orderCreate"]["order"]
        assert order["sourceIdentifier"] == "edged-sale-42" and order["name"] == "#1001"
        assert fake.quantity(v.inventory_item_id) == 1
        assert fake.quantity(v.inventory_item_id, name="on_hand") == 4  # committed, unfulfilled

        _, body = await gql(http, fake, FIND_ORDER, {"q": "source_identifier:'edged-sale-42'"})
        assert [o["id"] for o in body["data"]["orders"]["nodes"]] == [order["id"]]
        _, body = await gql(http, fake, FIND_ORDER, {"q": "sourceIdentifier:edged-sale-42"})
        assert body["extensions"]["search"][0]["warnings"][0]["field"] == "sourceIdentifier"

        _, body = await gql(http, fake, ORDER_CREATE.replace(
            "orderCreate(order: $order, options: $options)",
            'orderCreate(order: $order, options: $options) @idempotent(key: "x")'),
            {"order": sale})
        assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"

        for _ in range(4):
            status, body = await gql(http, fake, ORDER_CREATE, {"order": sale})
            assert status == 200 and body["data"]["orderCreate"]["userErrors"] == []
        status, body = await gql(http, fake, ORDER_CREATE, {"order": sale})
        assert status == 429 and body["errors"][0]["extensions"]["code"] == "THROTTLED"
        clock.advance(61)
        status, _ = await gql(http, fake, ORDER_CREATE, {"order": sale})
        assert status == 200 and len(fake.orders) == 6
        assert fake.quantity(v.inventory_item_id) == 1  # BYPASS by default


async def test_faults_refuse_restore_fail_hang(shop: FakeShopify) -> None:
    item = shop.seed_variant("A", available=5).inventory_item_id
    variables = {"input": adjust_input(shop, item, -1), "key": "lost-1"}
    url = shop.graphql_url()
    async with aiohttp.ClientSession(headers=TOKEN) as session:
        await shop.faults.refuse()
        with pytest.raises(aiohttp.ClientConnectionError):
            await gql(session, shop, "{ shop { name } }")
    async with aiohttp.ClientSession(headers=TOKEN) as session:  # a fresh connection
        with pytest.raises(aiohttp.ClientConnectorError):
            await gql(session, shop, "{ shop { name } }")
        await shop.faults.restore()
        assert shop.graphql_url() == url
        status, body = await gql(session, shop, "{ shop { name } }")
        assert status == 200 and body["data"]["shop"]["name"]

        shop.faults.fail(500, count=1, fail_after_apply=True)  # applied, answer lost
        status, _ = await gql(session, shop, ADJUST, variables)
        assert status == 500 and shop.quantity(item) == 4
        status, body = await gql(session, shop, ADJUST, variables)  # the retry replays
        assert status == 200 and shop.quantity(item) == 4 and shop.replays["lost-1"] == 1

        shop.faults.fail(503, count=1)  # not applied
        status, _ = await gql(session, shop, ADJUST, {**variables, "key": "lost-2"})
        assert status == 503 and shop.quantity(item) == 4

        shop.faults.hang(after_apply=True)
        pending = asyncio.ensure_future(gql(session, shop, ADJUST, {**variables, "key": "h"}))
        await shop.faults.wait_hung(1)
        assert not pending.done() and shop.quantity(item) == 3 and shop.applied_by_key["h"] == 1
        await shop.faults.restore()  # the hung request is dropped, never answered
        with pytest.raises(aiohttp.ClientError):
            await pending
        assert [r.fault for r in shop.requests[-5:]] == [
            None, "fail_after_apply", None, "fail", "hang_after_apply"]


def test_webhook_signature() -> None:
    body = b'{"id":1}'
    expected = base64.b64encode(hmac.new(b"s3cret", body, hashlib.sha256).digest()).decode()
    assert webhook_hmac("s3cret", body) == expected
    headers = shopify_fake.webhook_headers("s3cret", "orders/create", body)
    assert headers["X-Shopify-Hmac-SHA256"] == expected and headers["X-Shopify-Webhook-Id"]


# -- Stripe -------------------------------------------------------------------------------------


@pytest.fixture
async def stripe_client() -> AsyncIterator[tuple[FakeStripe, stripe.StripeClient]]:
    async with FakeStripe() as fake:
        http_client = stripe.AIOHTTPClient()
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.base_url},
                                     http_client=http_client)
        try:
            yield fake, client
        finally:
            await http_client.close_async()  # type: ignore[no-untyped-call]


async def test_stripe_sdk_round_trip(
        stripe_client: tuple[FakeStripe, stripe.StripeClient]) -> None:
    fake, client = stripe_client
    pis = client.v1.payment_intents
    params: Any = {"amount": 1250, "currency": "eur", "confirm": True,
                   "payment_method": "pm_card_visa", "metadata": {"edged_id": "sale-1"}}
    pi = await pis.create_async(params, options={"idempotency_key": "sale-1-pay"})
    assert isinstance(pi, stripe.PaymentIntent)
    assert (pi.object, pi.status, pi.amount, pi.currency) == ("payment_intent", "succeeded",
                                                              1250, "eur")
    assert pi.latest_charge and pi.metadata["edged_id"] == "sale-1"

    again = await pis.create_async(params, options={"idempotency_key": "sale-1-pay"})
    assert again.id == pi.id and fake.executions["sale-1-pay"] == 1
    with pytest.raises(stripe.IdempotencyError):
        await pis.create_async(cast(Any, {**params, "amount": 999}),
                               options={"idempotency_key": "sale-1-pay"})

    with pytest.raises(stripe.CardError) as declined:
        await pis.create_async(cast(Any, {**params, "payment_method": "pm_card_chargeDeclined",
                                          "metadata": {"edged_id": "sale-2"}}),
                               options={"idempotency_key": "sale-2-pay"})
    assert declined.value.http_status == 402 and declined.value.code == "card_declined"
    assert declined.value.error is not None
    assert declined.value.error.decline_code == "generic_decline"
    found = await pis.search_async({"query": "metadata['edged_id']:'sale-2'"})
    assert [p.status for p in found.data] == ["requires_payment_method"]

    refund = await client.v1.refunds.create_async(
        {"payment_intent": pi.id, "amount": 250, "metadata": {"edged_id": "ret-1"}},
        options={"idempotency_key": "ret-1"})
    assert (refund.object, refund.status, refund.amount) == ("refund", "succeeded", 250)
    listed = await client.v1.refunds.list_async({"payment_intent": pi.id})
    assert [r.id for r in listed.data] == [refund.id]
    assert (await client.v1.refunds.retrieve_async(refund.id)).payment_intent == pi.id

    auth = await pis.create_async({"amount": 700, "currency": "eur", "confirm": True,
                                   "payment_method": "pm_card_visa", "capture_method": "manual"})
    assert auth.status == "requires_capture"
    captured = await pis.capture_async(auth.id, {"amount_to_capture": 600})
    assert (captured.status, captured.amount_received) == ("succeeded", 600)
    with pytest.raises(stripe.InvalidRequestError) as state:
        await pis.cancel_async(auth.id)
    assert state.value.code == "payment_intent_unexpected_state"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        await pis.create_async(cast(Any, {"amount": 1, "currency": "eur", "confrim": True}))
    assert unknown.value.code == "parameter_unknown"

    # A lost answer: Stripe replays the stored 500; the daemon reads back by metadata instead.
    fake.faults.fail(500, count=1, fail_after_apply=True)
    lost: Any = {**params, "metadata": {"edged_id": "sale-3"}}
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            await pis.create_async(lost, options={"idempotency_key": "sale-3-pay"})
    assert fake.executions["sale-3-pay"] == 1
    found = await pis.search_async({"query": "metadata['edged_id']:'sale-3'"})
    assert [p.status for p in found.data] == ["succeeded"]


async def test_stripe_terminal_and_rate_limit() -> None:
    clock = ManualClock()
    async with FakeStripe(rate=3, clock=clock.monotonic) as fake:
        http_client = stripe.AIOHTTPClient()
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.base_url},
                                     http_client=http_client)
        try:
            reader = fake.add_reader("tmr_counter")
            with pytest.raises(stripe.InvalidRequestError) as removed:  # API 2026-09-30
                await client.v1.payment_intents.create_async(cast(Any, {
                    "amount": 900, "currency": "eur", "payment_method_types": ["card_present"]}))
            assert removed.value.code == "payment_method_types_no_longer_supported"
            pi = await client.v1.payment_intents.create_async(
                {"amount": 900, "currency": "eur",
                 "allowed_payment_method_types": ["card_present"], "capture_method": "manual"})
            assert pi.payment_method_types == ["card_present"]
            r = await client.v1.terminal.readers.process_payment_intent_async(
                reader, {"payment_intent": pi.id})
            assert r.action is not None and r.action.status == "in_progress"
            with pytest.raises(stripe.RateLimitError):
                await client.v1.terminal.readers.retrieve_async(reader)
            clock.advance(1.0)
            r = await client.v1.test_helpers.terminal.readers.present_payment_method_async(
                reader)
            assert r.action is not None and r.action.status == "succeeded"
            got = await client.v1.payment_intents.retrieve_async(pi.id)
            assert got.status == "requires_capture"
            assert fake.stats.throttled == 1
        finally:
            await http_client.close_async()  # type: ignore[no-untyped-call]


# -- Square -------------------------------------------------------------------------------------


async def test_square_sdk_round_trip() -> None:
    async with FakeSquare(token=SQUARE_TOKEN) as fake, httpx.AsyncClient() as http_client:
        sq = AsyncSquare(token=SQUARE_TOKEN, base_url=fake.base_url, httpx_client=http_client)
        eur = {"amount": 1250, "currency": "EUR"}
        paid = await sq.payments.create(source_id="cnon:card-nonce-ok", idempotency_key="sale-1",
                                        amount_money=eur, reference_id="sale-1",
                                        request_options=NO_RETRY)
        assert paid.payment is not None and paid.payment.status == "COMPLETED"
        again = await sq.payments.create(source_id="cnon:card-nonce-ok",
                                         idempotency_key="sale-1", amount_money=eur,
                                         reference_id="sale-1", request_options=NO_RETRY)
        assert again.payment is not None and again.payment.id == paid.payment.id
        assert fake.executions["sale-1"] == 1
        with pytest.raises(ApiError) as reused:
            await sq.payments.create(source_id="cnon:card-nonce-ok", idempotency_key="sale-1",
                                     amount_money={"amount": 1, "currency": "EUR"},
                                     request_options=NO_RETRY)
        assert reused.value.status_code == 400
        assert [e.code for e in reused.value.errors] == ["IDEMPOTENCY_KEY_REUSED"]

        with pytest.raises(ApiError) as declined:
            await sq.payments.create(source_id="cnon:card-nonce-declined",
                                     idempotency_key="sale-2", amount_money=eur,
                                     request_options=NO_RETRY)
        assert declined.value.status_code == 400
        assert [(e.category, e.code) for e in declined.value.errors] == [
            ("PAYMENT_METHOD_ERROR", "CARD_DECLINED")]

        cash = await sq.payments.create(
            source_id="CASH", idempotency_key="sale-3", amount_money=eur,
            cash_details={"buyer_supplied_money": {"amount": 2000, "currency": "EUR"}},
            request_options=NO_RETRY)
        assert cash.payment is not None and cash.payment.cash_details is not None
        assert cash.payment.cash_details.change_back_money is not None
        assert cash.payment.cash_details.change_back_money.amount == 750

        held = await sq.payments.create(source_id="cnon:card-nonce-ok", idempotency_key="sale-4",
                                        amount_money=eur, autocomplete=False,
                                        request_options=NO_RETRY)
        assert held.payment is not None and held.payment.status == "APPROVED"
        await sq.payments.cancel_by_idempotency_key(idempotency_key="sale-4",
                                                    request_options=NO_RETRY)
        got = await sq.payments.get(payment_id=held.payment.id, request_options=NO_RETRY)
        assert got.payment is not None and got.payment.status == "CANCELED"

        refund = await sq.refunds.refund_payment(
            idempotency_key="ret-1", amount_money={"amount": 250, "currency": "EUR"},
            payment_id=paid.payment.id, reason="returned", request_options=NO_RETRY)
        assert refund.refund is not None and refund.refund.status == "PENDING"
        read = await sq.refunds.get(refund_id=refund.refund.id, request_options=NO_RETRY)
        assert read.refund is not None and read.refund.status == "COMPLETED"
        with pytest.raises(ApiError) as too_long:
            await sq.refunds.refund_payment(
                idempotency_key="r" * 46, amount_money={"amount": 1, "currency": "EUR"},
                payment_id=paid.payment.id, request_options=NO_RETRY)
        assert [(e.code, e.field) for e in too_long.value.errors] == [
            ("VALUE_TOO_LONG", "idempotency_key")]

        created = await sq.terminal.checkouts.create(
            idempotency_key="till-1", checkout={"amount_money": eur,
                                                "device_options": {"device_id": "DEV-1"},
                                                "reference_id": "sale-5"},
            request_options=NO_RETRY)
        assert created.checkout is not None and created.checkout.status == "PENDING"
        checkout_id = created.checkout.id
        assert checkout_id is not None
        fake.checkout_declined(checkout_id)
        payment_id = fake.checkout_complete(checkout_id)
        done = await sq.terminal.checkouts.get(checkout_id=checkout_id, request_options=NO_RETRY)
        assert done.checkout is not None and done.checkout.status == "COMPLETED"
        assert done.checkout.payment_ids == [payment_id]

        fake.faults.throttle(count=1, retry_after=2)
        with pytest.raises(ApiError) as limited:
            await sq.payments.get(payment_id=payment_id, request_options=NO_RETRY)
        assert limited.value.status_code == 429
        assert limited.value.headers is not None and limited.value.headers["retry-after"] == "2"
