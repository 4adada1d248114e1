"""Stripe's SDK client, built on first use and shared by the gateway, the Terminal client
and the read-back: a ``stripe.StripeClient`` on the SDK's aiohttp transport, rebuilt when
the secret key changes (a rotated key takes effect on the next call), never retried by the
SDK (the daemon's own policy decides).

The SDK is imported by the first call that needs it, or before by :func:`warm`
(:mod:`sync.core.preload` says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.core.proxy import proxy_for

if TYPE_CHECKING:
    import stripe

    from sync.stripe_api.wire import StripeWire


def warm() -> None:
    import stripe  # noqa: PLC0415

    client = stripe.StripeClient("sk_preload", http_client=stripe.AIOHTTPClient())
    for service in (client.v1.payment_intents, client.v1.refunds, client.v1.terminal.readers):
        assert service is not None


class StripeSdk:
    """A Stripe client for one base URL and timeout, made when first asked for."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None
        self._key: str | None = None
        self._wire: StripeWire | None = None

    def client(self, key: str) -> stripe.StripeClient:
        import aiohttp  # noqa: PLC0415
        import stripe  # noqa: PLC0415  (lazily: see the module docstring)

        if self._http is None:  # through HTTPS_PROXY and friends, unless NO_PROXY says not
            self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(
                total=self.timeout, connect=min(self.timeout, 10.0)),
                proxy=proxy_for(self.base_url or stripe.DEFAULT_API_BASE))
        if self._client is None or key != self._key:
            self._client = stripe.StripeClient(
                key, base_addresses={"api": self.base_url} if self.base_url else {},
                http_client=self._http, max_network_retries=0)
            self._key = key
            self._wire = None
        return self._client

    def wire(self, key: str) -> StripeWire:
        """The client's calls made on its settings (:mod:`sync.stripe_api.wire`)."""
        from sync.stripe_api.wire import StripeWire  # noqa: PLC0415  (with the SDK)

        client = self.client(key)  # forgets the wire of a client it replaces
        if self._wire is None:
            assert self._http is not None
            self._wire = StripeWire(client, self._http)
        return self._wire

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]
            self._http = None
            self._client = None
            self._wire = None
