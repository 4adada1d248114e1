"""The cloud lanes' common shape: one run in the slot, followed to its ending.

Each kind's ``prepare``/``start`` put its run in the slot (its processor's calls), its
poller follows it, and its ``status``/``recover`` read the processor back.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Generic, Protocol, TypeVar

from drivers.base import Capabilities, Terminal, TransactionRequest, TransactionResult
from drivers.cloud.poll import CloudSettings
from sync.core.clock import Clock


class LaneRun(Protocol):
    payment_id: str
    cancel: asyncio.Event  # the register's cancel: wakes the poller, which stops it


RunT = TypeVar("RunT", bound=LaneRun)


class CloudLane(Terminal, Generic[RunT]):
    def __init__(self, terminal_id: str, settings: CloudSettings, clock: Clock) -> None:
        super().__init__(terminal_id)
        self.settings = settings
        self._clock = clock
        self._run: RunT | None = None  # from prepare/start until collect ends

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(refund=False, cancel=True, recover=True, manual_capture=True)

    async def open(self) -> None:
        return None

    async def collect(self, request: TransactionRequest) -> TransactionResult:
        run = self._run
        if run is None or run.payment_id != request.payment_id:
            await self._hand_over(request)
            run = self._run
        assert run is not None
        try:
            return await self._follow(run)
        finally:
            self._run = None

    async def _hand_over(self, request: TransactionRequest) -> None:
        """``collect`` with no run for this payment: make one first."""
        await self.prepare(request)
        await self.start(request)

    @abc.abstractmethod
    async def _follow(self, run: RunT) -> TransactionResult:
        """Follow the run until the processor says how it ended."""

    async def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel.set()

    async def close(self) -> None:
        await self.cancel()
