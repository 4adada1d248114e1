"""Following one Terminal checkout until Square says how it ended.

``COMPLETED`` → approved, with the payment id (and the card's brand and last four digits,
read from the payment); ``CANCELED`` → canceled. A declined card leaves the checkout
``IN_PROGRESS`` while the customer may try another card, so the customer timeout cancels
it: a checkout the customer had started (``IN_PROGRESS``) then ends ``declined``, one never
touched (``PENDING``) ``canceled``. A checkout still ``PENDING`` at the customer timeout is
also how an offline Terminal shows (Square accepts the checkout and waits for the device
until the checkout's deadline): the poller says so to its lane (``on_never_shown``), which
holds itself offline until the Terminal answers a PING. Nothing is ever approved without
Square's ``COMPLETED``. Cancelling an ``IN_PROGRESS`` checkout only asks
(``CANCEL_REQUESTED``): reads go on until Square confirms ``CANCELED`` — or ``COMPLETED``,
when the customer paid first. A lost link keeps the payment open until ``link_grace``
after the customer timeout; only then is it ``unknown``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import Outcome, TransactionResult
from drivers.cloud.poll import CloudSettings, Schedule, pause
from sync.core.clock import Clock
from sync.core.errors import BreakerOpen, OutcomeUnknown, SyncError, TransientError
from sync.square_api.terminal import CheckoutRefused, CheckoutView, SquareTerminalClient

log = logging.getLogger(__name__)

LINK_ERRORS = (BreakerOpen, TransientError, OutcomeUnknown, TimeoutError, OSError)


@dataclass
class Run:
    payment_id: str
    checkout_id: str | None
    amount: int
    currency: str
    reference: str | None = None
    manual_capture: bool = False
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_why: str = "canceled at the register"
    seen_in_progress: bool = False
    stop_asked: str | None = None
    """Why a cancel was sent (the register, the timeout); ``None``: not asked."""
    outcome_if_canceled: Outcome = Outcome.CANCELED
    may_create: bool = True
    """Whether a lost create may be asked again under its key (the live payment); never
    after a restart, which only reads."""


class CheckoutPoller:
    def __init__(self, client: SquareTerminalClient, settings: CloudSettings,
                 clock: Clock, checkout_deadline: float,
                 on_never_shown: Callable[[str], None] | None = None) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._on_never_shown = on_never_shown
        self._checkout_deadline = checkout_deadline
        """The checkout's own deadline: part of the create's body, so always the same."""

    async def follow(self, run: Run) -> TransactionResult:
        deadline = self._clock.monotonic() + self._settings.customer_timeout
        schedule = Schedule(self._settings.poll_interval, self._settings.poll_max)
        lost = False
        while True:
            now = self._clock.monotonic()
            try:
                if run.checkout_id is None:  # the create's answer was lost: same key again
                    if not run.may_create:
                        return self.unknown(run, "no checkout id to read back")
                    created = await self._create(run)
                    run.checkout_id = created.id
                checkout = await self._client.get(run.checkout_id)
                lost = False
                done = await self._judge(run, checkout)
                if done is not None:
                    return done
                if run.stop_asked is None:
                    if run.cancel.is_set():
                        await self._ask_stop(run, run.cancel_why, Outcome.CANCELED)
                        continue
                    if now >= deadline:
                        why = (f"the customer did not pay within "
                               f"{self._settings.customer_timeout:g} s")
                        if run.seen_in_progress or checkout.status == "IN_PROGRESS":
                            await self._ask_stop(run, why + " (the card was not accepted)",
                                                 Outcome.DECLINED)
                        else:
                            why += ("; the Terminal never showed the checkout (still PENDING):"
                                    " it may be offline")
                            if self._on_never_shown is not None:
                                self._on_never_shown(why)
                            await self._ask_stop(run, why, Outcome.CANCELED)
                        continue
            except CheckoutRefused as exc:
                return self.unknown(run, f"Square refused: {exc}")
            except (SyncError, *LINK_ERRORS) as exc:
                if not lost:
                    log.warning("square terminal: lost Square while following %s (%s)",
                                run.payment_id, exc)
                lost = True
                if now >= deadline + self._settings.link_grace:
                    return self.unknown(run, "the link to Square was lost during the payment"
                                        " and did not come back in time")
            if now >= deadline + self._settings.link_grace and run.stop_asked is not None:
                return self.unknown(run, f"{run.stop_asked}; Square did not confirm the"
                                    " cancel in time")
            await pause(self._clock, schedule.next(),  # a cancel wakes only the first wait
                        asyncio.Event() if run.cancel.is_set() else run.cancel)

    async def _create(self, run: Run) -> CheckoutView:
        return await self._client.create(
            run.payment_id, self._settings.device, run.amount, run.currency,
            reference=run.reference, manual_capture=run.manual_capture,
            deadline_seconds=self._checkout_deadline)

    async def _ask_stop(self, run: Run, why: str, outcome: Outcome) -> None:
        assert run.checkout_id is not None
        log.info("square terminal: canceling checkout %s of %s (%s)", run.checkout_id,
                 run.payment_id, why)
        try:
            await self._client.cancel(run.checkout_id)  # a lost link raises: asked again
        except CheckoutRefused as exc:  # COMPLETED meanwhile: the next read says so
            log.info("square terminal: cancel refused (%s)", exc)
        run.stop_asked = why
        run.outcome_if_canceled = outcome

    async def _judge(self, run: Run, checkout: CheckoutView) -> TransactionResult | None:
        if checkout.status == "IN_PROGRESS":
            run.seen_in_progress = True
        if checkout.status == "COMPLETED":
            return await self._approved(run, checkout)
        if checkout.status == "CANCELED":
            if run.stop_asked is not None:
                return TransactionResult(run.outcome_if_canceled, run.amount, run.currency,
                                         reference=checkout.id, raw_status="CANCELED",
                                         detail=run.stop_asked)
            reason = checkout.cancel_reason or "CANCELED"
            return TransactionResult(Outcome.CANCELED, run.amount, run.currency,
                                     reference=checkout.id, raw_status=reason,
                                     detail=f"the checkout was canceled ({reason})")
        return None

    async def _approved(self, run: Run, checkout: CheckoutView) -> TransactionResult:
        payment_id = checkout.payment_ids[0] if checkout.payment_ids else None
        brand = last4 = auth = None
        status = "APPROVED" if run.manual_capture else "COMPLETED"
        if payment_id is not None:
            try:
                card = await self._client.payment(payment_id)
                brand, last4, auth = card.brand, card.last4, card.auth_code
                status = card.status or status
            except (SyncError, *LINK_ERRORS) as exc:  # approved all the same
                log.warning("square terminal: card details of %s unread: %s", payment_id, exc)
        held = status == "APPROVED"  # not completed: a delayed capture waits
        return TransactionResult(Outcome.AUTHORIZED if held else Outcome.APPROVED,
                                 checkout.amount, run.currency, brand=brand,
                                 last4=last4, auth_code=auth,
                                 reference=payment_id or checkout.id, raw_status=status,
                                 detail=f"checkout {checkout.id}")

    @staticmethod
    def unknown(run: Run, why: str) -> TransactionResult:
        return TransactionResult(Outcome.UNKNOWN, run.amount, run.currency,
                                 reference=run.checkout_id, detail=why)
