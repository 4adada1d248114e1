"""The Shopify gateway and catalogue pull against the loopback fake, over real HTTP.

The fake checks every document against Shopify's published Admin schema; each test ends
with ``assert_no_rejections``. Time is a ManualClock shared by the gateway's cost bucket and
the fake's, so nothing here sleeps (except the one HTTP timeout test, 0.3 s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from graphql import GraphQLSchema

from sync.core.clock import utc_iso
from sync.core.errors import HoldRow, OutcomeUnknown, PermanentError, Throttled, TransientError
from sync.core.gateway import OutboxRow, PartialWork, Work
from sync.core.limiter import ThrottleStatus
from sync.shopify_admin.gateway import (
    BATCH_FORMAT,
    MAX_BATCH,
    MUTATIONS_PER_CALL,
    ShopifyGateway,
    ShopifySettings,
    decimal_to_minor,
    minor_to_decimal,
    order_search_query,
)
from sync.shopify_admin.orders import FIND_ORDER_COST
from sync.shopify_admin.pull import PAGE_SIZE, CataloguePull, pull_catalogue, pull_cost
from tests.clock import ManualClock
from tests.fakes.shopify import API_VERSION, FakeShopify, load_admin_schema

TOKEN = "shpat_gateway_test_token"  # noqa: S105 - the fake's token
ADJUST = "inventory.adjust"
SET = "inventory.set"
ORDER = "order.create"

pytestmark = pytest.mark.timeout(30)  # a wait on the manual clock must fail fast

_ids = itertools.count(1)


# -- fixtures & helpers ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def shop(admin_schema: GraphQLSchema, clock: ManualClock) -> AsyncIterator[FakeShopify]:
    async with FakeShopify(schema=admin_schema, clock=clock.monotonic, now=clock.now,
                           access_token=TOKEN) as fake:
        yield fake
        fake.assert_no_rejections()


def make_gateway(shop: FakeShopify, clock: ManualClock, *, token: str | None = TOKEN,
                 **settings: Any) -> ShopifyGateway:
    options: dict[str, Any] = {"timeout": 5.0, **settings}
    return ShopifyGateway(
        ShopifySettings(shop="edged-test.myshopify.com", api_version=API_VERSION,
                        location_id=shop.default_location_id,
                        admin_url=f"{shop.base_url}/admin/api", **options),
        lambda: token, clock)


@pytest.fixture
async def gateway(shop: FakeShopify, clock: ManualClock) -> AsyncIterator[ShopifyGateway]:
    gw = make_gateway(shop, clock)
    yield gw
    await gw.close()


def row(kind: str, payload: Mapping[str, Any], *, key: str | None = None) -> OutboxRow:
    i = next(_ids)
    return OutboxRow(id=i, destination="shopify", kind=kind,
                     subject_id=str(payload.get("adjustment_id") or payload.get("order_id")
                                    or f"s{i}"),
                     idempotency_key=key or f"row-{secrets.token_hex(8)}", payload=payload,
                     attempts=0, last_error=None, created_at="2026-11-26T09:00:00.000Z")


def adjust(item: str, delta: int, adj: str = "adj_1", reason: str = "received",
           key: str | None = None, **extra: Any) -> OutboxRow:
    return row(ADJUST, {"adjustment_id": adj, "delta_id": next(_ids), "inventory_item_id": item,
                        "delta": delta, "reason": reason,
                        "reference_uri": f"edged://store-1/adjustments/{adj}", **extra},
               key=key)


def count(item: str, quantity: int, last_known: int | None, ref: str = "cnt_1") -> OutboxRow:
    return row(SET, {"count_id": ref, "delta_id": next(_ids), "inventory_item_id": item,
                     "quantity": quantity,
                     "last_known_quantity": last_known, "reason": "correction",
                     "reference_uri": f"edged://store-1/counts/{ref}"})


def batch(gw: ShopifyGateway, kind: str, rows: Iterable[OutboxRow],
          key: str | None = None) -> Work:
    """A batch as the engine forms it: payload computed once, stored as JSON, read back."""
    members = tuple(rows)
    stored = json.dumps(gw.batch_payload(kind, members), sort_keys=True, separators=(",", ":"))
    return Work(destination="shopify", kind=kind,
                idempotency_key=key or f"edb-{secrets.token_hex(16)}", rows=members,
                payload=json.loads(stored), batch_id=next(_ids))


def single(r: OutboxRow) -> Work:
    """A row claimed alone (never batched, or ``send_alone``): the row's payload and key."""
    return Work(destination="shopify", kind=r.kind, idempotency_key=r.idempotency_key,
                rows=(r,), payload=r.payload)


def retry(work: Work, *, unknown: bool = False) -> Work:
    return replace(work, attempt=work.attempt + 1,
                   outcome_unknown=work.outcome_unknown or unknown)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop (the gateway and the fake share it) run until ``condition`` holds."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def mutations(shop: FakeShopify) -> list[Any]:
    return [c for c in shop.calls if c.operation == "mutation"]


def queries(shop: FakeShopify) -> list[Any]:
    return [c for c in shop.calls if c.operation == "query"]


def sale(order_id: str, variant: str | None, *, currency: str = "EUR", price: int = 450,
         quantity: int = 2, processed_at: str = "2026-11-26T09:00:00.000Z") -> OutboxRow:
    return row(ORDER, {
        "order_id": order_id, "reference": "R-3", "currency": currency,
        "processed_at": processed_at,
        "source_identifier": f"edged://store-1/orders/{order_id}",
        "lines": [{"variant_id": variant, "sku": "TEA-1", "title": "Green tea",
                   "quantity": quantity, "price": price}],
        "transactions": [{"payment_id": "pay_1", "method": "cash", "gateway": "cash",
                          "amount": price * quantity, "currency": currency,
                          "auth_code": None, "processed_at": processed_at}],
    })


# -- money ----------------------------------------------------------------------------------------


def test_money_conversion_follows_the_currency_exponent() -> None:
    assert minor_to_decimal(450, "EUR") == "4.50"
    assert minor_to_decimal(5, "eur") == "0.05"
    assert minor_to_decimal(-1205, "EUR") == "-12.05"
    assert minor_to_decimal(1200, "JPY") == "1200"
    assert minor_to_decimal(1250, "KWD") == "1.250"
    assert minor_to_decimal(5, "KWD") == "0.005"
    assert decimal_to_minor("4.5", "EUR") == 450
    assert decimal_to_minor("12.50", "EUR") == 1250
    assert decimal_to_minor("1200.0", "JPY") == 1200
    assert decimal_to_minor("1.25", "KWD") == 1250
    assert decimal_to_minor("0.005", "EUR") == 1  # half up
    with pytest.raises(ValueError, match="unknown currency"):
        minor_to_decimal(100, "XXX")
    with pytest.raises(ValueError):
        minor_to_decimal(1.5, "EUR")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decimal_to_minor("abc", "EUR")


@pytest.mark.parametrize(("currency", "price", "amount"),
                         [("EUR", 450, "4.50"), ("JPY", 1200, "1200"), ("KWD", 1250, "1.250")])
async def test_order_amounts_in_the_currency_exponent(
        shop: FakeShopify, gateway: ShopifyGateway, currency: str, price: int,
        amount: str) -> None:
    v = shop.seed_variant("TEA-1", available=10)
    result = await gateway.send(single(sale(f"ord_{currency}", v.variant_id, currency=currency,
                                            price=price, quantity=2)))
    assert len(result.applied) == 1
    order = shop.orders[0]
    assert order.currency == currency
    assert order.lines[0].unit_price == amount and order.lines[0].currency == currency
    assert order.transactions[0]["amountSet"]["shopMoney"] == {
        "amount": minor_to_decimal(price * 2, currency), "currencyCode": currency}


# -- inventory adjustments ----------------------------------------------------------------------


async def test_600_adjustments_go_in_three_calls(shop: FakeShopify,
                                                 gateway: ShopifyGateway) -> None:
    items = [shop.seed_variant(f"SKU-{i}", available=1000).inventory_item_id for i in range(10)]
    rows = [adjust(items[i % 10], (i % 7) - 3, adj=f"adj_{i // 100}",
                   reason="received" if i < 300 else "correction") for i in range(600)]
    assert gateway.batch_limit(ADJUST) == MAX_BATCH == 250
    assert gateway.batch_limit(ORDER) == 1
    results = []
    for start in range(0, 600, 250):
        work = batch(gateway, ADJUST, rows[start:start + 250])
        result = await gateway.send(work)
        assert set(result.applied) == {r.id for r in work.rows}
        assert not (result.dead or result.conflict or result.retry_apart)
        results.append(result)
    assert len(mutations(shop)) == 3
    expected = {item: 1000 for item in items}
    for r in rows:
        expected[r.payload["inventory_item_id"]] += r.payload["delta"]
    assert {item: shop.quantity(item) for item in items} == expected
    # one mutation field per (reason, reference) group, each naming its edged record
    assert len(shop.adjustment_groups) == 3 + 3 + 1
    assert {g.reference_document_uri for g in shop.adjustment_groups} == {
        f"edged://store-1/adjustments/adj_{i}" for i in range(6)}
    assert {(g.reference_document_uri, g.reason) for g in shop.adjustment_groups} >= {
        ("edged://store-1/adjustments/adj_0", "received"),
        ("edged://store-1/adjustments/adj_5", "correction")}
    assert all(count_ == 1 for count_ in shop.applied_by_key.values())
    # per row: Shopify's group and the quantity right after the row's change
    applied = {k: v for res in results for k, v in res.applied.items()}
    assert all(a["group_id"].startswith("gid://shopify/InventoryAdjustmentGroup/")
               for a in applied.values())
    last_row = {r.payload["inventory_item_id"]: r.id for r in rows}
    assert {item: applied[rid]["quantity_after"] for item, rid in last_row.items()} == expected


async def test_many_adjustments_in_one_batch_split_into_calls(shop: FakeShopify,
                                                              gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=0).inventory_item_id
    rows = [adjust(item, 1, adj=f"adj_{i}") for i in range(MUTATIONS_PER_CALL + 5)]
    work = batch(gateway, ADJUST, rows)
    assert work.payload["format"] == BATCH_FORMAT
    assert [len(call) for call in work.payload["calls"]] == [MUTATIONS_PER_CALL, 5]
    result = await gateway.send(work)
    assert len(result.applied) == len(rows)
    assert len(mutations(shop)) == 2 and shop.quantity(item) == len(rows)
    assert [a["quantity_after"] for a in result.applied.values()] == list(
        range(1, len(rows) + 1))
    cost = shop.calls[0].requested_cost
    assert cost == 10 * MUTATIONS_PER_CALL


async def test_a_batch_replayed_under_its_key_applies_once(shop: FakeShopify,
                                                           gateway: ShopifyGateway) -> None:
    a = shop.seed_variant("A", available=10).inventory_item_id
    b = shop.seed_variant("B", available=10).inventory_item_id
    work = batch(gateway, ADJUST, [adjust(a, -2), adjust(b, 5), adjust(a, -1, adj="adj_2")])
    first = await gateway.send(work)
    again = await gateway.send(retry(work))
    assert again == first
    assert shop.quantity(a) == 7 and shop.quantity(b) == 15
    keys = [f"{work.idempotency_key}-0", f"{work.idempotency_key}-1"]
    assert [shop.applied_by_key[k] for k in keys] == [1, 1]
    assert [shop.replays[k] for k in keys] == [1, 1]
    assert mutations(shop)[0].variables == mutations(shop)[1].variables


async def test_lost_answer_then_resend_applies_once(shop: FakeShopify,
                                                    gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=10).inventory_item_id
    work = batch(gateway, ADJUST, [adjust(item, -3)])
    shop.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await gateway.send(work)
    assert shop.quantity(item) == 7  # applied; the answer was lost
    result = await gateway.send(retry(work, unknown=True))
    assert result.applied == {work.rows[0].id: {
        "group_id": shop.adjustment_groups[0].id, "quantity_after": 7}}
    assert shop.quantity(item) == 7 and len(shop.adjustment_groups) == 1
    assert shop.applied_by_key[f"{work.idempotency_key}-0"] == 1
    sent = mutations(shop)
    assert len(sent) == 2 and sent[0].variables == sent[1].variables


async def test_a_row_sent_alone_uses_its_own_key(shop: FakeShopify,
                                                 gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=10).inventory_item_id
    alone = adjust(item, 4, key="row-key-1")
    result = await gateway.send(single(alone))
    assert result.applied == {alone.id: {"group_id": shop.adjustment_groups[0].id,
                                         "quantity_after": 14}}
    assert shop.applied_by_key["row-key-1-0"] == 1, shop.applied_by_key
    await gateway.send(retry(single(alone)))
    assert shop.quantity(item) == 14 and shop.replays["row-key-1-0"] == 1
    # the same row key with other variables can only fail again: dead, ERR-6013
    other = adjust(item, 5, key="row-key-1")
    result = await gateway.send(single(other))
    assert result.dead[other.id].code == "ERR-6013" and not result.retry_apart


async def test_unusable_row_dies_and_the_rest_applies(shop: FakeShopify,
                                                      gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=10).inventory_item_id
    good = adjust(item, 1)
    bad = row(ADJUST, {"adjustment_id": "adj_1", "inventory_item_id": item, "delta": "two",
                       "reason": "received"})
    result = await gateway.send(batch(gateway, ADJUST, [good, bad]))
    assert set(result.applied) == {good.id}
    assert result.dead[bad.id].code == "ERR-6004" and "delta" in result.dead[bad.id].message
    assert shop.quantity(item) == 11


# -- throttling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("http_status", [200, 429])
async def test_throttled_raises_applies_nothing_and_resets_the_bucket(
        shop: FakeShopify, gateway: ShopifyGateway, clock: ManualClock,
        http_status: int) -> None:
    shop.throttled_status = http_status
    item = shop.seed_variant("A", available=10).inventory_item_id
    work = batch(gateway, ADJUST, [adjust(item, -1)])
    shop.bucket.set_available(3)
    with pytest.raises(Throttled) as caught:
        await gateway.send(work)
    assert caught.value.wait == pytest.approx((10 - 3) / 100)
    assert shop.quantity(item) == 10 and not shop.adjustment_groups
    snap = gateway.bucket.snapshot()
    assert snap.currently_available == pytest.approx(3)
    assert snap.maximum_available == 2000 and snap.restore_rate == 100
    clock.advance(caught.value.wait + 0.001)
    result = await gateway.send(retry(work))
    assert len(result.applied) == 1 and shop.quantity(item) == 9
    assert gateway.bucket.snapshot().currently_available == pytest.approx(0, abs=1)
    clock.advance(1.0)  # both buckets refill
    shop.faults.throttle(count=1)  # THROTTLED although the bucket holds the cost
    with pytest.raises(Throttled) as caught:
        await gateway.send(batch(gateway, ADJUST, [adjust(item, -1)]))
    assert caught.value.wait == 1.0 and shop.quantity(item) == 9


async def test_throttled_order_waits_for_retry_after(shop: FakeShopify,
                                                     gateway: ShopifyGateway) -> None:
    shop.order_rate_limit = 1  # a development store's order limit, answered 429
    v = shop.seed_variant("TEA-1", available=10)
    await gateway.send(single(sale("ord_1", v.variant_id)))
    with pytest.raises(Throttled) as caught:
        await gateway.send(single(sale("ord_2", v.variant_id)))
    assert caught.value.wait >= 60
    assert len(shop.orders) == 1
    assert [r.code for r in shop.rejected] == ["THROTTLED"]  # the fake records it; expected
    shop.rejected.clear()


async def test_requests_wait_for_the_local_bucket(shop: FakeShopify, clock: ManualClock,
                                                  gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=10).inventory_item_id
    gateway.bucket.update(ThrottleStatus(2000, 4, 100))  # as if Shopify had left 4 points
    task = asyncio.create_task(gateway.send(batch(gateway, ADJUST, [adjust(item, 1)])))
    await until(lambda: clock.sleeping > 0)
    assert not task.done() and not shop.calls  # waiting for the 10 points of a mutation
    clock.advance(0.061)
    result = await task
    assert len(result.applied) == 1 and shop.quantity(item) == 11


# -- userErrors ---------------------------------------------------------------------------------


async def test_a_user_error_on_one_row_kills_it_and_the_rest_retry_apart(
        shop: FakeShopify, gateway: ShopifyGateway) -> None:
    items = [shop.seed_variant(f"S{i}", available=5).inventory_item_id for i in range(4)]
    elsewhere = shop.add_location("Warehouse")
    not_here = shop.seed_variant("W", available=3, location_id=elsewhere).inventory_item_id
    rows = [adjust(items[0], 1), adjust(items[1], 1),
            adjust("gid://shopify/InventoryItem/999999", 1), adjust(items[2], 1),
            adjust(not_here, 1), adjust(items[3], 1)]
    result = await gateway.send(batch(gateway, ADJUST, rows))
    assert set(result.dead) == {rows[2].id, rows[4].id}
    assert {f.code for f in result.dead.values()} == {"ERR-6012"}
    assert "INVALID_INVENTORY_ITEM" in result.dead[rows[2].id].message
    assert "ITEM_NOT_STOCKED_AT_LOCATION" in result.dead[rows[4].id].message
    assert set(result.retry_apart) == {rows[i].id for i in (0, 1, 3, 5)}
    assert not result.send_alone and not result.applied
    assert [shop.quantity(i) for i in items] == [5, 5, 5, 5]  # all-or-nothing


async def test_a_refused_group_does_not_hold_back_the_others(shop: FakeShopify,
                                                             gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=5).inventory_item_id
    good = [adjust(item, 1, adj="adj_ok"), adjust(item, 2, adj="adj_ok")]
    wrong = [adjust(item, 1, adj="adj_bad"),
             adjust("gid://shopify/InventoryItem/424242", 1, adj="adj_bad")]
    bad_reason = [adjust(item, 1, adj="adj_reason", reason="bogus"),
                  adjust(item, 2, adj="adj_reason", reason="bogus")]
    bad_ref = [adjust(item, 1, adj="adj_ref", reference_uri="gid://shopify/Order/1")]
    result = await gateway.send(batch(gateway, ADJUST, good + wrong + bad_reason + bad_ref))
    assert set(result.applied) == {r.id for r in good}
    assert shop.quantity(item) == 8
    assert result.dead[wrong[1].id].code == "ERR-6012"
    assert result.retry_apart == (wrong[0].id,)
    # the reason and the reference URI are the whole group's: every row of it dies
    assert {result.dead[r.id].code for r in bad_reason + bad_ref} == {"ERR-6014"}
    assert "INVALID_REASON" in result.dead[bad_reason[0].id].message
    assert "INVALID_REFERENCE_DOCUMENT" in result.dead[bad_ref[0].id].message


async def test_key_mismatch_and_concurrent_request(shop: FakeShopify,
                                                   gateway: ShopifyGateway) -> None:
    item = shop.seed_variant("A", available=5).inventory_item_id
    first = batch(gateway, ADJUST, [adjust(item, 1), adjust(item, 1)], key="edb-same")
    await gateway.send(first)
    other_rows = [adjust(item, 3), adjust(item, 4)]
    result = await gateway.send(batch(gateway, ADJUST, other_rows, key="edb-same"))
    assert set(result.retry_apart) == {r.id for r in other_rows}
    assert not (result.dead or result.applied or result.send_alone)
    assert shop.quantity(item) == 7

    busy = batch(gateway, ADJUST, [adjust(item, 1)], key="edb-busy")
    shop.idempotency_in_progress.add("edb-busy-0")
    with pytest.raises(TransientError) as caught:
        await gateway.send(busy)
    assert not isinstance(caught.value, Throttled)
    shop.idempotency_in_progress.clear()
    assert len((await gateway.send(retry(busy))).applied) == 1


# -- stock counts (inventory.set) ---------------------------------------------------------------


async def test_stale_count_is_a_conflict(shop: FakeShopify, gateway: ShopifyGateway) -> None:
    a = shop.seed_variant("A", available=10).inventory_item_id
    b = shop.seed_variant("B", available=4).inventory_item_id
    ok, stale = count(a, 12, 10), count(b, 6, 5)
    result = await gateway.send(batch(gateway, SET, [ok, stale]))
    assert result.conflict[stale.id].code == "ERR-6011"
    assert "CHANGE_FROM_QUANTITY_STALE" in result.conflict[stale.id].message
    assert result.retry_apart == (ok.id,) and not result.dead and not result.applied
    assert (shop.quantity(a), shop.quantity(b)) == (10, 4)

    again = count(a, 12, 10)
    result = await gateway.send(batch(gateway, SET, [again]))
    assert result.applied[again.id]["quantity_after"] == 12
    assert shop.quantity(a) == 12
    group = shop.adjustment_groups[-1]
    assert group.mutation == "inventorySetQuantities"
    assert group.reference_document_uri == "edged://store-1/counts/cnt_1"


async def test_counts_of_one_item_keep_their_order(shop: FakeShopify,
                                                   gateway: ShopifyGateway) -> None:
    a = shop.seed_variant("A", available=10).inventory_item_id
    b = shop.seed_variant("B", available=1).inventory_item_id
    rows = [count(a, 8, 10), count(b, 2, 1), count(a, 5, 8)]
    work = batch(gateway, SET, rows)
    assert [len(e["rows"]) for call in work.payload["calls"] for e in call] == [2, 1]
    result = await gateway.send(work)
    assert [result.applied[r.id]["quantity_after"] for r in rows] == [8, 2, 5]
    assert (shop.quantity(a), shop.quantity(b)) == (5, 2)


# -- orders -------------------------------------------------------------------------------------


async def test_order_create_carries_the_sale_and_its_marker(shop: FakeShopify,
                                                            gateway: ShopifyGateway) -> None:
    v = shop.seed_variant("TEA-1", price="5.00", available=10)
    r = sale("ord_x", v.variant_id)
    result = await gateway.send(single(r))
    order = shop.orders[0]
    assert result.applied == {r.id: {"order_id": order.id, "name": "#1001"}}
    assert not queries(shop)  # a first send does not look up
    assert order.source_identifier == "edged://store-1/orders/ord_x"
    assert order.source_name == "edged" and order.tags == ["edged"]
    assert "ord_x" in (order.note or "") and "R-3" in (order.note or "")
    assert [(m["namespace"], m["key"], m["value"]) for m in order.metafields] == [
        ("edged", "source_identifier", "edged://store-1/orders/ord_x")]
    assert order.lines[0].unit_price == "4.50" and order.lines[0].quantity == 2
    txn = order.transactions[0]
    assert (txn["kind"], txn["status"], txn["gateway"]) == ("SALE", "SUCCESS", "cash")
    assert txn["amountSet"]["shopMoney"] == {"amount": "9.00", "currencyCode": "EUR"}
    assert txn["locationId"] == shop.default_location_id
    assert order.options == {"inventoryBehaviour": "DECREMENT_IGNORING_POLICY",
                             "sendReceipt": False, "sendFulfillmentReceipt": False}
    assert order.processed_at.isoformat().startswith("2026-11-26T09:00:00")
    # sold over the counter: taken off this location's available and on-hand stock
    assert shop.quantity(v.inventory_item_id) == 8
    assert shop.quantity(v.inventory_item_id, name="on_hand") == 8


async def test_lost_order_answer_is_found_not_created_twice(shop: FakeShopify,
                                                            gateway: ShopifyGateway) -> None:
    v = shop.seed_variant("TEA-1", available=10)
    work = single(sale("ord_lost", v.variant_id))
    shop.faults.fail(500, count=1, fail_after_apply=True)
    with pytest.raises(OutcomeUnknown):
        await gateway.send(work)
    assert len(shop.orders) == 1
    result = await gateway.send(retry(work, unknown=True))
    assert result.applied == {work.rows[0].id: {"order_id": shop.orders[0].id,
                                                "name": "#1001", "reconciled": True}}
    assert len(shop.orders) == 1 and len(mutations(shop)) == 1
    assert queries(shop)[0].variables == {
        "q": order_search_query("edged://store-1/orders/ord_lost")}
    assert shop.quantity(v.inventory_item_id) == 8


async def test_order_lookup_waits_for_shopify_search_before_resending(
        admin_schema: GraphQLSchema, clock: ManualClock) -> None:
    async with FakeShopify(schema=admin_schema, clock=clock.monotonic, now=clock.now,
                           order_search_delay=10.0) as shop:
        gateway = make_gateway(shop, clock, order_search_settle=30.0)
        try:
            v = shop.seed_variant("TEA-1", available=10)
            work = single(sale("ord_lag", v.variant_id))
            shop.faults.fail(502, count=1, fail_after_apply=True)
            with pytest.raises(OutcomeUnknown):
                await gateway.send(work)
            clock.advance(1)
            with pytest.raises(HoldRow) as caught:  # not in the search yet: do not resend
                await gateway.send(retry(work, unknown=True))
            assert caught.value.wait == pytest.approx(29)
            clock.advance(caught.value.wait)
            result = await gateway.send(retry(work, unknown=True))
            assert result.applied[work.rows[0].id]["order_id"] == shop.orders[0].id
            assert len(shop.orders) == 1

            # an unknown outcome that was not applied: wait, then create it once
            lost = single(sale("ord_never", v.variant_id))
            shop.faults.fail(500, count=1)
            with pytest.raises(OutcomeUnknown):
                await gateway.send(lost)
            with pytest.raises(HoldRow):
                await gateway.send(retry(lost, unknown=True))
            clock.advance(30)
            result = await gateway.send(retry(lost, unknown=True))
            assert "reconciled" not in result.applied[lost.rows[0].id]
            assert len(shop.orders_with_source_identifier(
                "edged://store-1/orders/ord_never")) == 1
            shop.assert_no_rejections()
        finally:
            await gateway.close()


async def test_after_a_restart_an_uncertain_order_waits_from_its_lost_answer(
        shop: FakeShopify, clock: ManualClock, gateway: ShopifyGateway) -> None:
    """Issue 16 item 12: the settle time counts from when the answer was lost (the row's
    doubt_at, kept by the outbox across restarts), not from the start of the worker."""
    v = shop.seed_variant("TEA-1", available=10)
    lost_at = utc_iso(clock.now() - timedelta(seconds=20))
    work = replace(single(sale("ord_crash", v.variant_id)), outcome_unknown=True, attempt=1,
                   doubt_at=lost_at)
    with pytest.raises(HoldRow) as caught:
        await gateway.send(work)
    assert caught.value.wait == pytest.approx(10)
    assert not shop.orders
    clock.advance(10)
    result = await gateway.send(retry(work))
    assert len(result.applied) == 1 and len(shop.orders) == 1


async def test_refused_orders(shop: FakeShopify, gateway: ShopifyGateway) -> None:
    unknown = sale("ord_bad", "gid://shopify/ProductVariant/999999")
    result = await gateway.send(single(unknown))
    assert result.dead[unknown.id].code == "ERR-6015"
    assert "variantId" in result.dead[unknown.id].message
    future = sale("ord_future", None, processed_at="2026-11-26T13:00:00.000Z")
    with pytest.raises(TransientError, match="ERR-6015"):  # the store's clock runs ahead
        await gateway.send(single(future))
    custom = sale("ord_custom", None)
    result = await gateway.send(single(custom))
    assert len(result.applied) == 1
    assert shop.orders[0].lines[0].title == "Green tea" and shop.orders[0].lines[0].sku == \
        "TEA-1"
    broken = row(ORDER, {"order_id": "ord_broken", "currency": "EUR", "lines": []})
    with pytest.raises(PermanentError) as caught:
        await gateway.send(single(broken))
    assert caught.value.code == "ERR-6004"
    assert len(shop.orders) == 1


# -- credentials and transport ------------------------------------------------------------------


async def test_missing_token_makes_rows_wait(shop: FakeShopify, clock: ManualClock) -> None:
    gateway = make_gateway(shop, clock, token=None)
    try:
        item = shop.seed_variant("A", available=1).inventory_item_id
        with pytest.raises(TransientError, match=r"edged secret set shopify\.token"):
            await gateway.send(batch(gateway, ADJUST, [adjust(item, 1)]))
        assert shop.stats.requests == 0
    finally:
        await gateway.close()


async def test_refused_token_is_transient_and_never_logged(
        shop: FakeShopify, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "shpat_wrong_secret_value"
    gateway = make_gateway(shop, clock, token=wrong)
    good = make_gateway(shop, clock)
    try:
        item = shop.seed_variant("A", available=1).inventory_item_id
        with pytest.raises(TransientError, match="ERR-6006") as caught:
            await gateway.send(batch(gateway, ADJUST, [adjust(item, 1)]))
        assert "401" in str(caught.value) and wrong not in str(caught.value)
        assert len((await good.send(batch(good, ADJUST, [adjust(item, 1)]))).applied) == 1
        await pull_catalogue(good)
        assert wrong not in caplog.text and TOKEN not in caplog.text
        assert shop.requests[-1].headers["X-Shopify-Access-Token"] == TOKEN
    finally:
        await gateway.close()
        await good.close()


async def test_transport_failures_sort_by_what_may_have_happened(
        shop: FakeShopify, clock: ManualClock) -> None:
    # the timeout bounds the hang below; it must leave an ordinary answer time on a loaded box
    gateway = make_gateway(shop, clock, timeout=2.0)
    try:
        item = shop.seed_variant("A", available=5).inventory_item_id
        work = batch(gateway, ADJUST, [adjust(item, 1)])
        await shop.faults.refuse()  # nothing can be sent
        with pytest.raises(TransientError, match="unreachable"):
            await gateway.send(work)
        await shop.faults.restore()
        shop.faults.fail(503, count=2)  # an error answer: it may have been applied
        with pytest.raises(OutcomeUnknown, match="503"):
            await gateway.send(work)
        with pytest.raises(TransientError):  # a read only: nothing was changed
            await pull_catalogue(gateway, page_size=10)
        shop.faults.hang()
        with pytest.raises(OutcomeUnknown, match="no answer"):
            await gateway.send(work)
        await shop.faults.restore()
        result = await gateway.send(retry(work, unknown=True))
        assert len(result.applied) == 1 and shop.quantity(item) == 6
    finally:
        await gateway.close()


async def test_unknown_kind_is_refused(gateway: ShopifyGateway) -> None:
    with pytest.raises(PermanentError) as caught:
        await gateway.send(single(row("refund.create", {})))
    assert caught.value.code == "ERR-6004"


def test_settings_refuse_an_api_without_idempotency() -> None:
    with pytest.raises(ValueError, match="2026-01"):
        ShopifySettings(shop="x.myshopify.com", api_version="2025-10", location_id="gid://l")
    with pytest.raises(ValueError):
        ShopifySettings(shop="x.myshopify.com", api_version="latest", location_id="gid://l")
    s = ShopifySettings(shop="x.myshopify.com", api_version="2026-04", location_id="gid://l")
    assert s.graphql_url == "https://x.myshopify.com/admin/api/2026-04/graphql.json"


# -- catalogue pull -----------------------------------------------------------------------------


async def test_pull_pages_through_every_variant(shop: FakeShopify, clock: ManualClock,
                                                gateway: ShopifyGateway) -> None:
    seeded = [shop.seed_variant(f"SKU-{i:03}", price=f"{i}.50", barcode=f"400{i:03}",
                                available=i, product_title=f"Product {i}")
              for i in range(298)]
    elsewhere = shop.add_location("Warehouse")
    unstocked = shop.seed_variant("FAR", available=4, location_id=elsewhere)
    tea = shop.seed_variant("TEA-100", title="100 g", product_title="Green tea", price="3.00",
                            available=7)
    pulled_at = clock.now()
    pull = await pull_catalogue(gateway, shop.default_location_id)
    assert isinstance(pull, CataloguePull)
    assert pull.pulled_at == pulled_at and pull.pages == 2 and pull.currency == "EUR"
    assert len(pull) == 300 == len(pull.entries)
    by_sku = {e.sku: e for e in pull}
    e = by_sku["SKU-012"]
    assert (e.price, e.currency, e.barcode, e.available, e.on_hand, e.title) == (
        1250, "EUR", "400012", 12, 12, "Product 12")
    assert (e.variant_id, e.inventory_item_id) == (seeded[12].variant_id,
                                                   seeded[12].inventory_item_id)
    assert by_sku["FAR"].available is None and by_sku["FAR"].inventory_item_id == \
        unstocked.inventory_item_id
    assert by_sku["TEA-100"].title == "Green tea - 100 g"
    assert by_sku["TEA-100"].variant_id == tea.variant_id
    pages = queries(shop)
    assert [c.variables["first"] for c in pages] == [199, 199]
    assert pages[0].variables["after"] is None and pages[1].variables["after"]
    # Shopify's arithmetic (the fake computes it from the document): 3 + 5 x 199 = 998
    assert [c.requested_cost for c in pages] == [998, 998] == [pull_cost(199)] * 2
    assert gateway.bucket.snapshot().updated_at is not None  # the same bucket as the sends
    shop.assert_no_rejections()


async def test_a_pull_of_600_variants_asks_no_page_shopify_refuses(
        shop: FakeShopify, gateway: ShopifyGateway, clock: ManualClock) -> None:
    """Shopify's published cost rules (scalar 0, object 1, connection 2 + first x node;
    1000 at most a query), computed by the fake from each document the daemon sends: the
    catalogue pull's pages all fit, where 250 a page (1253 points) was refused every time."""
    for i in range(600):
        shop.seed_variant(f"V-{i:03}", price="1.00", available=i % 7)
    pull = await _drive(asyncio.create_task(
        pull_catalogue(gateway, shop.default_location_id)), clock)  # 998 a page, 100 a second
    assert len(pull) == 600 and pull.pages == 4
    pages = queries(shop)
    assert [c.variables["first"] for c in pages] == [PAGE_SIZE] * 4 == [199] * 4
    assert [c.requested_cost for c in pages] == [998, 998, 998, 998]
    assert [c.actual_cost for c in pages] == [998, 998, 998, 3 + 5 * 3]
    shop.assert_no_rejections()


async def test_every_query_the_daemon_sends_fits_under_1000_as_shopify_counts_it(
        shop: FakeShopify, gateway: ShopifyGateway) -> None:
    """The order lookup and the pull, as the fake counts them by Shopify's rules; the
    daemon charges its bucket the same figures."""
    shop.seed_variant("A", available=1)
    await gateway.find_order("edged-sale-1")
    await pull_catalogue(gateway, shop.default_location_id)
    counted = {c.variables.get("q") is not None: c.requested_cost for c in queries(shop)}
    assert counted == {True: FIND_ORDER_COST, False: pull_cost(PAGE_SIZE)}
    assert max(counted.values()) <= 1000
    shop.assert_no_rejections()


async def test_a_page_shopify_still_refuses_for_its_cost_is_asked_again_smaller(
        admin_schema: GraphQLSchema, clock: ManualClock) -> None:
    """A bucket smaller than one page (Shopify refuses a query over maximumAvailable
    too): the pull halves its page until Shopify takes it, and loses no variant."""
    async with FakeShopify(schema=admin_schema, clock=clock.monotonic, now=clock.now,
                           access_token=TOKEN, maximum_available=400,
                           restore_rate=400) as small:
        for i in range(120):
            small.seed_variant(f"S{i:03}", available=1)
        gateway = make_gateway(small, clock)
        try:
            pull = await _drive(asyncio.create_task(
                pull_catalogue(gateway, small.default_location_id)), clock)
        finally:
            await gateway.close()
        assert len(pull) == 120
        assert [r.code for r in small.rejected] == ["MAX_COST_EXCEEDED"]
        asked = [c.variables["first"] for c in queries(small)]
        # the first page asks 199 (998 > 400: refused, and the answer says the bucket holds
        # 400); every later page fits the bucket: 3 + 5 x 79 = 398
        assert asked == [199, 79, 79]


async def test_pull_converts_prices_in_the_shop_currency(shop: FakeShopify,
                                                         gateway: ShopifyGateway) -> None:
    shop.currency = "KWD"
    shop.seed_variant("K", price="1.250", available=1)
    pull = await pull_catalogue(gateway.client, page_size=10)
    assert [(e.price, e.currency) for e in pull] == [(1250, "KWD")]
    shop.currency = "JPY"
    shop.seed_variant("J", price="1200.0", available=1)
    pull = await pull_catalogue(gateway)
    assert sorted((e.sku, e.price, e.currency) for e in pull) == [
        ("J", 1200, "JPY"), ("K", 1, "JPY")]


async def test_pull_waits_out_a_throttled_page(shop: FakeShopify, clock: ManualClock,
                                               gateway: ShopifyGateway) -> None:
    shop.seed_variant("A", available=1)
    shop.bucket.set_available(100)
    task = asyncio.create_task(pull_catalogue(gateway))
    await until(lambda: clock.sleeping > 0)
    assert shop.stats.throttled == 1
    clock.advance(9.0)  # a page requests 998: (998 - 100) / 100 points a second
    pull = await task
    assert len(pull) == 1 and shop.stats.throttled == 1


# -- a small bucket, and batches that fail part-way (issue 7, defects 10 and 11) ---------------


async def _drive(task: asyncio.Task[Any], clock: ManualClock) -> Any:
    """Move the clock while ``task`` waits on the cost buckets, until it is done."""
    for _ in range(2000):
        if task.done():
            return task.result()
        await asyncio.sleep(0.002)
        if clock.sleeping:
            clock.advance(0.5)
    raise AssertionError("the send did not finish")


async def test_a_call_never_costs_more_than_a_small_bucket_holds(
        admin_schema: GraphQLSchema, clock: ManualClock) -> None:
    async with FakeShopify(schema=admin_schema, clock=clock.monotonic, now=clock.now,
                           access_token=TOKEN, maximum_available=100,
                           restore_rate=50) as small:
        items = [small.seed_variant(f"S{i}", available=0).inventory_item_id
                 for i in range(30)]
        rows = [adjust(items[i], 1, adj=f"adj_{i}") for i in range(30)]  # 30 aliases
        gateway = make_gateway(small, clock)
        try:
            work = batch(gateway, ADJUST, rows)
            assert [len(c) for c in work.payload["calls"]] == [MUTATIONS_PER_CALL, 5]
            result = await _drive(asyncio.create_task(gateway.send(work)), clock)
            assert set(result.applied) == {r.id for r in rows}
            assert not (result.dead or result.retry_apart)
            # Shopify refused the first request's cost once (250 > 100) and told its size;
            # every later request fits the bucket, each alias under its own key, once
            assert [r.code for r in small.rejected] == ["MAX_COST_EXCEEDED"]
            small.rejected.clear()
            assert max(c.requested_cost or 0 for c in small.calls[1:]) <= 100
            assert all(small.quantity(i) == 1 for i in items)
            assert set(small.applied_by_key.values()) == {1}
            assert set(small.applied_by_key) == {f"{work.idempotency_key}-{i}"
                                                 for i in range(30)}
            # the next batch is cut to the bucket's size at once
            more = [adjust(items[i], 1, adj=f"adj_b{i}") for i in range(30)]
            before = len(small.calls)
            result = await _drive(asyncio.create_task(
                gateway.send(batch(gateway, ADJUST, more))), clock)
            assert len(result.applied) == 30 and not small.rejected
            assert [c.requested_cost for c in small.calls[before:]] == [100, 100, 100]
        finally:
            await gateway.close()


async def test_rows_an_earlier_call_applied_stay_applied_when_a_later_call_fails(
        shop: FakeShopify, gateway: ShopifyGateway) -> None:
    items = [shop.seed_variant(f"S{i}", available=0).inventory_item_id for i in range(30)]
    rows = [adjust(items[i], 1, adj=f"adj_{i}") for i in range(30)]
    work = batch(gateway, ADJUST, rows)
    shop.faults.fail(400, count=1, skip=1)  # the second request is refused for good
    result = await gateway.send(work)
    first_call = {r.id for r in rows[:MUTATIONS_PER_CALL]}
    assert set(result.applied) == first_call  # applied: never dead, never resent
    assert set(result.dead) == {r.id for r in rows[MUTATIONS_PER_CALL:]}
    assert {f.code for f in result.dead.values()} == {"ERR-6016"}
    assert sum(shop.quantity(i) for i in items) == MUTATIONS_PER_CALL


async def test_a_later_call_in_doubt_settles_the_earlier_rows_and_resends_only_the_rest(
        shop: FakeShopify, gateway: ShopifyGateway) -> None:
    items = [shop.seed_variant(f"S{i}", available=0).inventory_item_id for i in range(30)]
    rows = [adjust(items[i], 1, adj=f"adj_{i}") for i in range(30)]
    work = batch(gateway, ADJUST, rows)
    shop.faults.fail(502, count=1, skip=1, fail_after_apply=True)
    with pytest.raises(PartialWork) as caught:
        await gateway.send(work)
    assert set(caught.value.result.applied) == {r.id for r in rows[:MUTATIONS_PER_CALL]}
    assert isinstance(caught.value.cause, OutcomeUnknown)
    rest = replace(retry(work, unknown=True), rows=tuple(rows[MUTATIONS_PER_CALL:]))
    result = await gateway.send(rest)  # the same aliases under the same keys: replayed
    assert set(result.applied) == {r.id for r in rows[MUTATIONS_PER_CALL:]}
    assert all(shop.quantity(i) == 1 for i in items)
    assert set(shop.applied_by_key.values()) == {1}
