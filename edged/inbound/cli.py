"""``edged shopify webhooks register|list|remove``: the shop's webhook subscriptions.

``register --url URL`` subscribes URL (where the store's reverse proxy or tunnel forwards to
``POST /v1/webhooks/shopify``) to every topic the daemon follows, with
``webhookSubscriptionCreate``; a topic already subscribed to that URL is left alone, so it
can be run again safely. ``list`` shows the subscriptions (id, topic, URL); ``remove``
deletes those of ``--url``, or one ``--id``. The Admin API token comes from the daemon's
secrets (``edged secret set shopify.token``), the shop from ``[shopify]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from edged.config import Config, is_loopback

Common = Callable[[argparse.ArgumentParser], None]
ConfigOf = Callable[[argparse.Namespace], Config]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: Common) -> None:
    shop = sub.add_parser("shopify", help="Shopify: the webhook subscriptions")
    ssub = shop.add_subparsers(dest="area", required=True)
    hooks = ssub.add_parser("webhooks", help="subscriptions that deliver to this daemon")
    hsub = hooks.add_subparsers(dest="action", required=True)
    reg = hsub.add_parser("register", help="subscribe URL to every topic edged follows")
    reg.add_argument("--url", required=True,
                     help="the public https://…/v1/webhooks/shopify of this daemon")
    common(reg)
    lst = hsub.add_parser("list", help="the shop's subscriptions")
    lst.add_argument("--json", action="store_true")
    common(lst)
    rem = hsub.add_parser("remove", help="delete subscriptions")
    which = rem.add_mutually_exclusive_group(required=True)
    which.add_argument("--url", help="every subscription to this URL")
    which.add_argument("--id", help="one subscription (gid://shopify/WebhookSubscription/N)")
    common(rem)


def dispatch(args: argparse.Namespace, config: ConfigOf) -> int | None:
    """Run a ``shopify`` command; None if ``args`` is not one."""
    if args.command != "shopify":
        return None
    cfg = config(args)
    if cfg.shopify is None:
        print("edged: this configuration has no [shopify] section", file=sys.stderr)
        return 2
    if args.action == "register":
        problem = _url_problem(args.url)
        if problem is not None:
            print(f"edged: --url {problem}", file=sys.stderr)
            return 2
    return asyncio.run(_run(args, cfg))


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute http(s) URL"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "must be https (Shopify delivers to https only)"
    if not parts.path.endswith("/v1/webhooks/shopify"):
        return "must end with /v1/webhooks/shopify (where the daemon takes deliveries)"
    return None


async def _run(args: argparse.Namespace, cfg: Config) -> int:
    from edged.store.database import open_sync  # noqa: PLC0415
    from edged.store.secrets import SecretError, SecretStore  # noqa: PLC0415
    from sync.core.clock import SystemClock  # noqa: PLC0415
    from sync.core.errors import SyncError  # noqa: PLC0415
    from sync.shopify_admin.client import ShopifyClient, ShopifySettings  # noqa: PLC0415
    from sync.shopify_admin.subscriptions import Subscriptions  # noqa: PLC0415

    shop = cfg.shopify
    assert shop is not None
    try:
        store = SecretStore(SecretStore.load_key(cfg.data_dir))
        conn = open_sync(cfg.data_dir / "edged.db")
        try:
            token = store.get(conn, "shopify.token")
        finally:
            conn.close()
    except SecretError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    settings = ShopifySettings(shop=shop.shop, api_version=shop.api_version,
                               location_id=shop.location_id, admin_url=shop.admin_url,
                               timeout=cfg.sync.request_timeout)
    client = ShopifyClient(settings, lambda: token, SystemClock())
    subs = Subscriptions(client)
    try:
        if args.action == "register":
            created, kept = await subs.register(args.url)
            for s in created:
                print(f"subscribed {s.topic} -> {s.callback_url} ({s.id})")
            for s in kept:
                print(f"already subscribed {s.topic} -> {s.callback_url}")
            print(f"{len(created)} created, {len(kept)} already there; set the app's client"
                  " secret with `edged secret set shopify.webhook_secret` if not done yet")
        elif args.action == "list":
            found = await subs.all()
            if args.json:
                print(json.dumps([{"id": s.id, "topic": s.topic, "url": s.callback_url,
                                   "created_at": s.created_at} for s in found], indent=2))
            else:
                for s in found:
                    print(f"{s.id}  {s.topic:<45} {s.callback_url}")
                print(f"{len(found)} subscription(s)")
        else:
            ids = [args.id] if args.id else [s.id for s in await subs.all()
                                             if s.callback_url == args.url]
            removed = await subs.remove(ids)
            for sub_id in removed:
                print(f"removed {sub_id}")
            print(f"{len(removed)} removed")
    except SyncError as exc:
        print(f"edged: Shopify: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    return 0


__all__ = ["add_commands", "dispatch"]
