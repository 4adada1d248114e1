"""Request latency as a Prometheus histogram, per route (the event stream excluded)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from edged.api.http import SERVICES

STREAMS = frozenset({"/v1/events"})


@web.middleware
async def latency_middleware(request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                             ) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route not in STREAMS:
            request.app[SERVICES].metrics.observe(
                "edged_http_request_duration_seconds", "Time to answer a request",
                time.perf_counter() - started, route=route)
