"""The fake Shopify's webhooks: subscriptions, and signed deliveries to their URLs.

Published facts it rests on (shopify.dev, "Deliver webhooks through HTTPS" and the
``WebhookSubscriptionTopic`` enum of the Admin schema in tests/fixtures/shopify/):

- ``webhookSubscriptionCreate(topic:, webhookSubscription: {callbackUrl, format})``,
  ``webhookSubscriptionDelete(id:)`` and ``webhookSubscriptions(first:)`` (the subscription's
  URL under ``endpoint { ... on WebhookHttpEndpoint { callbackUrl } }``); the topic enum is
  the REST topic upper-cased with ``/`` as ``_`` (``orders/create`` ↔ ``ORDERS_CREATE``);
- a delivery is a POST of the JSON payload with ``X-Shopify-Topic``,
  ``X-Shopify-Hmac-SHA256`` (base64 HMAC-SHA256 of the raw body under the app's client
  secret), ``X-Shopify-Webhook-Id`` (the same on every retry of one delivery),
  ``X-Shopify-Event-Id`` (shared by the deliveries of one event), ``X-Shopify-Triggered-At``,
  ``X-Shopify-Shop-Domain``, ``X-Shopify-API-Version``; after the secret is rotated Shopify may
  sign with the old one for up to an hour (``sign_with=`` plays that);
- REST payload shapes: an order (``id``, ``admin_graphql_api_id``, ``updated_at`` with the
  shop's UTC offset, ``source_name``, ``customer``, ``line_items``, prices and gateways),
  ``products/delete`` ``{"id"}``, ``inventory_levels/update`` ``{inventory_item_id,
  location_id, available, updated_at}``, ``fulfillment_orders/order_routing_complete``
  ``{"fulfillment_order": {"id", "status"}}`` (only those two), ``bulk_operations/finish``
  ``{admin_graphql_api_id, status, error_code, created_at, completed_at, type}``.

Deliveries are sent from tasks of the running loop (``await sender.drain()`` waits for
them); each records the HTTP status and how long the answer took. ``replay(d)`` sends a
delivery again as it was (a retry), ``duplicate(d)`` the same event under a new webhook id,
``forged(...)`` a delivery signed with another secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import aiohttp
from graphql import GraphQLResolveInfo

from .shopify import API_VERSION, _iso, gid_number

if TYPE_CHECKING:
    from .shopify import AdjustmentGroup, FakeShopify, Order

SHOP_OFFSET = timezone(timedelta(hours=-5))
"""REST payloads carry times in the shop's zone (the daemon must not assume UTC)."""


def rest_time(moment: datetime) -> str:
    return moment.astimezone(SHOP_OFFSET).isoformat(timespec="seconds")


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def enum_topic(topic: str) -> str:
    return topic.upper().replace("/", "_")


@dataclass
class Subscription:
    id: str
    topic: str
    callback_url: str
    format: str
    created_at: datetime


@dataclass
class Delivery:
    webhook_id: str
    event_id: str
    topic: str
    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None = None
    answer: Any = None
    error: str | None = None
    seconds: float | None = None
    """From sending the request to the end of the answer."""
    sent: asyncio.Event = field(default_factory=asyncio.Event)


class WebhookSender:
    def __init__(self, shop: FakeShopify) -> None:
        self.shop = shop
        self.secret = "fake-shopify-app-secret"  # noqa: S105 - the fake's own
        self.shop_domain = "edged-test.myshopify.com"
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[Delivery] = []
        self.paused = False
        """True: events are recorded in ``held`` instead of sent (a link that drops them)."""
        self.held: list[tuple[str, dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0
        shop.extend_root({
            "webhookSubscriptions": self._q_subscriptions,
            "webhookSubscriptionCreate": self._m_create,
            "webhookSubscriptionDelete": self._m_delete,
        })
        shop.listen(self._on_change)

    # -- the Admin API ---------------------------------------------------------------------

    def _view(self, sub: Subscription) -> dict[str, Any]:
        return {"__typename": "WebhookSubscription", "id": sub.id, "topic": sub.topic,
                "format": sub.format, "createdAt": _iso(sub.created_at),
                "updatedAt": _iso(sub.created_at), "apiVersion": None, "filter": None,
                "includeFields": [], "metafieldNamespaces": [],
                "legacyResourceId": str(gid_number(sub.id)),
                "callbackUrl": sub.callback_url,
                "endpoint": {"__typename": "WebhookHttpEndpoint",
                             "callbackUrl": sub.callback_url}}

    def _q_subscriptions(self, info: GraphQLResolveInfo[Any], callbackUrl: str | None = None,
                         topics: list[str] | None = None, **page: Any) -> dict[str, Any]:
        page.pop("sortKey", None)
        page.pop("format", None)
        page.pop("query", None)
        found = [s for s in self.subscriptions.values()
                 if (callbackUrl is None or s.callback_url == callbackUrl)
                 and (topics is None or s.topic in topics)]
        return self.shop._connection(info, found, lambda s: gid_number(s.id), self._view,
                                     **page)

    def _m_create(self, info: GraphQLResolveInfo[Any], topic: str,
                  webhookSubscription: dict[str, Any]) -> dict[str, Any]:
        url = webhookSubscription.get("callbackUrl")
        if not url:
            return {"webhookSubscription": None, "userErrors": [{
                "__typename": "UserError", "field": ["webhookSubscription", "callbackUrl"],
                "message": "Address can't be blank"}]}
        if any(s.topic == topic and s.callback_url == url for s in self.subscriptions.values()):
            return {"webhookSubscription": None, "userErrors": [{
                "__typename": "UserError", "field": ["webhookSubscription", "callbackUrl"],
                "message": "Address for this topic has already been taken"}]}
        self._n += 1
        sub = Subscription(f"gid://shopify/WebhookSubscription/{9000 + self._n}", topic, url,
                           webhookSubscription.get("format") or "JSON", self.shop.now())
        self.subscriptions[sub.id] = sub
        return {"webhookSubscription": self._view(sub), "userErrors": []}

    def _m_delete(self, info: GraphQLResolveInfo[Any], id: str) -> dict[str, Any]:
        if self.subscriptions.pop(id, None) is None:
            return {"deletedWebhookSubscriptionId": None, "userErrors": [{
                "__typename": "UserError", "field": ["id"],
                "message": "Webhook subscription does not exist"}]}
        return {"deletedWebhookSubscriptionId": id, "userErrors": []}

    def subscribe(self, url: str, topics: list[str]) -> None:
        """Subscribe ``url`` to REST ``topics`` directly (as a test's set-up)."""
        for topic in topics:
            self._n += 1
            sub = Subscription(f"gid://shopify/WebhookSubscription/{9000 + self._n}",
                               enum_topic(topic), url, "JSON", self.shop.now())
            self.subscriptions[sub.id] = sub

    # -- deliveries ------------------------------------------------------------------------

    def headers(self, topic: str, body: bytes, *, secret: str | None = None,
                webhook_id: str | None = None, event_id: str | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Shopify-Topic": topic,
                "X-Shopify-Hmac-SHA256": sign(secret or self.secret, body),
                "X-Shopify-Shop-Domain": self.shop_domain,
                "X-Shopify-API-Version": API_VERSION,
                "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
                "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
                "X-Shopify-Triggered-At": _iso(self.shop.now())}

    def emit(self, topic: str, payload: dict[str, Any], *, sign_with: str | None = None,
             event_id: str | None = None) -> list[Delivery]:
        """Deliver ``payload`` to every subscription of ``topic``; the deliveries."""
        if self.paused:
            self.held.append((topic, payload))
            return []
        body = json.dumps(payload, separators=(",", ":")).encode()
        event = event_id or str(uuid.uuid4())
        out = []
        for sub in list(self.subscriptions.values()):
            if sub.topic != enum_topic(topic):
                continue
            headers = self.headers(topic, body, secret=sign_with, event_id=event)
            out.append(self._schedule(Delivery(headers["X-Shopify-Webhook-Id"], event, topic,
                                               sub.callback_url, body, headers)))
        return out

    def replay(self, d: Delivery) -> Delivery:
        """The same delivery again, as Shopify retries it (same webhook id and body)."""
        return self._schedule(Delivery(d.webhook_id, d.event_id, d.topic, d.url, d.body,
                                       dict(d.headers)))

    def duplicate(self, d: Delivery) -> Delivery:
        """The same event under a new webhook id (a second delivery of one change)."""
        headers = dict(d.headers, **{"X-Shopify-Webhook-Id": str(uuid.uuid4())})
        return self._schedule(Delivery(headers["X-Shopify-Webhook-Id"], d.event_id, d.topic,
                                       d.url, d.body, headers))

    def forged(self, url: str, topic: str, payload: dict[str, Any]) -> Delivery:
        """A delivery signed with a secret that is not the app's."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self.headers(topic, body, secret="not-the-app-secret")  # noqa: S106
        return self._schedule(Delivery(headers["X-Shopify-Webhook-Id"],
                                       headers["X-Shopify-Event-Id"], topic, url, body,
                                       headers))

    def _schedule(self, d: Delivery) -> Delivery:
        self.deliveries.append(d)
        task = asyncio.get_running_loop().create_task(self._send(d))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return d

    async def _send(self, d: Delivery) -> None:
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    d.url, data=d.body, headers=d.headers,
                    timeout=aiohttp.ClientTimeout(total=5.0, connect=1.0)) as resp:
                d.status = resp.status
                text = await resp.text()
                try:
                    d.answer = json.loads(text)
                except ValueError:
                    d.answer = text
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            d.error = f"{type(exc).__name__}: {exc}"
        finally:
            d.seconds = time.monotonic() - started
            d.sent.set()

    async def drain(self) -> None:
        """Wait until every delivery scheduled so far is answered (or failed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def resume(self) -> list[Delivery]:
        """Deliver what was held while paused."""
        self.paused = False
        held, self.held = self.held, []
        return [d for topic, payload in held for d in self.emit(topic, payload)]

    # -- payloads --------------------------------------------------------------------------

    def order_payload(self, order: Order, *, customer: str | None = None,
                      cancelled_at: datetime | None = None,
                      updated_at: datetime | None = None) -> dict[str, Any]:
        first, _, last = (customer or "").partition(" ")
        total = sum(float(ln.unit_price or 0) * ln.quantity for ln in order.lines)
        return {
            "id": gid_number(order.id), "admin_graphql_api_id": order.id, "name": order.name,
            "created_at": rest_time(order.created_at),
            "updated_at": rest_time(updated_at or order.created_at),
            "cancelled_at": rest_time(cancelled_at) if cancelled_at else None,
            "source_name": order.source_name, "currency": order.currency,
            "total_price": f"{total:.2f}", "financial_status": "paid",
            "payment_gateway_names": ["shopify_payments"],
            "customer": {"first_name": first, "last_name": last} if customer else None,
            "line_items": [{"id": gid_number(ln.id), "sku": ln.sku, "quantity": ln.quantity,
                            "price": ln.unit_price,
                            "variant_id": gid_number(ln.variant_id or "")}
                           for ln in order.lines],
        }

    def level_payload(self, item_id: str, location_id: str) -> dict[str, Any]:
        level = self.shop.levels[(item_id, location_id)]
        return {"inventory_item_id": gid_number(item_id),
                "location_id": gid_number(location_id),
                "available": level.get("available"),
                "updated_at": rest_time(level.updated_at),
                "admin_graphql_api_id": f"gid://shopify/InventoryLevel/"
                                        f"{gid_number(location_id)}?inventory_item_id="
                                        f"{gid_number(item_id)}"}

    def _on_change(self, kind: str, record: Any) -> None:
        """The daemon's own mutations, as Shopify would tell them back."""
        if kind == "inventory":
            group: AdjustmentGroup = record
            seen = {(c.item_id, c.location_id) for c in group.changes}
            for item, location in sorted(seen):
                self.emit("inventory_levels/update", self.level_payload(item, location))
        elif kind == "order":
            order: Order = record
            self.emit("orders/create", self.order_payload(order))
            for item, location, _ in order.inventory_effects:
                self.emit("inventory_levels/update", self.level_payload(item, location))


__all__ = ["Delivery", "Subscription", "WebhookSender", "enum_topic", "rest_time", "sign"]
