"""The outbox contract: what each kind of row carries, written by edged, read by gateways.

Every outbox row has a kind (:class:`OutboxKind`) and a payload, one frozen dataclass per
kind, stored as JSON with these field names (rows written by earlier versions read the
same). The daemon builds a payload and hands it to :func:`sync.core.outbox.enqueue` in the
transaction of the business change; the gateway that drains the row reads it back with
:func:`decode` (or ``Payload.from_json``), and the daemon's outcome hooks do the same.

Kinds and destinations:

- ``order.create`` (shopify): a sale with its transactions; decrements stock through the order.
- ``inventory.adjust`` (shopify): one stock delta (``POST /v1/inventory/adjustments``).
- ``inventory.set`` (shopify): one stock count, compare-and-swap on the local quantity it
  replaces
  (``POST /v1/inventory/counts``).
- ``payment.forward`` (stripe, square): a token payment.
- ``refund.create`` (stripe, square): a refund of a forwarded token payment.
- ``payment.capture`` / ``payment.cancel`` (stripe, square): an authorised payment captured
  or voided (``POST /v1/payments/{id}/capture`` and ``/void``, ``edged.payments.capture``).
- ``pickup.ready`` / ``pickup.handover`` (shopify): an online order to pick up at this store
  marked ready (``fulfillmentOrderLineItemsPreparedForPickup``) or handed over
  (``fulfillmentCreate``) from ``POST /v1/pickups/{id}/ready`` and ``/handed-over``.

A payload that does not match its dataclass raises :class:`ContractError`, a
:class:`~sync.core.errors.PermanentError` (ERR-6004): the row dies with the reason, never retried.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Self, TypeVar, Union

from sync.core.errors import PermanentError

ERR_UNUSABLE_ROW = "ERR-6004"


class OutboxKind(enum.StrEnum):
    ORDER_CREATE = "order.create"
    INVENTORY_ADJUST = "inventory.adjust"
    INVENTORY_SET = "inventory.set"
    PAYMENT_FORWARD = "payment.forward"
    REFUND_CREATE = "refund.create"
    PAYMENT_CAPTURE = "payment.capture"
    """Capture of an authorised payment (``POST /v1/payments/{id}/capture``)."""
    PAYMENT_CANCEL = "payment.cancel"
    """Void of an authorised payment (``POST /v1/payments/{id}/void``)."""
    PICKUP_READY = "pickup.ready"
    """A pick-up marked ready (``POST /v1/pickups/{id}/ready``)."""
    PICKUP_HANDOVER = "pickup.handover"
    """A pick-up handed over to its customer (``POST /v1/pickups/{id}/handed-over``)."""


class ContractError(PermanentError):
    """A stored payload does not match its kind's dataclass: the row cannot be sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ERR_UNUSABLE_ROW)


# -- decoding ---------------------------------------------------------------------------

def _what(where: str) -> str:
    return f"payload field {where!r}" if where else "the payload"


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: object, where: str) -> object:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where)
        raise TypeError(f"unsupported type {tp}")  # pragma: no cover - a coding error
    if origin is tuple:
        (element, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ContractError(f"{_what(where)} must be a list, got {_describe(value)}")
        return tuple(_convert(element, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _decode(typing.cast("type[Any]", tp), value, where)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{_what(where)} must be an integer, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ContractError(f"{_what(where)} must be a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported type {tp}")  # pragma: no cover - a coding error


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


P = TypeVar("P")


def _decode(cls: type[P], data: object, where: str) -> P:
    if not isinstance(data, Mapping):
        raise ContractError(f"{_what(where)} must be an object, got {_describe(data)}")
    hints = _hints(typing.cast("type", cls))
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{where}.{f.name}" if where else f.name
        required = f.default is dataclasses.MISSING
        if f.name not in data:
            if not required:
                continue
            raise ContractError(f"{_what(name)} is missing")
        value = _convert(hints[f.name], data[f.name], name)
        if required and value == "":
            raise ContractError(f"{_what(name)} is empty")
        if f.name in getattr(cls, "POSITIVE", ()) and isinstance(value, int) and value <= 0:
            raise ContractError(f"{_what(name)} must be positive, got {value}")
        values[f.name] = value
    return cls(**values)  # unknown keys are ignored: a newer writer may add fields


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


class _Json:
    """to_json / from_json for the payload dataclasses below."""

    __slots__ = ()
    KIND: ClassVar[OutboxKind]
    POSITIVE: ClassVar[frozenset[str]] = frozenset()
    """Integer fields that must be above zero when present."""

    def to_json(self) -> dict[str, Any]:
        encoded = _encode(self)
        assert isinstance(encoded, dict)
        return encoded

    @classmethod
    def from_json(cls, data: object) -> Self:
        """The payload from its stored JSON; :class:`ContractError` when it does not fit."""
        return _decode(cls, data, "")


# -- payloads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderLine(_Json):
    quantity: int
    price: int
    """Unit price in minor units of the order's currency."""
    title: str | None = None
    variant_id: str | None = None
    """Shopify's variant id; without it the line goes as a custom line (title, sku)."""
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class OrderTransaction(_Json):
    amount: int
    currency: str | None = None
    payment_id: str | None = None
    method: str | None = None
    gateway: str | None = None
    auth_code: str | None = None
    processed_at: str | None = None


@dataclass(frozen=True, slots=True)
class OrderCreate(_Json):
    KIND = OutboxKind.ORDER_CREATE
    order_id: str
    currency: str
    processed_at: str
    source_identifier: str
    """The daemon's marker on the Shopify order, looked up before any resend."""
    lines: tuple[OrderLine, ...]
    transactions: tuple[OrderTransaction, ...] = ()
    reference: str | None = None

    @property
    def subject(self) -> str:
        return self.order_id


@dataclass(frozen=True, slots=True)
class InventoryAdjust(_Json):
    KIND = OutboxKind.INVENTORY_ADJUST
    adjustment_id: str
    delta_id: int
    """The local ``stock_deltas`` row acknowledged when Shopify applies the change."""
    inventory_item_id: str
    delta: int
    reason: str
    reference_uri: str | None = None
    location_id: str | None = None
    """None: the shop's configured location."""

    @property
    def subject(self) -> str:
        return self.adjustment_id


@dataclass(frozen=True, slots=True)
class InventorySet(_Json):
    KIND = OutboxKind.INVENTORY_SET
    count_id: str
    delta_id: int
    """The local ``stock_deltas`` row that brought local stock to ``quantity``."""
    inventory_item_id: str
    quantity: int
    last_known_quantity: int | None
    """Shopify's ``changeFromQuantity``: refused (ERR-6011) if Shopify holds another."""
    reason: str
    reference_uri: str | None = None
    location_id: str | None = None

    @property
    def subject(self) -> str:
        return self.count_id


@dataclass(frozen=True, slots=True)
class PaymentForward(_Json):
    POSITIVE = frozenset({"amount"})
    KIND = OutboxKind.PAYMENT_FORWARD
    payment_id: str
    amount: int
    currency: str
    token: str
    """The processor's payment-method token (redacted below the manager scope)."""
    reference: str | None = None
    created_at: str | None = None
    capture: str = "automatic"
    """``manual``: authorise only (the payment ends ``authorized``; a capture row follows)."""
    location_id: str | None = None
    """Square: the location the payment is taken at, fixed when the row is written (the
    configuration may change before a resend; the body under the key must not)."""

    @property
    def subject(self) -> str:
        return self.payment_id


@dataclass(frozen=True, slots=True)
class RefundCreate(_Json):
    POSITIVE = frozenset({"amount"})
    KIND = OutboxKind.REFUND_CREATE
    refund_id: str
    payment_id: str
    processor_ref: str
    amount: int
    currency: str
    reason: str | None = None

    @property
    def subject(self) -> str:
        return self.refund_id


@dataclass(frozen=True, slots=True)
class PaymentCapture(_Json):
    """Queued by ``POST /v1/payments/{id}/capture`` (an authorised card or token payment)."""

    KIND = OutboxKind.PAYMENT_CAPTURE
    POSITIVE = frozenset({"amount"})
    payment_id: str
    processor_ref: str
    amount: int | None = None
    """None: the whole authorised amount."""

    @property
    def subject(self) -> str:
        return self.payment_id


@dataclass(frozen=True, slots=True)
class PaymentCancel(_Json):
    """Queued by ``POST /v1/payments/{id}/void`` (an authorised card or token payment)."""

    KIND = OutboxKind.PAYMENT_CANCEL
    payment_id: str
    processor_ref: str

    @property
    def subject(self) -> str:
        return self.payment_id


@dataclass(frozen=True, slots=True)
class PickupReady(_Json):
    """Queued by ``POST /v1/pickups/{id}/ready``: Shopify tells the customer."""

    KIND = OutboxKind.PICKUP_READY
    pickup_id: str
    fulfillment_order_id: str

    @property
    def subject(self) -> str:
        return self.pickup_id


@dataclass(frozen=True, slots=True)
class PickupLineQuantity(_Json):
    POSITIVE = frozenset({"quantity"})
    line_item_id: str
    """The fulfillment order's line item (``gid://shopify/FulfillmentOrderLineItem/N``)."""
    quantity: int


@dataclass(frozen=True, slots=True)
class PickupHandover(_Json):
    """Queued by ``POST /v1/pickups/{id}/handed-over``: the lines and quantities that left
    the store, fixed when the register said so."""

    KIND = OutboxKind.PICKUP_HANDOVER
    pickup_id: str
    fulfillment_order_id: str
    lines: tuple[PickupLineQuantity, ...]

    @property
    def subject(self) -> str:
        return self.pickup_id


Payload = (OrderCreate | InventoryAdjust | InventorySet | PaymentForward | RefundCreate
           | PaymentCapture | PaymentCancel | PickupReady | PickupHandover)

PAYLOADS: Mapping[OutboxKind, type[Payload]] = {
    cls.KIND: cls for cls in (OrderCreate, InventoryAdjust, InventorySet, PaymentForward,
                              RefundCreate, PaymentCapture, PaymentCancel, PickupReady,
                              PickupHandover)
}

#: Payload fields that only the manager scope may read on ``/v1/sync/jobs``.
SECRET_FIELDS: Mapping[OutboxKind, frozenset[str]] = {
    OutboxKind.PAYMENT_FORWARD: frozenset({"token"}),
}


def kind_of(kind: str) -> OutboxKind:
    """The kind of a stored row; :class:`ContractError` for one this version does not know."""
    try:
        return OutboxKind(kind)
    except ValueError:
        raise ContractError(f"unknown outbox kind {kind!r}") from None


def decode(kind: str, payload: object) -> Payload:
    """A stored row's payload as its kind's dataclass."""
    return PAYLOADS[kind_of(kind)].from_json(payload)


def redacted(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload with its secret fields replaced by ``"[redacted]"``."""
    try:
        hidden = SECRET_FIELDS.get(OutboxKind(kind), frozenset())
    except ValueError:
        hidden = frozenset()
    return {k: "[redacted]" if k in hidden and v is not None else v
            for k, v in payload.items()}
