"""The ``square_terminal`` lane: a Terminal checkout sent to one Square Terminal.

``start`` (before the register is answered): read the device's status at Square (Square
accepts a checkout for a device that is off and lets it wait until its deadline, so its
status category decides: ``OFFLINE`` or a device Square does not know (``NOT_FOUND``) →
:class:`TerminalUnavailable`, ERR-3003), then create the checkout under the payment's key.
``collect``: :class:`~drivers.square_terminal.poller.CheckoutPoller`. ``cancel``: wakes the
poller, which cancels the checkout. ``recover``: read the checkout (by its stored id, or by
asking the create again under the same key: Square answers the first answer) before
anything else; one still running is cancelled and ends as Square then says.
"""

from __future__ import annotations

import logging

from drivers.base import (
    Capabilities,
    InterruptedTransaction,
    Outcome,
    Terminal,
    TerminalState,
    TerminalStatus,
    TerminalUnavailable,
    TransactionRequest,
    TransactionResult,
)
from drivers.cloud_poll import CloudSettings
from drivers.square_terminal.poller import LINK_ERRORS, CheckoutPoller, Run
from sync.clock import Clock
from sync.errors import OutcomeUnknown, SyncError
from sync.square_terminal import CheckoutRefused, SquareTerminalClient

log = logging.getLogger(__name__)

#: Square's status categories of a device that cannot take a checkout now.
OFFLINE_CATEGORIES = ("OFFLINE",)
#: Square's error codes for a device it does not know for this seller.
UNKNOWN_DEVICE_CODES = ("NOT_FOUND", "BAD_REQUEST")


class SquareTerminal(Terminal):
    kind = "square_terminal"
    processor = "square"

    def __init__(self, terminal_id: str, settings: CloudSettings, client: SquareTerminalClient,
                 clock: Clock) -> None:
        super().__init__(terminal_id)
        self.settings = settings
        self.client = client
        self._clock = clock
        self._deadline = settings.customer_timeout + 30
        self._poller = CheckoutPoller(client, settings, clock, self._deadline)
        self._run: Run | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(refund=False, cancel=True, recover=True, manual_capture=True)

    async def open(self) -> None:
        return None

    async def status(self) -> TerminalStatus:
        try:
            category = await self.client.device(self.settings.device)
        except CheckoutRefused as exc:
            return TerminalStatus(TerminalState.OFFLINE, f"Square: {exc}")
        except (SyncError, *LINK_ERRORS) as exc:
            return TerminalStatus(TerminalState.OFFLINE, f"Square unreachable ({exc})")
        if category in OFFLINE_CATEGORIES:
            return TerminalStatus(TerminalState.OFFLINE, f"Square says device"
                                  f" {self.settings.device} is {category}")
        if self._run is not None:
            return TerminalStatus(TerminalState.BUSY)
        return TerminalStatus(TerminalState.ONLINE, None if category in (None, "AVAILABLE")
                              else f"Square says {category}")

    async def prepare(self, request: TransactionRequest) -> str | None:
        """Ask Square about the device: an offline one is refused before anything is made."""
        try:
            category = await self.client.device(self.settings.device)
        except CheckoutRefused as exc:
            if set(exc.codes) & set(UNKNOWN_DEVICE_CODES):
                raise TerminalUnavailable(f"Square does not know device {self.settings.device}"
                                          f" ({'/'.join(exc.codes)})") from None
            raise TerminalUnavailable(f"Square: {exc}") from None
        except (SyncError, *LINK_ERRORS) as exc:
            raise TerminalUnavailable(f"Square unreachable: {exc}") from None
        if category in OFFLINE_CATEGORIES:
            raise TerminalUnavailable(f"device {self.settings.device} is {category} at Square")
        return None

    async def start(self, request: TransactionRequest) -> None:
        """Create the checkout under the payment's key: the Terminal shows it."""
        run = Run(request.payment_id, None, request.amount, request.currency,
                  reference=request.reference, manual_capture=request.manual_capture)
        try:
            checkout = await self.client.create(
                request.payment_id, self.settings.device, request.amount, request.currency,
                reference=request.reference, manual_capture=request.manual_capture,
                deadline_seconds=self._deadline)
        except CheckoutRefused as exc:
            raise TerminalUnavailable(f"Square refused the checkout: {exc}") from None
        except OutcomeUnknown:
            self._run = run  # collect asks again under the same key
            return
        except (SyncError, *LINK_ERRORS) as exc:
            raise TerminalUnavailable(f"Square unreachable: {exc}") from None
        run.checkout_id = checkout.id
        self._run = run

    async def collect(self, request: TransactionRequest) -> TransactionResult:
        run = self._run
        if run is None or run.payment_id != request.payment_id:
            await self.start(request)
            run = self._run
        assert run is not None
        try:
            return await self._poller.follow(run)
        finally:
            self._run = None

    async def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel.set()

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        run = Run(interrupted.payment_id, interrupted.extra.get("processor_ref") or None,
                  interrupted.amount, interrupted.currency,
                  reference=interrupted.extra.get("reference"),
                  manual_capture=interrupted.extra.get("capture") == "manual",
                  cancel_why="the daemon stopped during the payment")
        run.cancel.set()
        settings = CloudSettings(self.settings.device, customer_timeout=0.0,
                                 poll_interval=self.settings.poll_interval,
                                 poll_max=self.settings.poll_max,
                                 link_grace=min(self.settings.link_grace, 10.0))
        result = await CheckoutPoller(self.client, settings, self._clock,
                                      self._deadline).follow(run)
        if result.outcome is Outcome.UNKNOWN:
            log.warning("payment %s: Square cannot say how it ended (%s)", run.payment_id,
                        result.detail)
            return None
        return result

    async def close(self) -> None:
        await self.cancel()
