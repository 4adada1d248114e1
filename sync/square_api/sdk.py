"""Square's SDK client, built on first use and shared by the gateway, the Terminal client
and the read-back: one ``AsyncSquare`` on an ``httpx.AsyncClient`` whose requests aiohttp
carries (:mod:`sync.square_api.transport`); the access token is read on every request from
:attr:`SquareSdk.token`, which the caller sets.

The SDK is imported by the first call that needs it, or before by :func:`warm`
(:mod:`sync.core.preload` says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx
    from square import AsyncSquare

    from sync.square_api.transport import AiohttpTransport


def warm() -> None:
    import httpx  # noqa: PLC0415
    from square import AsyncSquare  # noqa: PLC0415
    from square.types.payment import Payment  # noqa: PLC0415
    from square.types.payment_refund import PaymentRefund  # noqa: PLC0415
    from square.types.terminal_checkout import TerminalCheckout  # noqa: PLC0415

    from sync.square_api.transport import AiohttpTransport  # noqa: PLC0415

    client = AsyncSquare(token=str, base_url="http://127.0.0.1",
                         httpx_client=httpx.AsyncClient())
    for sub in (client.payments, client.refunds, client.terminal.checkouts,
                client.terminal.actions,
                Payment, PaymentRefund, TerminalCheckout, AiohttpTransport):
        assert sub is not None


class SquareSdk:
    """An ``AsyncSquare`` for one base URL and timeout, made when first asked for."""

    def __init__(self, base_url: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.token = ""
        """The access token sent with every request; the caller sets it before a call."""
        self._http: httpx.AsyncClient | None = None
        self._client: AsyncSquare | None = None
        self._transport: AiohttpTransport | None = None

    def client(self) -> AsyncSquare:
        if self._client is None:
            import httpx  # noqa: PLC0415
            from square import AsyncSquare  # noqa: PLC0415  (lazily: see the module docstring)

            from sync.square_api.transport import AiohttpTransport  # noqa: PLC0415

            self._transport = AiohttpTransport()
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(
                self.timeout, connect=min(self.timeout, 10.0)), transport=self._transport)
            self._client = AsyncSquare(token=self._current_token, base_url=self.base_url,
                                       httpx_client=self._http, timeout=self.timeout)
        return self._client

    def transport(self) -> AiohttpTransport:
        """The aiohttp session's transport the client's requests go out on."""
        self.client()
        assert self._transport is not None
        return self._transport

    def _current_token(self) -> str:
        return self.token

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            self._client = None
            self._transport = None
