"""The fake Shopify's bulk operations: a query run in the background, served as JSONL.

Published facts it rests on (shopify.dev "Perform bulk operations with the GraphQL Admin
API", ``bulkOperationRunQuery``, ``currentBulkOperation``, ``BulkOperation`` in the Admin
schema of tests/fixtures/shopify/):

- ``bulkOperationRunQuery(query:)`` takes a query without variables; it must hold at least
  one connection, at most five, nested at most two deep, and may not use the top-level
  ``node`` or ``nodes`` fields; connections take no ``first`` (the whole list is read); a
  query that breaks these or is not valid against the schema is a userError ``INVALID``;
- one bulk query at a time per shop and app: another while one is ``CREATED`` or
  ``RUNNING`` is the userError ``OPERATION_IN_PROGRESS``;
- the operation goes ``CREATED`` → ``RUNNING`` → ``COMPLETED`` (or ``FAILED``, ``CANCELED``,
  ``EXPIRED``); ``currentBulkOperation`` shows the app's latest one, with ``objectCount`` and,
  once completed, ``url``: a JSONL file, one object a line; the nodes of a nested connection
  come as lines of their own after their parent, with ``__parentId``; an operation that read
  nothing has no ``url``;
- ``bulk_operations/finish`` is sent when it ends; the file is fetched without the Admin
  token (a signed URL); it expires after a week (``expire()`` plays that: 403 on the URL).

The operation finishes ``delay`` seconds (real time) after it is created, or when a test calls
``finish()`` (``auto=False`` holds it running). The file is served by the fake's own server
at ``/bulk/{n}.jsonl`` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from graphql import (
    FieldNode,
    GraphQLResolveInfo,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    execute_sync,
    parse,
    validate,
)
from graphql.error import GraphQLSyntaxError

from .shopify import _Ctx, _iso, gid_number

if TYPE_CHECKING:
    from .shopify import FakeShopify

MAX_CONNECTIONS = 5
MAX_DEPTH = 2


class _BulkCtx(_Ctx):
    bulk = True


@dataclass
class BulkOperation:
    n: int
    id: str
    query: str
    status: str
    created_at: datetime
    completed_at: datetime | None = None
    error_code: str | None = None
    object_count: int = 0
    root_count: int = 0
    body: bytes = b""
    expired: bool = False
    run_seconds: float = 0.0
    """How long the fake took to run the query and write the file (Shopify's side)."""


def _connections(sel: SelectionSetNode | None, depth: int = 0) -> tuple[int, int]:
    """(connections, deepest nesting) in a selection (a field with ``edges`` or ``nodes``)."""
    count, deepest = 0, 0
    for node in sel.selections if sel else ():
        if isinstance(node, InlineFragmentNode):
            c, d = _connections(node.selection_set, depth)
        elif isinstance(node, FieldNode):
            inner = {s.name.value for s in node.selection_set.selections
                     if isinstance(s, FieldNode)} if node.selection_set else set()
            if inner & {"edges", "nodes"}:
                c, d = _connections(node.selection_set, depth + 1)
                c, d = c + 1, max(d, depth + 1)
            else:
                c, d = _connections(node.selection_set, depth)
        else:
            continue
        count, deepest = count + c, max(deepest, d)
    return count, deepest


def _nodes(connection: dict[str, Any]) -> list[Any]:
    if "edges" in connection:
        return [e["node"] for e in connection["edges"] or ()]
    return list(connection.get("nodes") or ())


def _is_connection(value: Any) -> bool:
    return isinstance(value, dict) and ("edges" in value or "nodes" in value)


def flatten(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONL lines of a bulk query's result (nested connections after their parent,
    with ``__parentId``)."""
    lines: list[dict[str, Any]] = []

    def emit(node: dict[str, Any], parent: str | None) -> None:
        own = {k: v for k, v in node.items() if not _is_connection(v)}
        if parent is not None:
            own["__parentId"] = parent
        lines.append(own)
        for value in node.values():
            if _is_connection(value):
                for child in _nodes(value):
                    emit(child, node.get("id"))

    for value in data.values():
        if _is_connection(value):
            for node in _nodes(value):
                emit(node, None)
    return lines


class FakeBulk:
    def __init__(self, shop: FakeShopify, *, delay: float = 0.05, auto: bool = True) -> None:
        self.shop = shop
        self.delay = delay
        self.auto = auto
        self.operations: list[BulkOperation] = []
        self._tasks: set[asyncio.Task[None]] = set()
        shop.extend_root({
            "bulkOperationRunQuery": self._m_run,
            "currentBulkOperation": self._q_current,
        })
        shop._route_hooks.append(self._routes)

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/bulk/{name}", self._download)

    async def _download(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        op = next((o for o in self.operations if f"{o.n}.jsonl" == name), None)
        if op is None or op.status != "COMPLETED":
            return web.Response(status=404, text="NoSuchKey")
        if op.expired:
            return web.Response(status=403, text="AccessDenied: Request has expired")
        return web.Response(body=op.body, content_type="application/jsonl")

    def url(self, op: BulkOperation) -> str:
        return f"{self.shop.base_url}/bulk/{op.n}.jsonl"

    def _view(self, op: BulkOperation) -> dict[str, Any]:
        done = op.status == "COMPLETED" and op.object_count > 0
        return {"__typename": "BulkOperation", "id": op.id, "status": op.status,
                "type": "QUERY", "query": op.query, "createdAt": _iso(op.created_at),
                "completedAt": _iso(op.completed_at) if op.completed_at else None,
                "errorCode": op.error_code, "objectCount": str(op.object_count),
                "rootObjectCount": str(op.root_count), "fileSize":
                str(len(op.body)) if done else None,
                "url": self.url(op) if done and not op.expired else None,
                "partialDataUrl": None}

    def _q_current(self, info: GraphQLResolveInfo[Any],
                   type: str = "QUERY") -> dict[str, Any] | None:
        if type != "QUERY" or not self.operations:
            return None
        return self._view(self.operations[-1])

    @staticmethod
    def _invalid(message: str) -> dict[str, Any]:
        return {"bulkOperation": None, "userErrors": [{
            "__typename": "BulkOperationUserError", "field": ["query"], "message": message,
            "code": "INVALID"}]}

    def _m_run(self, info: GraphQLResolveInfo[Any], query: str) -> dict[str, Any]:
        if any(d.name.value == "idempotent" for d in info.field_nodes[0].directives or ()):
            from .shopify import _top  # noqa: PLC0415

            raise _top("The @idempotent directive is not supported on bulkOperationRunQuery.",
                       "BAD_REQUEST")
        if any(o.status in ("CREATED", "RUNNING") for o in self.operations):
            return {"bulkOperation": None, "userErrors": [{
                "__typename": "BulkOperationUserError", "field": None,
                "message": "A bulk query operation for this app and shop is already in"
                " progress.", "code": "OPERATION_IN_PROGRESS"}]}
        try:
            doc = parse(query)
        except GraphQLSyntaxError as exc:
            return self._invalid(f"Invalid bulk query: {exc.message}")
        errors = validate(self.shop.schema, doc)
        if errors:
            return self._invalid("Invalid bulk query: " + "; ".join(e.message for e in errors))
        ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
        if len(ops) != 1 or ops[0].variable_definitions:
            return self._invalid("Bulk queries take one operation and no variables.")
        roots = {s.name.value for s in ops[0].selection_set.selections
                 if isinstance(s, FieldNode)}
        if roots & {"node", "nodes"}:
            return self._invalid("Bulk queries cannot contain a top level `node` or `nodes`"
                                 " field.")
        count, depth = _connections(ops[0].selection_set)
        if count == 0:
            return self._invalid("Bulk queries must contain at least one connection.")
        if count > MAX_CONNECTIONS:
            return self._invalid(f"Bulk queries cannot contain more than {MAX_CONNECTIONS}"
                                 " connections.")
        if depth > MAX_DEPTH:
            return self._invalid(f"Bulk queries cannot contain connections with a nesting"
                                 f" depth greater than {MAX_DEPTH}.")
        n = len(self.operations) + 1
        op = BulkOperation(n, f"gid://shopify/BulkOperation/{7000 + n}", query, "RUNNING",
                           self.shop.now())
        self.operations.append(op)
        if self.auto:
            task = asyncio.get_running_loop().create_task(self._finish_later(op))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return {"bulkOperation": self._view(op), "userErrors": []}

    async def _finish_later(self, op: BulkOperation) -> None:
        await asyncio.sleep(self.delay)
        if op.status == "RUNNING":
            self.finish(op)

    def finish(self, op: BulkOperation | None = None, *, status: str = "COMPLETED",
               error_code: str | None = None) -> BulkOperation:
        """End ``op`` (the latest by default): run its query now and serve the file."""
        op = op or self.operations[-1]
        started = time.perf_counter()
        if status == "COMPLETED":
            result = execute_sync(self.shop.schema, parse(op.query), root_value=self.shop._root,
                                  context_value=_BulkCtx("unstable"),
                                  field_resolver=_resolver())
            if result.errors:
                status, error_code = "FAILED", "INTERNAL_SERVER_ERROR"
            else:
                lines = flatten(result.data or {})
                op.object_count = len(lines)
                op.root_count = sum(1 for ln in lines if "__parentId" not in ln)
                op.body = b"".join(json.dumps(ln, separators=(",", ":")).encode() + b"\n"
                                   for ln in lines)
        op.status, op.error_code = status, error_code
        op.completed_at = self.shop.now()
        op.run_seconds = time.perf_counter() - started
        self.shop.webhooks.emit("bulk_operations/finish", {
            "admin_graphql_api_id": op.id, "completed_at": _iso(op.completed_at),
            "created_at": _iso(op.created_at), "error_code": error_code.lower()
            if error_code else None, "status": status.lower(), "type": "query"})
        return op

    def expire(self, op: BulkOperation | None = None) -> None:
        (op or self.operations[-1]).expired = True

    def number(self, op_id: str) -> int:
        return gid_number(op_id)


def _resolver() -> Any:
    from .shopify import _field_resolver  # noqa: PLC0415

    return _field_resolver


__all__ = ["BulkOperation", "FakeBulk", "flatten"]
