"""The OpenAPI 3.1 document, generated from the route declarations and the error table."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from edged import __version__
from edged.api.http import Route
from edged.errors import CODES


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
        if route.status == 201 and route.path == "/v1/payments":
            op["responses"]["202"] = {"description": "card_present: the terminal is running;"
                                      " follow with GET ?wait=", "content": {
                                          "application/json": {
                                              "schema": route.response.json_schema()}}}
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", route.path)]
        params += [{"name": name, "in": "query", "required": False, "description": text,
                    "schema": {"type": "string"}} for name, text in route.query.items()]
        if route.method == "POST":
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
        errors = set(route.errors)
        if route.scope is not None:
            errors |= {"ERR-5001", "ERR-5002", "ERR-5004", "ERR-1015", "ERR-1016"}
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
            "x-error-codes": {c.code: {"status": c.status, "title": c.title,
                                       "retryable": c.retryable} for c in CODES.values()},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _operation_id(route: Route) -> str:
    return route.handler.__name__
