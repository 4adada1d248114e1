"""The parts of Shopify talking back, one at a time: every document the daemon sends is valid
against Shopify's schema and within the cost one query may ask; the fake's new parts behave
as Shopify publishes; ``edged shopify webhooks`` against the fake.

Published facts: the Admin schema (tests/fixtures/shopify/admin.graphql); "a single query
may not cost more than 1000" and the cost rules of the facts file (each document's cost by
those rules is stated beside it in sync/, an upper bound with ``pageInfo`` counted); bulk
query restrictions (at least one connection, at most five, two levels deep, no top-level
``node``/``nodes``); neither pick-up mutation takes ``@idempotent``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema

from sync.shopify_admin import bulk as shopify_bulk
from sync.shopify_admin import pickup as shopify_pickup
from sync.shopify_admin import reads as shopify_reads
from sync.shopify_admin import subscriptions as shopify_subscriptions
from sync.shopify_admin.client import MAX_QUERY_COST, ShopifyClient, ShopifySettings
from sync.shopify_admin.webhooks import TOPICS, verify
from tests.clock import ManualClock
from tests.fakes.shopify import API_VERSION, FakeShopify, load_admin_schema
from tests.fakes.shopify_webhook_sender import sign
from tests.shopify_inbound import TOKEN, prepare

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


@pytest.fixture
async def shop(admin_schema: GraphQLSchema) -> AsyncIterator[FakeShopify]:
    async with FakeShopify(schema=admin_schema) as fake:
        yield fake


def client(shop: FakeShopify) -> ShopifyClient:
    return ShopifyClient(ShopifySettings(shop="x.myshopify.com", api_version=API_VERSION,
                                         location_id=shop.default_location_id,
                                         admin_url=f"{shop.base_url}/admin/api"),
                         lambda: TOKEN, ManualClock())


async def test_every_read_is_valid_and_within_its_stated_cost(shop: FakeShopify) -> None:
    tea = shop.seed_variant("TEA", price="4.50", available=3)
    online = shop.pickups.pickup_order("Ada", [(tea.variant_id, 1)])
    fo = online.fulfillment_order_ids[0]
    c = client(shop)
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("EdgedFulfillmentOrder", shopify_reads.FULFILLMENT_ORDER_DOCUMENT, {"id": fo},
         shopify_reads.FULFILLMENT_ORDER_COST),
        ("EdgedOrderPickups", shopify_reads.ORDER_PICKUPS_DOCUMENT,
         {"id": online.order.id}, shopify_reads.ORDER_PICKUPS_COST),
        ("EdgedPollPickups", shopify_reads.POLL_PICKUPS_DOCUMENT,
         {"first": shopify_reads.POLL_PICKUPS_PAGE, "after": None, "closed": True,
          "q": "assigned_location_id:1001 updated_at:>'2020-01-01T00:00:00Z'"},
         shopify_reads.POLL_PICKUPS_COST),
        ("EdgedProduct", shopify_reads.PRODUCT_DOCUMENT, {"id": tea.product_id},
         shopify_reads.PRODUCT_COST),
        ("EdgedProductVariants", shopify_reads.PRODUCT_VARIANTS_DOCUMENT,
         {"id": tea.product_id, "after": None}, shopify_reads.PRODUCT_VARIANTS_COST),
        ("EdgedPollProducts", shopify_reads.POLL_PRODUCTS_DOCUMENT,
         {"first": shopify_reads.POLL_PRODUCTS_PAGE, "after": None, "q": ""},
         shopify_reads.POLL_PRODUCTS_COST),
        ("EdgedPollDeletions", shopify_reads.POLL_DELETIONS_DOCUMENT,
         {"first": shopify_reads.POLL_DELETIONS_PAGE, "after": None,
          "q": "occurred_at:>'2020-01-01T00:00:00Z'"}, shopify_reads.POLL_DELETIONS_COST),
        ("EdgedPollLevels", shopify_reads.POLL_LEVELS_DOCUMENT,
         {"loc": shop.default_location_id, "first": shopify_reads.POLL_LEVELS_PAGE,
          "after": None, "q": ""}, shopify_reads.POLL_LEVELS_COST),
        ("EdgedReadLevels", shopify_reads.read_levels_document(50),
         {"loc": shop.default_location_id, **{f"i{n}": tea.inventory_item_id
                                             for n in range(50)}},
         shopify_reads.LEVEL_ALIAS_COST * 50),
        ("EdgedPickupLookup", shopify_pickup.LOOKUP_DOCUMENT, {"id": fo},
         shopify_pickup.LOOKUP_COST),
        ("EdgedBulkCurrent", shopify_bulk.CURRENT_DOCUMENT, {}, shopify_bulk.CURRENT_COST),
        ("EdgedWebhooks", shopify_subscriptions.LIST_DOCUMENT,
         {"first": shopify_subscriptions.LIST_PAGE, "after": None},
         shopify_subscriptions.LIST_COST),
    ]
    try:
        for operation, document, variables, stated in cases:
            assert stated <= MAX_QUERY_COST, operation
            answer = await c.execute(operation, document, variables, cost=stated,
                                     mutation=False)
            assert answer.requested_cost is not None
            assert answer.requested_cost <= stated, (operation, answer.requested_cost)
    finally:
        await c.close()
    shop.assert_no_rejections()


async def test_the_bulk_query_and_the_fakes_bulk_rules(shop: FakeShopify) -> None:
    tea = shop.seed_variant("TEA", price="4.50", available=3)
    runner = shopify_bulk.BulkRunner(shopify_reads.ShopifyReads(client(shop),
                                                                shop.default_location_id))
    shop.bulk.auto = False
    try:
        op = await runner.start(shopify_bulk.catalogue_query(shop.default_location_id))
        assert op.status == "RUNNING"
        with pytest.raises(shopify_bulk.BulkInProgress):
            await runner.start(shopify_bulk.catalogue_query(shop.default_location_id))
        done = shop.bulk.finish()
        line = done.body.decode().strip()
        assert tea.variant_id in line and "__parentId" not in line
        nested = "{ products { edges { node { id variants { edges { node { id } } } } } } }"
        shop.bulk.operations.clear()
        await runner.start(nested)
        lines = shop.bulk.finish().body.decode().splitlines()
        assert any('"__parentId":"' + tea.product_id + '"' in ln for ln in lines)
        for bad, why in [
            ("{ shop { name } }", "at least one connection"),
            ("{ nodes(ids: []) { id } products { edges { node { id } } } }", "node"),
            ("{ products { edges { node { variants { edges { node { product { collections"
             " { edges { node { id } } } } } } } } } } }", "nesting depth"),
            ("{ products { edges { node { nope } } } }", "Invalid bulk query"),
        ]:
            shop.bulk.operations.clear()
            with pytest.raises(shopify_bulk.PermanentError, match=why):
                await runner.start(bad)
    finally:
        await runner.client.close()


async def test_the_pickup_mutations_as_shopify_publishes_them(shop: FakeShopify) -> None:
    tea = shop.seed_variant("TEA", price="4.50", available=5)
    fo = shop.pickups.pickup_order("Ada", [(tea.variant_id, 2)]).fulfillment_order_ids[0]
    c = client(shop)
    try:
        with_key = shopify_pickup.READY_DOCUMENT.replace(
            "fulfillmentOrderLineItemsPreparedForPickup(input: $input)",
            'fulfillmentOrderLineItemsPreparedForPickup(input: $input) @idempotent(key: "k")')
        variables = {"input": {"lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": fo}]}}
        refused = await c.execute("EdgedPickupReady", with_key, variables, cost=10,
                                  mutation=True)
        assert "not supported" in str(refused.errors)
        for expected in ([], ["NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER"]):
            answer = await c.execute("EdgedPickupReady", shopify_pickup.READY_DOCUMENT,
                                     variables, cost=10, mutation=True)
            errors = answer.data["fulfillmentOrderLineItemsPreparedForPickup"]["userErrors"]
            assert [e["code"] for e in errors] == expected
        assert shop.pickups.notifications[fo] == 1
        line = shop.pickups.fulfillment_orders[fo].lines[0].id
        too_many = {"fulfillment": {"lineItemsByFulfillmentOrder": [{
            "fulfillmentOrderId": fo,
            "fulfillmentOrderLineItems": [{"id": line, "quantity": 3}]}]}}
        answer = await c.execute("EdgedPickupHandover", shopify_pickup.HANDOVER_DOCUMENT,
                                 too_many, cost=10, mutation=True)
        assert answer.data["fulfillmentCreate"]["fulfillment"] is None
        assert shop.quantity(tea.inventory_item_id, name="on_hand") == 5  # nothing applied
    finally:
        await c.close()


def test_the_fakes_signature_is_shopifys() -> None:
    """base64(HMAC-SHA256(secret, raw body)), checked by the daemon's verifier."""
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    body = b'{"id":1}'
    expected = base64.b64encode(hmac.new(b"s3cret", body, hashlib.sha256).digest()).decode()
    assert sign("s3cret", body) == expected
    assert verify(body, expected, ["other", "s3cret"]) == 1
    assert verify(body, expected, ["other"]) is None
    assert verify(body + b" ", expected, ["s3cret"]) is None


async def _edged(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edged", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_edged_shopify_webhooks_register_list_remove(tmp_path: Path,
                                                           shop: FakeShopify) -> None:
    from tests.shopify_inbound import inbound_config  # noqa: PLC0415

    cfg = inbound_config(tmp_path / "data", shop)
    prepare(cfg, shop)
    config = tmp_path / "edged.toml"
    config.write_text("[shopify]\n"
                      f'shop = "{shop.webhooks.shop_domain}"\n'
                      f'location_id = "{shop.default_location_id}"\n'
                      f'api_version = "{API_VERSION}"\n'
                      f'admin_url = "{shop.base_url}/admin/api"\n', encoding="utf-8")
    common = ("--config", str(config), "--data-dir", str(cfg.data_dir))
    url = "http://127.0.0.1:8731/v1/webhooks/shopify"
    code, out, err = await _edged("shopify", "webhooks", "register", "--url", url, *common)
    assert code == 0, err
    assert f"{len(TOPICS)} created, 0 already there" in out
    assert {s.topic for s in shop.webhooks.subscriptions.values()} == set(TOPICS.values())
    code, out, _ = await _edged("shopify", "webhooks", "register", "--url", url, *common)
    assert code == 0 and f"0 created, {len(TOPICS)} already there" in out
    code, out, _ = await _edged("shopify", "webhooks", "list", *common)
    assert code == 0 and f"{len(TOPICS)} subscription(s)" in out and url in out
    code, _, err = await _edged("shopify", "webhooks", "register", "--url",
                                "http://shop.example/v1/webhooks/shopify", *common)
    assert code == 2 and "https" in err
    code, out, _ = await _edged("shopify", "webhooks", "remove", "--url", url, *common)
    assert code == 0 and f"{len(TOPICS)} removed" in out
    assert not shop.webhooks.subscriptions
    shop.assert_no_rejections()
