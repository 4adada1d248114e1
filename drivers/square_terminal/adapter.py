"""The ``square_terminal`` lane: a Terminal checkout sent to one Square Terminal.

Availability, as Square documents it: the lane sends a ``PING`` terminal action now and then
(at most every ``ping_interval`` seconds while it answers, at once after a checkout the
Terminal never showed) and reads it back. A PING the Terminal answered (``COMPLETED``) says
online; one Square canceled at its deadline (``TIMED_OUT``) says offline. Nothing else
turns the lane offline: a read that cannot say (a PING still pending, Square unreachable,
a refusal) leaves the lane as it was, and the checkout decides.

``prepare`` asks Square nothing; it refuses a sale (ERR-3003, nothing made) only while the
last PING went unanswered or the last checkout was never shown, until a PING is answered.
``start`` (before the register is answered) creates the checkout under the payment's key
and returns its id, which the daemon stores with the payment. Square refusing the create
refuses the sale as asked (its amount in a currency the seller does not take, say:
:class:`SaleRefused`, ERR-3010), never the Terminal: Square accepts a checkout for an
offline Terminal and leaves it ``PENDING``, and none of the codes its OpenAPI lists for the
create names a device. An unreachable Square is :class:`TerminalUnavailable`. Nothing was
made either way. A lost answer is not a refusal: ``collect`` asks again under the same key,
which Square answers with the same checkout.
``collect``: :class:`~drivers.square_terminal.poller.CheckoutPoller`: an offline Terminal
shows as a checkout still ``PENDING`` at the customer timeout, which is then canceled and
ends ``canceled`` once Square confirms it (the lane is then held offline until a PING is
answered). ``cancel``: wakes the poller, which cancels the checkout.

``recover`` (after a restart) reads the checkout by its stored id, or finds it among the
device's checkouts by the note that names the payment; it never creates a checkout (a
create re-sent after a stop could put a real checkout in front of a customer when the first
one never went out, or make a fresh one once Square forgot the key). One still running is
canceled and ends as Square then says; none found, or Square unreachable: ``None``
(``unknown``, for the processor's later answer or a manager).
"""

from __future__ import annotations

import logging
from datetime import datetime

from drivers.base import (
    InterruptedTransaction,
    Outcome,
    SaleRefused,
    TerminalState,
    TerminalStatus,
    TerminalUnavailable,
    TransactionRequest,
    TransactionResult,
)
from drivers.cloud.lane import CloudLane
from drivers.cloud.poll import CloudSettings
from drivers.square_terminal.poller import LINK_ERRORS, CheckoutPoller, Run
from sync.core.clock import Clock
from sync.core.errors import OutcomeUnknown, SyncError
from sync.square_api.terminal import ActionView, CheckoutRefused, SquareTerminalClient

log = logging.getLogger(__name__)


class SquareTerminal(CloudLane[Run]):
    kind = "square_terminal"
    processor = "square"

    def __init__(self, terminal_id: str, settings: CloudSettings, client: SquareTerminalClient,
                 clock: Clock) -> None:
        super().__init__(terminal_id, settings, clock)
        self.client = client
        self._deadline = settings.customer_timeout + 30
        self._poller = CheckoutPoller(client, settings, clock, self._deadline,
                                      on_never_shown=self._never_shown)
        self._answering: bool | None = None
        """What the last settled PING said (None: nothing yet, the checkout decides)."""
        self._why_offline = ""
        self._ping: ActionView | None = None
        self._pinged_at: float | None = None

    # -- availability ---------------------------------------------------------------------

    async def status(self) -> TerminalStatus:
        if self._run is not None:
            return TerminalStatus(TerminalState.BUSY)
        try:
            await self._check_ping()
        except (SyncError, *LINK_ERRORS) as exc:  # cannot say: the lane stays as it was
            log.info("square terminal %s: PING not read (%s)", self.terminal_id, exc)
        if self._answering is False:
            return TerminalStatus(TerminalState.OFFLINE, self._why_offline)
        return TerminalStatus(TerminalState.ONLINE, None if self._answering else
                              "no answer to a PING yet: the checkout will tell")

    async def _check_ping(self) -> None:
        """Read the PING in flight; send the next one when it is due."""
        if self._ping is not None and self._ping.status not in ("COMPLETED", "CANCELED"):
            self._ping = await self.client.action(self._ping.id)
            self._settle_ping(self._ping)
        if self._ping is None or self._ping.status in ("COMPLETED", "CANCELED"):
            now = self._clock.monotonic()
            due = self._pinged_at is None or self._answering is not True or \
                now - self._pinged_at >= self.settings.ping_interval
            if due:
                self._pinged_at = now
                self._ping = await self.client.ping(self.settings.device)
                self._settle_ping(self._ping)

    def _settle_ping(self, ping: ActionView) -> None:
        if ping.status == "COMPLETED":
            if self._answering is False:
                log.info("square terminal %s answers a PING again", self.terminal_id)
            self._answering = True
        elif ping.status == "CANCELED" and ping.cancel_reason == "TIMED_OUT":
            self._answering = False
            self._why_offline = (f"Square Terminal {self.settings.device} did not answer a"
                                 " PING in time: check its power and network")

    def _never_shown(self, why: str) -> None:
        """A checkout stayed PENDING to the customer timeout: offline until a PING says."""
        self._answering = False
        self._why_offline = why
        self._ping = None

    # -- a sale ---------------------------------------------------------------------------

    async def prepare(self, request: TransactionRequest) -> str | None:
        """Square's own signs that the Terminal is off (a PING it did not answer, a checkout
        it never showed) refuse the sale before anything is made; nothing else does."""
        if self._answering is False:
            raise TerminalUnavailable(self._why_offline)
        return None

    async def start(self, request: TransactionRequest) -> str | None:
        """Create the checkout under the payment's key: the Terminal shows it."""
        run = Run(request.payment_id, None, request.amount, request.currency,
                  reference=request.reference, manual_capture=request.manual_capture)
        try:
            checkout = await self.client.create(
                request.payment_id, self.settings.device, request.amount, request.currency,
                reference=request.reference, manual_capture=request.manual_capture,
                deadline_seconds=self._deadline)
        except CheckoutRefused as exc:  # the sale as asked: Square's codes and words
            raise SaleRefused(exc.message) from None  # "… (CODE)" already
        except OutcomeUnknown:
            self._run = run  # collect asks again under the same key
            return None
        except (SyncError, *LINK_ERRORS) as exc:
            raise TerminalUnavailable(f"Square unreachable: {exc}") from None
        run.checkout_id = checkout.id
        self._run = run
        return checkout.id

    async def _hand_over(self, request: TransactionRequest) -> None:
        """``start`` alone: ``prepare`` (refused while the Terminal is held offline) is not
        asked here."""
        await self.start(request)

    async def _follow(self, run: Run) -> TransactionResult:
        return await self._poller.follow(run)

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        checkout_id = interrupted.extra.get("processor_ref") or None
        if checkout_id is None:
            try:
                found = await self.client.find(self.settings.device, interrupted.payment_id,
                                               datetime.fromisoformat(interrupted.started_at))
            except (SyncError, *LINK_ERRORS) as exc:
                log.warning("payment %s: Square's checkouts could not be searched (%s)",
                            interrupted.payment_id, exc)
                return None
            if found is None:
                log.warning("payment %s: no checkout names it at Square; it stays unknown",
                            interrupted.payment_id)
                return None
            checkout_id = found.id
        run = Run(interrupted.payment_id, checkout_id, interrupted.amount,
                  interrupted.currency, reference=interrupted.extra.get("reference"),
                  manual_capture=interrupted.extra.get("capture") == "manual",
                  cancel_why="the daemon stopped during the payment", may_create=False)
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
