"""The shapes of every request body and answer of ``/v1``: validated and documented."""

from __future__ import annotations

from typing import Any

from edged.api.schema import Arr, Free, Int, Obj, Str
from edged.money import MAX_AMOUNT, is_known_currency
from edged.payments.states import (
    PAYMENT_MOVES,
    REFUND_MOVES,
    PaymentState,
    RefundState,
    manager_outcomes,
)
from edged.stock.inventory import COUNT_REASON, MAX_DELTA, MAX_QUANTITY, REASONS


def _currency(value: Any) -> str | None:
    return None if is_known_currency(value) else (
        f"is not an ISO 4217 currency code the daemon knows: {value!r} (for example EUR)")


AMOUNT = Int(minimum=1, maximum=MAX_AMOUNT, code="ERR-2001",
             description="Integer minor units (1250 = 12.50 EUR)")
CURRENCY = Str(min_length=3, max_length=3, check=_currency, code="ERR-2002",
               description="ISO 4217 alphabetic code")
REFERENCE = Str(max_length=100, description="The register's own reference")

PAYMENT_CREATE = Obj(
    name="PaymentCreate",
    props={
        "amount": AMOUNT,
        "currency": CURRENCY,
        "method": Str(enum=("cash", "card_present", "token")),
        "terminal": Str(max_length=64, description="Terminal id; required with several"),
        "reference": REFERENCE,
        "token": Str(max_length=255, description="A processor's payment-method token"),
        "processor": Str(enum=("stripe", "square")),
        "capture": Str(enum=("automatic", "manual"),
                       description="manual: authorise only (card_present on a cloud lane,"
                       " token); capture or void later"),
    },
    required=("amount", "currency", "method"),
)
CAPTURE = Obj(
    name="PaymentCapture",
    props={"amount": Int(minimum=1, description="Up to the authorised amount (default: all)")},
    required=(),
)
REFUND_CREATE = Obj(
    name="RefundCreate",
    props={"amount": AMOUNT, "reason": Str(max_length=500)},
    required=("amount",),
)
RESOLVE = Obj(
    name="PaymentResolve",
    props={"outcome": Str(enum=manager_outcomes(PAYMENT_MOVES, PaymentState.UNKNOWN)),
           "note": Str(max_length=1000, description="Why: what the terminal's journal says")},
    required=("outcome", "note"),
)
REFUND_RESOLVE = Obj(
    name="RefundResolve",
    props={"outcome": Str(enum=manager_outcomes(REFUND_MOVES, RefundState.UNKNOWN)),
           "note": Str(max_length=1000, description="Why: what the terminal's journal or the"
                       " processor's dashboard says")},
    required=("outcome", "note"),
)
_SKU = Str(max_length=100)
_VARIANT = Str(max_length=100, description="gid://shopify/ProductVariant/N or N")
ORDER_LINE = Obj(
    props={"sku": _SKU, "variant_id": _VARIANT,
           "quantity": Int(minimum=1, maximum=MAX_QUANTITY),
           "price": Int(minimum=0, maximum=MAX_AMOUNT, code="ERR-2001",
                        description="Unit price in minor units")},
    required=("quantity", "price"),
    one_of=("sku", "variant_id"),
)
ORDER_CREATE = Obj(
    name="OrderCreate",
    props={"reference": Str(max_length=100, description="Receipt number; unique"),
           "lines": Arr(items=ORDER_LINE, min_items=1, max_items=250),
           "payments": Arr(items=Str(max_length=64), max_items=20)},
    required=("reference", "lines", "payments"),
)
STOCK_CHANGE = Obj(
    props={"sku": _SKU, "barcode": Str(max_length=100),
           "inventory_item_id": Str(max_length=100),
           "delta": Int(minimum=-MAX_DELTA, maximum=MAX_DELTA, code="ERR-4009",
                        description="Non-zero change of the available quantity")},
    required=("delta",),
    one_of=("sku", "barcode", "inventory_item_id"),
)
ADJUSTMENT_CREATE = Obj(
    name="AdjustmentCreate",
    props={"reason": Str(enum=REASONS),
           "reference": REFERENCE,
           "changes": Arr(items=STOCK_CHANGE, min_items=1, max_items=250)},
    required=("reason", "changes"),
)
STOCK_COUNT = Obj(
    props={"sku": _SKU, "barcode": Str(max_length=100),
           "inventory_item_id": Str(max_length=100),
           "quantity": Int(minimum=0, maximum=MAX_DELTA,
                           description="The quantity counted on hand (available)")},
    required=("quantity",),
    one_of=("sku", "barcode", "inventory_item_id"),
)
COUNT_CREATE = Obj(
    name="CountCreate",
    props={"reason": Str(enum=REASONS, description=f"Default {COUNT_REASON}"),
           "reference": REFERENCE,
           "changes": Arr(items=STOCK_COUNT, min_items=1, max_items=250)},
    required=("changes",),
)
EMPTY = Obj(name="Empty", description="No body, or {}")

# -- answers ------------------------------------------------------------------------------

_S = {"type": "string"}
_SN = {"type": ["string", "null"]}
_I = {"type": "integer"}


def _obj(props: dict[str, Any], name: str) -> Free:
    return Free(schema={"type": "object", "properties": props, "title": name})


REFUND = _obj({"id": _S, "payment_id": _S, "amount": _I, "currency": _S, "reason": _SN,
               "state": {"enum": [s.value for s in RefundState]},
               "terminal_id": _SN, "processor_ref": _SN, "failure": _SN, "created_at": _S,
               "updated_at": _S,
               "last_checked_at": {"type": ["string", "null"], "description": "When an"
                                   " unknown refund was last read back from its processor"}},
              "Refund")
PAYMENT = _obj({
    "id": _S, "method": {"enum": ["cash", "card_present", "token"]},
    "state": {"enum": [s.value for s in PaymentState]},
    "amount": _I, "currency": _S, "terminal_id": _SN, "reference": _SN, "processor": _SN,
    "brand": _SN, "last4": _SN, "auth_code": _SN, "processor_ref": _SN, "raw_status": _SN,
    "receipt": _SN, "failure": _SN, "order_id": _SN, "created_at": _S, "updated_at": _S,
    "finished_at": _SN, "stored_at": _SN, "refunded": _I,
    "capture": {"enum": ["automatic", "manual"]}, "captured": {"type": ["integer", "null"]},
    "terminal_figures": {"type": ["object", "null"], "description": "What the terminal"
                         " reported when it differs from the request (amount, currency,"
                         " reference): the manager decides"},
    "refunds": {"type": "array", "items": REFUND.schema},
    "last_checked_at": {"type": ["string", "null"], "description": "When an unknown payment"
                        " was last read back from its processor (it settles itself when the"
                        " processor shows how it ended)"},
}, "Payment")
PAYMENT_LIST = _obj({"data": {"type": "array", "items": PAYMENT.schema},
                     "next_cursor": _SN}, "PaymentList")
ORDER = _obj({"id": _S, "reference": _S, "currency": _S, "total": _I, "created_at": _S,
              "lines": {"type": "array", "items": {"type": "object"}},
              "payments": {"type": "array", "items": _S}}, "Order")
ADJUSTMENT = _obj({"id": _S, "reason": _S, "reference": _SN, "created_at": _S,
                   "changes": {"type": "array", "items": {"type": "object"}}}, "Adjustment")
COUNT = _obj({"id": _S, "reason": _S, "reference": _SN, "created_at": _S,
              "changes": {"type": "array", "items": {"type": "object", "properties": {
                  "sku": _SN, "inventory_item_id": _SN, "quantity": _I, "previous": _I,
                  "delta": _I}}}}, "Count")
ITEM = _obj({"sku": _SN, "barcode": _SN, "title": _S, "price": {"type": ["integer", "null"]},
             "variant_id": _SN, "inventory_item_id": _SN, "active": {"type": "boolean"},
             "inactive_reason": _SN,
             "stock": {"type": "object", "properties": {
                 "quantity": _I, "unsynced_delta": _I, "reported": _I,
                 "reported_at": _SN}}}, "Item")
TERMINAL = _obj({"id": _S, "kind": _S, "state": {"enum": ["online", "offline", "busy"]},
                 "busy_with": _SN, "last_seen": _SN, "detail": _SN,
                 "capabilities": {"type": "object"}}, "Terminal")
PAYMENT_METHODS = _obj({"terminal": _S, "methods": {"type": "array", "items": {
    "type": "object", "required": ["method", "available", "reason"], "properties": {
        "method": {"enum": ["cash", "card_present", "token"]},
        "available": {"type": "boolean"}, "reason": _SN,
        "processors": {"type": "array", "items": _S},
        "room": {"type": "object", "properties": {"currency": _S, "left": _I,
                                                  "max_payment": _I}}}}}},
    "PaymentMethods")
PAYMENT_OR_REFUND = Free(schema={"oneOf": [PAYMENT.schema, REFUND.schema],
                                 "title": "PaymentOrRefund"})
TERMINAL_LIST = _obj({"data": {"type": "array", "items": TERMINAL.schema}}, "TerminalList")
SYNC = _obj({"destinations": {"type": "array", "items": {"type": "object", "properties": {
    "destination": _S, "pending": _I, "inflight": _I, "dead": _I,
    "oldest_pending_at": _SN, "oldest_pending_age_seconds": {"type": ["number", "null"]},
    "breaker": {"type": ["object", "null"]}, "worker": _SN, "last_error": _SN}}},
    "offline": {"type": "object", "properties": {
        "enabled": {"type": "boolean"}, "max_payment": _I, "max_stored_total": _I,
        "max_age_hours": _I, "stored": {"type": "array", "items": {"type": "object"}}}},
    "tasks": {"type": "array", "description": "Supervised background tasks (the workers"
              " too): running, restarting after a failure (with its error), or finished",
              "items": {"type": "object", "properties": {
                  "name": _S, "state": {"enum": ["running", "restarting", "finished"]},
                  "restarts": _I, "last_error": _SN,
                  "retry_in_seconds": {"type": ["number", "null"]}}}},
    "shopify": {"type": ["object", "null"], "description": "With [shopify]: the inbox's rows"
                " per state and per way in (webhook, poll, daemon), pick-ups per status, the"
                " catch-up poll, the last bulk catalogue pull"}},
    "SyncStatus")
JOB = _obj({"id": _I, "destination": _S, "kind": _S, "subject_id": _S,
            "state": {"enum": ["pending", "inflight", "done", "dead", "discarded"]},
            "attempts": _I, "next_attempt_at": _SN, "last_error": _SN,
            "outcome_unknown": {"type": "boolean"}, "batch_id": {"type": ["integer", "null"]},
            "created_at": _S, "updated_at": _S, "payload": {"type": "object"},
            "retry_refused": {"type": ["string", "null"], "description": "Why a retry of this"
                              " dead job is refused (ERR-6017: its payment or refund is"
                              " settled); null: it may be retried"}}, "SyncJob")
JOBS = _obj({"data": {"type": "array", "items": JOB.schema}}, "SyncJobs")
ERROR = _obj({"error": {"type": "object", "required": ["code", "message", "retryable"],
                        "properties": {"code": {"type": "string", "pattern": "^ERR-[0-9]{4}$"},
                                       "message": _S, "retryable": {"type": "boolean"},
                                       "details": {"type": "object"}}}}, "Error")
ALERT = _obj({"id": _I, "key": _S, "kind": _S,
               "severity": {"enum": ["info", "warning", "critical"]}, "subject": _SN,
               "message": _S, "raised_at": _S, "cleared_at": _SN,
               "data": {"type": "object"}}, "Alert")
ALERTS = _obj({"data": {"type": "array", "items": ALERT.schema}}, "Alerts")
STATUS = _obj({"now": _S, "store": {"type": "object"}, "viewer": {"type": "object"},
                "terminals": {"type": "array", "items": TERMINAL.schema}, "sync": SYNC.schema,
                "unknown_payments": {"type": "array", "items": PAYMENT.schema},
                "recent_payments": {"type": "array", "items": PAYMENT.schema},
                "unknown_refunds": {"type": "array", "items": REFUND.schema},
                "dead_jobs": {"type": "array", "items": JOB.schema},
                "alerts": {"type": "array", "items": {"type": "object"}},
                "today": {"type": "object"},
                "storage": {"type": ["object", "null"], "description": "the database file"
                            " and WAL sizes, free space, retention, backups and the off-box"
                            " replica (lag_seconds, replicated_at)"},
                "pickups": {"type": "array", "description": "Online orders to pick up here"
                            " (open or ready): items and customer name, never payment data",
                            "items": {"type": "object"}}}, "Status")
_COUNTED = {"type": "object", "properties": {"count": _I, "total": _I}}
DAY_REPORT = _obj({
    "date": _S, "timezone": _S, "from": _S, "to": _S, "generated_at": _S,
    "currencies": {"type": "array", "items": {"type": "object", "properties": {
        "currency": _S, "takings": _COUNTED, "refunds": _COUNTED, "net": _I,
        "unknown": _COUNTED, "stored": _COUNTED, "counts": {"type": "object"},
        "by_method": {"type": "array", "items": {"type": "object"}},
        "by_lane": {"type": "array", "items": {"type": "object"}}}}},
    "unknown_payments": {"type": "array", "items": {"type": "object"}},
    "unknown_refunds": {"type": "array", "items": {"type": "object"}},
    "stored_payments": {"type": "array", "items": {"type": "object"}},
    "unsynced": {"type": "array", "items": {"type": "object"}},
    "terminal_settlements": {"type": "array", "items": {"type": "object"},
                             "description": "End-of-day totals the terminals reported that"
                             " day (ZVT), beside the daemon's"}}, "DayReport")
HEALTH = _obj({"status": _S, "database": _S}, "Health")
SETTLEMENT = _obj({"id": _S, "terminal_id": _S, "currency": _S, "terminal_total": _I,
                   "terminal_count": {"type": ["integer", "null"]}, "daemon_total": _I,
                   "daemon_count": _I, "mismatch": {"type": "boolean"}, "difference": _I,
                   "since": _SN, "created_at": _S, "detail": {"type": "object"}},
                  "TerminalSettlement")
TEXT = Free(schema={"type": "string"}, description="text/plain")
EVENT_STREAM = Free(schema={"type": "string"}, description="text/event-stream")
OPENAPI = Free(schema={"type": "object"}, description="OpenAPI 3.1 document")
