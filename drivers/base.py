"""The one interface every card terminal kind implements.

The daemon never sees wire dictionaries: a driver answers with the typed values below.
The line between "nothing was sent" and "the terminal took the request" decides money:

- a driver that could not hand the request over raises a :class:`NothingSent`
  (:class:`TerminalUnavailable`, :class:`TerminalBusy`, an unsupported currency or a bad
  request…): the card was certainly not charged, the payment is marked ``failed``;
- once the terminal has accepted the request, every ending is a :class:`TransactionResult`;
  silence, a dropped line or garbage is ``Outcome.UNKNOWN``, never ``DECLINED``.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field


class DriverError(Exception):
    """Root of every error raised by a terminal driver."""


class NothingSent(DriverError):
    """Raised before anything reached the terminal: nothing can have been charged.

    Only for errors raised before the first byte of the request went out (or that the
    terminal refused without acting on it); anything later is a result, ``UNKNOWN`` at worst.
    """


class TerminalUnavailable(NothingSent):
    """The request never reached the terminal (port gone, no ACK): nothing was charged."""


class TerminalBusy(NothingSent):
    """The terminal is running another transaction."""


class SaleRefused(NothingSent):
    """The processor refused the sale as asked (its amount, its currency, what the account
    may take) before any terminal had it: nothing was charged, the lane is as it was, and
    the same sale would be refused again."""


class OperationNotSupported(NothingSent):
    """The protocol or the terminal cannot do this (refund, cancel…)."""


class CancelNotSupported(OperationNotSupported):
    """The running transaction cannot be cancelled from the register: cancel on the terminal."""


class CancelTooLate(DriverError):
    """The customer has already committed on the terminal: the transaction goes on."""


class ProtocolError(DriverError):
    """The bytes on the line broke the protocol (bad frame, bad field)."""


class Outcome(enum.StrEnum):
    APPROVED = "approved"
    AUTHORIZED = "authorized"
    """Held, not taken: a manual-capture sale waiting for its capture or void."""
    DECLINED = "declined"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


class TransactionKind(enum.StrEnum):
    SALE = "sale"
    REFUND = "refund"
    REVERSAL = "reversal"
    """A void of an earlier sale on the terminal (ZVT Reversal); ``original`` names it."""


class TerminalState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class TransactionRequest:
    """One transaction asked of a terminal. Money in minor units plus ISO 4217 alpha code."""

    payment_id: str
    amount: int
    currency: str
    kind: TransactionKind = TransactionKind.SALE
    reference: str | None = None
    manual_capture: bool = False
    """Authorise only: the sale ends ``AUTHORIZED`` and is captured or voided later."""
    original: str | None = None
    """A reversal: the terminal's reference (receipt number) of the sale it voids."""


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """How a transaction ended, as far as the terminal told us.

    ``last4`` is the only part of a card number a driver may ever hand on.
    """

    outcome: Outcome
    amount: int
    currency: str
    brand: str | None = None
    last4: str | None = None
    auth_code: str | None = None
    reference: str | None = None
    raw_status: str | None = None
    receipt: str | None = None
    detail: str | None = None
    other_pos: str | None = None
    """The POS reference an answer named when it is not the POS that asked."""


@dataclass(frozen=True, slots=True)
class TerminalStatus:
    state: TerminalState
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Capabilities:
    refund: bool = False
    cancel: bool = False
    recover: bool = False
    manual_capture: bool = False
    """Can authorise a sale for a later capture (through its processor)."""
    reversal: bool = False
    """Can void an approved sale of its own (:attr:`TransactionKind.REVERSAL`)."""
    end_of_day: bool = False
    """Can close its day and report its totals (:meth:`Terminal.end_of_day`)."""
    settle_unknown: bool = False
    """Can tell how its last transaction ended (``recover``) at any time: a lost answer is
    settled with the terminal before the lane takes another transaction."""


@dataclass(frozen=True, slots=True)
class EndOfDayTotals:
    """What a terminal reported when it closed its day (money in minor units)."""

    total: int
    currency: str
    count: int | None = None
    groups: tuple[tuple[str, int, int], ...] = ()
    """(card group, count, total) as the terminal split them."""
    receipt_from: int | None = None
    receipt_to: int | None = None
    reference: str | None = None
    receipt: str | None = None
    """The terminal's printout, card numbers cut."""


@dataclass(frozen=True, slots=True)
class InterruptedTransaction:
    """A transaction the daemon had started when it stopped, handed to ``recover``."""

    payment_id: str
    amount: int
    currency: str
    kind: TransactionKind
    started_at: str
    extra: dict[str, str] = field(default_factory=dict)


class Terminal(abc.ABC):
    """A card terminal on one lane. One transaction at a time is the caller's rule."""

    kind: str = ""
    processor: str | None = None
    """The processor whose API drives this terminal (cloud kinds): refunds, captures and
    voids of its payments go through that processor's outbox, not the terminal."""

    def __init__(self, terminal_id: str) -> None:
        self.terminal_id = terminal_id

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this terminal can do besides a sale."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the line. May raise :class:`TerminalUnavailable`; the caller retries."""

    @abc.abstractmethod
    async def status(self) -> TerminalStatus:
        """A cheap probe used by the idle heartbeat. Never raises for an absent terminal."""

    prepare_beside_write: bool = False
    """``prepare`` is a round trip to the processor that charges nothing (a Stripe
    PaymentIntent): the daemon writes the payment meanwhile instead of after it, and stores
    the reference it returns once :meth:`start` has handed the sale over."""

    async def prepare(self, request: TransactionRequest) -> str | None:
        """Before the payment is written (or while it is, ``prepare_beside_write``): what
        cannot charge anyone yet.

        A cloud terminal checks its device and creates the processor's object here (a
        PaymentIntent cannot be charged until a reader is given it). Returns the processor's
        reference to store with the payment (``None``: none). May raise
        :class:`TerminalUnavailable` / :class:`TerminalBusy`: the register is refused and
        nothing is stored (beside the write: the payment is stored ``failed``, nothing
        charged, and its key forgotten, as for a refusal at :meth:`start`). The default does
        nothing.
        """
        return None

    async def start(self, request: TransactionRequest) -> str | None:
        """After the payment is written, before the register is answered: hand it over.

        A cloud terminal gives the sale to the device here, so that an offline or busy
        device is refused at once (:class:`TerminalUnavailable`, :class:`TerminalBusy`:
        nothing was charged). A Concert lane sends the request frame it held back since
        :meth:`prepare`. Others do everything in :meth:`collect`: the default does nothing.
        Returns the processor's reference of what it made (a Square checkout's id), which
        the daemon stores with the payment before the register is answered, so that a
        restart reads it back by that id (``None``: nothing new to store).
        """
        return None

    def abandon(self, request: TransactionRequest) -> None:
        """The payment :meth:`prepare` was for could not be written: give the terminal
        nothing to charge (a Concert lane closes the exchange it opened). Never raises;
        :meth:`collect` is not called for it. The default does nothing.
        """
        return None

    @abc.abstractmethod
    async def collect(self, request: TransactionRequest) -> TransactionResult:
        """Run a sale (after :meth:`start`) and wait for the customer."""

    async def refund(self, request: TransactionRequest) -> TransactionResult:
        """Run a refund (credit) on the terminal where the protocol supports it."""
        raise OperationNotSupported(f"{self.kind} terminals cannot refund from the register")

    async def cancel(self) -> None:
        """Ask the terminal to abort the running transaction."""
        raise CancelNotSupported(
            f"{self.kind} terminal {self.terminal_id}: cancel on the terminal itself"
        )

    async def recover(self, interrupted: InterruptedTransaction) -> TransactionResult | None:
        """Establish how an interrupted transaction ended, or ``None`` if it cannot be told."""
        return None

    async def end_of_day(self) -> EndOfDayTotals:
        """Close the terminal's day (settle with its host) and report its totals."""
        raise OperationNotSupported(f"{self.kind} terminals have no end of day from the register")

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the line."""
