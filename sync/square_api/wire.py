"""Square calls whose answers are read as the JSON they are, through the SDK's own client.

The SDK's typed calls build a pydantic model of every answer (reading a Payment cost about
2 ms of CPU on the bench's box) and pass each request through httpx and the SDK's own
request builder; for a Square Terminal lane that was most of its own time per payment
(bench/README.md, issue 22), and a lane reads a handful of fields. :func:`request` takes
what the SDK's calls take from its client (the base URL, the headers with the access token
and ``Square-Version``, the timeout), sends the request on the transport's aiohttp session
(:mod:`sync.square_api.transport`, which sorts a failure as the SDK's requests are sorted)
and answers a non-2xx status with the SDK's own ``ApiError``, built as its typed calls
build it, so :func:`sync.square_api.calls.square_call` sorts every outcome the same way.
The dict is the wire's, its keys Square's own names.

The settings are read as the SDK's generated calls read them (``_client_wrapper``, the
same in every call of the SDK's major version the project pins); ``tests/test_square_wire.py``
proves a request made here carries what the typed call's carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from square import AsyncSquare

    from sync.square_api.transport import AiohttpTransport


async def request(client: AsyncSquare, transport: AiohttpTransport, path: str, method: str,
                  *, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``method path`` (``v2/…``) with a JSON ``body``; the answer's JSON object.

    The request is the SDK's (its base URL, its headers with the access token and
    ``Square-Version``, its timeout), sent on the transport's aiohttp session without the
    SDK's retries (the daemon's policy decides). Raises ``square.core.api_error.ApiError``
    for a non-2xx answer or one that is not JSON (as the SDK does), the transport's httpx
    errors for a failed exchange, ``ValueError`` for a 2xx answer that is not an object.
    """
    from square.core.api_error import ApiError  # noqa: PLC0415  (the SDK is loaded lazily)

    from sync.square_api.transport import timeout_of  # noqa: PLC0415  (with it)

    wrapper = client._client_wrapper  # what the SDK's own calls read their settings from
    headers = [*wrapper.get_headers().items(), ("Accept-Encoding", "identity")]
    data = None
    if body is not None:
        headers.append(("Content-Type", "application/json"))
        data = json.dumps(dict(body), separators=(",", ":")).encode()
    status, _, raw_headers, content = await transport.exchange(
        method, f"{wrapper.get_base_url().rstrip('/')}/{path}", headers, data,
        timeout_of(wrapper.get_timeout()))
    answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
    try:
        answer = json.loads(content)
    except ValueError:  # not JSON: the SDK raises its ApiError with the text
        raise ApiError(status_code=status, headers=answer_headers,
                       body=content.decode("utf-8", "replace")) from None
    if not 200 <= status < 300:
        raise ApiError(status_code=status, headers=answer_headers, body=answer)
    if not isinstance(answer, dict):
        raise ValueError(f"square answered {path} with {type(answer).__name__}, not an"
                         " object")
    return answer


def field(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]…``, or None where a level is missing or not an object."""
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
