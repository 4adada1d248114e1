"""The one middleware every request passes: guard, gate, errors, metrics, in one layer.

One layer instead of four: each aiohttp middleware costs a coroutine and a wrapper per
request, and on the register's hot path that is a measurable share of the CPU (bench/).
The order it keeps:

1. the connection is marked inside a request (:class:`~edged.api.server.ConnectionGuard`
   never evicts it while it is);
2. the gate (:func:`~edged.api.http.admit`): draining, Host, token, rate limits; a request
   without a valid token is counted per address (at most ``[api]
   max_unauthenticated_per_address`` in flight, else 429 ERR-1021 at once, its body unread);
   an authenticated request, or one whose body is in, holds its connection;
3. the route's handler;
4. what was raised becomes the JSON error answer (:func:`~edged.api.http.error_answer`);
5. the request is counted, and its latency observed (the event stream excluded: it is
   open for as long as the page is).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from edged.api.http import admit, count_request, error_answer
from edged.api.server import GUARD, ConnectionGuard
from edged.api.wire import PRINCIPAL, SERVICES
from edged.errors import ApiError

STREAMS = frozenset({"/v1/events"})
"""Routes whose duration is not a latency."""


@web.middleware
async def edge_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
    app = request.app
    services = app[SERVICES]
    guard = app.get(GUARD)
    conn = guard.enter(request.transport) if guard is not None else None
    started = time.perf_counter()
    status = 500
    anonymous: str | None = None
    try:
        try:
            verdict = await admit(request, services)
            if guard is not None:
                if request.get(PRINCIPAL) is None:
                    anonymous = _count_unauthenticated(guard, request)
                if request.get(PRINCIPAL) is not None or _body_in(request):
                    guard.hold(conn)
            response = await handler(request)
        except Exception as exc:  # error_answer re-raises what it does not answer
            if isinstance(exc, web.HTTPException):
                status = exc.status  # counted as such also when passed on (a redirect)
            status, response = error_answer(request, exc)
            return response
        status = response.status
        if verdict is not None and not response.prepared:
            response.headers.update(verdict.headers())
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        count_request(services, request, status, route)
        if route not in STREAMS:
            services.metrics.observe_labels("edged_http_request_duration_seconds",
                                            "Time to answer a request",
                                            time.perf_counter() - started, (("route", route),))
        ConnectionGuard.leave(conn)
        if anonymous is not None and guard is not None:
            guard.unauthenticated_done(anonymous)


def _count_unauthenticated(guard: ConnectionGuard, request: web.Request) -> str:
    """Count a request without a token in flight from its address, or refuse it at once."""
    peer = request.remote or "unknown"
    if not guard.unauthenticated(peer):
        raise ApiError("ERR-1021", f"too many requests without a valid token in flight from"
                       f" {peer} (at most {guard.unauthenticated_per_address}); retry in a"
                       " moment", headers={"Retry-After": "1", "Connection": "close"})
    return peer


def _body_in(request: web.Request) -> bool:
    return not request.body_exists or request.content.is_eof()
