"""One failure policy: what an exception raised by a send means for everything around it.

:func:`judge` is the only place that sorts exceptions. The engine's step (what happens to
the rows and the breaker) and its quick retry (whether to try again inside one claim) both
ask it, so they cannot disagree.

=====================  ========  =========  ============  ========  ===============
exception              breaker   retry now  uses attempt  rows      next send
=====================  ========  =========  ============  ========  ===============
PermanentError         success   no         --            dead      --
CredentialsRequired    cancel    no         no            released  when fixed
Throttled              success   no         no            later     after its wait
HoldRow                success   no         no            later     this row only, later
TransientError         failure   yes        yes           later     resend
OutcomeUnknown         failure   yes        yes           later     read back first
TimeoutError, OSError  failure   yes        yes           later     read back first
any other Exception    cancel    no         yes           later     read back first
cancellation           cancel    no         no            later     read back first
=====================  ========  =========  ============  ========  ===============

A refusal or a throttle is an answer from a healthy upstream (a breaker success); missing
credentials and a defect of our own say nothing about the link (cancel). An unexpected
exception is a defect in a gateway: it is logged with its traceback by the engine, and the
attempt counts so that a row that always trips it ends ``dead`` instead of looping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sync.core.breaker import Permit
from sync.core.errors import (
    CredentialsRequired,
    HoldRow,
    OutcomeUnknown,
    PermanentError,
    Throttled,
    TransientError,
)


class BreakerOutcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCEL = "cancel"


class RowAction(enum.Enum):
    KILL = "kill"
    """Every row of the work fails for good."""
    RELEASE = "release"
    """Give the rows back untouched; nothing was sent."""
    LATER = "later"
    """Back to pending with a later due time."""


@dataclass(frozen=True, slots=True)
class Verdict:
    breaker: BreakerOutcome
    action: RowAction
    retry_now: bool
    """Worth a quick retry inside the same claim (it may pass in a moment)."""
    uses_attempt: bool
    outcome_unknown: bool
    """The call may have been applied: the next attempt reads back before resending."""
    wait: float | None = None
    """How long the whole destination waits (a throttle), or None for the backoff."""
    hold: float | None = None
    """How long this row alone waits (its destination goes on), or None."""
    defect: bool = False
    """Not an upstream outcome: a bug to log with its traceback."""


def judge(exc: BaseException) -> Verdict:
    """The verdict on ``exc``, raised by a gateway's send (or its timeout)."""
    if isinstance(exc, PermanentError):
        return Verdict(BreakerOutcome.SUCCESS, RowAction.KILL, retry_now=False,
                       uses_attempt=True, outcome_unknown=False)
    if isinstance(exc, CredentialsRequired):
        return Verdict(BreakerOutcome.CANCEL, RowAction.RELEASE, retry_now=False,
                       uses_attempt=False, outcome_unknown=False)
    if isinstance(exc, HoldRow):
        return Verdict(BreakerOutcome.SUCCESS, RowAction.LATER, retry_now=False,
                       uses_attempt=False, outcome_unknown=False, hold=exc.wait)
    if isinstance(exc, Throttled):
        return Verdict(BreakerOutcome.SUCCESS, RowAction.LATER, retry_now=False,
                       uses_attempt=False, outcome_unknown=False, wait=exc.wait)
    if isinstance(exc, TransientError):
        return Verdict(BreakerOutcome.FAILURE, RowAction.LATER, retry_now=True,
                       uses_attempt=True, outcome_unknown=False)
    if isinstance(exc, OutcomeUnknown | TimeoutError | OSError):
        return Verdict(BreakerOutcome.FAILURE, RowAction.LATER, retry_now=True,
                       uses_attempt=True, outcome_unknown=True)
    if isinstance(exc, Exception):
        return Verdict(BreakerOutcome.CANCEL, RowAction.LATER, retry_now=False,
                       uses_attempt=True, outcome_unknown=True, defect=True)
    return Verdict(BreakerOutcome.CANCEL, RowAction.LATER, retry_now=False,
                   uses_attempt=False, outcome_unknown=True)


def settle(permit: Permit, outcome: BreakerOutcome) -> None:
    """Report ``outcome`` on ``permit``."""
    if outcome is BreakerOutcome.SUCCESS:
        permit.success()
    elif outcome is BreakerOutcome.FAILURE:
        permit.failure()
    else:
        permit.cancel()
