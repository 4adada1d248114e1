"""The status page's door: sign-in with a manager token, the session cookie, the CSRF check.

``POST /session {"token"}`` trades a manager (or monitor) token for a cookie: HttpOnly,
SameSite=Strict, Secure under TLS, expiring after ``[manager] session_minutes``. The token
travels only in that body, never in a URL. With the cookie (and no Authorization header)
``/v1`` answers as the token would; a request that changes something must also carry an
``Origin`` naming this daemon, so another site cannot act through the browser (SameSite
already keeps the cookie off cross-site requests; the Origin check does not rely on it).

``POST /session {"proof", "name"?}`` signs in with a manager pairing code instead, proven
with the certificate's fingerprint as ``POST /v1/pair`` takes it (the page computes the
proof; same expiry, once only, the same wrong-code count per address, HTTPS off this box,
audited) into a new named token that the session is bound to; the token is never sent to
the browser. A register code is refused (ERR-5003) and stays unused.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from edged.api.wire import SERVICES, json_response, read_raw
from edged.errors import ApiError
from edged.lan import pairing
from edged.lan.sessions import NewSession
from edged.lan.tokens import Principal
from edged.services import Services
from edged.store import audit

log = logging.getLogger(__name__)

COOKIE = "edged_session"
HOST_COOKIE = "__Host-" + COOKIE
"""The name under TLS: a ``__Host-`` cookie is only taken by the browser when it is Secure,
for path ``/`` and without a Domain, so another host of the LAN (or a page served over
plain HTTP) cannot set or shadow it."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cookie_name(services: Services) -> str:
    """``__Host-edged_session`` under TLS, ``edged_session`` on the plain loopback API."""
    return HOST_COOKIE if services.cfg.api.tls else COOKIE


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
    sid = request.cookies.get(cookie_name(services), "")
    found = await services.manager.sessions.lookup(sid) if sid else None
    if found is None:
        raise ApiError("ERR-5021", "sign in again: the session expired, was signed out, or"
                       " its token was revoked")
    return found


async def cookie_principal(request: web.Request, services: Services) -> Principal:
    """Who a /v1 request authenticated by the session cookie acts as, after its checks."""
    principal, _ = await principal_of(request, services)
    if request.method not in SAFE_METHODS:
        check_origin(request)
        if not principal.is_manager:  # a monitor's page only looks
            raise ApiError("ERR-5003", f"a {principal.scope} sign-in can only look; sign in"
                           " with a manager token to act")
    verdict = services.limits.take(f"token:{principal.token_id}")
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many requests; retry after {verdict.retry_after} s",
                       headers=verdict.headers())
    return principal


def _body(principal: Principal, expires_at: str) -> dict[str, Any]:
    return {"name": principal.name, "scope": principal.scope, "expires_at": expires_at,
            "actions": principal.is_manager}


async def sign_in(request: web.Request) -> web.StreamResponse:

    services = request.app[SERVICES]
    check_origin(request)
    client = f"ip:{request.remote}"
    verdict = services.manager.sign_in_limits.take(client)
    if not verdict.allowed:
        raise ApiError("ERR-1015", f"too many sign-in attempts; retry after"
                       f" {verdict.retry_after} s", headers=verdict.headers())

    raw = await read_raw(request)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError("ERR-1001", "the body is not valid JSON") from None
    if isinstance(body, dict) and ("code" in body or "proof" in body) and "token" not in body:
        result: NewSession | Principal | None = await _redeem_code(request, services, body)
    else:
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip() or len(token) > 200:
            raise ApiError("ERR-1003", "send {\"token\": \"...\"}: a manager token from"
                           " `edged token create NAME --scope manager` (or {\"code\": \"...\"}:"
                           " a code from `edged pair --scope manager`)")
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
    response.set_cookie(cookie_name(services), result.session_id,
                        max_age=services.manager.sessions.lifetime_seconds, path="/",
                        httponly=True, samesite="Strict",
                        secure=request.secure or services.cfg.api.tls)
    return response


async def _redeem_code(request: web.Request, services: Services,
                       body: dict[str, Any]) -> NewSession:
    """A pairing code, proven as ``POST /v1/pair`` takes it, traded for a new token and a
    session on it."""
    from edged.api.pairing_gate import attempt, check_transport, proof_of  # noqa: PLC0415

    client = request.remote or "unknown"
    check_transport(request.secure, client, "signing in with a pairing code")
    proven = proof_of(body, "the sign-in")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 64
                             or not name.isprintable()):
        raise ApiError("ERR-1003", "name must be 1 to 64 printable characters: the new"
                       " token's name")
    sessions = services.manager.sessions

    async def redeem(fingerprint: str) -> NewSession | pairing.Miss:
        return await sessions.sign_in_with_code(proven, name.strip() if name else None,
                                                client, fingerprint)

    result = await attempt(services, client, redeem, "edged pair --scope manager")
    assert isinstance(result, NewSession)
    return result


async def whoami(request: web.Request) -> web.StreamResponse:

    principal, expires_at = await principal_of(request, request.app[SERVICES])
    return json_response(200, _body(principal, expires_at))


async def sign_out(request: web.Request) -> web.StreamResponse:

    check_origin(request)
    services = request.app[SERVICES]
    name = cookie_name(services)
    sid = request.cookies.get(name, "")
    if sid:
        await services.manager.sessions.sign_out(sid)
        services.streams.end_session(services.manager.sessions.digest(sid))
    response = json_response(200, {"signed_out": True})
    response.del_cookie(name, path="/", secure=services.cfg.api.tls)
    return response
