"""Shopify's webhook deliveries: the signature, the headers, and what the inbox keeps of one.

Shopify signs a delivery with ``X-Shopify-Hmac-SHA256`` = base64(HMAC-SHA256(the app's
client secret, the raw body)); :func:`verify` checks it in constant time against every
secret still accepted (the current one, and the one a rotation replaced, for an hour).
``X-Shopify-Webhook-Id`` names the delivery (the same on every retry of it),
``X-Shopify-Event-Id`` the event behind it (several topics may share one),
``X-Shopify-Triggered-At`` when Shopify made it.

The inbox never keeps a payload as it came (an order's carries addresses and payment
details): :func:`digest` keeps the few fields that say *what* changed (the subject's id, its
``updated_at``, a status); the worker reads the current state from the Admin API when it
processes the row. A payload that is not JSON, or lacks its subject, is kept as unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HMAC_HEADER = "X-Shopify-Hmac-SHA256"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
EVENT_ID_HEADER = "X-Shopify-Event-Id"
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"
SHOP_HEADER = "X-Shopify-Shop-Domain"
API_VERSION_HEADER = "X-Shopify-API-Version"

ORDERS_CREATE = "orders/create"
ORDERS_UPDATED = "orders/updated"
ORDERS_CANCELLED = "orders/cancelled"
PRODUCTS_UPDATE = "products/update"
PRODUCTS_DELETE = "products/delete"
INVENTORY_LEVELS_UPDATE = "inventory_levels/update"
ROUTING_COMPLETE = "fulfillment_orders/order_routing_complete"
BULK_FINISH = "bulk_operations/finish"
APP_UNINSTALLED = "app/uninstalled"

#: The topics ``edged shopify webhooks register`` subscribes to, with their
#: ``WebhookSubscriptionTopic`` enum values in the Admin schema.
TOPICS: Mapping[str, str] = {
    ORDERS_CREATE: "ORDERS_CREATE",
    ORDERS_UPDATED: "ORDERS_UPDATED",
    ORDERS_CANCELLED: "ORDERS_CANCELLED",
    PRODUCTS_UPDATE: "PRODUCTS_UPDATE",
    PRODUCTS_DELETE: "PRODUCTS_DELETE",
    INVENTORY_LEVELS_UPDATE: "INVENTORY_LEVELS_UPDATE",
    ROUTING_COMPLETE: "FULFILLMENT_ORDERS_ORDER_ROUTING_COMPLETE",
    BULK_FINISH: "BULK_OPERATIONS_FINISH",
    APP_UNINSTALLED: "APP_UNINSTALLED",
}
ORDER_TOPICS = frozenset({ORDERS_CREATE, ORDERS_UPDATED, ORDERS_CANCELLED})

MAX_HEADER = 200
"""Longest header value kept (ids, topics and times are far shorter)."""


class WebhookError(ValueError):
    """A delivery that cannot be taken as it is; the message says which part."""


def signature(secret: str | bytes, body: bytes) -> str:
    """``X-Shopify-Hmac-SHA256`` of ``body`` under ``secret``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode("ascii")


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> int | None:
    """The index in ``secrets`` of the one that signed ``body``, or None.

    Every secret is tried and compared with :func:`hmac.compare_digest`, whichever matches,
    so the time taken says nothing about the header or which secret matched.
    """
    if not header or not secrets:
        return None
    given = header.strip().encode("ascii", "replace")
    found: int | None = None
    for i, secret in enumerate(secrets):
        if hmac.compare_digest(signature(secret, body).encode("ascii"), given) \
                and found is None:
            found = i
    return found


@dataclass(frozen=True, slots=True)
class Delivery:
    """The headers of one delivery that the inbox keeps."""

    topic: str
    webhook_id: str
    event_id: str | None = None
    triggered_at: str | None = None
    shop_domain: str | None = None
    api_version: str | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_HEADER or not value.isprintable():
        raise WebhookError(f"the {name} header is not a plain value of at most"
                           f" {MAX_HEADER} characters")
    return value


def delivery(headers: Mapping[str, str]) -> Delivery:
    """The delivery's headers; :class:`WebhookError` when the topic or the id is missing."""
    topic = _header(headers, TOPIC_HEADER)
    webhook_id = _header(headers, WEBHOOK_ID_HEADER)
    if topic is None or webhook_id is None:
        missing = TOPIC_HEADER if topic is None else WEBHOOK_ID_HEADER
        raise WebhookError(f"a Shopify delivery carries {missing}; this request has none")
    triggered = _header(headers, TRIGGERED_AT_HEADER)
    return Delivery(topic=topic, webhook_id=webhook_id,
                    event_id=_header(headers, EVENT_ID_HEADER),
                    triggered_at=normal_time(triggered) if triggered else None,
                    shop_domain=_header(headers, SHOP_HEADER),
                    api_version=_header(headers, API_VERSION_HEADER))


# -- times and ids ------------------------------------------------------------------------


def normal_time(text: str) -> str:
    """A Shopify time (REST ``2026-11-26T07:00:00-05:00`` or GraphQL ``…Z``) as UTC
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``: one spelling, so that versions compare as text."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WebhookError(f"not a time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def gid(kind: str, value: Any) -> str:
    """``gid://shopify/{kind}/N`` from a GID or a bare number (REST payloads carry both)."""
    if isinstance(value, str) and value.startswith("gid://"):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise WebhookError(f"not a {kind} id: {str(value)[:40]!r}")
    return f"gid://shopify/{kind}/{value}"


def state_digest(state: Any) -> str:
    """A short hash of a state as the daemon applies it (canonical JSON)."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


# -- what the inbox keeps of a payload ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digest:
    """What a delivery says changed: its subject, the subject's version when the payload
    gives one, and the few fields the worker needs (never addresses or payment details)."""

    subject: str | None
    version: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def _obj(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WebhookError("the payload is not a JSON object")
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _version(payload: Mapping[str, Any], name: str = "updated_at") -> str | None:
    value = _text(payload.get(name))
    return normal_time(value) if value else None


def digest(topic: str, payload: Any, triggered_at: str | None = None) -> Digest:
    """What the inbox keeps of a ``topic`` payload; :class:`WebhookError` if it is unusable.

    Unknown topics keep nothing but the topic (the worker ignores them).
    """
    body = _obj(payload)
    if topic in ORDER_TOPICS:
        order = gid("Order", body.get("admin_graphql_api_id") or body.get("id"))
        version = _version(body)
        return Digest(order, version, {
            "order_id": order, "updated_at": version, "name": _text(body.get("name")),
            "source_name": _text(body.get("source_name")),
            "cancelled_at": _version(body, "cancelled_at")})
    if topic == PRODUCTS_UPDATE:
        product = gid("Product", body.get("admin_graphql_api_id") or body.get("id"))
        version = _version(body)
        return Digest(product, version, {"product_id": product, "updated_at": version})
    if topic == PRODUCTS_DELETE:
        product = gid("Product", body.get("id"))
        return Digest(product, triggered_at, {"product_id": product})
    if topic == INVENTORY_LEVELS_UPDATE:
        item = gid("InventoryItem", body.get("inventory_item_id"))
        location = gid("Location", body.get("location_id"))
        available = body.get("available")
        if available is not None and (isinstance(available, bool)
                                      or not isinstance(available, int)):
            raise WebhookError("inventory_levels/update: available is not a whole number")
        version = _version(body)
        return Digest(f"{item}@{location}", version, {
            "inventory_item_id": item, "location_id": location, "available": available,
            "updated_at": version})
    if topic == ROUTING_COMPLETE:
        fo = _obj(body.get("fulfillment_order"))
        fo_id = gid("FulfillmentOrder", fo.get("id"))
        return Digest(fo_id, None, {"fulfillment_order_id": fo_id,
                                    "status": _text(fo.get("status"))})
    if topic == BULK_FINISH:
        op = gid("BulkOperation", body.get("admin_graphql_api_id") or body.get("id"))
        status = _text(body.get("status"))
        return Digest(op, status, {"bulk_operation_id": op, "status": status,
                                   "error_code": _text(body.get("error_code")),
                                   "completed_at": _text(body.get("completed_at"))})
    if topic == APP_UNINSTALLED:
        return Digest(_text(body.get("myshopify_domain")) or _text(body.get("domain")))
    return Digest(None)


def event_key(topic: str, found: Digest, body: bytes) -> str | None:
    """The key two deliveries of one change share (Shopify may deliver a change under
    several webhook ids, and ``orders/create`` and ``orders/updated`` of one order alike):
    the topic's family, the subject, its version and a hash of the payload (two changes
    within one second of ``updated_at`` differ in their payloads)."""
    if found.subject is None:
        return None
    family = "orders" if topic in ORDER_TOPICS else topic
    content = hashlib.sha256(body).hexdigest()[:16]
    return f"{family}:{found.subject}:{found.version or ''}:{content}"


__all__ = [
    "APP_UNINSTALLED",
    "BULK_FINISH",
    "HMAC_HEADER",
    "INVENTORY_LEVELS_UPDATE",
    "ORDERS_CANCELLED",
    "ORDERS_CREATE",
    "ORDERS_UPDATED",
    "ORDER_TOPICS",
    "PRODUCTS_DELETE",
    "PRODUCTS_UPDATE",
    "ROUTING_COMPLETE",
    "TOPICS",
    "Delivery",
    "Digest",
    "WebhookError",
    "delivery",
    "digest",
    "event_key",
    "gid",
    "normal_time",
    "signature",
    "state_digest",
    "verify",
]
