"""The ``stripe_reader`` lane: a PaymentIntent for ``card_present`` handed to one reader.

``prepare`` creates the PaymentIntent under the payment's key while the daemon writes the
payment (nothing can be charged yet); Stripe refusing the create refuses the sale as asked
(an amount below its minimum, say: :class:`SaleRefused`, ERR-3010), never the reader.
``start`` (written, before the register is answered) hands it to the reader with
``process_payment_intent``. Only two refusals mean nothing was
sent: ``terminal_reader_offline`` → :class:`TerminalUnavailable` (ERR-3003) and
``terminal_reader_busy`` → :class:`TerminalBusy` (ERR-3002); the PaymentIntent is then
cancelled. Any other refusal (a reader timeout, say) may leave the payment on the reader:
the PaymentIntent is read back, and stopped, before anything is said: ``failed`` only once
Stripe shows it canceled (it cannot be charged), otherwise the payment ends as Stripe shows
it. A lost answer is not a refusal: ``collect`` finds out.

``collect``: :class:`~drivers.stripe_reader.poller.ReaderPoller` until the final state.
``cancel``: wakes the poller, which stops the action and cancels the PaymentIntent.
A declined payment's PaymentIntent is cancelled beside the decline's recording, the
register's answer not waiting for it (Stripe keeps it open for another attempt, which edged
never makes).
``recover``: after a restart, read the PaymentIntent (by its id, else by its metadata, else
the one the reader's action names, else by Stripe's list of those created since the
payment) before sending anything; a payment still waiting on the reader is stopped and ends
as Stripe then says. Only the list tells that none was made: Stripe's search can lag a
minute behind a create, and the reader's action may since be another's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from drivers.base import (
    InterruptedTransaction,
    Outcome,
    SaleRefused,
    TerminalBusy,
    TerminalState,
    TerminalStatus,
    TerminalUnavailable,
    TransactionRequest,
    TransactionResult,
)
from drivers.cloud.lane import CloudLane
from drivers.cloud.poll import CloudSettings
from drivers.stripe_reader.poller import LINK_ERRORS, ReaderPoller, Run, result_of
from sync.core.clock import Clock
from sync.core.errors import CredentialsRequired, SyncError
from sync.core.errors import OutcomeUnknown as OutcomeLost
from sync.stripe_api.terminal import StripeTerminalClient, TerminalRefused, cancel_key

log = logging.getLogger(__name__)

OFFLINE_CODES = ("terminal_reader_offline",)
BUSY_CODES = ("terminal_reader_busy",)
#: A restart lists the PaymentIntents Stripe created since this many seconds before the
#: payment was stored (the box's clock against Stripe's; the create ran beside the write).
LIST_MARGIN = 600


class StripeReaderTerminal(CloudLane[Run]):
    kind = "stripe_reader"
    processor = "stripe"
    prepare_beside_write = True  # a PaymentIntent no reader has cannot be charged

    def __init__(self, terminal_id: str, settings: CloudSettings,
                 client: StripeTerminalClient, clock: Clock) -> None:
        super().__init__(terminal_id, settings, clock)
        self.client = client
        self._poller = ReaderPoller(client, settings.device, settings, clock)
        self._closing: set[asyncio.Task[None]] = set()  # cancels run in the background

    async def status(self) -> TerminalStatus:
        try:
            reader = await self.client.reader(self.settings.device)
        except CredentialsRequired as exc:
            return TerminalStatus(TerminalState.OFFLINE, str(exc))
        except TerminalRefused as exc:
            return TerminalStatus(TerminalState.OFFLINE, f"Stripe: {exc}")
        except (SyncError, *LINK_ERRORS) as exc:
            return TerminalStatus(TerminalState.OFFLINE, f"Stripe unreachable ({exc})")
        if reader.status != "online":
            return TerminalStatus(TerminalState.OFFLINE, f"reader {reader.id} is {reader.status}"
                                  " at Stripe")
        if self._run is not None or reader.action_status == "in_progress":
            return TerminalStatus(TerminalState.BUSY)
        return TerminalStatus(TerminalState.ONLINE)

    async def prepare(self, request: TransactionRequest) -> str | None:
        """Create the PaymentIntent (no reader has it yet: it cannot be charged)."""
        run = self._poller.run_for(request, None)
        try:
            intent = await self.client.create_intent(request.payment_id, request.amount,
                                                     request.currency,
                                                     manual_capture=request.manual_capture,
                                                     description=request.reference)
        except TerminalRefused as exc:  # the sale as asked: no reader is in a create
            raise SaleRefused(str(exc)) from None  # its code, and Stripe's own words
        except OutcomeLost:
            self._run = run  # the create may have happened: collect finds out
            return None
        except (SyncError, *LINK_ERRORS) as exc:
            raise TerminalUnavailable(f"Stripe unreachable: {exc}") from None
        run.intent_id = intent.id
        self._run = run
        return intent.id

    async def start(self, request: TransactionRequest) -> None:
        """``process_payment_intent``: Stripe's error code says offline or busy."""
        run = self._run
        if run is None or run.payment_id != request.payment_id or run.intent_id is None:
            return  # the create's answer was lost: collect reads back, then hands over
        try:
            await self.client.process(self.settings.device, request.payment_id, run.intent_id)
        except TerminalRefused as exc:
            if exc.code not in OFFLINE_CODES + BUSY_CODES:
                # not "nothing sent": the reader may have the payment (a reader timeout)
                await self._refused_in_doubt(run, exc)
                return
            self._run = None
            await self._abandon(run)
            if exc.code in OFFLINE_CODES:
                raise TerminalUnavailable(f"reader {self.settings.device} is offline"
                                          f" ({exc.code})") from None
            raise TerminalBusy(f"reader {self.settings.device} is busy with another"
                               f" request ({exc.code})") from None
        except OutcomeLost:
            run.handed = True  # the reader may have it: collect reads the action
            return
        except (SyncError, *LINK_ERRORS) as exc:
            self._run = None
            await self._abandon(run)
            raise TerminalUnavailable(f"Stripe unreachable: {exc}") from None
        run.handed = True

    async def _refused_in_doubt(self, run: Run, exc: TerminalRefused) -> None:
        """Stripe refused ``process_payment_intent`` with a code that does not say nothing
        was sent: read the PaymentIntent back before anything is said. Stopped and canceled
        at Stripe (it cannot be charged now): the register is refused, the payment failed.
        Charged, declined or held: that is the payment's ending (``collect`` returns it).
        Stripe unreachable meanwhile: the reader may have it, ``collect`` follows it."""
        assert run.intent_id is not None
        why = f"the reader did not take the payment ({exc.code})"
        run.handed = True  # whatever Stripe said, the reader may have it
        try:
            reader = await self.client.reader(self.settings.device)
            ended = await self._poller.stop(run, why, give_up=False,
                                            reader_is_ours=reader.action_intent
                                            == run.intent_id)
        except (SyncError, *LINK_ERRORS) as lost:
            log.warning("reader %s: %s, and Stripe cannot be asked now (%s): following it",
                        self.settings.device, why, lost)
            return
        if ended.outcome is Outcome.CANCELED:  # canceled at Stripe: nothing can be charged
            self._run = None
            raise TerminalUnavailable(f"Stripe refused to start the reader ({exc}); the"
                                      f" PaymentIntent {run.intent_id} is canceled: nothing"
                                      " was charged") from None
        run.ended = ended

    async def _abandon(self, run: Run) -> None:
        """Cancel a PaymentIntent no reader took (best effort: it cannot be charged)."""
        if run.intent_id is not None:
            await self._cancel_left(run.payment_id, run.intent_id, "unused")

    async def _cancel_left(self, payment_id: str, intent_id: str, what: str) -> None:
        """Best effort: cancel a PaymentIntent edged hands to no reader again."""
        try:
            await self.client.cancel_intent(intent_id, cancel_key(payment_id))
        except TerminalRefused as exc:  # not open any more: it says what it is
            log.error("payment %s: its %s PaymentIntent %s cannot be cancelled (%s): compare"
                      " it with Stripe's dashboard", payment_id, what, intent_id, exc)
        except (SyncError, *LINK_ERRORS) as exc:
            log.warning("payment %s: its %s PaymentIntent %s stays open at Stripe (cancelling"
                        " it failed: %s); no reader has it", payment_id, what, intent_id, exc)

    def abandon(self, request: TransactionRequest) -> None:
        """The payment could not be written (a full disk) after its PaymentIntent was
        created beside the write: the slot is freed and the PaymentIntent, which no reader
        has, is cancelled in the background."""
        run = self._run
        if run is None or run.payment_id != request.payment_id:
            return
        self._run = None
        self._in_background(self._abandon(run), f"abandon-{run.payment_id}")

    async def _follow(self, run: Run) -> TransactionResult:
        result = run.ended if run.ended is not None else await self._poller.follow(run)
        if result.outcome is Outcome.DECLINED and run.intent_id is not None:
            # Stripe leaves a declined PaymentIntent open (``requires_payment_method``) for
            # another attempt, which edged never makes: anyone handing it to a reader later
            # would charge a payment recorded declined
            self._in_background(self._cancel_left(run.payment_id, run.intent_id, "declined"),
                                f"close-{run.intent_id}")
        return result

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A cancel the register's answer need not wait for; ended at ``close``."""
        task = asyncio.create_task(work, name=name)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        await super().close()
        for closing in list(self._closing):
            closing.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        run = Run(interrupted.payment_id, interrupted.extra.get("processor_ref") or None,
                  interrupted.amount, interrupted.currency,
                  cancel_why="the daemon stopped during the payment", handed=True)
        try:
            if run.intent_id is None:
                found = await self.client.find_intent(run.payment_id)
                run.intent_id = found.id if found is not None else None
            if run.intent_id is None:
                reader = await self.client.reader(self.settings.device)
                if reader.action_intent is not None:
                    named = await self.client.intent(reader.action_intent)
                    if named.payment_id == run.payment_id:
                        run.intent_id = named.id
            if run.intent_id is None:
                listed = await self.client.list_intent(
                    run.payment_id, _epoch(interrupted.started_at) - LIST_MARGIN)
                if listed.intent is None and not listed.complete:
                    log.warning("payment %s: Stripe's list of PaymentIntents was too long to"
                                " read through; it stays unknown until Stripe's search"
                                " finds it", run.payment_id)
                    return None
                if listed.intent is None:  # the list is read as written: none was made
                    return TransactionResult(Outcome.CANCELED, run.amount, run.currency,
                                             detail="the daemon stopped before the reader"
                                             " took the payment; no PaymentIntent was made")
                run.intent_id = listed.intent.id
            intent = await self.client.intent(run.intent_id)
            if result_of(intent, run.amount, run.currency) is None:
                reader = await self.client.reader(self.settings.device)
        except (SyncError, *LINK_ERRORS) as exc:
            log.warning("payment %s: Stripe cannot say how it ended (%s)", run.payment_id, exc)
            return None
        settled = result_of(intent, run.amount, run.currency)
        if settled is not None:
            return settled
        # still open: stop it; the reader's action only if it is this payment's
        result = await self._poller.stop(run, "the daemon stopped during the payment",
                                         reader_is_ours=reader.action_intent == run.intent_id)
        return None if result.outcome.value == "unknown" else result


def _epoch(iso: str) -> int:
    """A stored UTC timestamp as seconds since the epoch (Stripe's ``created``)."""
    return int(datetime.fromisoformat(iso).timestamp())
