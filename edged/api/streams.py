"""``GET /v1/events``: server-sent events, each stream bounded and tied to its credential.

- A stream re-checks the credential it was opened with (its bearer token, or the status
  page's session) at every event before sending it, and at least every
  :data:`RECHECK_SECONDS` of the daemon's clock: a revoked token (``edged token revoke``),
  an expired session or one whose token was revoked ends the stream within a second, and
  no event reaches it after the re-check that saw it. A sign-out (``DELETE /session``)
  ends the page's streams at once.
- A token holds at most ``[api] max_streams_per_token`` streams (sign-ins count for their
  token), the daemon at most a quarter of its connection limit; the next is answered 429
  ERR-5032.
- A stream ends after ``[api] stream_max_seconds``; the client reconnects with
  ``Last-Event-ID`` and misses nothing the replay buffer still holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from edged.api import session as page_session
from edged.api.http import Ctx
from edged.api.wire import SERVICES
from edged.errors import ApiError
from edged.events import Event, EventBus
from edged.lan.stream_registry import Stream

log = logging.getLogger(__name__)

RECHECK_SECONDS = 0.5
"""The longest a stream goes without checking its credential."""
KEEPALIVE_SECONDS = 15.0
"""A comment line this often keeps proxies and the browser from closing a quiet stream."""

StillValid = Callable[[], Awaitable[bool]]


def _frame(bus: EventBus, event: Event) -> bytes:
    data = json.dumps(event.data, separators=(",", ":"))
    return f"id: {bus.sse_id(event.id)}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def _gone(request: web.Request) -> bool:
    """The client closed its end (seen at the next wake, not only at the next write)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def credential_check(request: web.Request) -> tuple[StillValid, str | None]:
    """How this request's stream re-checks what it was opened with; the session digest
    when that is the page's sign-in."""
    services = request.app[SERVICES]
    authorization = request.headers.get("Authorization")
    if authorization is None:
        sid = request.cookies.get(page_session.cookie_name(services), "")
        sessions = services.manager.sessions

        async def session_alive() -> bool:
            return await sessions.lookup(sid) is not None

        return session_alive, sessions.digest(sid)
    token = authorization.strip().partition(" ")[2].strip()

    async def token_alive() -> bool:
        return await services.principal(token) is not None

    return token_alive, None


async def events(ctx: Ctx) -> web.StreamResponse:
    """Server-sent events; ``?kinds=payment,terminal`` filters."""
    assert ctx.principal is not None
    services, request = ctx.services, ctx.request
    still_valid, session = credential_check(request)
    stream = services.streams.open(ctx.principal.token_id, session)
    if stream is None:
        raise ApiError("ERR-5032", f"this token has its maximum of open event streams"
                       f" ({services.streams.per_token}; the daemon at most"
                       f" {services.streams.total}); close one, or retry later",
                       headers={"Retry-After": "5"})
    try:
        return await _serve(ctx, stream, still_valid)
    finally:
        services.streams.close(stream)


async def _serve(ctx: Ctx, stream: Stream, still_valid: StillValid) -> web.StreamResponse:
    services, request = ctx.services, ctx.request
    raw = request.query.get("kinds", "")
    kinds = frozenset(k for k in raw.split(",") if k)
    bus, clock = services.bus, services.clock
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    sub = bus.subscribe(kinds)
    last = request.headers.get("Last-Event-ID")
    replay = bus.since(last, kinds) if last else None  # at once: nothing slips between
    stopping = services.stopping
    started = clock.monotonic()
    ends_at = started + services.cfg.api.stream_max_seconds
    beat_at = started + KEEPALIVE_SECONDS
    waits: dict[str, asyncio.Future[object]] = {}
    try:
        await response.write(b": edged events\n\n")
        if replay is not None and replay.events is None:
            reset = json.dumps({"reason": replay.reason}, separators=(",", ":"))
            await response.write(
                f"id: {bus.sse_id()}\nevent: reset\ndata: {reset}\n\n".encode())
        for missed in (replay.events or []) if replay is not None else []:
            await response.write(_frame(bus, missed))
        waits["stop"] = asyncio.ensure_future(stopping.wait())
        waits["end"] = asyncio.ensure_future(stream.ended.wait())
        while not sub.dropped:
            if "event" not in waits:  # (not setdefault: its argument would run every turn)
                waits["event"] = asyncio.ensure_future(sub.queue.get())
            if "tick" not in waits:
                waits["tick"] = asyncio.ensure_future(clock.sleep(RECHECK_SECONDS))
            await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
            if waits["stop"].done() or waits["end"].done() or _gone(request) or \
                    not await still_valid():
                break
            if waits["tick"].done():
                del waits["tick"]
            if waits["event"].done():
                event = waits.pop("event").result()
                assert isinstance(event, Event)
                await response.write(_frame(bus, event))
            now = clock.monotonic()
            if now >= ends_at:
                break
            if now >= beat_at:
                await response.write(b": keep-alive\n\n")
                beat_at = now + KEEPALIVE_SECONDS
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for waiter in waits.values():
            waiter.cancel()
        bus.unsubscribe(sub)
    return response
