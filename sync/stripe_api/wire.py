"""Stripe Terminal calls on the SDK's own settings, HTTP client and error handling, without
the SDK's per-request work.

``raw_request_async`` already spared the lane the SDK's object building, but each call
still went through the SDK's request assembly: its options merged again, a client
user-agent JSON built from ``platform.platform()`` and a scan of the environment, and five
log lines formatted whatever the log level (``stripe._util.log_info`` / ``log_debug`` build
the line first; one of them is the whole answer's body, searched by a regular expression
and ``repr``'d). On the bench's box that was about a millisecond of the lane's CPU per
payment beyond the bare aiohttp floor (bench/README.md, issue 22).

:func:`request` sends what the SDK would send for a ``v1`` call (its base address, secret
key, ``Stripe-Version``, ``User-Agent``, form encoding, ``Idempotency-Key`` on every POST),
through the SDK's HTTP client (so a failed exchange is the SDK's ``APIConnectionError``,
its cause the aiohttp error, as before), and reads the answer with the SDK's own
``_interpret_response``, which raises the SDK's error class for a non-2xx answer, so
:func:`sync.stripe_api.calls.stripe_call` sorts every outcome as it always did. The
settings are read where the SDK's calls read them (``StripeClient._requestor._options``);
``tests/test_stripe_wire.py`` proves each of the lane's requests goes out byte for byte as
the SDK's ``raw_request_async`` sends it.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    import stripe


def encode(params: Mapping[str, object]) -> str:
    """Stripe's form encoding, as the SDK writes it: ``key[sub]`` for an object,
    ``key[0]`` for a list, ``true``/``false``, None left out, brackets unescaped."""
    return urlencode(list(_pairs(params, None))).replace("%5B", "[").replace("%5D", "]")


def _pairs(value: Mapping[str, object], prefix: str | None) -> Iterator[tuple[str, object]]:
    for key, item in value.items():
        name = key if prefix is None else f"{prefix}[{key}]"
        yield from _item(name, item)


def _item(name: str, item: object) -> Iterator[tuple[str, object]]:
    if item is None:
        return
    if isinstance(item, Mapping):
        yield from _pairs(item, name)
    elif isinstance(item, list | tuple):
        for index, element in enumerate(item):
            yield from _item(f"{name}[{index}]", element)
    elif isinstance(item, bool):
        yield name, "true" if item else "false"
    elif isinstance(item, str | int):
        yield name, item
    else:
        raise TypeError(f"a Stripe parameter {name} of type {type(item).__name__}")


class StripeWire:
    """The headers that stay the same from call to call, made once per SDK client."""

    def __init__(self, client: stripe.StripeClient, http: stripe.AIOHTTPClient) -> None:
        """``http``: the HTTP client ``client`` was made with."""
        import stripe  # noqa: PLC0415  (loaded with the client)

        self.client = client
        self.http = http
        options = client._requestor._options  # where the SDK's own calls read them
        self.base = str(options.base_addresses.get("api") or stripe.DEFAULT_API_BASE)
        self._headers = {
            "X-Stripe-Client-User-Agent": json.dumps({
                "bindings_version": stripe.VERSION, "lang": "python", "httplib": http.name,
                "lang_version": platform.python_version()}),
            "User-Agent": f"Stripe/v1 PythonBindings/{stripe.VERSION}",
            "Authorization": f"Bearer {options.api_key}",
            "Stripe-Version": str(options.stripe_version),  # the client pins one always
        }

    async def request(self, method: str, path: str, params: Mapping[str, object],
                      idempotency_key: str | None = None) -> Any:
        """``method`` (``get`` or ``post``) ``path`` (``/v1/…``) with ``params``; the
        answer's JSON. A POST goes with ``idempotency_key`` (a new one if None, as the SDK
        does). Raises what the SDK raises for the same call."""
        headers = dict(self._headers)
        encoded = encode(params)
        url = f"{self.base}{path}"
        body: str | None = None
        if method == "post":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = encoded
        elif method == "get":
            if encoded:
                url = f"{url}?{encoded}"
        else:
            raise ValueError(f"no Stripe call uses {method!r} here")
        content, status, answer_headers = await self.http.request_with_retries_async(
            method, url, headers, body, max_network_retries=0)
        return self.client._requestor._interpret_response(
            content, status, answer_headers, "V1").data
