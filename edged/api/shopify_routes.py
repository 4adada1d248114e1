"""Shopify talking back, over HTTP: the webhook endpoint, the inbox, the pick-ups."""

from __future__ import annotations

from typing import Any

from edged.api.http import Ctx, Route
from edged.api.schema import Free, Obj
from edged.errors import ApiError
from edged.inbound.inbox import STATES
from edged.inbound.pickups import LISTS, PickupService
from edged.store.answer import Answer

_S = {"type": "string"}
_SN = {"type": ["string", "null"]}
_I = {"type": "integer"}

PICKUP = Free(schema={"type": "object", "title": "Pickup", "properties": {
    "id": _S, "fulfillment_order_id": _S, "order_id": _SN, "order_name": _SN,
    "customer_name": _SN, "location_id": _S,
    "status": {"enum": list(LISTS["all"])}, "shopify_status": _S, "ordered_at": _SN,
    "created_at": _S, "updated_at": _S, "ready_at": _SN, "handed_over_at": _SN,
    "lines": {"type": "array", "items": {"type": "object", "properties": {
        "line_item_id": _S, "sku": _SN, "title": _S, "quantity": _I, "remaining": _I,
        "inventory_item_id": _SN, "local_sku": _SN}}},
    "sync": {"type": "object", "description": "The outbox rows that carry ready and"
             " handed_over to Shopify: pending, inflight, done or dead (null: none)"}},
    "description": "An online order to pick up at this store: items and the customer's"
    " name, never an amount or payment data"})
PICKUP_LIST = Free(schema={"type": "object", "title": "Pickups", "properties": {
    "data": {"type": "array", "items": PICKUP.schema}}})
INBOX = Free(schema={"type": "object", "title": "ShopifyInbox", "properties": {
    "data": {"type": "array", "items": {"type": "object", "properties": {
        "id": _I, "via": {"enum": ["webhook", "poll", "daemon"]}, "topic": _S,
        "subject": _SN, "version": _SN, "state": {"enum": list(STATES)}, "outcome": _SN,
        "error": _SN, "attempts": _I, "next_attempt_at": _SN,
        "duplicate_of": {"type": ["integer", "null"]}, "seen_again": _I,
        "received_at": _S, "processed_at": _SN, "webhook_id": _SN, "event_id": _SN,
        "triggered_at": _SN}}},
    "counts": {"type": "object"}}})
RECEIVED = Free(schema={"type": "object", "title": "WebhookReceived", "properties": {
    "received": {"type": "boolean"}, "id": _I, "state": {"enum": list(STATES)},
    "replayed": {"type": "boolean", "description": "the same webhook id was stored before"}}})


def _pickups(ctx: Ctx) -> PickupService:
    service = ctx.services.pickups
    assert service is not None
    return service


async def shopify_webhook(ctx: Ctx) -> Answer:
    inbound = ctx.services.shopify
    if inbound is None:
        raise ApiError("ERR-1011", "no route /v1/webhooks/shopify: this daemon has no"
                       " [shopify] section")
    return Answer(200, await inbound.webhooks.receive(ctx.request))


async def shopify_inbox(ctx: Ctx) -> Answer:
    state = ctx.request.query.get("state") or None
    if state is not None and state not in STATES:
        raise ApiError("ERR-1013", f"state must be one of {', '.join(STATES)}")
    limit = ctx.query_int("limit", 100, 1, 500)
    before = ctx.query_int("before", 2**62, 1, 2**62) if ctx.request.query.get("before") \
        else None

    def read(conn: Any) -> dict[str, Any]:
        from edged.inbound import inbox  # noqa: PLC0415

        return {"data": inbox.list_rows(conn, state, limit, before),
                "counts": inbox.counts(conn)}

    return Answer(200, await ctx.services.db.read(read))


async def list_pickups(ctx: Ctx) -> Answer:
    which = ctx.request.query.get("status") or "active"
    if which not in LISTS:
        raise ApiError("ERR-1013", f"status must be one of {', '.join(LISTS)}")
    limit = ctx.query_int("limit", 100, 1, 500)
    return Answer(200, {"data": await _pickups(ctx).list(which, limit)})


async def get_pickup(ctx: Ctx) -> Answer:
    return Answer(200, await _pickups(ctx).get(ctx.match("id")))


async def pickup_ready(ctx: Ctx) -> Answer:
    assert ctx.idem is not None
    return await _pickups(ctx).ready(ctx.match("id"), ctx.idem, ctx.actor)


async def pickup_handed_over(ctx: Ctx) -> Answer:
    assert ctx.idem is not None
    return await _pickups(ctx).hand_over(ctx.match("id"), ctx.idem, ctx.actor)


_BODY = ("ERR-1001", "ERR-1002", "ERR-1006", "ERR-1008", "ERR-1009", "ERR-1014")

SHOPIFY_ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/webhooks/shopify", shopify_webhook, "Shopify's webhook deliveries"
          " (no bearer token: X-Shopify-Hmac-SHA256 over the raw body, the previous secret"
          " accepted for an hour after a rotation). Stored in the inbox before the answer,"
          " processed later; a replayed X-Shopify-Webhook-Id is answered 200 and stored"
          " once. The body is Shopify's JSON payload as it sent it, read raw and never"
          " parsed before it is verified", RECEIVED, 200, None,
          ("ERR-1011", "ERR-1018", "ERR-1030", "ERR-1031", "ERR-1032", "ERR-1033",
           "ERR-1034"),
          scope=None, tag="shopify", idempotent=False, raw_body=True),
    Route("GET", "/v1/shopify/inbox", shopify_inbox, "What Shopify told the daemon (webhooks,"
          " catch-up polls) and what became of each: done, duplicate, ignored (why),"
          " failed, or pending; newest first, with the counts", INBOX,
          query={"state": "|".join(STATES), "limit": "1-500 (100)",
                 "before": "rows older than this id"},
          errors=("ERR-1013", "ERR-5003"), scope="manager", tag="shopify"),
    Route("GET", "/v1/pickups", list_pickups, "Online orders to pick up at this store, newest"
          " first: items and customer name, never payment data", PICKUP_LIST,
          query={"status": "|".join(LISTS) + " (active: open and ready)",
                 "limit": "1-500 (100)"}, errors=("ERR-1013",), tag="pickups"),
    Route("GET", "/v1/pickups/{id}", get_pickup, "One pick-up", PICKUP, errors=("ERR-4011",),
          tag="pickups"),
    Route("POST", "/v1/pickups/{id}/ready", pickup_ready, "Mark a pick-up ready: Shopify tells"
          " the customer (fulfillmentOrderLineItemsPreparedForPickup, through the outbox,"
          " applied once); 202 until Shopify has it", PICKUP, 202, Obj(name="Empty"),
          _BODY + ("ERR-4011", "ERR-4012"), tag="pickups"),
    Route("POST", "/v1/pickups/{id}/handed-over", pickup_handed_over, "The customer took the"
          " pick-up: fulfilled in Shopify (fulfillmentCreate, through the outbox, never"
          " twice); 202 until Shopify has it", PICKUP, 202, Obj(name="Empty"),
          _BODY + ("ERR-4011", "ERR-4013"), tag="pickups"),
)
