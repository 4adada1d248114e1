"""The whole catalogue as one bulk operation, through real HTTP with the schema-checked fake.

Published facts these rest on (shopify.dev "Perform bulk operations"; see
tests/fakes/shopify_bulk_ops.py): ``bulkOperationRunQuery`` runs one bulk query at a time per
shop (``OPERATION_IN_PROGRESS`` otherwise); ``currentBulkOperation`` shows its status and,
once ``COMPLETED``, the URL of a JSONL file; ``bulk_operations/finish`` is sent when it ends;
the file is fetched without the Admin API token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLSchema

from edged.inbound import catalog_bulk
from tests.clock import ManualClock
from tests.fakes.shopify import FakeShopify, load_admin_schema
from tests.fakes.shopify_bulk_ops import BulkOperation
from tests.helpers import Api, running, seed_catalogue
from tests.shopify_inbound import inbound_config, item, prepare, subscribe, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def admin_schema() -> GraphQLSchema:
    return load_admin_schema()


def _catalogue(shop: FakeShopify) -> dict[str, Any]:
    out = {f"SKU-{n}": shop.seed_variant(f"SKU-{n}", price=f"{n}.25", available=n)
           for n in range(1, 26)}
    shop.seed_variant(None, price="1.00", available=3)  # no SKU: not kept locally
    archived = shop.seed_variant("OLD-1", price="2.00", available=1)
    shop.products[archived.product_id].status = "ARCHIVED"
    out["OLD-1"] = archived
    return out


async def _applied(api: Api) -> dict[str, Any] | None:
    status, body = await api.get("/v1/sync")
    catalogue = body["shopify"]["catalogue"]
    return catalogue if catalogue and catalogue.get("applied_at") else None


def _runs(shop: FakeShopify) -> list[Any]:
    return [c for c in shop.calls if "bulkOperationRunQuery" in c.root_fields]


@asynccontextmanager
async def daemon(tmp_path: Path, shop: FakeShopify, *, clock: ManualClock | None = None,
                 csv: str | None = None, **shopify: Any) -> AsyncIterator[Api]:
    cfg = inbound_config(tmp_path / "data", shop, **shopify)
    prepare(cfg, shop)
    if csv is not None:
        seed_catalogue(cfg.data_dir / "edged.db", csv)
    async with running(cfg, clock) as api:
        yield api


async def test_the_full_pull_is_one_bulk_operation_applied_whole(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with FakeShopify(schema=admin_schema) as shop:
        seeded = _catalogue(shop)
        gone = "LOCAL-GONE,,Gone,100,gid://shopify/ProductVariant/999999,,5"
        mine = "LOCAL-ONLY,,Local only,100,,,5"
        csv = "sku,barcode,title,price,variant_id,inventory_item_id,quantity\n" \
              f"{gone}\n{mine}\n"
        async with daemon(tmp_path, shop, csv=csv) as api:
            subscribe(shop, api, ["bulk_operations/finish"])
            applied = await until(lambda: _applied(api), "the bulk pull")
            assert len(_runs(shop)) == 1
            assert applied["items"] == 27  # every line of the file, the SKU-less one too
            for n in (1, 13, 25):
                entry = await item(api, f"SKU-{n}")
                assert entry["price"] == n * 100 + 25
                assert entry["stock"]["quantity"] == n and entry["active"] is True
            old = await item(api, "OLD-1")
            assert old["active"] is False and "archived" in old["inactive_reason"]
            gone_item = await item(api, "LOCAL-GONE")
            assert gone_item["active"] is False  # its variant is not in Shopify's catalogue
            assert (await item(api, "LOCAL-ONLY"))["active"] is True  # never Shopify's
            downloads = [r for r in shop.requests if r.path.startswith("/bulk/")]
            assert len(downloads) == 1 and downloads[0].status == 200
            assert "X-Shopify-Access-Token" not in downloads[0].headers
            assert seeded["SKU-1"].variant_id == (await item(api, "SKU-1"))["variant_id"]
    shop.assert_no_rejections()


async def test_without_a_webhook_the_pull_reads_the_operation_until_it_ends(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with FakeShopify(schema=admin_schema) as shop:
        _catalogue(shop)
        shop.bulk.delay = 0.5
        async with daemon(tmp_path, shop) as api:
            await until(lambda: _applied(api), "the bulk pull")
            reads = [c for c in shop.calls if "currentBulkOperation" in c.root_fields]
            assert len(reads) >= 2  # before the start, then until COMPLETED
            assert not shop.webhooks.deliveries
    shop.assert_no_rejections()


async def test_one_bulk_query_at_a_time(tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    """Another bulk query of the app runs: the daemon waits for it to end."""
    clock = ManualClock(datetime.now(UTC) + timedelta(seconds=30))
    async with FakeShopify(schema=admin_schema) as shop:
        _catalogue(shop)
        other = BulkOperation(1, "gid://shopify/BulkOperation/6999", "{ products { edges {"
                              " node { id } } } }", "RUNNING", shop.now())
        shop.bulk.operations.append(other)
        async with daemon(tmp_path, shop, clock=clock) as api:
            await until(lambda: _waiting(api), "the pull to wait for the other operation")
            assert not _runs(shop)
            shop.bulk.finish(other)
            clock.advance(catalog_bulk.RETRY_INITIAL)
            await until(lambda: _advance_until(api, clock), "the pull after the other one")
            assert len(_runs(shop)) == 1
            assert not [e for e in shop.user_errors if e.code == "OPERATION_IN_PROGRESS"]
    shop.assert_no_rejections()


async def _waiting(api: Api) -> bool:
    status, body = await api.get("/v1/sync")
    task = next(t for t in body["tasks"] if t["name"] == "shopify-catalogue")
    catalogue = body["shopify"]["catalogue"]
    return task["state"] == "running" and catalogue is None


async def _advance_until(api: Api, clock: ManualClock) -> bool:
    clock.advance(0.25)
    return await _applied(api) is not None


async def test_a_restarted_daemon_waits_for_the_operation_it_started(
        tmp_path: Path, admin_schema: GraphQLSchema) -> None:
    async with FakeShopify(schema=admin_schema) as shop:
        _catalogue(shop)
        shop.bulk.auto = False  # the operation runs until the test ends it
        async with daemon(tmp_path, shop) as api:
            await until(lambda: _runs_are(shop, 1), "the bulk query to start")
        assert await _applied_rows(tmp_path) == 0
        shop.bulk.finish()
        async with daemon(tmp_path, shop) as api:
            await until(lambda: _applied(api), "the pull of the operation started before")
        assert len(_runs(shop)) == 1, "a second bulk query was started"
    shop.assert_no_rejections()


async def _runs_are(shop: FakeShopify, count: int) -> bool:
    return len(_runs(shop)) >= count


async def _applied_rows(tmp_path: Path) -> int:
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(tmp_path / "data" / "edged.db")
    try:
        return int(conn.execute("SELECT count(*) FROM shopify_bulk_operations WHERE"
                                " applied_at IS NOT NULL").fetchone()[0])
    finally:
        conn.close()


async def test_a_failed_operation_is_run_again(tmp_path: Path,
                                               admin_schema: GraphQLSchema) -> None:
    clock = ManualClock(datetime.now(UTC) + timedelta(seconds=30))
    async with FakeShopify(schema=admin_schema) as shop:
        _catalogue(shop)
        shop.bulk.auto = False
        async with daemon(tmp_path, shop, clock=clock) as api:
            subscribe(shop, api, ["bulk_operations/finish"])
            await until(lambda: _runs_are(shop, 1), "the first bulk query")
            shop.bulk.finish(status="FAILED", error_code="INTERNAL_SERVER_ERROR")
            await until(lambda: _catalogue_error(api), "the failure to be recorded")
            shop.bulk.auto = True
            clock.advance(catalog_bulk.RETRY_INITIAL)
            await until(lambda: _advance_until(api, clock), "the second bulk query")
            assert len(_runs(shop)) == 2
    shop.assert_no_rejections()


async def _catalogue_error(api: Api) -> str | None:
    status, body = await api.get("/v1/sync")
    catalogue = body["shopify"]["catalogue"] or {}
    return catalogue.get("error")


async def test_the_file_is_applied_in_one_transaction(
        tmp_path: Path, admin_schema: GraphQLSchema,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure at the end of the apply (after every item was written in it) leaves the
    catalogue as it was; the next pull applies it."""
    clock = ManualClock(datetime.now(UTC) + timedelta(seconds=30))
    async with FakeShopify(schema=admin_schema) as shop:
        seeded = _catalogue(shop)
        csv = "sku,barcode,title,price,variant_id,inventory_item_id,quantity\n" + "".join(
            f"{sku},,{sku},1,{v.variant_id},{v.inventory_item_id},0\n"
            for sku, v in seeded.items())

        def boom(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the box lost power here")

        monkeypatch.setattr(catalog_bulk, "_record_products", boom)
        async with daemon(tmp_path, shop, clock=clock, csv=csv) as api:
            subscribe(shop, api, ["bulk_operations/finish"])
            await until(lambda: _task_failed(api), "the apply to fail")
            for sku in ("SKU-1", "SKU-25", "OLD-1"):
                entry = await item(api, sku)
                assert (entry["price"], entry["stock"]["quantity"], entry["active"]) == \
                    (1, 0, True), entry
            monkeypatch.undo()
            clock.advance(60.0)
            await until(lambda: _advance_until(api, clock), "the pull after the failure")
            assert (await item(api, "SKU-25"))["price"] == 2525
    shop.assert_no_rejections()


async def _task_failed(api: Api) -> bool:
    status, body = await api.get("/v1/sync")
    task = next(t for t in body["tasks"] if t["name"] == "shopify-catalogue")
    return bool(task["last_error"] and "lost power" in task["last_error"])
