"""The status page's door: sign-in with a manager token, the session cookie, the CSRF check.

``POST /session {"token"}`` trades a manager (or monitor) token for a cookie: HttpOnly,
SameSite=Strict, Secure under TLS, expiring after ``[manager] session_minutes``. The token
travels only in that body, never in a URL. With the cookie (and no Authorization header)
``/v1`` answers as the token would; a request that changes something must also carry an
``Origin`` naming this daemon, so another site cannot act through the browser (SameSite
already keeps the cookie off cross-site requests; the Origin check does not rely on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edged import audit
from edged.errors import ApiError
from edged.services import Services
from edged.sessions import NewSession
from edged.tokens import Principal

log = logging.getLogger(__name__)

COOKIE = "edged_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _own_origin(request: web.Request) -> str:
    scheme = "https" if request.secure else "http"
    return f"{scheme}://{request.headers.get('Host', '')}".lower()


def check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin", "").lower()
    if not origin or origin != _own_origin(request):
        raise ApiError("ERR-5020", "this request must come from the status page itself"
                       " (its Origin header must name this daemon); another site cannot act"
                       " with the manager's session")


async def principal_of(request: web.Request, services: Services) -> tuple[Principal, str]:
    sid = request.cookies.get(COOKIE, "")
    found = await services.manager.sessions.lookup(sid) if sid else None
    if found is None:
        raise ApiError("ERR-5021", "sign in again: the session expired, was signed out, or"
                       " its token was revoked")
    return found


async def cookie_gate(request: web.Request, handler: Handler, services: Services,
                      key: web.RequestKey[Principal]) -> web.StreamResponse:
    """The gate for a /v1 request authenticated by the session cookie."""
    principal, _ = await principal_of(request, services)
    if request.method not in SAFE_METHODS:
        check_origin(request)
        if not principal.is_manager:  # a monitor's page only looks
            raise ApiError("ERR-5003", f"a {principal.scope} sign-in can only look; sign in"
                           " with a manager token to act")
    request[key] = principal
    verdict = services.limits.take(f"token:{principal.token_id}")
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many requests; retry after {verdict.retry_after} s",
                       headers=verdict.headers())
    return await handler(request)


def _body(principal: Principal, expires_at: str) -> dict[str, Any]:
    return {"name": principal.name, "scope": principal.scope, "expires_at": expires_at,
            "actions": principal.is_manager}


async def sign_in(request: web.Request) -> web.StreamResponse:
    from edged.api.http import SERVICES, json_response  # noqa: PLC0415  (http imports us)

    services = request.app[SERVICES]
    check_origin(request)
    client = f"ip:{request.remote}"
    verdict = services.manager.sign_in_limits.take(client)
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many sign-in attempts; retry after"
                       f" {verdict.retry_after} s", headers=verdict.headers())
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("ERR-1001", "the body is not valid JSON") from None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip() or len(token) > 200:
        raise ApiError("ERR-1003", "send {\"token\": \"...\"}: a manager token from"
                       " `edged token create NAME --scope manager`")
    result = await services.manager.sessions.sign_in(token.strip())
    if result is None:
        raise ApiError("ERR-5002", "the token is unknown or revoked")
    if not isinstance(result, NewSession):
        raise ApiError("ERR-5003", f"a {result.scope} token cannot sign in to the status"
                       " page; use a manager token (edged token create NAME --scope manager)")
    principal = result.principal
    await services.db.write(lambda c: audit.append(
        c, f"token:{principal.name}", "session.signed_in", principal.name,
        {"scope": principal.scope, "expires_at": result.expires_at}))
    log.info("status page: %s signed in (%s)", principal.name, principal.scope)
    response = json_response(200, _body(principal, result.expires_at))
    response.set_cookie(COOKIE, result.session_id, max_age=services.manager.sessions
                        .lifetime_seconds, path="/", httponly=True, samesite="Strict",
                        secure=request.secure or services.cfg.api.tls)
    return response


async def whoami(request: web.Request) -> web.StreamResponse:
    from edged.api.http import SERVICES, json_response  # noqa: PLC0415

    principal, expires_at = await principal_of(request, request.app[SERVICES])
    return json_response(200, _body(principal, expires_at))


async def sign_out(request: web.Request) -> web.StreamResponse:
    from edged.api.http import SERVICES, json_response  # noqa: PLC0415

    check_origin(request)
    sid = request.cookies.get(COOKIE, "")
    if sid:
        await request.app[SERVICES].manager.sessions.sign_out(sid)
    response = json_response(200, {"signed_out": True})
    response.del_cookie(COOKIE, path="/")
    return response
