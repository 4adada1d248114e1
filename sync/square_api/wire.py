"""Square calls whose answers are read as the JSON they are, through the SDK's own client.

The SDK's typed calls build a pydantic model of every answer (reading a Payment cost about
2 ms of CPU on the bench's box, most of a Square Terminal lane's own time per payment,
bench/README.md, issue 22), and a lane reads a handful of its fields. :func:`request` goes
through the very ``AsyncHttpClient`` those calls use (the access token and
``Square-Version`` headers, the base URL, the timeout, ``request_options`` such as
``max_retries``), and answers a non-2xx status with the SDK's own ``ApiError``, built as its
typed calls build it, so :func:`sync.square_api.calls.square_call` sorts a failure the same
way. Only the model is skipped: the dict is the wire's, its keys Square's own names.

The client is reached as the SDK's generated calls reach it (``_client_wrapper``, the same
in every call of the SDK's major version the project pins); ``tests/test_square_wire.py``
proves a request made here carries what the typed call's carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from square import AsyncSquare
    from square.core.request_options import RequestOptions


async def request(client: AsyncSquare, path: str, method: str, *,
                  body: Mapping[str, Any] | None = None,
                  request_options: RequestOptions | None = None) -> dict[str, Any]:
    """``method path`` (``v2/…``) with a JSON ``body``; the answer's JSON object.

    Raises ``square.core.api_error.ApiError`` for a non-2xx answer or one that is not JSON
    (as the SDK does), ``ValueError`` for a 2xx answer that is not a JSON object.
    """
    from square.core.api_error import ApiError  # noqa: PLC0415  (the SDK is loaded lazily)

    http = client._client_wrapper.httpx_client  # the typed calls' own client
    response = await http.request(
        path, method=method, json=dict(body) if body is not None else None,
        headers={"content-type": "application/json"} if body is not None else None,
        request_options=request_options)
    try:
        answer = response.json()
    except ValueError:  # not JSON: the SDK raises its ApiError with the text
        raise ApiError(status_code=response.status_code, headers=dict(response.headers),
                       body=response.text) from None
    if not 200 <= response.status_code < 300:
        raise ApiError(status_code=response.status_code, headers=dict(response.headers),
                       body=answer)
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
