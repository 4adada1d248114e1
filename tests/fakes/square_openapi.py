"""Square's published OpenAPI description as the contract of the Square fake (tests only).

``tests/fixtures/square/api.json`` is Square's own OpenAPI 3.0 description of Connect v2
(``connect-api-specification`` commit 5733f66, 2025-08-19; see the README beside it). The
fake checks every request against it and every answer it gives, so that a call Square does
not serve the way the code assumes fails in the tests rather than in a store:

- :meth:`SquareApi.operation`: the path and method must be one Square serves (a literal
  segment wins over a template: ``/v2/payments/cancel`` is not ``/v2/payments/{id}``);
- :meth:`SquareApi.check_request`: every query parameter is declared with its type; every
  field of the JSON body exists in the request schema with the right type, ``$ref``s
  resolved, nested objects and arrays included; required fields are present; ``readOnly``
  fields are refused; enums, lengths and bounds hold;
- :meth:`SquareApi.check_answer`: the fake's own answer has only fields the response schema
  has, with their types (an answer the fake invents fails just as loudly).

The description is 3 MB: :func:`square_api` loads it once per test session.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "square" / "api.json"

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a request (or an answer) is not what Square's description allows."""

    code: str
    """Square's error code for it (``UNKNOWN_BODY_PARAMETER``, ``EXPECTED_STRING``, ...)."""
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} at {self.field or '(body)'}: {self.message}"


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    template: str
    operation_id: str
    spec: Mapping[str, Any]

    @property
    def request_schema(self) -> Mapping[str, Any] | None:
        body = self.spec.get("requestBody")
        if not isinstance(body, Mapping):
            return None
        schema = body.get("content", {}).get("application/json", {}).get("schema")
        return schema if isinstance(schema, Mapping) else None

    @property
    def answer_schema(self) -> Mapping[str, Any] | None:
        answer = self.spec.get("responses", {}).get("200", {})
        schema = answer.get("content", {}).get("application/json", {}).get("schema")
        return schema if isinstance(schema, Mapping) else None

    def parameters(self, where: str) -> dict[str, Mapping[str, Any]]:
        return {p["name"]: p for p in self.spec.get("parameters") or ()
                if isinstance(p, Mapping) and p.get("in") == where}


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,),
}
_EXPECTED = {"string": "EXPECTED_STRING", "integer": "EXPECTED_INTEGER",
             "number": "EXPECTED_FLOAT", "boolean": "EXPECTED_BOOLEAN",
             "array": "EXPECTED_ARRAY", "object": "EXPECTED_OBJECT"}


class SquareApi:
    """The description, indexed for checking (see the module docstring)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.schemas: Mapping[str, Any] = doc["components"]["schemas"]
        routes: list[tuple[int, re.Pattern[str], Operation]] = []
        for template, item in doc["paths"].items():
            pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
            params = template.count("{")
            for method, spec in item.items():
                if method.lower() not in ("get", "post", "put", "delete", "patch"):
                    continue
                routes.append((params, re.compile(pattern), Operation(
                    method.upper(), template, str(spec.get("operationId")), spec)))
        routes.sort(key=lambda r: r[0])  # literal segments first
        self._routes = routes

    # -- lookups --------------------------------------------------------------------------

    def operation(self, method: str, path: str) -> Operation | None:
        for _, pattern, op in self._routes:
            if op.method == method.upper() and pattern.match(path):
                return op
        return None

    def serves(self, path: str) -> bool:
        return any(pattern.match(path) for _, pattern, _ in self._routes)

    def schema(self, name: str) -> Mapping[str, Any]:
        found = self.schemas[name]
        assert isinstance(found, Mapping)
        return found

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in schema:
            ref = str(schema["$ref"])
            if not ref.startswith("#/components/schemas/"):
                raise ValueError(f"unsupported $ref {ref}")
            schema = self.schema(ref.rsplit("/", 1)[1])
            seen += 1
            if seen > 20:
                raise ValueError(f"$ref loop at {ref}")
        return schema

    def enum_values(self, name: str) -> tuple[str, ...]:
        return tuple(self.schema(name).get("enum") or ())

    # -- checks ---------------------------------------------------------------------------

    def check_request(self, op: Operation, query: Mapping[str, str], body: Any) -> list[Problem]:
        problems: list[Problem] = []
        declared = op.parameters("query")
        for name, value in query.items():
            param = declared.get(name)
            if param is None:
                problems.append(Problem("UNKNOWN_QUERY_PARAMETER", name,
                                        f"{op.operation_id} takes no query parameter {name!r}"))
                continue
            kind = self.resolve(param.get("schema") or {}).get("type")
            if kind == "integer" and not re.fullmatch(r"-?\d+", value):
                problems.append(Problem("EXPECTED_INTEGER", name, f"{value!r} is not an integer"))
            if kind == "boolean" and value not in ("true", "false"):
                problems.append(Problem("EXPECTED_BOOLEAN", name, f"{value!r} is not a boolean"))
        for name, param in declared.items():
            if param.get("required") and name not in query:
                problems.append(Problem("MISSING_REQUIRED_PARAMETER", name, "required"))
        schema = op.request_schema
        if schema is None:
            if body not in (None, {}):
                problems.append(Problem("UNKNOWN_BODY_PARAMETER", "",
                                        f"{op.operation_id} takes no body"))
            return problems
        if body is None:
            body = {}
        problems += self.check(schema, body, "", request=True)
        return problems

    def check_answer(self, op: Operation, body: Any) -> list[Problem]:
        schema = op.answer_schema
        if schema is None:
            return []
        return self.check(schema, body, "", request=False)

    def check(self, schema: Mapping[str, Any], value: Any, where: str, *,
              request: bool) -> list[Problem]:
        """``value`` against ``schema``: what does not fit, as Square would name it."""
        schema = self.resolve(schema)
        if value is None:
            if schema.get("nullable") or not request:
                return []
            return [Problem("INVALID_VALUE", where, "null where the description has no null")]
        kind = schema.get("type") or ("object" if "properties" in schema else None)
        if kind is None:
            return []
        allowed = _TYPES.get(str(kind), ())
        if not isinstance(value, allowed) or (kind in ("integer", "number")
                                              and isinstance(value, bool)):
            return [Problem(_EXPECTED.get(str(kind), "INVALID_VALUE"), where,
                            f"expected {kind}, got {type(value).__name__} {value!r:.60}")]
        problems: list[Problem] = []
        if kind == "string":
            enum = schema.get("enum")
            if request and enum and value not in enum:
                problems.append(Problem("INVALID_ENUM_VALUE", where,
                                        f"{value!r} is not one of {', '.join(enum)}"))
            if "maxLength" in schema and len(value) > int(schema["maxLength"]):
                problems.append(Problem("VALUE_TOO_LONG", where,
                                        f"longer than {schema['maxLength']} characters"))
            if request and "minLength" in schema and len(value) < int(schema["minLength"]):
                problems.append(Problem("VALUE_TOO_SHORT", where,
                                        f"shorter than {schema['minLength']} characters"))
        elif kind in ("integer", "number"):
            if request and "minimum" in schema and value < schema["minimum"]:
                problems.append(Problem("VALUE_TOO_LOW", where, f"below {schema['minimum']}"))
            if request and "maximum" in schema and value > schema["maximum"]:
                problems.append(Problem("VALUE_TOO_HIGH", where, f"above {schema['maximum']}"))
        elif kind == "array":
            items = schema.get("items") or {}
            if request and "maxItems" in schema and len(value) > int(schema["maxItems"]):
                problems.append(Problem("ARRAY_LENGTH_TOO_LONG", where,
                                        f"more than {schema['maxItems']} items"))
            for i, item in enumerate(value):
                problems += self.check(items, item, f"{where}[{i}]", request=request)
        elif kind == "object":
            props: Mapping[str, Any] = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for name, item in value.items():
                at = f"{where}.{name}" if where else name
                if name in props:
                    prop = props[name]
                    if request and prop.get("readOnly"):
                        problems.append(Problem("INVALID_VALUE", at,
                                                "a read-only field cannot be sent"))
                        continue
                    problems += self.check(prop, item, at, request=request)
                elif isinstance(extra, Mapping):
                    problems += self.check(extra, item, at, request=request)
                elif extra is not True:
                    problems.append(Problem("UNKNOWN_BODY_PARAMETER", at,
                                            f"the field named {name!r} is not in"
                                            f" {self._name(schema)}"))
            if request:
                for name in schema.get("required") or ():
                    if name not in value:
                        at = f"{where}.{name}" if where else name
                        problems.append(Problem("MISSING_REQUIRED_PARAMETER", at,
                                                "Field must be set"))
        return problems

    def _name(self, schema: Mapping[str, Any]) -> str:
        for name, candidate in self.schemas.items():
            if candidate is schema:
                return str(name)
        return "the schema"


@functools.cache
def square_api(path: str = str(FIXTURE)) -> SquareApi:
    """The description, loaded and indexed once per test session."""
    with open(path, encoding="utf-8") as fh:
        return SquareApi(json.load(fh))


__all__ = ["FIXTURE", "Operation", "Problem", "SquareApi", "square_api"]
