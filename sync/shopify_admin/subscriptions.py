"""The shop's webhook subscriptions: list, create for the daemon's URL, remove.

``webhookSubscriptionCreate(topic:, webhookSubscription: {callbackUrl, format: JSON})`` for
each topic of :data:`sync.shopify_admin.webhooks.TOPICS`; a topic already subscribed to the same
URL is left as it is, so registering twice creates nothing. Shopify signs the deliveries
of subscriptions made through the API with the app's client secret (``edged secret set
shopify.webhook_secret``).

Costs: the list 103 (2 + pageInfo 1 + 50 x (subscription 1 + endpoint 1)); each create or
delete 10.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sync.core.errors import PermanentError
from sync.shopify_admin.client import ShopifyClient, graphql_error, mapping
from sync.shopify_admin.webhooks import TOPICS

ERR_SUBSCRIPTION_REFUSED = "ERR-6024"
MUTATION_COST = 10
LIST_PAGE = 50
LIST_COST = 2 + 1 + LIST_PAGE * 2

LIST_DOCUMENT = """query EdgedWebhooks($first: Int!, $after: String) {
  webhookSubscriptions(first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id topic format createdAt
      endpoint { __typename ... on WebhookHttpEndpoint { callbackUrl } }
    }
  }
}"""

CREATE_DOCUMENT = """mutation EdgedWebhookCreate($topic: WebhookSubscriptionTopic!,
    $sub: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $sub) {
    webhookSubscription { id topic }
    userErrors { field message }
  }
}"""

DELETE_DOCUMENT = """mutation EdgedWebhookDelete($id: ID!) {
  webhookSubscriptionDelete(id: $id) {
    deletedWebhookSubscriptionId
    userErrors { field message }
  }
}"""


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    topic: str
    """The ``WebhookSubscriptionTopic`` value (``ORDERS_CREATE``)."""
    callback_url: str | None
    created_at: str | None = None


def _user_errors(payload: Mapping[str, Any]) -> str:
    return "; ".join(str(e.get("message")) for e in payload.get("userErrors") or ()
                     if isinstance(e, Mapping))


class Subscriptions:
    def __init__(self, client: ShopifyClient) -> None:
        self.client = client

    async def all(self) -> list[Subscription]:
        found: list[Subscription] = []
        after: str | None = None
        while True:
            answer = await self.client.execute("EdgedWebhooks", LIST_DOCUMENT,
                                               {"first": LIST_PAGE, "after": after},
                                               cost=LIST_COST, mutation=False)
            page = mapping(answer.data.get("webhookSubscriptions"))
            if page is None:
                raise graphql_error(list(answer.errors), operation="EdgedWebhooks",
                                    mutation=False)
            for node in page.get("nodes") or ():
                if not isinstance(node, Mapping) or not isinstance(node.get("id"), str):
                    continue
                endpoint = mapping(node.get("endpoint")) or {}
                url = endpoint.get("callbackUrl")
                found.append(Subscription(node["id"], str(node.get("topic")),
                                          url if isinstance(url, str) else None,
                                          node.get("createdAt")))
            info = mapping(page.get("pageInfo")) or {}
            after = info.get("endCursor") if isinstance(info.get("endCursor"), str) else None
            if not info.get("hasNextPage") or after is None:
                return found

    async def register(self, url: str, topics: Sequence[str] = tuple(TOPICS.values())
                       ) -> tuple[list[Subscription], list[Subscription]]:
        """(created, already there) for ``url``; PermanentError (ERR-6024) if refused."""
        existing = {(s.topic, s.callback_url) for s in await self.all()}
        created: list[Subscription] = []
        kept: list[Subscription] = []
        for topic in topics:
            if (topic, url) in existing:
                kept.append(Subscription("", topic, url))
                continue
            answer = await self.client.execute(
                "EdgedWebhookCreate", CREATE_DOCUMENT,
                {"topic": topic, "sub": {"callbackUrl": url, "format": "JSON"}},
                cost=MUTATION_COST, mutation=True)
            payload = mapping(answer.data.get("webhookSubscriptionCreate"))
            if payload is None:
                raise graphql_error(list(answer.errors), operation="EdgedWebhookCreate",
                                    mutation=True)
            sub = mapping(payload.get("webhookSubscription"))
            if sub is None or not isinstance(sub.get("id"), str):
                raise PermanentError(f"Shopify refused the subscription to {topic}:"
                                     f" {_user_errors(payload) or 'no detail'}",
                                     ERR_SUBSCRIPTION_REFUSED)
            created.append(Subscription(sub["id"], topic, url))
        return created, kept

    async def remove(self, ids: Sequence[str]) -> list[str]:
        removed = []
        for sub_id in ids:
            answer = await self.client.execute("EdgedWebhookDelete", DELETE_DOCUMENT,
                                               {"id": sub_id}, cost=MUTATION_COST,
                                               mutation=True)
            payload = mapping(answer.data.get("webhookSubscriptionDelete"))
            if payload is None:
                raise graphql_error(list(answer.errors), operation="EdgedWebhookDelete",
                                    mutation=True)
            gone = payload.get("deletedWebhookSubscriptionId")
            if not isinstance(gone, str):
                raise PermanentError(f"Shopify refused to remove {sub_id}:"
                                     f" {_user_errors(payload) or 'no detail'}",
                                     ERR_SUBSCRIPTION_REFUSED)
            removed.append(gone)
        return removed


__all__ = ["Subscription", "Subscriptions"]
