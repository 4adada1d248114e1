"""Shopify sales: ``order.create`` rows, one ``orderCreate`` each, never twice.

``orderCreate`` has no idempotency directive. The order carries the edged marker
(``sourceIdentifier``, a metafield, the note); before any resend (``work.attempt > 0`` or
``work.outcome_unknown``) the marker is looked up and, when found, the existing order is
reported instead of creating a second one.

After a lost answer, Shopify's order search may not show the order yet: a miss is trusted
only ``order_search_settle`` seconds after the send whose answer was lost. Until then only
that row waits (:class:`~sync.core.errors.HoldRow`): stock changes and other sales go on. The
moment of the lost answer is the row's ``doubt_at`` (kept across restarts by the outbox),
or this process's own memory of a send within the same claim, whichever is later.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sync.core.clock import Clock
from sync.core.contract import ContractError, OrderCreate
from sync.core.errors import HoldRow, OutcomeUnknown, PermanentError, TransientError
from sync.core.gateway import RowFailure, Work, WorkResult
from sync.core.money import currency_exponent, minor_to_decimal
from sync.shopify_admin.client import ShopifyClient, ShopifySettings, graphql_error, mapping

logger = logging.getLogger(__name__)

MUTATION_COST = 10
ERR_ORDER_REFUSED = "ERR-6015"


def _money(amount: int, currency: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": minor_to_decimal(amount, currency),
                          "currencyCode": currency.upper()}}


# -- orders ------------------------------------------------------------------------------

ORDER_CREATE_DOCUMENT = """mutation EdgedOrderCreate($order: OrderCreateOrderInput!,
    $options: OrderCreateOptionsInput) {
  orderCreate(order: $order, options: $options) {
    order { id name sourceIdentifier }
    userErrors { field message code }
  }
}"""

FIND_ORDER_DOCUMENT = """query EdgedFindOrder($q: String!) {
  orders(first: 5, query: $q) {
    nodes { id name sourceIdentifier tags createdAt }
  }
}"""
#: Shopify's published cost: a connection 2 + first (5) x one order node (an object, 1;
#: its fields are scalars, 0).
FIND_ORDER_COST = 2 + 5 * 1

_ORDER_LATER_CODES = frozenset({"PROCESSED_AT_INVALID", "SHOP_DORMANT"})


def order_search_query(source_identifier: str) -> str:
    """Shopify's search syntax for an exact ``source_identifier`` (quoted, escaped)."""
    escaped = source_identifier.replace("\\", "\\\\").replace('"', '\\"')
    return f'source_identifier:"{escaped}"'


def build_order(stored: Mapping[str, Any], settings: ShopifySettings) -> dict[str, Any]:
    """``orderCreate``'s variables for an ``order.create`` row; ``ContractError`` if unusable.

    Prices and amounts are minor units in the payload and decimal strings for Shopify.
    The sale is fulfilled at the store's location (the goods left with the customer), so
    ``DECREMENT_IGNORING_POLICY`` takes its stock off that location, never another one.
    """
    payload = OrderCreate.from_json(stored)
    currency = payload.currency.upper()
    source_identifier, processed_at = payload.source_identifier, payload.processed_at
    reference = payload.reference
    currency_exponent(currency)
    if not payload.lines:
        raise ContractError("an order needs at least one line")
    lines: list[dict[str, Any]] = []
    for i, line in enumerate(payload.lines):
        item: dict[str, Any] = {"quantity": line.quantity,
                                "priceSet": _money(line.price, currency)}
        if line.variant_id:
            item["variantId"] = line.variant_id
        else:  # an item Shopify does not know: a custom line
            if not line.title:
                raise ContractError(f"lines[{i}] has neither a variant_id nor a title")
            item["title"] = line.title
            if line.sku:
                item["sku"] = line.sku
            item["requiresShipping"] = False
        lines.append(item)
    transactions: list[dict[str, Any]] = []
    for txn in payload.transactions:
        entry: dict[str, Any] = {
            "kind": "SALE", "status": "SUCCESS",
            "gateway": txn.gateway or txn.method or "manual",
            "amountSet": _money(txn.amount, txn.currency or currency),
            "processedAt": txn.processed_at or processed_at,
            "locationId": settings.location_id,
        }
        if txn.auth_code:
            entry["authorizationCode"] = txn.auth_code
        transactions.append(entry)
    note = f"edged sale {reference} ({source_identifier})" if reference else \
        f"edged sale ({source_identifier})"
    order: dict[str, Any] = {
        "currency": currency,
        "processedAt": processed_at,
        "sourceName": settings.source_name,
        "sourceIdentifier": source_identifier,
        "tags": [settings.order_tag],
        "note": note,
        "metafields": [{"namespace": "edged", "key": "source_identifier",
                        "type": "single_line_text_field", "value": source_identifier}],
        "lineItems": lines,
        "transactions": transactions,
        "fulfillment": {"locationId": settings.location_id, "notifyCustomer": False},
    }
    options = {"inventoryBehaviour": "DECREMENT_IGNORING_POLICY", "sendReceipt": False,
               "sendFulfillmentReceipt": False}
    return {"order": order, "options": options}


def _gid_number(gid: str) -> int:
    match = re.search(r"/(\d+)(?:\?.*)?$", gid)
    return int(match.group(1)) if match else 0


class OrderSender:
    """Sends the ``order.create`` works of one shop (see the module docstring)."""

    def __init__(self, client: ShopifyClient, settings: ShopifySettings, clock: Clock) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        # idempotency key of an order.create → when a send of it went out from this process
        # (its answer may be lost within the same claim, before the outbox records doubt_at)
        self._orders_in_doubt: dict[str, datetime] = {}


    async def find_order(self, source_identifier: str) -> Mapping[str, Any] | None:
        """The order carrying the edged marker, or None (Shopify's search may lag)."""
        answer = await self.client.execute(
            "EdgedFindOrder", FIND_ORDER_DOCUMENT,
            {"q": order_search_query(source_identifier)}, cost=FIND_ORDER_COST,
            mutation=False)
        orders = mapping(answer.data.get("orders"))
        if orders is None:
            raise graphql_error(answer.field_errors("orders") or list(answer.errors),
                                operation="EdgedFindOrder", mutation=False)
        nodes = [n for n in orders.get("nodes") or ()
                 if isinstance(n, Mapping) and n.get("sourceIdentifier") == source_identifier]
        if not nodes:
            return None
        if len(nodes) > 1:
            logger.error("shopify: %d orders carry the marker %s: %s", len(nodes),
                         source_identifier, [n.get("name") for n in nodes])
        return min(nodes, key=lambda n: _gid_number(str(n.get("id"))))

    def _settle_left(self, key: str, doubt_at: str | None) -> float:
        """Seconds until a miss of this order can be trusted (the send in doubt + settle)."""
        moments = [self._orders_in_doubt[key]] if key in self._orders_in_doubt else []
        if doubt_at:
            moments.append(datetime.fromisoformat(doubt_at))
        if not moments:  # in doubt with no moment known: count from now
            moments.append(self.clock.now())
        since = max(moments)
        return self.settings.order_search_settle - (self.clock.now() - since).total_seconds()

    async def send(self, work: Work) -> WorkResult:
        row = work.rows[0]
        try:
            variables = build_order(work.payload, self.settings)
        except ValueError as exc:  # an amount in a currency Shopify's money cannot carry
            raise ContractError(f"unusable order.create row: {exc}") from exc
        marker: str = variables["order"]["sourceIdentifier"]
        key = work.idempotency_key
        if work.attempt > 0 or work.outcome_unknown:
            found = await self.find_order(marker)
            if found is not None:
                self._orders_in_doubt.pop(key, None)
                logger.info("shopify: order %s for %s already exists; not creating it again",
                            found.get("name"), marker)
                return WorkResult(applied={row.id: {"order_id": found.get("id"),
                                                    "name": found.get("name"),
                                                    "reconciled": True}})
            if work.outcome_unknown:
                left = self._settle_left(key, work.doubt_at)
                if left > 0:
                    raise HoldRow(left, f"order {marker} not found yet after an answer was "
                                        "lost; Shopify's order search may lag, so this sale"
                                        " waits before it is created again")
        self._orders_in_doubt[key] = self.clock.now()
        try:
            answer = await self.client.execute("EdgedOrderCreate", ORDER_CREATE_DOCUMENT,
                                               variables, cost=MUTATION_COST, mutation=True)
        except (TransientError, PermanentError):
            self._orders_in_doubt.pop(key, None)  # refused or never sent: nothing created
            raise
        payload = mapping(answer.data.get("orderCreate"))
        if payload is None:
            error = graphql_error(answer.field_errors("orderCreate") or list(answer.errors),
                                  operation="EdgedOrderCreate", mutation=True)
            if not isinstance(error, OutcomeUnknown):
                self._orders_in_doubt.pop(key, None)
            raise error
        self._orders_in_doubt.pop(key, None)
        order = mapping(payload.get("order"))
        user_errors = [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]
        if order is not None and isinstance(order.get("id"), str):
            if user_errors:
                logger.warning("shopify: order %s created with userErrors: %s",
                               order.get("name"), user_errors)
            return WorkResult(applied={row.id: {"order_id": order["id"],
                                                "name": order.get("name")}})
        detail = "; ".join(f"{e.get('code')} at {e.get('field')}: {e.get('message')}"
                           for e in user_errors) or "no order and no userErrors"
        codes = {e.get("code") for e in user_errors}
        if codes and codes <= _ORDER_LATER_CODES:
            # processedAt "in the future" (the store's clock ahead of Shopify's) or a dormant
            # shop: nothing was created, and the same order may go through later
            raise TransientError(f"{ERR_ORDER_REFUSED}: Shopify refused the order for now: "
                                 f"{detail}")
        return WorkResult(dead={row.id: RowFailure(ERR_ORDER_REFUSED,
                                                   f"Shopify refused the order: {detail}")})
