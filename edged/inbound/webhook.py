"""``POST /v1/webhooks/shopify``: a delivery verified, stored, answered; processed later.

The daemon never opens a port to the internet by itself: the route answers whatever a
reverse proxy or tunnel of the store forwards to it. No bearer token (Shopify has none to
send); the API's Host rules still apply. In order:

1. the body is read raw, at most ``[shopify] webhook_max_body_bytes`` (413 ERR-1033, nothing
   stored) within ``[api] body_timeout`` (408 ERR-1018) — never parsed before it is verified;
2. ``X-Shopify-Hmac-SHA256`` is checked with :func:`hmac.compare_digest` against the webhook
   secret (``edged secret set shopify.webhook_secret``) and, for one hour after it was
   replaced, the previous one; a mismatch is 401 ERR-1030 with nothing stored (the secrets
   are read again from the database first, at most once a second, in case one was just set);
   no secret set at all is 503 ERR-1031, so Shopify tries again later;
3. the topic and ``X-Shopify-Webhook-Id`` are required (400 ERR-1032);
4. the digest of the payload is stored in the inbox in one transaction with its dedupe keys
   (:func:`edged.inbound.inbox.receive_webhook`): a replay of the same webhook id stores
   nothing more and is answered 200 too;
5. 200 — within Shopify's 5 s whatever the processing takes: the worker is only woken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from edged.config import Config
from edged.errors import ApiError
from edged.inbound import inbox
from edged.store import Database
from sync.core.clock import Clock, utc_iso
from sync.shopify_admin import webhooks as wh

log = logging.getLogger(__name__)

SECRET = "shopify.webhook_secret"  # noqa: S105 - the name of the secret, not a value
PREVIOUS_GRACE = timedelta(hours=1)
REFRESH_AT_MOST = 1.0
"""Seconds between two reads of the secrets caused by signatures that do not match."""
STORE_WITHIN = 4.0
"""Seconds the delivery's write may take before the answer is 503 (Shopify retries)."""
READ_CHUNK = 1 << 16


class WebhookSecrets:
    """The secrets deliveries may be signed with now: the current one and, for an hour
    after a rotation, the one it replaced (``edged.store.secrets.PREVIOUS_KEPT``)."""

    def __init__(self, cfg: Config, db: Database, clock: Clock) -> None:
        self._cfg = cfg
        self._db = db
        self._clock = clock
        self._current: str | None = None
        self._previous: tuple[str, datetime] | None = None
        self._read_at: float | None = None

    async def refresh(self) -> None:
        from edged.store.secrets import PREVIOUS_KEPT, SecretError, SecretStore  # noqa: PLC0415

        self._read_at = self._clock.monotonic()
        try:
            store = SecretStore(SecretStore.load_key(self._cfg.data_dir))
        except SecretError as exc:
            log.error("cannot read the secrets key: %s", exc)
            return
        previous_name = PREVIOUS_KEPT[SECRET]

        def read(conn: sqlite3.Connection) -> tuple[str | None, tuple[str, str] | None]:
            try:
                current = store.get(conn, SECRET)
                old = store.get(conn, previous_name)
            except SecretError as exc:
                log.error("the webhook secret cannot be read: %s", exc)
                return None, None
            when = conn.execute("SELECT updated_at FROM secrets WHERE name = ?",
                                (previous_name,)).fetchone()
            return current, (old, when[0]) if old is not None and when else None

        current, previous = await self._db.read(read)
        self._current = current
        self._previous = None if previous is None else (
            previous[0], datetime.fromisoformat(previous[1]))

    async def accepted(self, *, again: bool = False) -> list[str]:
        """The secrets a signature may match now; read from the database again (at most
        once a second) when ``again`` (a signature did not match) or while none is set (a
        secret set with ``edged secret set`` while the daemon runs counts at once)."""
        now = self._clock.monotonic()
        if self._read_at is None or ((again or not self._current)
                                     and now - self._read_at >= REFRESH_AT_MOST):
            await self.refresh()
        found = [self._current] if self._current else []
        if self._previous is not None and \
                self._clock.now() < self._previous[1] + PREVIOUS_GRACE:
            found.append(self._previous[0])
        return found


async def _read_raw(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("ERR-1033", f"the delivery is {request.content_length} bytes; at most"
                       f" {limit} are taken ([shopify] webhook_max_body_bytes)",
                       headers={"Connection": "close"})
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ApiError("ERR-1033", f"the delivery is larger than {limit} bytes ([shopify]"
                           " webhook_max_body_bytes)", headers={"Connection": "close"})
        chunks.append(chunk)


class WebhookReceiver:
    def __init__(self, cfg: Config, db: Database, clock: Clock, secrets: WebhookSecrets,
                 wake: Callable[[], None]) -> None:
        assert cfg.shopify is not None
        self._cfg = cfg
        self._shop = cfg.shopify
        self._db = db
        self._clock = clock
        self.secrets = secrets
        self._wake = wake
        self.refused = 0

    async def receive(self, request: web.Request) -> dict[str, Any]:
        """Verify and store one delivery; the answer's body (raises :class:`ApiError`)."""
        timeout = self._cfg.api.body_timeout
        try:
            async with asyncio.timeout(timeout):
                body = await _read_raw(request, self._shop.webhook_max_body_bytes)
        except TimeoutError:
            raise ApiError("ERR-1018", f"the delivery did not arrive within {timeout:g} s",
                           headers={"Connection": "close"}) from None
        accepted = await self.secrets.accepted()
        if not accepted:
            raise ApiError("ERR-1031", "no webhook secret is set, so this delivery cannot be"
                           " verified; run `edged secret set shopify.webhook_secret` with the"
                           " app's client secret (Shopify delivers it again later)",
                           headers={"Retry-After": "60"})
        header = request.headers.get(wh.HMAC_HEADER)
        if wh.verify(body, header, accepted) is None and \
                wh.verify(body, header, await self.secrets.accepted(again=True)) is None:
            self.refused += 1
            log.warning("refused a Shopify delivery from %s: its signature does not match"
                        " (%s)", request.remote, request.headers.get(wh.TOPIC_HEADER, "?")[:60])
            raise ApiError("ERR-1030", f"the {wh.HMAC_HEADER} header does not match the body"
                           " under the webhook secret; nothing was stored")
        try:
            delivery = wh.delivery(request.headers)
        except wh.WebhookError as exc:
            raise ApiError("ERR-1032", str(exc)) from None
        return await self._store(delivery, body)

    async def _store(self, delivery: wh.Delivery, body: bytes) -> dict[str, Any]:
        ignored: str | None = None
        found = wh.Digest(None)
        try:
            found = wh.digest(delivery.topic, json.loads(body), delivery.triggered_at)
        except (ValueError, wh.WebhookError) as exc:
            ignored = f"unreadable payload: {str(exc)[:200]}"
        if ignored is None and delivery.shop_domain and self._shop.shop and \
                delivery.shop_domain.lower() != self._shop.shop.lower():
            ignored = f"from the shop {delivery.shop_domain}; this box serves {self._shop.shop}"
        key = wh.event_key(delivery.topic, found, body)
        now = utc_iso(self._clock.now())

        def write(conn: sqlite3.Connection) -> inbox.Received:
            return inbox.receive_webhook(
                conn, webhook_id=delivery.webhook_id, topic=delivery.topic,
                event_id=delivery.event_id, triggered_at=delivery.triggered_at,
                subject=found.subject, version=found.version, event_key=key,
                data=dict(found.data), now=now, ignored=ignored)

        try:
            async with asyncio.timeout(STORE_WITHIN):
                received = await self._db.write(write)
        except TimeoutError:
            raise ApiError("ERR-1034", "the delivery could not be stored in time; Shopify"
                           " delivers it again", headers={"Retry-After": "30"}) from None
        if received.new and received.state == "pending":
            self._wake()
        log.info("shopify delivery %s (%s): #%d %s", delivery.webhook_id, delivery.topic,
                 received.id, "stored" if received.new else "already stored")
        return {"received": True, "id": received.id, "state": received.state,
                "replayed": not received.new}


__all__ = ["WebhookReceiver", "WebhookSecrets"]
