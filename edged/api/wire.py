"""What every handler shares on the wire: the app's keys, JSON and error answers, and the
one way a body is read (within its deadline)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientConnectionError, ClientPayloadError, web

from edged import jsoncodec
from edged.api.server import body_arrived
from edged.errors import ApiError, EdgedError
from edged.lan.tokens import Principal
from edged.payments.cardnumbers import mask
from edged.services import Services

SERVICES = web.AppKey("services", Services)
DRAINING = web.AppKey("draining", list)  # a one-element list holding a bool
PRINCIPAL = web.RequestKey("principal", Principal)


def json_response(status: int, body: dict[str, Any],
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers, body=jsoncodec.dumps(body),
                        content_type="application/json", charset="utf-8")


def error_response(err: ApiError) -> web.Response:
    body = err.body()
    body["error"]["message"] = mask(body["error"]["message"])  # never echo a card number
    response = json_response(err.status, body, err.headers)
    if err.headers.get("Connection") == "close":
        response.force_close()  # do not wait for the rest of a body
    return response


class ClientGone(EdgedError):
    """The client closed the connection before its request arrived in full."""


async def read_raw(request: web.Request) -> bytes:
    """The whole body, within ``[api] body_timeout`` (every body read goes through here);
    once it is in, the connection is held (:func:`edged.api.server.body_arrived`)."""
    timeout = 0.0
    try:
        if request.content.is_eof():  # all of it has arrived: nothing to wait for
            raw = await request.read()
        else:
            timeout = request.app[SERVICES].cfg.api.body_timeout
            async with asyncio.timeout(timeout):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SERVICES].cfg.api.max_body_bytes
        raise ApiError("ERR-1007", f"the body is larger than {limit} bytes") from None
    except TimeoutError:
        raise ApiError("ERR-1018", f"the body did not arrive within {timeout:g} s",
                       headers={"Connection": "close"}) from None
    except (ConnectionError, ClientPayloadError, ClientConnectionError) as exc:
        raise ClientGone(str(exc)) from None
    if request.get(PRINCIPAL) is None:  # an authenticated request's is held already
        body_arrived(request)
    return raw
