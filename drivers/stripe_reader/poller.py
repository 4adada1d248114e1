"""Following one payment on a Stripe reader until Stripe says how it ended.

The reader's ``action`` is read with a backing-off pause until it is ``succeeded`` or
``failed``; then the PaymentIntent is read once for the card's details. A register's
cancel or the customer timeout stop the action (``cancel_action``) and then cancel the
PaymentIntent; if the customer paid in between, Stripe's refusal to cancel says so and the
payment is approved. A lost link keeps the payment open (reads go on with the backoff)
until ``link_grace`` after the customer timeout; only then is it ``unknown``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from drivers.base import Outcome, TransactionRequest, TransactionResult
from drivers.cloud.poll import CloudSettings, Schedule, pause
from sync.core.clock import Clock
from sync.core.errors import BreakerOpen, OutcomeUnknown, SyncError, TransientError
from sync.stripe_api.terminal import (
    IntentView,
    ReaderView,
    StripeTerminalClient,
    TerminalRefused,
    cancel_key,
)

log = logging.getLogger(__name__)

#: Errors that say the processor could not be asked (or did not answer): try again later.
LINK_ERRORS = (BreakerOpen, TransientError, OutcomeUnknown, TimeoutError, OSError)
#: A reader action's failure codes that mean it was stopped, not that the card was refused
#: (``customer_canceled``: the customer pressed cancel on the reader; *unverified* name).
STOPPED_CODES = ("canceled", "customer_canceled")
#: PaymentIntent statuses that mean the money was taken or is held for capture.
PAID = ("succeeded", "requires_capture", "processing")


@dataclass
class Run:
    """The payment a reader is busy with."""

    payment_id: str
    intent_id: str | None
    amount: int
    currency: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_why: str = "canceled at the register"
    handed: bool = False
    """``process_payment_intent`` was sent (its answer may have been lost)."""
    ended: TransactionResult | None = None
    """How it ended, when that was already read at the start (a refusal read back)."""


def result_of(intent: IntentView, request_amount: int, currency: str,
              detail: str | None = None) -> TransactionResult | None:
    """What a PaymentIntent says about the payment; ``None``: not settled yet."""
    if intent.status in PAID:
        amount = intent.amount_received or intent.amount_capturable or intent.amount
        return TransactionResult(
            Outcome.AUTHORIZED if intent.status == "requires_capture" else Outcome.APPROVED,
            amount, currency, brand=intent.brand, last4=intent.last4,
            auth_code=intent.auth_code, reference=intent.id, raw_status=intent.status)
    if intent.status == "canceled":
        return TransactionResult(Outcome.CANCELED, request_amount, currency,
                                 reference=intent.id, raw_status="canceled",
                                 detail=detail or "the PaymentIntent was canceled")
    if intent.error_code:
        return declined(intent.id, request_amount, currency, intent.error_code,
                        intent.decline_code, intent.error_message, intent.last4)
    return None


def declined(intent_id: str | None, amount: int, currency: str, code: str | None,
             decline_code: str | None, message: str | None,
             last4: str | None = None) -> TransactionResult:
    codes = "/".join(c for c in (code, decline_code) if c)
    return TransactionResult(Outcome.DECLINED, amount, currency, last4=last4,
                             reference=intent_id, raw_status=decline_code or code,
                             detail=f"{message or 'declined'} ({codes})" if codes else message)


class ReaderPoller:
    def __init__(self, client: StripeTerminalClient, reader_id: str, settings: CloudSettings,
                 clock: Clock) -> None:
        self._client = client
        self._reader = reader_id
        self._settings = settings
        self._clock = clock

    async def follow(self, run: Run) -> TransactionResult:
        """Read until the payment's final state (module docstring)."""
        start = self._clock.monotonic()
        deadline = start + self._settings.customer_timeout
        schedule = Schedule(self._settings.poll_interval, self._settings.poll_max)
        lost_since: float | None = None
        stopping_since: float | None = None
        while True:
            now = self._clock.monotonic()
            why: str | None = None
            if run.cancel.is_set():
                why = run.cancel_why
            elif now >= deadline and lost_since is None:
                why = f"the customer did not pay within {self._settings.customer_timeout:g} s"
            if why is not None:  # stop it; a lost link only delays the stop, up to a bound
                stopping_since = stopping_since or now
                try:
                    return await self.stop(run, why, give_up=False)
                except LINK_ERRORS as exc:
                    if now >= stopping_since + self._settings.link_grace:
                        return self.unknown(run, f"{why}, but Stripe could not be told"
                                            f" ({exc})")
                    lost_since = lost_since or now
                    await pause(self._clock, schedule.next(), asyncio.Event())
                    continue
            if now >= deadline + self._settings.link_grace:
                return self.unknown(run, "the link to Stripe was lost during the payment"
                                    " and did not come back in time")
            try:
                done = await self.read_once(run)
            except LINK_ERRORS as exc:
                if lost_since is None:
                    log.warning("reader %s: lost Stripe while following %s (%s); still"
                                " reading", self._reader, run.payment_id, exc)
                lost_since = lost_since or now
                done = None
            else:
                if lost_since is not None:
                    log.info("reader %s: Stripe answers again for %s", self._reader,
                             run.payment_id)
                lost_since = None
            if done is not None:
                return done
            await pause(self._clock, schedule.next(), run.cancel)

    async def read_once(self, run: Run) -> TransactionResult | None:
        """One read of the reader (and, at the end, of the PaymentIntent)."""
        if run.intent_id is None:
            found = await self._client.find_intent(run.payment_id)
            if found is None:
                return None
            run.intent_id = found.id
        if not run.handed:  # the create's answer was lost before the reader got it
            try:
                await self._client.process(self._reader, run.payment_id, run.intent_id)
            except TerminalRefused as exc:
                return await self.stop(run, f"the reader refused the payment ({exc.code})")
            run.handed = True
            return None
        try:
            reader = await self._client.reader(self._reader)
        except TerminalRefused as exc:
            log.error("reader %s: Stripe refused to read it: %s", self._reader, exc)
            reader = ReaderView(self._reader, "offline")
        if reader.action_intent == run.intent_id and reader.action_status == "in_progress":
            return None
        if reader.action_intent == run.intent_id and reader.action_status == "failed" \
                and reader.failure_code not in (None, *STOPPED_CODES):
            intent = reader.intent or await self._client.intent(run.intent_id)
            settled = result_of(intent, run.amount, run.currency)
            if settled is not None:
                return settled
            return declined(run.intent_id, run.amount, run.currency, reader.failure_code,
                            reader.decline_code, reader.failure_message)
        # succeeded, canceled on the reader, or the action is gone: the PaymentIntent says.
        intent = reader.intent if reader.action_intent == run.intent_id and reader.intent \
            else await self._client.intent(run.intent_id)
        settled = result_of(intent, run.amount, run.currency)
        if settled is not None:
            return settled
        if reader.action_intent == run.intent_id or reader.action_status is None:
            return await self.stop(run, "the reader stopped the payment")
        return None

    async def stop(self, run: Run, why: str, *, reader_is_ours: bool = True,
                   give_up: bool = True) -> TransactionResult:
        """Stop the reader's action, then cancel the PaymentIntent; Stripe's answer wins.

        ``reader_is_ours=False``: the reader's action is not this payment's (found at a
        restart): it is left alone, and only the PaymentIntent is cancelled.
        ``give_up=False``: a lost link raises (the caller tries again) instead of ending
        the payment ``unknown``.
        """
        log.info("reader %s: stopping %s (%s)", self._reader, run.payment_id, why)
        try:
            if run.intent_id is None:
                found = await self._client.find_intent(run.payment_id)
                if found is None:
                    return TransactionResult(Outcome.CANCELED, run.amount, run.currency,
                                             detail=f"{why}; no PaymentIntent was made")
                run.intent_id = found.id
            try:
                if reader_is_ours:
                    await self._client.cancel_action(
                        self._reader, f"edged-{run.payment_id}-cancel-action")
            except TerminalRefused as exc:  # no action in progress (any more): fine
                log.info("reader %s: nothing to cancel on the reader (%s)", self._reader,
                         exc.code)
            try:
                intent = await self._client.cancel_intent(run.intent_id,
                                                          cancel_key(run.payment_id))
            except TerminalRefused:
                intent = await self._client.intent(run.intent_id)
        except LINK_ERRORS as exc:
            if not give_up:
                raise
            return self.unknown(run, f"{why}, but Stripe could not be told ({exc})")
        except SyncError as exc:
            return self.unknown(run, f"{why}, but Stripe refused: {exc}")
        settled = result_of(intent, run.amount, run.currency, detail=why)
        if settled is not None:
            return settled
        return self.unknown(run, f"{why}; the PaymentIntent is {intent.status}")

    @staticmethod
    def unknown(run: Run, why: str) -> TransactionResult:
        return TransactionResult(Outcome.UNKNOWN, run.amount, run.currency,
                                 reference=run.intent_id, detail=why)

    def run_for(self, request: TransactionRequest, intent_id: str | None) -> Run:
        return Run(request.payment_id, intent_id, request.amount, request.currency)
