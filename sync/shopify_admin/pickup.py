"""Pick-ups at this store: ``pickup.ready`` and ``pickup.handover`` rows, each applied once.

- ``pickup.ready`` → ``fulfillmentOrderLineItemsPreparedForPickup`` (Shopify sends the
  customer its "ready for pickup" notification);
- ``pickup.handover`` → ``fulfillmentCreate`` with the lines and quantities fixed when the
  register said the goods left (Shopify takes them off ``on_hand`` and ``committed``).

Neither mutation takes ``@idempotent`` (Shopify lists the mutations that do: refunds and the
inventory quantity ones), so before any resend (``work.attempt > 0`` or
``work.outcome_unknown``) the fulfillment order is read back:

- ready: a fulfillment order that is closed or cancelled has nothing left to prepare (the
  row dies, ERR-6021); otherwise the mutation goes again: Shopify refuses to prepare line
  items already prepared (``NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER``), which after a
  lost answer means the first send was applied, and the row is done;
- hand-over: when every handed-over line shows no quantity left and the fulfillment order
  has a fulfillment, the first send was applied (done, with that fulfillment's id); a
  cancelled fulfillment order dies (ERR-6021); else the mutation goes again. A refusal of
  the mutation is also checked the same way (the goods may have been fulfilled in the
  admin meanwhile) before the row dies (ERR-6022).

Costs (Shopify's published rules): each mutation 10; the look-up of a hand-over 60
(fulfillmentOrder 1 + lineItems 2 + 50 x 1 + fulfillments 2 + 5 x 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sync.core.contract import OutboxKind, PickupHandover, PickupReady
from sync.core.gateway import RowFailure, Work, WorkResult
from sync.shopify_admin.client import ShopifyClient, graphql_error, mapping

logger = logging.getLogger(__name__)

PICKUP_READY = OutboxKind.PICKUP_READY
PICKUP_HANDOVER = OutboxKind.PICKUP_HANDOVER
PICKUP_KINDS = frozenset({PICKUP_READY, PICKUP_HANDOVER})

MUTATION_COST = 10
ERR_READY_REFUSED = "ERR-6020"
ERR_PICKUP_CLOSED = "ERR-6021"
ERR_HANDOVER_REFUSED = "ERR-6022"

ALREADY_PREPARED = "NO_LINE_ITEMS_TO_PREPARE_FOR_FULFILLMENT_ORDER"
ENDED = frozenset({"CLOSED", "CANCELLED"})

READY_DOCUMENT = """mutation EdgedPickupReady(
    $input: FulfillmentOrderLineItemsPreparedForPickupInput!) {
  fulfillmentOrderLineItemsPreparedForPickup(input: $input) {
    userErrors { field message code }
  }
}"""

HANDOVER_DOCUMENT = """mutation EdgedPickupHandover($fulfillment: FulfillmentInput!) {
  fulfillmentCreate(fulfillment: $fulfillment) {
    fulfillment { id status }
    userErrors { field message }
  }
}"""

LOOKUP_DOCUMENT = """query EdgedPickupLookup($id: ID!) {
  fulfillmentOrder(id: $id) {
    id status
    lineItems(first: 50) { nodes { id remainingQuantity } }
    fulfillments(first: 5) { nodes { id status } }
  }
}"""
LOOKUP_COST = 1 + 2 + 50 + 2 + 5


def _errors(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]


def _describe(errors: list[Mapping[str, Any]]) -> str:
    return "; ".join(f"{e.get('code') or ''} {e.get('message')}".strip()
                     for e in errors) or "no detail"


class PickupSender:
    """Sends the pick-up rows of one shop (see the module docstring)."""

    def __init__(self, client: ShopifyClient) -> None:
        self.client = client

    async def send(self, work: Work) -> WorkResult:
        if work.kind == PICKUP_READY:
            return await self._ready(work)
        return await self._handover(work)

    async def _lookup(self, fo_id: str) -> Mapping[str, Any] | None:
        answer = await self.client.execute("EdgedPickupLookup", LOOKUP_DOCUMENT, {"id": fo_id},
                                           cost=LOOKUP_COST, mutation=False)
        if "fulfillmentOrder" not in answer.data:
            raise graphql_error(answer.field_errors("fulfillmentOrder") or list(answer.errors),
                                operation="EdgedPickupLookup", mutation=False)
        return mapping(answer.data.get("fulfillmentOrder"))

    async def _mutate(self, operation: str, document: str, variables: Mapping[str, Any],
                      root: str) -> Mapping[str, Any]:
        answer = await self.client.execute(operation, document, variables,
                                           cost=MUTATION_COST, mutation=True)
        payload = mapping(answer.data.get(root))
        if payload is None:
            raise graphql_error(answer.field_errors(root) or list(answer.errors),
                                operation=operation, mutation=True)
        return payload

    # -- ready ----------------------------------------------------------------------------

    async def _ready(self, work: Work) -> WorkResult:
        row = work.rows[0]
        payload = PickupReady.from_json(work.payload)
        fo_id = payload.fulfillment_order_id
        in_doubt = work.attempt > 0 or work.outcome_unknown
        if in_doubt:
            found = await self._lookup(fo_id)
            if found is None or found.get("status") in ENDED:
                status = "gone" if found is None else str(found.get("status")).lower()
                return WorkResult(dead={row.id: RowFailure(
                    ERR_PICKUP_CLOSED, f"fulfillment order {fo_id} is {status} in Shopify:"
                    " nothing left to mark ready", outcome_unknown=work.outcome_unknown)})
        result = await self._mutate(
            "EdgedPickupReady", READY_DOCUMENT,
            {"input": {"lineItemsByFulfillmentOrder": [{"fulfillmentOrderId": fo_id}]}},
            "fulfillmentOrderLineItemsPreparedForPickup")
        errors = _errors(result)
        if not errors:
            return WorkResult(applied={row.id: {"fulfillment_order_id": fo_id}})
        codes = {e.get("code") for e in errors}
        if codes == {ALREADY_PREPARED}:
            # prepared already: by our own first send whose answer was lost, or in the admin
            logger.info("shopify: fulfillment order %s was already prepared for pickup%s",
                        fo_id, " (the earlier send was applied)" if in_doubt else "")
            return WorkResult(applied={row.id: {"fulfillment_order_id": fo_id,
                                                "reconciled": True}})
        code = ERR_PICKUP_CLOSED if "FULFILLMENT_ORDER_INVALID" in codes else ERR_READY_REFUSED
        return WorkResult(dead={row.id: RowFailure(
            code, f"Shopify refused to mark {fo_id} ready for pickup: {_describe(errors)}",
            outcome_unknown=work.outcome_unknown)})

    # -- hand-over ------------------------------------------------------------------------

    @staticmethod
    def _fulfilled(found: Mapping[str, Any], payload: PickupHandover) -> str | None:
        """The fulfillment that took the handed-over lines, if Shopify shows them taken."""
        remaining = {str(n.get("id")): n.get("remainingQuantity")
                     for n in (mapping(found.get("lineItems")) or {}).get("nodes") or ()
                     if isinstance(n, Mapping)}
        if any(remaining.get(line.line_item_id) != 0 for line in payload.lines):
            return None
        fulfillments = [n for n in (mapping(found.get("fulfillments")) or {}).get("nodes")
                        or () if isinstance(n, Mapping) and n.get("status") != "CANCELLED"]
        return str(fulfillments[-1].get("id")) if fulfillments else None

    async def _handover(self, work: Work) -> WorkResult:
        row = work.rows[0]
        payload = PickupHandover.from_json(work.payload)
        fo_id = payload.fulfillment_order_id
        if work.attempt > 0 or work.outcome_unknown:
            found = await self._lookup(fo_id)
            if found is None or found.get("status") == "CANCELLED":
                return WorkResult(dead={row.id: RowFailure(
                    ERR_PICKUP_CLOSED, f"fulfillment order {fo_id} is"
                    f" {'gone' if found is None else 'cancelled'} in Shopify: nothing to hand"
                    " over", outcome_unknown=work.outcome_unknown)})
            done = self._fulfilled(found, payload)
            if done is not None:
                logger.info("shopify: %s was already fulfilled (%s); not fulfilling it again",
                            fo_id, done)
                return WorkResult(applied={row.id: {"fulfillment_id": done,
                                                    "reconciled": True}})
        variables = {"fulfillment": {
            "notifyCustomer": False,
            "lineItemsByFulfillmentOrder": [{
                "fulfillmentOrderId": fo_id,
                "fulfillmentOrderLineItems": [{"id": ln.line_item_id, "quantity": ln.quantity}
                                              for ln in payload.lines]}]}}
        result = await self._mutate("EdgedPickupHandover", HANDOVER_DOCUMENT, variables,
                                    "fulfillmentCreate")
        fulfillment = mapping(result.get("fulfillment"))
        if fulfillment is not None and isinstance(fulfillment.get("id"), str):
            return WorkResult(applied={row.id: {"fulfillment_id": fulfillment["id"]}})
        errors = _errors(result)
        found = await self._lookup(fo_id)  # fulfilled in the admin meanwhile?
        done = self._fulfilled(found, payload) if found is not None else None
        if done is not None:
            return WorkResult(applied={row.id: {"fulfillment_id": done, "reconciled": True}})
        return WorkResult(dead={row.id: RowFailure(
            ERR_HANDOVER_REFUSED, f"Shopify refused the hand-over of {fo_id}:"
            f" {_describe(errors)}", outcome_unknown=work.outcome_unknown)})


__all__ = ["PICKUP_HANDOVER", "PICKUP_KINDS", "PICKUP_READY", "PickupSender"]
