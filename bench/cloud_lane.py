"""What the daemon adds to a card payment on a cloud lane (Stripe reader, Square Terminal).

Run through ``bench/terminal.py --lane stripe_reader|square_terminal``. A real ``edged run``
process drives one cloud lane against the loopback fake of Stripe (or Square), which plays
the customer too: the customer pays the moment the reader gets the PaymentIntent (or the
Terminal gets the checkout), so no polling pause is ever needed and every millisecond
beyond the fake's own is the daemon's. This process plays the register. The fake runs in a
process of its own, as the processor and the register run on machines of their own: on a
thread of this process it shared one interpreter lock with the register, and the
register's reading of the 202 held back the fake's reading of the daemon's next request,
a wait counted as the daemon's (0.45 ms at p50, bench/README.md). The fake answers each
request ``--latency`` seconds late (a processor's round trip). All timestamps are one
``time.monotonic()``:

    t0                      the register sends POST /v1/payments
    fake time               Σ over the payment's requests (answer ready - request read)
    t1                      the register holds the final state (the long-poll answered)

Sales are paced (``--pace``, default 0.2 s apart for Stripe, 0.5 s for Square) so that the
daemon's own rate limiter for the processor (Stripe 25 calls/s, Square 10 calls/s) never
holds a call back: unpaced, back-to-back sales exceed it and the limiter's waits (the
daemon obeying the processor's limits, as designed) would be counted as overhead.

The floor (``bench/cloud_floor.py``) runs beside the daemon, against the same fake, and the
two take turns sale by sale, so that a noisy spell of the box falls on both alike (run one
after the other, a spell in one half showed as the daemon's tail or the floor's).

Printed, p50/p99 over ``--runs`` sales each: the daemon's overhead ``(t1 - t0) - fake time``
(target p99 < 10 ms, issue 22), the end-to-end time, the same overhead through the floor
and the daemon's ratio to it, and the processor calls per payment (the idle heartbeat is set
to an hour so that it never counts).
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from bench.floor_app import running
from edged.store import secrets
from tests.daemon_process import UNLIMITED_API, DaemonProcess
from tests.fakes.base import FakeServer
from tests.fakes.square import FakeSquare
from tests.fakes.stripe import FakeStripe

T = TypeVar("T")
READER = "tmr_BenchReader"
DEVICE = "BENCH0DEVICE01"


class PayingStripe(FakeStripe):
    """The customer taps the moment the reader is handed a PaymentIntent."""

    async def _h_reader_process(self, request: web.Request) -> web.Response:
        resp = await super()._h_reader_process(request)
        reader = request.match_info["id"]
        if resp.status == 200 and self.readers[reader]["action"]["status"] == "in_progress":
            self.present_payment_method(reader)
        return resp


class PayingSquare(FakeSquare):
    """The customer pays the moment the Terminal shows the checkout."""

    async def _h_checkout_create(self, request: web.Request) -> web.Response:
        resp = await super()._h_checkout_create(request)
        for checkout in self.device_checkouts(DEVICE):
            if checkout["status"] == "PENDING":
                self.checkout_complete(checkout["id"])
        return resp


class LoopThread:
    """An asyncio loop on a thread, to serve the fake while the register blocks."""

    def __init__(self) -> None:
        try:  # the fake's own HTTP work is not the daemon's: keep it as quick as it can be
            import uvloop  # noqa: PLC0415
            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        async def wrap() -> T:
            return await factory()
        fut: Future[T] = asyncio.run_coroutine_threadsafe(wrap(), self.loop)
        return fut.result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FakeProcess:
    """The paying fake of ``lane`` in a process of its own, answering ``latency`` late; asked
    for its requests' times (one ``time.monotonic()`` clock for every process here)."""

    def __init__(self, lane: str, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_fake, args=(child, lane, latency),
                                 daemon=True, name=f"{lane}-fake")
        self._proc.start()
        self.base_url: str = self._conn.recv()

    def count(self) -> int:
        """How many requests it has received."""
        self._conn.send(-1)
        count: int = self._conn.recv()
        return count

    def since(self, index: int) -> list[tuple[float, float | None]]:
        """(received at, answered at) of each request from the index-th on."""
        self._conn.send(index)
        times: list[tuple[float, float | None]] = self._conn.recv()
        return times

    def stop(self) -> None:
        self._conn.send(None)
        self._proc.join(10)


def _serve_fake(conn: Connection, lane: str, latency: float) -> None:
    loops = LoopThread()
    fake: FakeServer
    if lane == "stripe_reader":
        stripe = PayingStripe(rate=None)
        fake = stripe
    else:
        square = PayingSquare(rate=None)
        fake = square
    loops.run(fake.start)
    try:
        if isinstance(fake, PayingStripe):
            fake.add_reader(READER)
        elif isinstance(fake, PayingSquare):
            fake.add_device(DEVICE)
        fake.faults.slow(latency)
        conn.send(fake.base_url)
        while (index := conn.recv()) is not None:
            if index < 0:
                conn.send(len(fake.requests))
            else:
                conn.send([(r.received_at, r.answered_at) for r in fake.requests[index:]])
    finally:
        loops.run(fake.stop)
        loops.stop()


@dataclass(frozen=True, slots=True)
class CloudRun:
    total: float
    fake: float
    overhead: float
    calls: int


def write_config(path: Path, lane: str, fake: FakeProcess) -> Path:
    processor = "stripe" if lane == "stripe_reader" else "square"
    device = f'reader_id = "{READER}"' if lane == "stripe_reader" else f'device_id = "{DEVICE}"'
    lines = ["[api]", *(f"{k} = {v!r}" for k, v in UNLIMITED_API.items()), "",
             f"[{processor}]", f'base_url = "{fake.base_url}"', "",
             "[[terminals]]", 'id = "lane-1"', f'kind = "{lane}"', device,
             "customer_timeout = 30.0", "heartbeat_seconds = 3600.0",
             "poll_interval = 0.05", "poll_max = 0.5"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sale(register: Any, fake: FakeProcess, n: int) -> CloudRun:
    seen = fake.count()
    t0 = time.monotonic()
    status, started = register.call("POST", "/v1/payments",
                                    {"amount": 1000 + n, "currency": "EUR",
                                     "method": "card_present", "terminal": "lane-1"},
                                    key=f"bench-cloud-{n}")
    if status != 202:
        raise SystemExit(f"sale {n}: {status} {started}")
    status, done = register.call("GET", f"/v1/payments/{started['id']}?wait=30")
    t1 = time.monotonic()
    if done.get("state") != "approved":
        raise SystemExit(f"sale {n}: ended {done.get('state')}: {done.get('failure')}")
    return _measured(fake, seen, t0, t1, n)


def floor_sale(register: Any, fake: FakeProcess, n: int) -> CloudRun:
    """One payment through ``bench/cloud_floor.py``: one POST answered with the end."""
    seen = fake.count()
    t0 = time.monotonic()
    status, done = register.call("POST", "/pay", {"amount": 1000 + n, "currency": "EUR"})
    t1 = time.monotonic()
    if status != 200 or done.get("state") not in ("succeeded", "COMPLETED"):
        raise SystemExit(f"floor sale {n}: {status} {done}")
    return _measured(fake, seen, t0, t1, n)


def _measured(fake: FakeProcess, seen: int, t0: float, t1: float, n: int) -> CloudRun:
    mine = [(received, answered) for received, answered in fake.since(seen)
            if t0 <= received <= t1]
    if any(answered is None for _, answered in mine):
        raise SystemExit(f"sale {n}: a request to the fake was not answered")
    fake_time = sum((answered or 0.0) - received for received, answered in mine)
    return CloudRun(total=t1 - t0, fake=fake_time, overhead=(t1 - t0) - fake_time,
                    calls=len(mine))


def _alternating(runs: int, warmup: int, gap: float, daemon: Callable[[int], CloudRun],
                 floor: Callable[[int], CloudRun]) -> tuple[list[CloudRun], list[CloudRun]]:
    """The daemon's sales and the floor's, one of each in turn (which goes first swaps every
    round), each ``gap`` seconds after the one before: a noisy spell of the box (another
    process, the disk's writeback) falls on both alike, and neither runs while the other
    sells. The first ``warmup`` rounds are dropped."""
    mine: list[CloudRun] = []
    theirs: list[CloudRun] = []
    for n in range(warmup + runs):
        order = ((daemon, mine), (floor, theirs)) if n % 2 == 0 \
            else ((floor, theirs), (daemon, mine))
        for one, results in order:
            started = time.monotonic()
            result = one(n)
            if n >= warmup:
                results.append(result)
            time.sleep(max(0.0, gap - (time.monotonic() - started)))
    return mine, theirs


def run_cloud(lane: str, runs: int, warmup: int, latency: float, pace: float | None,
              register_factory: Callable[[str, int, str], Any],
              wait_online: Callable[[Any], None]) -> tuple[list[CloudRun], list[CloudRun]]:
    """The daemon's sales and the floor's (``bench/cloud_floor.py``), alternating, on one
    fake: (the daemon's, the floor's)."""
    fake = FakeProcess(lane, latency)
    device = READER if lane == "stripe_reader" else DEVICE
    try:
        with tempfile.TemporaryDirectory(prefix="edged-bench-cloud-") as tmp:
            base = Path(tmp)
            data = base / "data"
            data.mkdir()
            name, value = ("stripe.key", "sk_test_bench") if lane == "stripe_reader" \
                else ("square.token", "sq-bench")
            secrets.cli_set(data, name, io.StringIO(value + "\n"), env={})
            config = write_config(base / "edged.toml", lane, fake)
            with DaemonProcess(data, config=config) as daemon, \
                    running("bench.cloud_floor", "--lane", lane, "--fake", fake.base_url,
                            "--device", device, "--db", str(base / "floor.db")) as port:
                token = daemon.create_token("bench-register")
                assert daemon.port is not None
                register = register_factory(daemon.host, daemon.port, token)
                bare = register_factory("127.0.0.1", port, "floor")
                gap = pace if pace is not None else (0.2 if lane == "stripe_reader" else 0.5)
                try:
                    wait_online(register)
                    return _alternating(runs, warmup, gap,
                                        lambda n: sale(register, fake, n),
                                        lambda n: floor_sale(bare, fake, n + 10_000))
                finally:
                    register.close()
                    bare.close()
    finally:
        fake.stop()
