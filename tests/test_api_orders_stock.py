"""Sales, stock, the outbox rule and the read-only endpoints, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edged.api.routes import ROUTES
from tests.helpers import CATALOGUE_CSV, Api, make_config, running, seed_catalogue


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Api]:
    """A daemon with Shopify configured (rows queue; nothing is sent) and a catalogue."""
    cfg = make_config(tmp_path, shopify=True)
    seed_catalogue(cfg.data_dir / "edged.db")
    async with running(cfg) as api:
        yield api


async def _cash(api: Api, amount: int) -> str:
    status, body = await api.post("/v1/payments", {"amount": amount, "currency": "EUR",
                                                   "method": "cash"})
    assert status == 201
    return str(body["id"])


async def _stock(api: Api, sku: str) -> int:
    status, item = await api.get(f"/v1/items?sku={sku}")
    assert status == 200
    return int(item["stock"]["quantity"])


async def test_sale_decrements_stock_once_and_queues_one_order(shop: Api) -> None:
    pay = await _cash(shop, 2 * 450 + 1200)
    sale = {"reference": "R-100", "payments": [pay], "lines": [
        {"sku": "TEA-1", "quantity": 2, "price": 450},
        {"variant_id": "1002", "quantity": 1, "price": 1200}]}
    status, order = await shop.post("/v1/orders", sale, key="sale-1")
    assert status == 201
    assert order["total"] == 2100
    assert [ln["sku"] for ln in order["lines"]] == ["TEA-1", "MUG-1"]
    assert await _stock(shop, "TEA-1") == 38
    assert await _stock(shop, "MUG-1") == 9
    # the register retries: same answer, no second decrement, no second order
    again = await shop.post("/v1/orders", sale, key="sale-1")
    assert again == (201, order)
    assert await _stock(shop, "TEA-1") == 38
    assert shop.count("orders") == 1
    assert shop.count("outbox", "destination = 'shopify' AND kind = 'order.create'") == 1
    assert shop.count("outbox", "kind = 'inventory.adjust'") == 0  # stock goes with the order
    _, payment = await shop.get(f"/v1/payments/{pay}")
    assert payment["order_id"] == order["id"]


async def test_order_payload_holds_everything_shopify_needs(shop: Api) -> None:
    pay = await _cash(shop, 450)
    _, order = await shop.post("/v1/orders", {"reference": "R-7", "payments": [pay],
                                              "lines": [{"sku": "TEA-1", "quantity": 1,
                                                         "price": 450}]})
    conn = sqlite3.connect(shop.daemon.db.path)
    payload, key = conn.execute("SELECT payload, idempotency_key FROM outbox").fetchone()
    conn.close()
    data = json.loads(payload)
    assert data["lines"] == [{"variant_id": "gid://shopify/ProductVariant/1001", "sku": "TEA-1",
                              "title": "Green tea", "quantity": 1, "price": 450}]
    assert data["transactions"][0]["amount"] == 450
    assert data["source_identifier"].endswith(order["id"])
    assert key.startswith("ed-")


@pytest.mark.parametrize(("mutate", "status", "code"), [
    (lambda s, p: s.update(lines=[{"sku": "NOPE", "quantity": 1, "price": 450}]), 422,
     "ERR-4001"),
    (lambda s, p: s.update(payments=["pay_missing"]), 422, "ERR-4003"),
    (lambda s, p: s["lines"][0].update(price=451), 422, "ERR-4006"),
    (lambda s, p: s["lines"][0].update(quantity=0), 422, "ERR-1005"),
    (lambda s, p: s["lines"][0].update(variant_id="1001"), 422, "ERR-1003"),
    (lambda s, p: s.update(payments=[p, p]), 422, "ERR-1005"),
])
async def test_bad_orders_change_nothing(shop: Api, mutate, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    pay = await _cash(shop, 450)
    sale = {"reference": "R-1", "payments": [pay],
            "lines": [{"sku": "TEA-1", "quantity": 1, "price": 450}]}
    mutate(sale, pay)
    got, body = await shop.post("/v1/orders", sale)
    assert (got, body["error"]["code"]) == (status, code)
    assert shop.count("orders") == 0
    assert shop.count("stock_deltas") == 0
    assert shop.count("outbox") == 0
    assert await _stock(shop, "TEA-1") == 40


async def test_a_payment_pays_one_order_only(shop: Api) -> None:
    pay = await _cash(shop, 450)
    line = [{"sku": "TEA-1", "quantity": 1, "price": 450}]
    assert (await shop.post("/v1/orders", {"reference": "A", "payments": [pay],
                                           "lines": line}))[0] == 201
    status, body = await shop.post("/v1/orders", {"reference": "B", "payments": [pay],
                                                  "lines": line})
    assert (status, body["error"]["code"]) == (409, "ERR-4005")
    status, body = await shop.post("/v1/orders", {"reference": "A", "payments": [],
                                                  "lines": line})
    assert (status, body["error"]["code"]) == (409, "ERR-4008")


async def test_adjustments_change_local_stock_and_queue_deltas(shop: Api) -> None:
    status, adj = await shop.post("/v1/inventory/adjustments", {
        "reason": "received", "reference": "PO-5",
        "changes": [{"sku": "TEA-1", "delta": 12}, {"barcode": "4006381333948", "delta": -2},
                    {"inventory_item_id": "2001", "delta": 1}]})
    assert status == 201
    assert [c["quantity"] for c in adj["changes"]] == [52, 8, 53]
    assert await _stock(shop, "TEA-1") == 53
    _, item = await shop.get("/v1/items?barcode=4006381333948")
    assert item["sku"] == "MUG-1"
    assert item["stock"] == {"quantity": 8, "unsynced_delta": -2, "reported": 10,
                             "reported_at": item["stock"]["reported_at"]}
    # no token is set, so nothing can leave: the rows wait (pending, or in flight a moment)
    assert shop.count("outbox", "kind = 'inventory.adjust' AND state IN ('pending',"
                      " 'inflight')") == 3
    _, sync = await shop.get("/v1/sync")
    shopify = next(d for d in sync["destinations"] if d["destination"] == "shopify")
    assert shopify["pending"] + shopify["inflight"] == 3
    assert shopify["oldest_pending_at"] is not None


@pytest.mark.parametrize(("change", "reason", "status", "code"), [
    ({"sku": "TEA-1", "delta": 0}, "received", 422, "ERR-4009"),
    ({"sku": "TEA-1", "delta": 10**9}, "received", 422, "ERR-4009"),
    ({"sku": "NOPE", "delta": 1}, "received", 422, "ERR-4001"),
    ({"sku": "TEA-1", "barcode": "4006381333931", "delta": 1}, "received", 422, "ERR-1003"),
    ({"sku": "TEA-1", "delta": 1}, "stolen-by-aliens", 422, "ERR-1005"),
])
async def test_bad_adjustments_change_nothing(shop: Api, change: dict[str, object],
                                              reason: str, status: int, code: str) -> None:
    got, body = await shop.post("/v1/inventory/adjustments",
                                {"reason": reason, "changes": [change]})
    assert (got, body["error"]["code"]) == (status, code)
    assert shop.count("stock_deltas") == 0
    assert shop.count("outbox") == 0


async def test_without_shopify_no_rows_are_queued(api: Api) -> None:
    seed_catalogue(api.daemon.db.path)
    await api.post("/v1/inventory/adjustments",
                   {"reason": "correction", "changes": [{"sku": "TEA-1", "delta": -1}]})
    assert api.count("outbox") == 0
    assert await _stock(api, "TEA-1") == 39
    _, sync = await api.get("/v1/sync")
    assert sync["destinations"] == []
    assert sync["offline"]["enabled"] is False
    assert sync["offline"]["stored"] == []


async def test_item_lookup_errors(api: Api) -> None:
    status, body = await api.get("/v1/items")
    assert (status, body["error"]["code"]) == (400, "ERR-1013")
    status, body = await api.get("/v1/items?sku=NOPE")
    assert (status, body["error"]["code"]) == (404, "ERR-4002")


async def test_events_stream_payment_changes(api: Api) -> None:
    async with api.session.get(api.base + "/v1/events?kinds=payment",
                               headers=api.headers()) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        await stream.content.readline()  # the opening comment
        await stream.content.readline()
        _, paid = await api.post("/v1/payments", {"amount": 100, "currency": "EUR",
                                                  "method": "cash"})
        lines = []
        while len(lines) < 3:
            line = (await asyncio.wait_for(stream.content.readline(), 5)).decode().strip()
            if line:
                lines.append(line)
    assert lines[1] == "event: payment"
    assert json.loads(lines[2].removeprefix("data: "))["id"] == paid["id"]


async def test_openapi_describes_every_route_and_error(api: Api) -> None:
    status, doc = await api.get("/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["summary"]
        assert str(route.status) in op["responses"]
        for code in route.errors:
            assert any(code in r["description"] for r in op["responses"].values()), code
        if route.method == "POST" and route.idempotent:
            assert any(p["name"] == "Idempotency-Key" for p in op["parameters"])
        elif route.method == "POST":  # POST /v1/pair: its answer (a token) is never stored
            assert all(p["name"] != "Idempotency-Key" for p in op.get("parameters", []))
    create = doc["paths"]["/v1/payments"]["post"]["requestBody"]["content"]
    schema = create["application/json"]["schema"]
    assert schema["required"] == ["amount", "currency", "method"]


async def test_health_and_metrics(api: Api) -> None:
    await api.post("/v1/payments", {"amount": 100, "currency": "EUR", "method": "cash"})
    async with api.session.get(api.base + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["database"] == "ok"
    async with api.session.get(api.base + "/metrics") as r:
        text = await r.text()
    assert "# TYPE edged_http_requests_total counter" in text
    assert 'edged_terminal_up{terminal="sim-1"} 1' in text
    assert "edged_db_commits" in text


async def test_a_count_sets_local_stock_and_queues_a_compare_and_swap(shop: Api) -> None:
    await shop.post("/v1/inventory/adjustments",
                    {"reason": "received", "changes": [{"sku": "TEA-1", "delta": 5}]})
    body = {"reference": "shelf-3", "changes": [{"sku": "TEA-1", "quantity": 41},
                                                {"barcode": "4006381333948", "quantity": 10}]}
    status, count = await shop.post("/v1/inventory/counts", body, key="count-1")
    assert status == 201, count
    assert count["reason"] == "cycle_count_available"
    assert [(c["sku"], c["previous"], c["quantity"], c["delta"]) for c in count["changes"]] \
        == [("TEA-1", 45, 41, -4), ("MUG-1", 10, 10, 0)]
    assert await _stock(shop, "TEA-1") == 41
    assert await _stock(shop, "MUG-1") == 10
    conn = sqlite3.connect(shop.daemon.db.path)
    payloads = [json.loads(r[0]) for r in conn.execute(
        "SELECT payload FROM outbox WHERE kind = 'inventory.set' ORDER BY id")]
    conn.close()
    assert [(p["inventory_item_id"], p["quantity"], p["last_known_quantity"])
            for p in payloads] == [("gid://shopify/InventoryItem/2001", 41, 45),
                                   ("gid://shopify/InventoryItem/2002", 10, 10)]
    assert {p["reference_uri"] for p in payloads} == {f"edged://store-1/counts/{count['id']}"}
    again = await shop.post("/v1/inventory/counts", body, key="count-1")
    assert again == (201, count)
    assert shop.count("outbox", "kind = 'inventory.set'") == 2


@pytest.mark.parametrize(("body", "code"), [
    ({"changes": [{"sku": "TEA-1", "quantity": -1}]}, "ERR-1005"),
    ({"changes": [{"sku": "TEA-1", "quantity": 1}, {"sku": "TEA-1", "quantity": 2}]},
     "ERR-1005"),
    ({"changes": [{"sku": "NOPE", "quantity": 1}]}, "ERR-4001"),
    ({"reason": "stolen-by-aliens", "changes": [{"sku": "TEA-1", "quantity": 1}]}, "ERR-1005"),
    ({"changes": []}, "ERR-1005"),
])
async def test_bad_counts_change_nothing(shop: Api, body: dict[str, object], code: str) -> None:
    status, answer = await shop.post("/v1/inventory/counts", body)
    assert (status, answer["error"]["code"]) == (422, code)
    assert shop.count("stock_deltas") == 0
    assert shop.count("outbox") == 0


LUHN_EAN = "4005499095144"
"""A valid EAN-13 (GS1 check digit 4) whose digits also pass Luhn, as about one in ten do."""


async def test_a_barcode_that_also_passes_luhn_is_scanned_as_a_barcode(tmp_path: Path) -> None:
    """GS1 General Specifications, check digit (weights 3 and 1 from the right): about one
    EAN-13 in ten also passes the Luhn check, and was refused as a card number (ERR-1010)
    when scanned into a stock change. In a ``barcode`` field it is a barcode; the same
    digits in free text are still refused, and nothing is stored."""
    cfg = make_config(tmp_path, shopify=True)
    seed_catalogue(cfg.data_dir / "edged.db",
                   CATALOGUE_CSV + f"SOAP-1,{LUHN_EAN},Soap,300,1003,2003,5\n")
    async with running(cfg) as api:
        status, adj = await api.post("/v1/inventory/adjustments", {
            "reason": "received", "changes": [{"barcode": LUHN_EAN, "delta": 2}]})
        assert status == 201, adj
        assert adj["changes"][0]["quantity"] == 7
        status, item = await api.get(f"/v1/items?barcode={LUHN_EAN}")
        assert (status, item["sku"], item["stock"]["quantity"]) == (200, "SOAP-1", 7)
        before = api.count("adjustments")
        status, body = await api.post("/v1/inventory/adjustments", {
            "reason": "received", "reference": f"note {LUHN_EAN}",
            "changes": [{"barcode": LUHN_EAN, "delta": 1}]})
        assert (status, body["error"]["code"]) == (422, "ERR-1010")
        assert api.count("adjustments") == before
