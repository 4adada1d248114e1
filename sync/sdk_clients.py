"""The processors' SDK clients, built on first use and shared by a gateway's shape of calls.

Importing ``stripe`` or ``squareup`` (with ``httpx`` and pydantic) costs about 0.3 s of CPU
each, more than the whole daemon's way to ready. So nothing imports them when a gateway or
a Terminal client is constructed: the SDK client is built by the first call that needs it,
and :func:`preload` imports the modules on a worker thread once the daemon is ready, so
that the first payment normally finds them loaded. A call that comes earlier imports them
itself (and waits for a preload already under way).

One holder per processor, used by both its outbox gateway and its Terminal client:

* :class:`StripeSdk`: a ``stripe.StripeClient`` on the SDK's aiohttp transport, rebuilt
  when the secret key changes (a rotated key takes effect on the next call), never retried
  by the SDK (the daemon's own policy decides);
* :class:`SquareSdk`: one ``AsyncSquare`` on an ``httpx.AsyncClient``; the access token
  is read on every request from :attr:`SquareSdk.token`, which the caller sets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx
    import stripe
    from square import AsyncSquare

log = logging.getLogger(__name__)


async def preload(*, stripe: bool, square: bool) -> float:
    """Import what the first Stripe / Square call would, on a worker thread; the seconds.

    The SDKs import most of themselves on first use (a service, a sub-client, the models
    it parses), so a throwaway client is made and its services the daemon calls are
    touched; it never connects anywhere.
    """

    def load() -> float:
        started = time.perf_counter()
        if stripe:
            _warm_stripe()
        if square:
            _warm_square()
        return time.perf_counter() - started

    return await asyncio.to_thread(load)


def _warm_stripe() -> None:
    import stripe  # noqa: PLC0415

    client = stripe.StripeClient("sk_preload", http_client=stripe.AIOHTTPClient())
    for service in (client.v1.payment_intents, client.v1.refunds, client.v1.terminal.readers):
        assert service is not None


def _warm_square() -> None:
    import httpx  # noqa: PLC0415
    from square import AsyncSquare  # noqa: PLC0415
    from square.types.payment import Payment  # noqa: PLC0415
    from square.types.payment_refund import PaymentRefund  # noqa: PLC0415
    from square.types.terminal_checkout import TerminalCheckout  # noqa: PLC0415

    client = AsyncSquare(token=str, base_url="http://127.0.0.1",
                         httpx_client=httpx.AsyncClient())
    for sub in (client.payments, client.refunds, client.terminal.checkouts,
                client.terminal.actions,
                Payment, PaymentRefund, TerminalCheckout):
        assert sub is not None


class StripeSdk:
    """A Stripe client for one base URL and timeout, made when first asked for."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._http: stripe.AIOHTTPClient | None = None
        self._client: stripe.StripeClient | None = None
        self._key: str | None = None

    def client(self, key: str) -> stripe.StripeClient:
        import aiohttp  # noqa: PLC0415
        import stripe  # noqa: PLC0415  (lazily: see the module docstring)

        if self._http is None:
            self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(
                total=self.timeout, connect=min(self.timeout, 10.0)))
        if self._client is None or key != self._key:
            self._client = stripe.StripeClient(
                key, base_addresses={"api": self.base_url} if self.base_url else {},
                http_client=self._http, max_network_retries=0)
            self._key = key
        return self._client

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]
            self._http = None
            self._client = None


class SquareSdk:
    """An ``AsyncSquare`` for one base URL and timeout, made when first asked for."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.token = ""
        """The access token sent with every request; the caller sets it before a call."""
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncSquare | None = None

    def client(self) -> AsyncSquare:
        if self._client is None:
            import httpx  # noqa: PLC0415
            from square import AsyncSquare  # noqa: PLC0415  (lazily: see the module docstring)

            self._http = httpx.AsyncClient(timeout=httpx.Timeout(
                self.timeout, connect=min(self.timeout, 10.0)))
            self._client = AsyncSquare(token=self._current_token, base_url=self.base_url,
                                       httpx_client=self._http, timeout=self.timeout)
        return self._client

    def _current_token(self) -> str:
        return self.token

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            self._client = None
