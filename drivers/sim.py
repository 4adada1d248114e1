"""The simulated terminal inside the process: the embedded default.

Rules, all configurable: the customer takes ``delay`` seconds; amounts whose last two
digits are ``decline_suffix`` (default 13) are declined; those ending in
``unknown_suffix`` (default none) leave the terminal silent (outcome unknown).
A running transaction can be cancelled; refunds work like sales. A customer slower than
the lane's ``customer_timeout`` (``delay`` above it) ends ``canceled`` at the timeout.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from drivers.base import (
    Capabilities,
    Outcome,
    Terminal,
    TerminalState,
    TerminalStatus,
    TerminalUnavailable,
    TransactionRequest,
    TransactionResult,
)
from sync.core.clock import Clock, SystemClock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SimSettings:
    delay: float = 1.0
    decline_suffix: int | None = 13
    unknown_suffix: int | None = None
    brand: str = "VISA"
    last4: str = "4242"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SimSettings:
        """Build from a ``[[terminals]]`` table; raises ``ValueError(key, message)``."""
        base = cls()
        allowed = {"delay", "decline_suffix", "unknown_suffix", "brand", "last4"}
        for key in options:
            if key not in allowed:
                raise ValueError(key, "unknown key for a sim terminal")
        delay = options.get("delay", base.delay)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError("delay", "must be a number of seconds, 0 or more")
        suffixes: dict[str, int | None] = {}
        for key in ("decline_suffix", "unknown_suffix"):
            value = options.get(key, getattr(base, key))
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= 99):
                raise ValueError(key, "must be a whole number from 0 to 99")
            suffixes[key] = value
        last4 = str(options.get("last4", base.last4))
        if not (len(last4) == 4 and last4.isdigit()):
            raise ValueError("last4", "must be four digits")
        return cls(delay=float(delay), decline_suffix=suffixes["decline_suffix"],
                   unknown_suffix=suffixes["unknown_suffix"],
                   brand=str(options.get("brand", base.brand)), last4=last4)


class SimTerminal(Terminal):
    kind = "sim"

    def __init__(self, terminal_id: str, settings: SimSettings | None = None,
                 clock: Clock | None = None, *, customer_timeout: float | None = None) -> None:
        super().__init__(terminal_id)
        self.settings = settings or SimSettings()
        self.customer_timeout = customer_timeout
        self._clock = clock or SystemClock()
        self._cancel: asyncio.Event | None = None
        self._open = False
        self._seq = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(refund=True, cancel=True, recover=False)

    async def open(self) -> None:
        self._open = True

    async def status(self) -> TerminalStatus:
        if not self._open:
            return TerminalStatus(TerminalState.OFFLINE, "closed")
        if self._cancel is not None:
            return TerminalStatus(TerminalState.BUSY)
        return TerminalStatus(TerminalState.ONLINE)

    async def collect(self, request: TransactionRequest) -> TransactionResult:
        return await self._run(request)

    async def refund(self, request: TransactionRequest) -> TransactionResult:
        return await self._run(request)

    async def _run(self, request: TransactionRequest) -> TransactionResult:
        if not self._open:
            raise TerminalUnavailable(f"terminal {self.terminal_id} is closed")
        cancel = asyncio.Event()
        self._cancel = cancel
        try:
            waiter = asyncio.ensure_future(cancel.wait())
            timed_out = (self.customer_timeout is not None
                         and self.settings.delay > self.customer_timeout)
            sleeper = asyncio.ensure_future(self._clock.sleep(
                self.customer_timeout if timed_out and self.customer_timeout is not None
                else self.settings.delay))
            done, pending = await asyncio.wait({waiter, sleeper},
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if waiter in done:
                return self._result(request, Outcome.CANCELED, "canceled at the register")
            if timed_out:
                return self._result(request, Outcome.CANCELED,
                                    f"the customer did not pay within {self.customer_timeout:g} s")
            suffix = request.amount % 100
            if self.settings.unknown_suffix is not None and suffix == self.settings.unknown_suffix:
                return self._result(request, Outcome.UNKNOWN, "terminal went silent")
            if self.settings.decline_suffix is not None and suffix == self.settings.decline_suffix:
                return self._result(request, Outcome.DECLINED, "declined by the card issuer")
            return self._result(request, Outcome.APPROVED, None)
        finally:
            self._cancel = None

    def _result(self, request: TransactionRequest, outcome: Outcome,
                detail: str | None) -> TransactionResult:
        self._seq += 1
        approved = outcome is Outcome.APPROVED
        return TransactionResult(
            outcome=outcome,
            amount=request.amount,
            currency=request.currency,
            brand=self.settings.brand if approved else None,
            last4=self.settings.last4 if outcome in (Outcome.APPROVED, Outcome.DECLINED)
            else None,
            auth_code=f"{self._seq:06d}" if approved else None,
            reference=f"SIM{self._seq:08d}",
            raw_status={Outcome.APPROVED: "00", Outcome.DECLINED: "05"}.get(outcome),
            receipt=None,
            detail=detail,
        )

    async def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    async def close(self) -> None:
        await self.cancel()
        self._open = False
