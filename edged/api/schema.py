"""A small schema language: one definition validates a request and documents it.

Request bodies are checked against these shapes before any handler runs; the OpenAPI
contract (``GET /v1/openapi.json``) is generated from the same objects, so the two cannot
drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edged.errors import ApiError

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Schema:
    description: str = ""

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self, value: Any, path: str) -> Any:
        raise NotImplementedError


def _wrong(path: str, expected: str, value: Any) -> ApiError:
    got = "null" if value is None else type(value).__name__
    return ApiError("ERR-1004", f"{path} must be {expected}, not {got}", details={"field": path})


def _doc(out: dict[str, Any], description: str) -> dict[str, Any]:
    if description:
        out["description"] = description
    return out


@dataclass(frozen=True)
class Int(Schema):
    minimum: int | None = None
    maximum: int | None = None
    code: str = "ERR-1005"
    nullable: bool = False

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ["integer", "null"] if self.nullable else "integer"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return _doc(out, self.description)

    def validate(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(path, "an integer", value)
        if isinstance(value, float):
            raise ApiError(self.code, f"{path} must be a whole number of minor units"
                           f" (for 12.50 send 1250), not {value}", details={"field": path})
        if self.minimum is not None and value < self.minimum:
            raise ApiError(self.code, f"{path} must be at least {self.minimum}, not {value}",
                           details={"field": path})
        if self.maximum is not None and value > self.maximum:
            raise ApiError(self.code, f"{path} must be at most {self.maximum}, not {value}",
                           details={"field": path})
        return value


@dataclass(frozen=True)
class Str(Schema):
    min_length: int = 1
    max_length: int = 200
    enum: tuple[str, ...] = ()
    pattern: str | None = None
    check: Check | None = None
    code: str = "ERR-1005"
    nullable: bool = False

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ["string", "null"] if self.nullable else "string"}
        if self.enum:
            out["enum"] = list(self.enum)
        else:
            out["minLength"] = self.min_length
            out["maxLength"] = self.max_length
        if self.pattern:
            out["pattern"] = self.pattern
        return _doc(out, self.description)

    def validate(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str):
            raise _wrong(path, "a string", value)
        if self.enum and value not in self.enum:
            raise ApiError(self.code, f"{path} must be one of {', '.join(self.enum)};"
                           f" got {value!r}", details={"field": path})
        if not self.min_length <= len(value) <= self.max_length:
            raise ApiError("ERR-1005", f"{path} must have {self.min_length} to"
                           f" {self.max_length} characters", details={"field": path})
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise ApiError(self.code, f"{path} does not have the expected form"
                           f" ({self.pattern})", details={"field": path})
        if self.check is not None and (problem := self.check(value)):
            raise ApiError(self.code, f"{path} {problem}", details={"field": path})
        return value


@dataclass(frozen=True)
class Bool(Schema):
    def json_schema(self) -> dict[str, Any]:
        return _doc({"type": "boolean"}, self.description)

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise _wrong(path, "true or false", value)
        return value


@dataclass(frozen=True)
class Arr(Schema):
    items: Schema = field(default_factory=Schema)
    min_items: int = 0
    max_items: int = 250

    def json_schema(self) -> dict[str, Any]:
        return _doc({"type": "array", "items": self.items.json_schema(),
                     "minItems": self.min_items, "maxItems": self.max_items}, self.description)

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise _wrong(path, "an array", value)
        if not self.min_items <= len(value) <= self.max_items:
            raise ApiError("ERR-1005", f"{path} must hold {self.min_items} to"
                           f" {self.max_items} entries, not {len(value)}",
                           details={"field": path})
        return [self.items.validate(v, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Obj(Schema):
    props: dict[str, Schema] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()  # exactly one of these must be present
    name: str | None = None  # a named component in the OpenAPI document

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {k: v.json_schema() for k, v in self.props.items()},
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        if self.one_of:
            out["oneOf"] = [{"required": [k]} for k in self.one_of]
        return _doc(out, self.description)

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _wrong(path, "an object", value)
        for key in value:
            if key not in self.props:
                raise ApiError("ERR-1006", f"{path}.{key} is not a field of this call"
                               f" (known: {', '.join(self.props)})",
                               details={"field": f"{path}.{key}"})
        for key in self.required:
            if key not in value:
                raise ApiError("ERR-1003", f"{path}.{key} is required",
                               details={"field": f"{path}.{key}"})
        if self.one_of:
            present = [k for k in self.one_of if value.get(k) is not None]
            if len(present) != 1:
                raise ApiError("ERR-1003", f"{path} must name exactly one of"
                               f" {', '.join(self.one_of)}", details={"field": path})
        return {k: self.props[k].validate(v, f"{path}.{k}") for k, v in value.items()}


@dataclass(frozen=True)
class Free(Schema):
    """A documented value with a fixed JSON Schema (responses only)."""

    schema: dict[str, Any] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        return _doc(dict(self.schema), self.description)

    def validate(self, value: Any, path: str) -> Any:
        return value
