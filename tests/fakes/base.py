"""Shared machinery of the loopback fakes of Shopify, Stripe and Square (tests only).

Every fake is an :class:`aiohttp.web.Application` served on ``127.0.0.1`` with an ephemeral
port, wrapped by :class:`FakeServer`::

    async with FakeStripe() as stripe_fake:  # or: await fake.start() ... await fake.stop()
        url = stripe_fake.base_url           # "http://127.0.0.1:PORT"

Faults (``fake.faults``, a :class:`FaultController`, the same for the three fakes):

- ``await faults.refuse()``: stop listening and drop open connections (new connections are
  refused); all state is kept. ``await faults.restore()`` listens again on the same port.
- ``faults.hang(after_apply=False)``: accept requests and never answer them until
  ``restore()`` (then the connection is closed without an answer). With
  ``after_apply=True`` the request is executed first (its effect is applied) and only the
  answer is withheld: a timeout whose outcome is "done".
- ``faults.fail(status=500, count=None, fail_after_apply=False, headers=None, skip=0)``:
  answer ``status`` (in the service's own error format) to the next ``count`` requests (after
  letting ``skip`` through), or to all until ``restore()``. With ``fail_after_apply=True`` the request is executed first and its
  answer is replaced by the error (a lost answer); Stripe stores that error under the
  request's idempotency key, as the real one does once execution started.
- ``faults.throttle(count=None, retry_after=1.0)``: answer the service's own "throttled"
  answer (Shopify ``THROTTLED``, Stripe/Square 429) to the next ``count`` requests, or to all
  until ``restore()``. Independent of the fakes' real rate limiters.
- ``faults.slow(seconds)``: answer every request ``seconds`` late (real time: a slow link or
  a slow upstream); ``slow(0)`` or ``restore()`` ends it.
- ``await faults.restore()``: undo all of the above.
- ``await faults.wait_hung(n)`` returns once ``n`` requests in total are being held by
  ``hang()``; ``faults.hung_total`` counts them.

Inspection: ``fake.requests`` (every HTTP request received, with body and final status),
``fake.stats`` (counters: ``requests``, ``throttled``, ``faulted``, ``by_path``).

Time: rate limiters take an injectable ``clock`` (a ``() -> float`` of seconds, default
``time.monotonic``; ``tests.clock.ManualClock().monotonic`` works) so tests never sleep.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK = "127.0.0.1"

#: Request key set by the fault middleware when the answer of an executed request is lost
#: (``fail(fail_after_apply=True)``); value: the HTTP status that replaces the answer.
LOST_ANSWER_KEY: Any = (
    web.RequestKey("edged_fake_lost_answer", int) if hasattr(web, "RequestKey")
    else "edged_fake_lost_answer"  # aiohttp < 3.12
)


@dataclass
class RecordedRequest:
    """One HTTP request as received by a fake."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # None: no answer sent (hung / dropped)
    fault: str | None = None  # "fail", "fail_after_apply", "hang", "hang_after_apply", "throttle"
    received_at: float = 0.0  # time.monotonic() when the request was read
    answered_at: float | None = None  # time.monotonic() when its answer was ready

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Stats:
    """Counters of a fake; tests may reset them with ``fake.stats = Stats()``."""

    requests: int = 0  # every HTTP request received (faulted ones included)
    throttled: int = 0  # answers "throttled": real limiter + throttle() fault
    faulted: int = 0  # answers replaced by fail()/hang()
    by_path: Counter[str] = field(default_factory=Counter)  # "POST /v1/refunds" -> n


class TokenBucket:
    """A plain token bucket (``rate`` tokens a second, ``burst`` at most), clock-driven."""

    def __init__(self, rate: float, burst: float | None = None, clock: Clock = time.monotonic):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_take(self, n: float = 1.0) -> bool:
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available."""
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate) if self.rate > 0 else float("inf")

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens


@dataclass
class _Fail:
    status: int
    remaining: int | None
    after_apply: bool
    headers: dict[str, str]
    skip: int = 0


class FaultController:
    """Fault injection for one fake (see the module docstring)."""

    def __init__(self, server: FakeServer) -> None:
        self._server = server
        self._refused = False
        self._hang: bool | None = None  # None: off; else after_apply flag
        self._released = asyncio.Event()
        self._fail: _Fail | None = None
        self._throttle_remaining: int | None = None
        self._throttle_on = False
        self._throttle_retry_after: float | None = 1.0
        self._hung_total = 0
        self._hung_waiters: list[asyncio.Future[None]] = []
        self._latency = 0.0

    # -- switches -------------------------------------------------------------------------

    async def refuse(self) -> None:
        """Stop listening (connection refused) and drop open connections; keep all state."""
        if not self._refused:
            self._refused = True
            await self._server._stop_listening()

    async def restore(self) -> None:
        """Listen again (same port) and clear every fault; hung requests are dropped."""
        self._fail = None
        self._latency = 0.0
        self._throttle_on = False
        self._throttle_remaining = None
        self._release_hangs()
        if self._refused:
            self._refused = False
            await self._server._listen()

    def slow(self, seconds: float) -> None:
        """Answer every request ``seconds`` late (0: no delay)."""
        self._latency = max(0.0, seconds)

    def hang(self, *, after_apply: bool = False) -> None:
        """Accept and never answer until ``restore()``; optionally execute first."""
        self._hang = after_apply
        if self._released.is_set():
            self._released = asyncio.Event()

    def fail(
        self,
        status: int = 500,
        count: int | None = None,
        *,
        fail_after_apply: bool = False,
        headers: dict[str, str] | None = None,
        skip: int = 0,
    ) -> None:
        """Answer ``status`` to the next ``count`` requests (``None``: until ``restore()``),
        after letting ``skip`` requests through untouched."""
        self._fail = _Fail(status, count, fail_after_apply, dict(headers or {}), skip)

    def throttle(self, count: int | None = None, *, retry_after: float | None = 1.0) -> None:
        """Answer "throttled" to the next ``count`` requests (``None``: until ``restore()``)."""
        self._throttle_on = True
        self._throttle_remaining = count
        self._throttle_retry_after = retry_after

    # -- state ----------------------------------------------------------------------------

    @property
    def refused(self) -> bool:
        return self._refused

    @property
    def hanging(self) -> bool:
        return self._hang is not None

    @property
    def hung_total(self) -> int:
        """How many requests have been held by ``hang()`` so far."""
        return self._hung_total

    async def wait_hung(self, count: int = 1) -> None:
        """Wait until ``count`` requests in total have been held by ``hang()`` (executed
        first with ``after_apply``): the moment a client is left without an answer."""
        while self._hung_total < count:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hung_waiters.append(fut)
            await fut

    def _note_hung(self) -> None:
        self._hung_total += 1
        waiters, self._hung_waiters = self._hung_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _release_hangs(self) -> None:
        self._hang = None
        self._released.set()

    def _take_fail(self) -> _Fail | None:
        f = self._fail
        if f is None:
            return None
        if f.skip > 0:
            f.skip -= 1
            return None
        if f.remaining is not None:
            f.remaining -= 1
            if f.remaining <= 0:
                self._fail = None
        return f

    def _take_throttle(self) -> bool:
        if not self._throttle_on:
            return False
        if self._throttle_remaining is not None:
            self._throttle_remaining -= 1
            if self._throttle_remaining <= 0:
                self._throttle_on = False
        return True


class FakeServer:
    """Base of the fakes: lifecycle on 127.0.0.1, request log, fault middleware.

    Subclasses implement :meth:`_setup_routes`, :meth:`fault_response` and
    :meth:`throttled_response`, and may add middlewares with :meth:`_middlewares`.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.faults = FaultController(self)
        self.requests: list[RecordedRequest] = []
        self.stats = Stats()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None

    # -- to implement ---------------------------------------------------------------------

    def _setup_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _middlewares(self) -> list[Any]:
        return []

    def fault_response(self, status: int) -> web.Response:
        """The service's own error answer for an injected ``status``."""
        raise NotImplementedError

    def throttled_response(self, retry_after: float | None) -> web.Response:
        """The service's own "throttled" answer (for ``faults.throttle()``)."""
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    async def start(self) -> str:
        """Start serving on 127.0.0.1 (ephemeral port); returns the base URL."""
        if self._runner is not None:
            return self.base_url
        app = web.Application(middlewares=[self._fault_middleware, *self._middlewares()])
        self._setup_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self._runner = runner
        await self._listen()
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; hung requests are released and dropped."""
        self.faults._release_hangs()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _listen(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, LOOPBACK, self._port or 0, reuse_address=True)
        await site.start()
        self._site = site
        if self._port is None:
            self._port = int(self._runner.addresses[0][1])

    async def _stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()
                if conn.transport is not None:
                    conn.transport.close()

    # -- middleware -----------------------------------------------------------------------

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without an answer."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)

    @web.middleware
    async def _fault_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        body = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers=dict(request.headers),
            body=body,
            received_at=time.monotonic(),
        )
        self.requests.append(rec)
        self.stats.requests += 1
        self.stats.by_path[f"{request.method} {request.path}"] += 1
        faults = self.faults
        if faults._latency > 0:
            await asyncio.sleep(faults._latency)

        hang_after = faults._hang
        if hang_after is False:  # hang before executing
            rec.fault = "hang"
            self.stats.faulted += 1
            released = faults._released
            faults._note_hung()
            await released.wait()
            return self._drop(request)

        fail = faults._take_fail()
        if fail is not None and not fail.after_apply:
            rec.fault = "fail"
            self.stats.faulted += 1
            resp = self.fault_response(fail.status)
            resp.headers.update(fail.headers)
            rec.status = resp.status
            return resp

        if faults._take_throttle():
            rec.fault = "throttle"
            self.stats.throttled += 1
            resp = self.throttled_response(faults._throttle_retry_after)
            rec.status = resp.status
            return resp

        if fail is not None:
            request[LOST_ANSWER_KEY] = fail.status
        resp_or_stream = await handler(request)

        if fail is not None:
            rec.fault = "fail_after_apply"
            self.stats.faulted += 1
            resp = self.fault_response(fail.status)
            resp.headers.update(fail.headers)
            rec.status = resp.status
            return resp
        if hang_after is True:
            rec.fault = "hang_after_apply"
            self.stats.faulted += 1
            released = faults._released
            faults._note_hung()
            await released.wait()
            return self._drop(request)
        rec.status = resp_or_stream.status
        rec.answered_at = time.monotonic()
        return resp_or_stream


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer with a compact, deterministic body."""
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def canonical(value: Any) -> str:
    """A canonical JSON text of ``value`` (for comparing request parameters)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


__all__ = [
    "LOOPBACK",
    "LOST_ANSWER_KEY",
    "Clock",
    "FakeServer",
    "FaultController",
    "RecordedRequest",
    "Stats",
    "TokenBucket",
    "canonical",
    "json_response",
]
