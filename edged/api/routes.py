"""Every route of the daemon, declared once: handler, body, answer, errors, scope."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

from aiohttp import web

from edged.api import models
from edged.api.http import Ctx, Route
from edged.api.manager_routes import MANAGER_ROUTES
from edged.api.pair_route import PAIR_INFO_ROUTE, PAIR_ROUTE
from edged.api.shopify_routes import SHOPIFY_ROUTES
from edged.api.streams import events
from edged.api.terminal_routes import TERMINAL_ROUTES
from edged.api.wire import DRAINING, json_response
from edged.errors import ApiError
from edged.ops import job_retry, systemd_notify
from edged.payments.methods import available
from edged.payments.service import Answer, NewPayment
from edged.payments.states import PaymentState
from edged.stock.inventory import COUNT_REASON, ItemRef, OrderLine, StockChange, StockCount
from edged.store import audit, idempotency
from edged.upstream.sync_hooks import job_discarded
from sync.core.clock import utc_iso
from sync.core.outbox import JOB_STATES, JobStateError

_BODY_ERRORS = ("ERR-1001", "ERR-1002", "ERR-1003", "ERR-1004", "ERR-1005", "ERR-1006",
                "ERR-1007", "ERR-1008", "ERR-1009", "ERR-1010", "ERR-1014")
_AUTH_ERRORS = ("ERR-5001", "ERR-5002", "ERR-5004", "ERR-1015")

# -- payments -----------------------------------------------------------------------------


async def create_payment(ctx: Ctx) -> Answer:
    b = ctx.body
    method = b["method"]
    if method == "token" and not b.get("token"):
        raise ApiError("ERR-2004", "method token needs a token (the processor's payment"
                       " method id) and a processor")
    if method != "token" and (b.get("token") or b.get("processor")):
        raise ApiError("ERR-2004", f"token and processor belong to token payments, not"
                       f" {method}")
    if method == "cash" and b.get("terminal"):
        raise ApiError("ERR-2004", "cash payments do not use a terminal")
    if method == "card_present" and b["currency"] != ctx.services.cfg.store.currency:
        raise ApiError("ERR-2002", f"the terminals take {ctx.services.cfg.store.currency},"
                       f" not {b['currency']}")
    new = NewPayment(amount=b["amount"], currency=b["currency"], method=method,
                     terminal_id=b.get("terminal"), reference=b.get("reference"),
                     token=b.get("token"), processor=b.get("processor"),
                     capture=b.get("capture") or "automatic")
    return await ctx.services.payments.create(new, _idem(ctx), ctx.actor)


async def get_payment(ctx: Ctx) -> Answer:
    wait = ctx.query_float("wait", 0.0, 0.0, 60.0)
    pid = ctx.match("id")
    if wait > 0:
        return Answer(200, await ctx.services.payments.wait(pid, wait))
    return Answer(200, await ctx.services.payments.get(pid))


async def list_payments(ctx: Ctx) -> Answer:
    state = ctx.request.query.get("state") or None
    if state is not None and state not in {s.value for s in PaymentState}:
        raise ApiError("ERR-1013", f"state {state!r} is not a payment state")
    limit = ctx.query_int("limit", 50, 1, 200)
    cursor = ctx.request.query.get("cursor") or None
    return Answer(200, await ctx.services.payments.list(state, limit, cursor))


async def cancel_payment(ctx: Ctx) -> Answer:
    return await ctx.services.payments.cancel(ctx.match("id"), _idem(ctx))


async def refund_payment(ctx: Ctx) -> Answer:
    return await ctx.services.payments.refund(ctx.match("id"), ctx.body["amount"],
                                              ctx.body.get("reason"), _idem(ctx), ctx.actor)


async def capture_payment(ctx: Ctx) -> Answer:
    return await ctx.services.payments.capture(ctx.match("id"), ctx.body.get("amount"),
                                               _idem(ctx), ctx.actor)


async def void_payment(ctx: Ctx) -> Answer:
    return await ctx.services.payments.void(ctx.match("id"), _idem(ctx), ctx.actor)


async def resolve_payment(ctx: Ctx) -> Answer:
    return await ctx.services.payments.resolve(ctx.match("id"), ctx.body["outcome"],
                                               ctx.body["note"], _idem(ctx), ctx.actor)


def _plain_cash(body: dict[str, Any]) -> bool:
    """A cash payment create_payment takes as it is: nothing happens before its write."""
    return (body.get("method") == "cash" and not body.get("terminal")
            and not body.get("token") and not body.get("processor"))


async def resolve_refund(ctx: Ctx) -> Answer:
    return await ctx.services.payments.refunds.resolve(
        ctx.match("id"), ctx.body["outcome"], ctx.body["note"], _idem(ctx), ctx.actor)


def _idem(ctx: Ctx) -> Any:
    assert ctx.idem is not None
    return ctx.idem


# -- orders, stock, catalogue -------------------------------------------------------------


def _ref(entry: dict[str, Any]) -> ItemRef:
    return ItemRef(sku=entry.get("sku"), barcode=entry.get("barcode"),
                   variant_id=entry.get("variant_id"),
                   inventory_item_id=entry.get("inventory_item_id"))


async def create_order(ctx: Ctx) -> Answer:
    lines = [OrderLine(_ref(ln), ln["quantity"], ln["price"]) for ln in ctx.body["lines"]]
    return await ctx.services.inventory.create_order(
        ctx.body["reference"], lines, ctx.body["payments"], _idem(ctx), ctx.actor)


async def adjust_inventory(ctx: Ctx) -> Answer:
    changes = []
    for i, ch in enumerate(ctx.body["changes"]):
        if ch["delta"] == 0:
            raise ApiError("ERR-4009", f"body.changes[{i}].delta must not be 0")
        changes.append(StockChange(_ref(ch), ch["delta"]))
    return await ctx.services.inventory.adjust(ctx.body["reason"], ctx.body.get("reference"),
                                               changes, _idem(ctx), ctx.actor)


async def count_inventory(ctx: Ctx) -> Answer:
    counts = [StockCount(_ref(ch), ch["quantity"]) for ch in ctx.body["changes"]]
    return await ctx.services.inventory.count(ctx.body.get("reason") or COUNT_REASON,
                                              ctx.body.get("reference"), counts, _idem(ctx),
                                              ctx.actor)


async def get_item(ctx: Ctx) -> Answer:
    sku = ctx.request.query.get("sku")
    barcode = ctx.request.query.get("barcode")
    if bool(sku) == bool(barcode):
        raise ApiError("ERR-1013", "give exactly one of ?sku= or ?barcode=")
    ref = ItemRef(sku=sku) if sku else ItemRef(barcode=barcode)
    return Answer(200, await ctx.services.inventory.item(ref))


# -- terminals, sync, events, health ------------------------------------------------------


async def list_terminals(ctx: Ctx) -> Answer:
    return Answer(200, {"data": [v.as_dict() for v in ctx.services.terminals.views()]})


async def get_terminal(ctx: Ctx) -> Answer:
    view = ctx.services.terminals.view(ctx.match("id"))
    if view is None:
        raise ApiError("ERR-3006", f"no terminal {ctx.match('id')!r}")
    return Answer(200, view.as_dict())


async def payment_methods(ctx: Ctx) -> Answer:
    s = ctx.services
    return Answer(200, await available(s.cfg, s.db, s.terminals, s.payments.tokens.link_down,
                                       ctx.request.query.get("terminal") or None))


async def sync_status(ctx: Ctx) -> Answer:
    return Answer(200, await ctx.services.sync_status())


async def list_jobs(ctx: Ctx) -> Answer:
    state = ctx.request.query.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise ApiError("ERR-1013", f"state must be one of {', '.join(JOB_STATES)}")
    destination = ctx.request.query.get("destination") or None
    limit = ctx.query_int("limit", 100, 1, 500)
    manager = ctx.principal is not None and ctx.principal.is_manager
    found = await ctx.services.outbox.jobs(state, destination, limit, secrets_shown=manager)
    return Answer(200, {"data": await ctx.services.db.read(
        lambda conn: job_retry.annotate(conn, found))})


async def retry_job(ctx: Ctx) -> Answer:
    return await _move_job(ctx, "retry")


async def discard_job(ctx: Ctx) -> Answer:
    return await _move_job(ctx, "discard")


async def _move_job(ctx: Ctx, action: str) -> Answer:
    raw = ctx.match("id")
    # a plain decimal that fits SQLite's INTEGER (str.isdigit() also takes "²")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) < 2**63):
        raise ApiError("ERR-6001", f"no sync job {raw[:40]!r}: a job id is a whole number")

    events: list[tuple[str, dict[str, Any]]] = []

    def record(conn: sqlite3.Connection, job: dict[str, Any]) -> None:
        refused = job_retry.retry_refusal(conn, job["kind"], job["subject_id"]) \
            if action == "retry" else None
        if refused is not None:  # raised inside the write: the job stays dead, unchanged
            raise ApiError("ERR-6017", f"job {job['id']} cannot be retried: {refused}")
        audit.append(conn, ctx.actor, f"sync.job.{action}", str(job["id"]),
                     {"destination": job["destination"], "kind": job["kind"]})
        if action == "discard":
            events.extend(job_discarded(conn, job["kind"], job["subject_id"], ctx.actor,
                                        utc_iso(ctx.services.clock.now())))
        assert ctx.idem is not None
        idempotency.save(conn, ctx.idem, 200, job)

    store = ctx.services.outbox
    try:
        job = await (store.retry_dead(int(raw), record) if action == "retry"
                     else store.discard(int(raw), record))
    except JobStateError as exc:
        raise ApiError("ERR-6002", f"job {raw} is {exc.state}; only a dead job can be"
                       f" {'retried' if action == 'retry' else 'discarded'}") from None
    if job is None:
        raise ApiError("ERR-6001", f"no sync job {raw}")
    ctx.services.bus.publish("sync", {"event": f"job.{action}", "job": job["id"]})
    for kind, data in events:
        ctx.services.bus.publish(kind, data)
    return Answer(200, job)


async def openapi(ctx: Ctx) -> Answer:
    from edged.api.openapi import document  # noqa: PLC0415  (the route table imports us)

    return Answer(200, document(ROUTES))


async def healthz(ctx: Ctx) -> web.StreamResponse:
    try:
        await asyncio.wait_for(ctx.services.db.read(lambda c: c.execute("SELECT 1").fetchone()),
                               2.0)
    except (TimeoutError, Exception):
        return json_response(503, {"status": "unhealthy", "database": "not answering"})
    db = ctx.services.db
    if db.full:  # a write failed for want of space: see whether one commits now
        with contextlib.suppress(Exception):
            await asyncio.wait_for(db.write(systemd_notify.beat(ctx.services.clock)), 2.0)
    if db.full:
        return json_response(503, {"status": "unhealthy", "database": "cannot write: the"
                                   " disk is full"})
    if ctx.request.app[DRAINING][0]:
        return json_response(503, {"status": "draining", "database": "ok"})
    return json_response(200, {"status": "ok", "database": "ok"})


async def metrics(ctx: Ctx) -> web.StreamResponse:
    await ctx.services.metrics.refresh()
    text = ctx.services.metrics.render()
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Version": "0.0.4"})


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/payments", create_payment, "Take a payment: cash at once, card_present"
          " on a terminal (answered 202 while the customer pays)", models.PAYMENT, 201,
          models.PAYMENT_CREATE, _BODY_ERRORS + ("ERR-2001", "ERR-2002", "ERR-2004",
          "ERR-2009", "ERR-3001", "ERR-3002", "ERR-3003", "ERR-3010"),
          key_in_write=_plain_cash),
    Route("GET", "/v1/payments", list_payments, "List payments, newest first",
          models.PAYMENT_LIST, query={"state": "filter by state", "limit": "1-200 (50)",
                                      "cursor": "next_cursor of the previous page"},
          errors=("ERR-1013",)),
    Route("GET", "/v1/payments/{id}", get_payment, "Read a payment; ?wait=S long-polls until"
          " a final state or S seconds (at most 60)", models.PAYMENT,
          query={"wait": "seconds to wait for a final state"}, errors=("ERR-2003", "ERR-1013")),
    Route("POST", "/v1/payments/{id}/cancel", cancel_payment, "Cancel a payment running on a"
          " terminal", models.PAYMENT, 200, models.EMPTY,
          _BODY_ERRORS + ("ERR-2003", "ERR-2005", "ERR-3004", "ERR-3007", "ERR-2030")),
    Route("POST", "/v1/payments/{id}/refunds", refund_payment, "Refund an approved payment"
          " (in part or whole)", models.REFUND, 201, models.REFUND_CREATE,
          _BODY_ERRORS + ("ERR-2001", "ERR-2003", "ERR-2006", "ERR-2007", "ERR-3002",
                          "ERR-3005")),
    Route("POST", "/v1/payments/{id}/capture", capture_payment, "Capture an authorized"
          " payment (capture manual), up to the authorised amount; 202, then approved when"
          " the processor answers", models.PAYMENT, 202, models.CAPTURE,
          _BODY_ERRORS + ("ERR-2003", "ERR-2012", "ERR-2013", "ERR-3009")),
    Route("POST", "/v1/payments/{id}/void", void_payment, "Void: cancel an authorized"
          " payment at its processor (202, then canceled), or refund an approved one in full"
          " of what is left (the answer is that refund)", models.PAYMENT_OR_REFUND, 202,
          models.EMPTY, _BODY_ERRORS + ("ERR-2003", "ERR-2006", "ERR-2014", "ERR-3002",
                                        "ERR-3005")),
    Route("POST", "/v1/payments/{id}/resolve", resolve_payment, "Settle a payment in state"
          " unknown (manager scope), with an audit entry", models.PAYMENT, 200, models.RESOLVE,
          _BODY_ERRORS + ("ERR-2003", "ERR-2008", "ERR-5003"), scope="manager"),
    Route("POST", "/v1/refunds/{id}/resolve", resolve_refund, "Settle a refund in state"
          " unknown (manager scope), with an audit entry", models.REFUND, 200,
          models.REFUND_RESOLVE, _BODY_ERRORS + ("ERR-2016", "ERR-2017", "ERR-5003"),
          scope="manager"),
    Route("POST", "/v1/orders", create_order, "Record a sale and the payments that paid it;"
          " decrements local stock once", models.ORDER, 201, models.ORDER_CREATE,
          _BODY_ERRORS + ("ERR-4001", "ERR-4003", "ERR-4004", "ERR-4005", "ERR-4006",
                          "ERR-4007", "ERR-4008", "ERR-4014"), tag="stock"),
    Route("POST", "/v1/inventory/adjustments", adjust_inventory, "Change stock (received,"
          " damaged, counted…)", models.ADJUSTMENT, 201, models.ADJUSTMENT_CREATE,
          _BODY_ERRORS + ("ERR-4001", "ERR-4009", "ERR-4014"), tag="stock"),
    Route("POST", "/v1/inventory/counts", count_inventory, "Set stock to what was counted;"
          " sent to Shopify as a compare-and-swap on the last known quantity",
          models.COUNT, 201, models.COUNT_CREATE, _BODY_ERRORS + ("ERR-4001", "ERR-4014"),
          tag="stock"),
    Route("GET", "/v1/items", get_item, "A catalogue entry with its local stock",
          models.ITEM, query={"sku": "the SKU", "barcode": "or the barcode"},
          errors=("ERR-1013", "ERR-4002"), tag="stock"),
    Route("GET", "/v1/terminals", list_terminals, "Every terminal and its status",
          models.TERMINAL_LIST, tag="terminals"),
    Route("GET", "/v1/terminals/{id}", get_terminal, "One terminal", models.TERMINAL,
          errors=("ERR-3006",), tag="terminals"),
    Route("GET", "/v1/payment-methods", payment_methods, "What a lane can take now: cash,"
          " card_present (terminal online and idle), token (processor reachable, or offline"
          " with room left), each with a reason when not", models.PAYMENT_METHODS,
          query={"terminal": "a terminal id (needed when there are several)"},
          errors=("ERR-1013", "ERR-3006"), tag="payments"),
    Route("GET", "/v1/sync", sync_status, "Per destination: queue depth, oldest pending age,"
          " breaker", models.SYNC, tag="sync"),
    Route("GET", "/v1/sync/jobs", list_jobs, "Outbox rows, e.g. ?state=dead (payment-method"
          " tokens in payloads shown to the manager scope only)", models.JOBS,
          query={"state": "pending|inflight|done|dead|discarded", "destination": "shopify…",
                 "limit": "1-500 (100)"}, errors=("ERR-1013",), tag="sync"),
    Route("POST", "/v1/sync/jobs/{id}/retry", retry_job, "Send a dead job again (same"
          " idempotency key), with an audit entry; refused (ERR-6017) when its payment or"
          " refund is settled", models.JOB, 200, models.EMPTY,
          _BODY_ERRORS + ("ERR-6001", "ERR-6002", "ERR-6017"), scope="manager", tag="sync"),
    Route("POST", "/v1/sync/jobs/{id}/discard", discard_job, "Give up a dead job for good,"
          " with an audit entry", models.JOB, 200, models.EMPTY,
          _BODY_ERRORS + ("ERR-6001", "ERR-6002"), scope="manager", tag="sync"),
    Route("GET", "/v1/events", events, "Server-sent events: payment, refund, order,"
          " inventory, terminal, sync, alert. A client that reconnects with Last-Event-ID gets"
          " the events it missed (the last 1000 are kept), or an event `reset` when it is"
          " too far behind or the daemon restarted", models.EVENT_STREAM, query={
              "kinds": "comma-separated kinds to receive (all by default)"},
          errors=("ERR-5032",), tag="events", media_type="text/event-stream"),
    Route("GET", "/v1/openapi.json", openapi, "This contract", models.OPENAPI, tag="meta"),
    Route("GET", "/healthz", healthz, "Liveness: the event loop and the database answer",
          models.HEALTH, scope=None, tag="meta"),
    Route("GET", "/metrics", metrics, "Prometheus text format; a bearer token of any scope"
          " unless the client is on this box ([api] metrics_public opens it to the LAN)",
          models.TEXT, errors=_AUTH_ERRORS, scope=None, tag="meta", media_type="text/plain"),
) + MANAGER_ROUTES + (PAIR_ROUTE, PAIR_INFO_ROUTE) + TERMINAL_ROUTES + SHOPIFY_ROUTES
