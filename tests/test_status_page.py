"""The status page in a real browser: Playwright driving Debian's chromium (never a
downloaded browser) against a real daemon, the Shopify fake behind it.

Signs in, sees the terminal, sees a payment made through the API within a second without a
reload, cuts the upstream and sees the breaker open and the queue grow (the oldest change's
age counting up), resolves an ``unknown`` payment with the page's own buttons and checks the
API agrees, and sees the event stream drop, said on the page, and come back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edged.config import TerminalConfig
from edged.lan import pairing, tokens
from tests.fakes.shopify import FakeShopify, load_admin_schema
from tests.helpers import Api, running
from tests.test_sync_e2e import (
    adjust,
    breaker_open,
    cash_sale,
    catalogue_csv,
    e2e_config,
    prepare,
    seed_shop,
    sync_entry,
    until,
)
from tests.tools import need

# serial: the page shows every change within a second (LIVE), kept apart from other tests
pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]

LIVE = 1000  # ms: every change shows within a second, without a reload
SCREENSHOT = os.environ.get("EDGED_SCREENSHOT")  # a path: keep a picture of the page


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    chromium = need("chromium", "chromium", "the status page in a real browser")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # Debian's chromium; Playwright's own browser download is never used
        launched = await pw.chromium.launch(executable_path=chromium,
                                            args=["--no-sandbox", "--disable-gpu"])
        yield launched
        await launched.close()


async def test_status_page_live_in_a_real_browser(tmp_path: Path, browser: object) -> None:
    from playwright.async_api import Browser, expect

    assert isinstance(browser, Browser)
    async with FakeShopify(schema=load_admin_schema()) as shop:
        stock = {"TEA": 40}
        variants = seed_shop(shop, stock)
        cfg = e2e_config(tmp_path / "data", shop)
        cfg = replace(cfg, terminals=(TerminalConfig(
            id="sim-1", kind="sim", options={"delay": 0.05, "unknown_suffix": 99}),))
        prepare(cfg, catalogue_csv(variants, stock))
        async with running(cfg) as api:
            page = await browser.new_page(viewport={"width": 412, "height": 915})  # a phone
            await page.goto(api.base + "/")
            await expect(page.locator("#signin")).to_be_visible()
            # a one-time code from `edged pair --scope manager` (made without --name)
            now = api.daemon.clock.now()
            code = await api.daemon.db.write(
                lambda c: pairing.create(c, "manager", None, now))
            await page.fill("#token", code)
            await page.fill("#pair-name", "phone-1")
            await page.click("#signin-form button[type=submit]")
            await expect(page.locator("#viewer")).to_have_text("phone-1 (manager)")
            assert api.count("pairing_codes", "used_at IS NOT NULL") == 1
            await expect(page.locator("#terminal-sim-1 .state")).to_have_text("online")
            await expect(page.locator("#live")).to_have_text("Live")
            await page.evaluate("window.sameDocument = 'yes'")

            await _payment_shows_live(api, page, expect)
            await _outage_shows_live(api, shop, page, expect)
            await _resolve_with_the_page(api, page, expect, browser)
            await _stream_drop_is_said_and_recovered(api, page, expect)

            assert await page.evaluate("window.sameDocument") == "yes"  # never reloaded
            if SCREENSHOT:
                await page.set_viewport_size({"width": 1280, "height": 1600})
                await page.screenshot(path=SCREENSHOT, full_page=True)

            # the printable report, linked from the page:
            # takings 12.50 + 6 x 4.50 + 20.99 + 50.00 + 3.50 + 7.77, refunds 10.99
            await page.click("#report-link")
            report = page.locator("#report-EUR")
            await expect(report).to_contain_text("Takings (approved)")
            await expect(report).to_contain_text("121.76 EUR")
            await expect(report).to_contain_text("110.77 EUR")  # net
            await expect(page.locator("#lists")).to_contain_text("Changes not yet synced")
            await page.close()


async def _payment_shows_live(api: Api, page: object, expect: object) -> None:
    status, paid = await api.post("/v1/payments", {"amount": 1250, "currency": "EUR",
                                                   "method": "cash"})
    assert status == 201
    row = page.locator(f"#pay-{paid['id']}")  # type: ignore[attr-defined]
    await expect(row.locator(".state")).to_have_text("approved", timeout=LIVE)  # type: ignore[operator]
    await expect(row.locator(".amount")).to_have_text("12.50 EUR")  # type: ignore[operator]
    await expect(page.locator("#today-EUR .takings-total")).to_have_text(  # type: ignore[attr-defined,operator]
        "12.50 EUR", timeout=LIVE)


async def _outage_shows_live(api: Api, shop: FakeShopify, page: object,
                             expect: object) -> None:
    dest = page.locator("#dest-shopify")  # type: ignore[attr-defined]
    await expect(dest.locator(".breaker")).to_have_text("closed")  # type: ignore[operator]
    await shop.faults.refuse()
    for _ in range(6):
        await cash_sale(api, {"TEA": 1})
    await until(lambda: breaker_open(api, "shopify"), "the Shopify breaker to open")
    await expect(dest.locator(".breaker")).to_have_text("open", timeout=LIVE)  # type: ignore[operator]
    entry = await sync_entry(api, "shopify")
    waiting = entry["pending"] + entry["inflight"]
    assert waiting >= 6
    await expect(dest.locator(".depth")).to_have_text(str(waiting), timeout=LIVE)  # type: ignore[operator]
    await adjust(api, "received", {"TEA": 3})  # the queue grows
    await expect(dest.locator(".depth")).to_have_text(str(waiting + 1), timeout=LIVE)  # type: ignore[operator]
    assert "unreachable" in (await dest.locator(".last-error").inner_text())
    age = dest.locator(".oldest")
    first = await age.inner_text()
    await expect(age).not_to_have_text(first, timeout=2500)  # counts up with no event
    await expect(page.locator("#alerts")).to_contain_text(  # type: ignore[attr-defined,operator]
        "shopify is unreachable", timeout=LIVE)


async def _resolve_with_the_page(api: Api, page: object, expect: object,
                                 browser: object) -> None:
    status, started = await api.post("/v1/payments", {
        "amount": 2099, "currency": "EUR", "method": "card_present", "terminal": "sim-1"})
    assert status == 202
    pid = started["id"]
    _, body = await api.get(f"/v1/payments/{pid}?wait=10")
    assert body["state"] == "unknown"  # the simulated terminal went silent
    item = page.locator(f"#unknown-{pid}")  # type: ignore[attr-defined]
    await expect(item).to_be_visible(timeout=LIVE)  # type: ignore[operator]
    await expect(item).to_contain_text("20.99 EUR")  # type: ignore[operator]
    await expect(page.locator("#unknown-count")).to_have_text("1")  # type: ignore[attr-defined,operator]
    await _monitor_sees_no_actions(api, browser, f"#unknown-{pid}", expect)
    await item.locator("button[data-outcome=approved]").click()  # no note: refused
    await expect(item.locator("input.note")).to_have_attribute("aria-invalid", "true")  # type: ignore[operator]
    await item.locator("input.note").fill("terminal journal: approved, auth 123456")
    await item.locator("button[data-outcome=approved]").click()
    # the click's POST is done when the API agrees; the page shows it within a second
    await until(lambda: _payment_is(api, pid, "approved"), "the page's resolve to land",
                timeout=10.0)
    await _gone(page, item, expect)
    _, body = await api.get(f"/v1/payments/{pid}")
    assert "terminal journal: approved, auth 123456" in body["failure"]
    row = page.locator(f"#pay-{pid} .state")  # type: ignore[attr-defined]
    await expect(row).to_have_text("approved", timeout=LIVE)  # type: ignore[operator]

    # a refund the terminal left unknown, settled with the page's own buttons
    status, paid = await api.post("/v1/payments", {
        "amount": 5000, "currency": "EUR", "method": "card_present", "terminal": "sim-1"})
    assert status == 202
    _, body = await api.get(f"/v1/payments/{paid['id']}?wait=10")
    assert body["state"] == "approved"
    status, refund = await api.post(f"/v1/payments/{paid['id']}/refunds", {"amount": 1099})
    assert status in (201, 202), refund
    rid = refund["id"]
    await until(lambda: _refund_unknown(api, paid["id"]), "the refund to end unknown")
    item = page.locator(f"#unknown-{rid}")  # type: ignore[attr-defined]
    await expect(item).to_be_visible(timeout=LIVE)  # type: ignore[operator]
    await expect(item).to_contain_text("10.99 EUR")  # type: ignore[operator]
    await item.locator("input.note").fill("terminal journal: refund 10.99 done")
    # a sale meanwhile refreshes the page live: the note being typed keeps its text
    status, sale = await api.post("/v1/payments", {"amount": 350, "currency": "EUR",
                                                   "method": "cash"})
    assert status == 201, sale
    await expect(page.locator(f"#pay-{sale['id']} .state")).to_have_text(  # type: ignore[attr-defined]
        "approved", timeout=LIVE)  # type: ignore[operator]
    await expect(item.locator("input.note")).to_have_value(  # type: ignore[operator]
        "terminal journal: refund 10.99 done")
    await item.locator("button[data-outcome=succeeded]").click()
    await until(lambda: _refund_is(api, paid["id"], "succeeded"), "the page's refund resolve",
                timeout=10.0)
    await _gone(page, item, expect)
    _, body = await api.get(f"/v1/payments/{paid['id']}")
    assert [(r["id"], r["state"]) for r in body["refunds"]] == [(rid, "succeeded")]


async def _monitor_sees_no_actions(api: Api, browser: object, selector: str,
                                   expect: object) -> None:
    """A monitor token signs in (its own browser context) and sees the item, no buttons."""
    monitor = await api.daemon.db.write(lambda c: tokens.create(c, "wall-1", "monitor"))
    context = await browser.new_context()  # type: ignore[attr-defined]
    try:
        wall = await context.new_page()
        await wall.goto(api.base + "/")
        await wall.fill("#token", monitor)
        await wall.click("#signin-form button[type=submit]")
        await expect(wall.locator("#viewer")).to_have_text("wall-1 (monitor, view only)")  # type: ignore[operator]
        item = wall.locator(selector)
        await expect(item).to_be_visible(timeout=LIVE)  # type: ignore[operator]
        await expect(item.locator("button")).to_have_count(0)  # type: ignore[operator]
        await expect(wall.locator("main button:visible")).to_have_count(0)  # type: ignore[operator]
    finally:
        await context.close()


async def _refund_unknown(api: Api, payment_id: str) -> bool | None:
    return await _refund_is(api, payment_id, "unknown")


async def _refund_is(api: Api, payment_id: str, state: str) -> bool | None:
    _, body = await api.get(f"/v1/payments/{payment_id}")
    return True if [r["state"] for r in body["refunds"]] == [state] else None


async def _payment_is(api: Api, payment_id: str, state: str) -> bool | None:
    _, body = await api.get(f"/v1/payments/{payment_id}")
    return True if body["state"] == state else None


async def _gone(page: object, item: object, expect: object) -> None:
    try:
        await expect(item).to_have_count(0, timeout=LIVE)  # type: ignore[operator]
    except AssertionError:
        error = await page.locator("#action-error").inner_text()  # type: ignore[attr-defined]
        raise AssertionError(f"still listed a second after the API agreed; page error:"
                             f" {error!r}") from None


async def _stream_drop_is_said_and_recovered(api: Api, page: object, expect: object) -> None:
    live = page.locator("#live")  # type: ignore[attr-defined]
    # more events than a subscriber's queue holds: the daemon drops the page's stream,
    # as it drops any client too slow to keep up
    for i in range(1001):
        api.daemon.bus.publish("alert", {"event": "flood", "n": i})
    await expect(live).to_contain_text("reconnected", timeout=5000)  # type: ignore[operator]
    assert api.daemon.bus.subscribers >= 1
    status, paid = await api.post("/v1/payments", {"amount": 777, "currency": "EUR",
                                                   "method": "cash"})
    assert status == 201
    await expect(page.locator(f"#pay-{paid['id']} .state")).to_have_text(  # type: ignore[attr-defined,operator]
        "approved", timeout=LIVE)
