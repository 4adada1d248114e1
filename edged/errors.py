"""Every error a client can see: one table, one exception root.

Codes are grouped (README, the API): 1xxx request, 2xxx payments, 3xxx terminals, 4xxx inventory
and orders, 5xxx security, 6xxx integrations. ``docs/errors.md`` is generated from
:data:`CODES` by ``python -m edged.docgen.errors_doc`` and checked by ``make test``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    title: str
    retryable: bool = False


def _table(*codes: ErrorCode) -> dict[str, ErrorCode]:
    return {c.code: c for c in codes}


CODES: dict[str, ErrorCode] = _table(
    # 1xxx: the request itself
    ErrorCode("ERR-1001", 400, "The body is not valid JSON"),
    ErrorCode("ERR-1002", 400, "The body must be a JSON object"),
    ErrorCode("ERR-1003", 422, "A required field is missing"),
    ErrorCode("ERR-1004", 422, "A field has the wrong type"),
    ErrorCode("ERR-1005", 422, "A field has a value out of range or not allowed"),
    ErrorCode("ERR-1006", 422, "The body has a field this call does not know"),
    ErrorCode("ERR-1007", 413, "The body is larger than the daemon accepts"),
    ErrorCode("ERR-1008", 400, "The Idempotency-Key header is missing or malformed"),
    ErrorCode("ERR-1009", 409, "The Idempotency-Key was already used with another body"),
    ErrorCode("ERR-1010", 422, "The body contains a card number; send tokens, never card numbers"),
    ErrorCode("ERR-1011", 404, "No such route"),
    ErrorCode("ERR-1012", 405, "The route does not take this method"),
    ErrorCode("ERR-1013", 400, "A query parameter is missing or invalid"),
    ErrorCode("ERR-1014", 415, "The body must be sent as application/json"),
    ErrorCode("ERR-1015", 429, "Too many requests from this client", retryable=True),
    ErrorCode("ERR-1016", 503, "The daemon is shutting down", retryable=True),
    ErrorCode("ERR-1017", 400, "The body is nested too deeply"),
    ErrorCode("ERR-1018", 408, "The request did not arrive in time", retryable=True),
    ErrorCode("ERR-1019", 503, "The store cannot write: the disk is full", retryable=True),
    ErrorCode("ERR-1020", 400, "The request is not valid HTTP/1.1"),
    ErrorCode("ERR-1021", 429, "Too many requests without a valid token in flight from this"
              " address", retryable=True),
    ErrorCode("ERR-1040", 503, "The disk holding the store is nearly full: writes are refused"
              " before it fills", retryable=True),
    ErrorCode("ERR-1099", 500, "Internal error; the request may be retried with the same key",
              retryable=True),
    # 2xxx: payments and refunds
    ErrorCode("ERR-2001", 422, "The amount must be a positive integer in minor units"),
    ErrorCode("ERR-2002", 422, "The currency is not an ISO 4217 code the daemon knows"),
    ErrorCode("ERR-2003", 404, "No such payment"),
    ErrorCode("ERR-2004", 422, "This payment method needs other fields"),
    ErrorCode("ERR-2005", 409, "The payment cannot be cancelled in its current state"),
    ErrorCode("ERR-2006", 409, "The payment cannot be refunded in its current state"),
    ErrorCode("ERR-2007", 422, "The refund is larger than what is left to refund"),
    ErrorCode("ERR-2008", 409, "Only a payment in state unknown can be resolved"),
    ErrorCode("ERR-2009", 422, "Token payments need a configured processor"),
    ErrorCode("ERR-2010", 422, "Above the offline cap for one payment"),
    ErrorCode("ERR-2011", 422, "Above the offline cap for the total stored in this currency"),
    ErrorCode("ERR-2012", 409, "Only an authorized payment can be captured"),
    ErrorCode("ERR-2013", 422, "The capture is larger than the authorised amount"),
    ErrorCode("ERR-2014", 409, "The payment cannot be voided in its current state"),
    ErrorCode("ERR-2015", 422, "Manual capture is for card_present and token payments"),
    ErrorCode("ERR-2016", 409, "Only a refund in state unknown can be resolved"),
    ErrorCode("ERR-2017", 404, "No such refund"),
    ErrorCode("ERR-2018", 503, "The processor did not answer in time; nothing was charged:"
              " take the payment again", retryable=True),
    ErrorCode("ERR-2030", 409, "The cancel came too late: the customer has already committed"
              " on the terminal; follow the payment to its end"),
    # 3xxx: terminals
    ErrorCode("ERR-3001", 422, "No such terminal"),
    ErrorCode("ERR-3002", 409, "The terminal is running another transaction", retryable=True),
    ErrorCode("ERR-3003", 503, "The terminal is offline", retryable=True),
    ErrorCode("ERR-3004", 409,
              "This terminal cannot cancel from the register: cancel on the terminal"),
    ErrorCode("ERR-3005", 422, "This terminal cannot refund; refund another way"),
    ErrorCode("ERR-3006", 404, "No such terminal"),
    ErrorCode("ERR-3008", 422, "This terminal cannot hold an authorisation for a later capture"),
    ErrorCode("ERR-3009", 422,
              "This terminal's processor captures the whole authorised amount only"),
    ErrorCode("ERR-3010", 422, "The processor refused this sale as asked (its amount or"
              " currency); nothing was charged: change the sale, or take it another way"),
    ErrorCode("ERR-3007", 409, "The terminal is not running the payment named: nothing was"
              " cancelled"),
    ErrorCode("ERR-3020", 422, "This terminal has no end of day from the register"),
    ErrorCode("ERR-3021", 502, "The terminal refused the end of day or could not be reached;"
              " nothing was closed", retryable=True),
    ErrorCode("ERR-3022", 502, "The end of day's outcome is unknown: read the terminal's"
              " printout before trying again"),
    # 4xxx: inventory and orders
    ErrorCode("ERR-4001", 422, "Unknown SKU, barcode, variant or inventory item"),
    ErrorCode("ERR-4002", 404, "No item with that SKU or barcode"),
    ErrorCode("ERR-4003", 422, "A payment named by the order does not exist"),
    ErrorCode("ERR-4004", 409, "A payment named by the order is not approved"),
    ErrorCode("ERR-4005", 409, "A payment named by the order already pays another order"),
    ErrorCode("ERR-4006", 422, "The payments do not add up to the order total"),
    ErrorCode("ERR-4007", 422, "The payments and lines are not all in the same currency"),
    ErrorCode("ERR-4008", 409, "An order with this reference already exists"),
    ErrorCode("ERR-4009", 422, "The stock change is out of range"),
    ErrorCode("ERR-4010", 422, "The catalogue file is not valid"),
    # 5xxx: security
    ErrorCode("ERR-5001", 401, "A bearer token is required"),
    ErrorCode("ERR-5002", 401, "The bearer token is not valid"),
    ErrorCode("ERR-5003", 403, "The token's scope does not allow this call"),
    ErrorCode("ERR-5004", 421, "The Host header names another server"),
    ErrorCode("ERR-5010", 403, "The pairing code is wrong, expired or already used"),
    ErrorCode("ERR-5011", 429, "Too many wrong pairing codes from this address",
              retryable=True),
    ErrorCode("ERR-5012", 403, "Pairing off this box needs HTTPS"),
    ErrorCode("ERR-5013", 409, "A token with this name is in use"),
    ErrorCode("ERR-5020", 403, "A cross-site request was refused (Origin is not this daemon)"),
    ErrorCode("ERR-5021", 401, "Not signed in, or the session expired or its token was revoked"),
    ErrorCode("ERR-5030", 422, "Pairing needs a proof bound to the certificate, not the code"),
    ErrorCode("ERR-5031", 429, "A pairing attempt from this address is already under way",
              retryable=True),
    ErrorCode("ERR-5032", 429, "Too many open event streams for this token", retryable=True),
    # 6xxx: integrations
    ErrorCode("ERR-6001", 404, "No such sync job"),
    ErrorCode("ERR-6002", 409, "The sync job is not in a state that allows this"),
    ErrorCode("ERR-6003", 502, "Gave up after the configured number of attempts"),
    ErrorCode("ERR-6004", 502, "The upstream refused the change for good"),
    ErrorCode("ERR-6005", 503, "The processor is unreachable and offline acceptance is off",
              retryable=True),
    ErrorCode("ERR-6006", 502, "The destination's credentials are missing or refused"),
    ErrorCode("ERR-6010", 502, "Shopify refused the change (userErrors)"),
    ErrorCode("ERR-6011", 409, "Shopify's quantity changed since it was read (stale)"),
    ErrorCode("ERR-6012", 502, "Shopify does not know the inventory item or location"),
    ErrorCode("ERR-6013", 502, "Shopify saw the idempotency key with other variables"),
    ErrorCode("ERR-6014", 502, "Shopify refused a reason or document URI"),
    ErrorCode("ERR-6015", 502, "Shopify refused the order"),
    ErrorCode("ERR-6016", 502, "Shopify rejected the GraphQL document"),
    ErrorCode("ERR-6070", 502, "The processor refused the request"),
    ErrorCode("ERR-6071", 402, "The card was declined"),
    ErrorCode("ERR-6072", 502, "The processor refused the credentials"),
    ErrorCode("ERR-6073", 502, "The processor saw the idempotency key with another body"),
    ErrorCode("ERR-6074", 502, "The processor refused the refund"),
    ErrorCode("ERR-6017", 409, "The job's payment or refund is settled: a retry could move"
              " money the records say did not move; discard it"),
    # Shopify talking back (issue 19): webhooks, the inbox, pick-ups, the bulk catalogue
    ErrorCode("ERR-1030", 401, "The webhook's signature (X-Shopify-Hmac-SHA256) does not match"
              " the webhook secret"),
    ErrorCode("ERR-1031", 503, "No Shopify webhook secret is set, so deliveries cannot be"
              " verified: edged secret set shopify.webhook_secret", retryable=True),
    ErrorCode("ERR-1032", 400, "A Shopify webhook header is missing or malformed"),
    ErrorCode("ERR-1033", 413, "The webhook body is larger than [shopify]"
              " webhook_max_body_bytes"),
    ErrorCode("ERR-1034", 503, "The webhook delivery could not be stored in time; Shopify"
              " delivers it again", retryable=True),
    ErrorCode("ERR-4011", 404, "No such pick-up"),
    ErrorCode("ERR-4012", 409, "The pick-up cannot be marked ready in its state"),
    ErrorCode("ERR-4013", 409, "The pick-up cannot be handed over in its state"),
    ErrorCode("ERR-4014", 409, "The item is no longer sold: its product was deleted or"
              " archived in Shopify"),
    ErrorCode("ERR-6020", 502, "Shopify refused to mark the pick-up ready"),
    ErrorCode("ERR-6021", 409, "The pick-up is closed or cancelled in Shopify"),
    ErrorCode("ERR-6022", 502, "Shopify refused the hand-over (fulfillmentCreate)"),
    ErrorCode("ERR-6023", 502, "Shopify refused the bulk catalogue query"),
    ErrorCode("ERR-6024", 502, "Shopify refused the webhook subscription"),
    ErrorCode("ERR-6025", 502, "An event from Shopify could not be applied"),
)


class EdgedError(Exception):
    """Root of the daemon's errors. Those with a client-facing code carry it."""


class ApiError(EdgedError):
    """An error answered to a client with its ``ERR-NNNN`` code; nothing was changed."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if code not in CODES:
            raise KeyError(f"unregistered error code {code}")
        super().__init__(message)
        self.spec = CODES[code]
        self.message = message
        self.details = details
        self.headers = headers or {}

    @property
    def code(self) -> str:
        return self.spec.code

    @property
    def status(self) -> int:
        return self.spec.status

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {
            "code": self.spec.code,
            "message": self.message,
            "retryable": self.spec.retryable,
        }
        if self.details:
            err["details"] = self.details
        return {"error": err}


class TlsError(EdgedError):
    """The certificate or its key cannot be made or read (here, not in :mod:`edged.lan.tls`,
    so that catching it does not load cryptography's x509 on a daemon without TLS)."""


class ConfigError(EdgedError):
    """The configuration cannot be used; the message names the key and the file."""


class StoreError(EdgedError):
    """The SQLite store failed in a way the caller cannot fix."""
