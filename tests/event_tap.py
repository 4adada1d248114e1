"""``GET /v1/events`` read in the background by a test, as a register or a status page would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.helpers import Api

Pred = Callable[[str, dict[str, Any]], bool]


class EventTap:
    """The events of ``kinds`` since the stream was subscribed: ``await tap.wait_for(pred)``,
    ``tap.count(pred)``."""

    def __init__(self, api: Api, kinds: str) -> None:
        self._api = api
        self._kinds = kinds
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._resp: aiohttp.ClientResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventTap:
        self._resp = await self._api.session.get(
            f"{self._api.base}/v1/events?kinds={self._kinds}", headers=self._api.headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
        assert self._resp.status == 200
        first = await asyncio.wait_for(self._resp.content.readline(), 5.0)
        assert first.startswith(b":"), first  # subscribed: nothing after this is missed
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._resp is not None:
            self._resp.close()

    async def _read(self) -> None:
        assert self._resp is not None
        kind = ""
        async for raw in self._resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                self.events.append((kind, json.loads(line[len("data: "):])))

    def count(self, pred: Pred) -> int:
        return sum(1 for kind, data in self.events if pred(kind, data))

    async def wait_for(self, pred: Pred, timeout: float = 20.0) -> dict[str, Any]:
        """The first event ``pred`` accepts, waiting up to ``timeout`` seconds for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = next((data for kind, data in self.events if pred(kind, data)), None)
            if found is not None:
                return found
            if loop.time() > deadline:
                raise AssertionError(f"no such event on /v1/events?kinds={self._kinds}"
                                     f" within {timeout:g} s; seen: {self.events[-5:]}")
            await asyncio.sleep(0.02)


def breaker_opened(destination: str) -> Pred:
    """An event saying ``destination``'s breaker opened."""
    return lambda kind, data: (data.get("event") == "breaker" and data.get("to") == "open"
                               and data.get("destination") == destination)
