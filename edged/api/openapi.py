"""The OpenAPI 3.1 document, generated from the route declarations and the error table."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from edged import __version__
from edged.api.http import Route
from edged.errors import CODES
from edged.payments.states import PaymentState
from sync.core.outbox import JOB_STATES


def document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
            "tags": [route.tag],
            "responses": {
                str(route.status): {"description": "Success", "content": {
                    route.media_type: {"schema": route.response.json_schema()}}},
            },
        }
        accepted = _ACCEPTED.get((route.method, route.path))
        if accepted is not None:
            op["responses"]["202"] = {"description": accepted, "content": {
                "application/json": {"schema": route.response.json_schema()}}}
        if route.path == "/healthz":
            op["responses"]["503"] = {
                "description": "The database does not answer, cannot write (disk full) or"
                " the daemon is shutting down", "content": {"application/json": {
                    "schema": route.response.json_schema()}}}
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", route.path)]
        params += [{"name": name, "in": "query", "required": False, "description": text,
                    "schema": _query_schema(route, name)}
                   for name, text in route.query.items()]
        if route.method == "POST" and route.idempotent:
            params.append({"name": "Idempotency-Key", "in": "header", "required": True,
                           "description": "Unique per operation; reuse it to retry safely",
                           "schema": {"type": "string", "maxLength": 255}})
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": route.method == "POST"
                                 and route.body.name != "Empty",
                                 "content": {"application/json": {
                                     "schema": route.body.json_schema()}}}
        if route.scope is None:
            op["security"] = []
        else:
            op["x-scope"] = route.scope
        errors = set(route.errors) | {"ERR-1020", "ERR-1099"}
        if route.scope is not None:
            errors |= {"ERR-5001", "ERR-5002", "ERR-5004", "ERR-1015", "ERR-1016"}
        if route.query:
            errors.add("ERR-1013")
        if route.method == "POST":
            errors |= {"ERR-1001", "ERR-1008", "ERR-1010", "ERR-1017", "ERR-1018",
                       "ERR-1019"}
            if route.idempotent:
                errors.add("ERR-1040")
        if route.scope == "manager":
            errors.add("ERR-5003")
        by_status: dict[int, list[str]] = {}
        for code in sorted(errors):
            by_status.setdefault(CODES[code].status, []).append(code)
        for status, codes in sorted(by_status.items()):
            op["responses"][str(status)] = {
                "description": "; ".join(f"{c}: {CODES[c].title}" for c in codes),
                "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Error"}}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    from edged.api.models import ERROR  # noqa: PLC0415

    return {
        "openapi": "3.1.0",
        "info": {"title": "edged register API", "version": __version__,
                 "description": "The store daemon's local API. Money is integer minor units"
                 " plus an ISO 4217 code. Every POST needs an Idempotency-Key."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR.json_schema()},
            "responses": {
                "NotFound": {"description": "ERR-1011: No such route (any path not listed"
                             " here)", "content": {"application/json": {"schema": {
                                 "$ref": "#/components/schemas/Error"}}}},
                "MethodNotAllowed": {
                    "description": "ERR-1012: The route does not take this method (any"
                    " method not listed for a path); the Allow header lists those it takes",
                    "headers": {"Allow": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Error"}}}},
            },
            "x-error-codes": {c.code: {"status": c.status, "title": c.title,
                                       "retryable": c.retryable} for c in CODES.values()},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


_ACCEPTED = {
    ("POST", "/v1/payments"): "card_present: the terminal is running; follow with GET ?wait=",
    ("POST", "/v1/payments/{id}/refunds"): "on a terminal or through the processor: the"
    " refund is running; follow the payment or the refund events",
}

# Query parameters that are not plain strings, with the bounds the handlers enforce.
_QUERY_TYPES: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/payments", "limit"): {"type": "integer", "minimum": 1, "maximum": 200,
                                "default": 50},
    ("/v1/payments", "state"): {"type": "string", "enum": [s.value for s in PaymentState]},
    ("/v1/payments/{id}", "wait"): {"type": "number", "minimum": 0, "maximum": 60,
                                    "default": 0},
    ("/v1/sync/jobs", "limit"): {"type": "integer", "minimum": 1, "maximum": 500,
                                 "default": 100},
    ("/v1/sync/jobs", "state"): {"type": "string", "enum": list(JOB_STATES)},
}


def _query_schema(route: Route, name: str) -> dict[str, Any]:
    known = _QUERY_TYPES.get((route.path, name))
    if known is not None:
        return known
    if name == "limit":
        return {"type": "integer", "minimum": 1}
    return {"type": "string"}


def _operation_id(route: Route) -> str:
    return route.handler.__name__
