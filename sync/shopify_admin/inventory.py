"""Shopify stock changes: ``inventory.adjust`` and ``inventory.set`` rows, batched.

- ``inventory.adjust``: stock deltas, batched (up to 250 rows a batch) into
  ``inventoryAdjustQuantities`` with ``@idempotent(key:)``, name ``available`` and
  ``changeFromQuantity: null`` on every change. Shopify takes one ``reason`` and one
  ``referenceDocumentUri`` per mutation, and the rows of a batch come from several edged
  records (each with its own reason and URI). So a batch's rows are grouped by
  (reason, reference URI); each group is one *aliased* mutation field (``m0``, ``m1``, ...)
  with its own key ``f"{batch key}-{index}"``. The grouping, the inputs and the indexes are
  fixed by :func:`plan_inventory` (stored by the engine before the first send), so every
  retry sends identical variables under identical keys and Shopify replays what it applied.
  Which request carries which aliases is not fixed: up to :data:`MUTATIONS_PER_CALL` go in
  one request, fewer when the shop's bucket could not hold their cost.
- ``inventory.set``: stock counts, batched the same way into ``inventorySetQuantities`` with
  ``changeFromQuantity`` = the row's ``last_known_quantity``; a ``CHANGE_FROM_QUANTITY_STALE``
  answer puts that row in ``WorkResult.conflict`` (ERR-6011), never resent blindly.

Outcomes of a mutation field (each alias is all-or-nothing on Shopify's side):

- applied: every row of the alias in ``applied`` (``{"group_id", "quantity_after"}``);
- userErrors naming a row (``field == ["input", "changes", "3", ...]``): that row in ``dead``
  (``conflict`` for a stale compare-and-swap), the alias's other rows in ``retry_apart`` (they
  were not applied); userErrors on the alias's shared input (reason, reference URI, name):
  every row of the alias is at fault; userErrors naming nothing: ``retry_apart`` +
  ``send_alone``, or ``dead`` when the alias holds a single row;
- ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``: ``retry_apart`` (a new batch gets a new key); for a
  row sent alone under its own key it can only recur, so ``dead`` (ERR-6013);
- ``IDEMPOTENCY_CONCURRENT_REQUEST``, a field error of the "internal" kind: the whole work is
  raised again (TransientError / OutcomeUnknown); the retry replays the applied aliases.
- a request refused for good (not for its cost) kills its own rows only; a request failing
  otherwise after earlier ones settled rows raises :class:`~sync.core.gateway.PartialWork`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.core.contract import ContractError, InventoryAdjust, InventorySet, OutboxKind, decode
from sync.core.errors import OutcomeUnknown, PermanentError, SyncError, TransientError
from sync.core.gateway import OutboxRow, PartialWork, RowFailure, Work, WorkResult
from sync.shopify_admin.client import (
    ERR_DOCUMENT_REJECTED,
    ERR_REFUSED,
    MAX_QUERY_COST,
    CostExceeded,
    GraphQLAnswer,
    ShopifyClient,
    graphql_error,
    mapping,
    messages,
)

logger = logging.getLogger(__name__)

INVENTORY_ADJUST = OutboxKind.INVENTORY_ADJUST
INVENTORY_SET = OutboxKind.INVENTORY_SET

#: Shopify's array inputs hold at most 250 items: the most rows one batch may carry.
MAX_BATCH = 250
#: Aliased mutation fields in one request at most (10 points each: 250 of the 1000 a query
#: may cost); fewer when the shop's bucket is smaller.
MUTATIONS_PER_CALL = 25
MUTATION_COST = 10
#: Marks a stored batch payload built by :func:`plan_inventory`.
BATCH_FORMAT = "edged.shopify.inventory/1"

ERR_USER_ERROR = "ERR-6010"
ERR_STALE = "ERR-6011"
ERR_UNKNOWN_ITEM = "ERR-6012"
ERR_KEY_MISMATCH = "ERR-6013"
ERR_DOCUMENT_FIELD = "ERR-6014"


# -- inventory: batch planning -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _InventoryKind:
    mutation: str
    input_type: str
    list_field: str
    operation: str


INVENTORY_KINDS: Mapping[str, _InventoryKind] = {
    INVENTORY_ADJUST: _InventoryKind("inventoryAdjustQuantities",
                                     "InventoryAdjustQuantitiesInput", "changes",
                                     "EdgedInventoryAdjust"),
    INVENTORY_SET: _InventoryKind("inventorySetQuantities", "InventorySetQuantitiesInput",
                                  "quantities", "EdgedInventorySet"),
}

_GROUP_SELECTION = """{
    inventoryAdjustmentGroup {
      id
      changes(quantityNames: ["available"]) { name delta quantityAfterChange item { id } }
    }
    userErrors { field message code }
  }"""


def _inventory_entry(kind: str, stored: Mapping[str, Any],
                     location_id: str) -> tuple[str, str | None, str, dict[str, Any]]:
    """(reason, reference URI, item id, the change/quantity input) of one row."""
    payload = decode(kind, stored)
    assert isinstance(payload, InventoryAdjust | InventorySet)
    item = payload.inventory_item_id
    if not item or not payload.reason:
        raise ContractError("inventory_item_id and reason must not be empty")
    location = payload.location_id or location_id
    change: dict[str, Any] = {"inventoryItemId": item, "locationId": location}
    if isinstance(payload, InventoryAdjust):
        change.update(delta=payload.delta, changeFromQuantity=None)
    else:
        change.update(quantity=payload.quantity,
                      changeFromQuantity=payload.last_known_quantity)
    return payload.reason, payload.reference_uri, item, change


def plan_inventory(kind: str, rows: Sequence[OutboxRow], location_id: str) -> dict[str, Any]:
    """The fixed variables of an inventory batch (see the module docstring).

    ``{"format", "kind", "calls": [[{"index", "rows", "input"}, ...], ...], "invalid":
    [{"row", "message"}]}``: each entry of a call is one aliased mutation field. Rows whose
    payload is unusable are listed in ``invalid`` (they die with ERR-6004) instead of
    raising, since this runs inside the engine's claim.
    """
    spec = INVENTORY_KINDS[kind]
    invalid: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    open_groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for row in rows:
        try:
            reason, reference, item, change = _inventory_entry(kind, row.payload, location_id)
        except ContractError as exc:
            invalid.append({"row": row.id, "message": exc.message})
            continue
        key = (reason, reference)
        group = open_groups.get(key)
        if kind == INVENTORY_SET and (group is not (groups[-1] if groups else None)
                                      or (group is not None and item in group["items"])):
            # counts keep their order and never name an item twice in one mutation
            group = None
        if group is None or len(group["rows"]) >= MAX_BATCH:
            inp: dict[str, Any] = {"name": "available", "reason": reason, spec.list_field: []}
            if reference is not None:
                inp["referenceDocumentUri"] = reference
            group = {"rows": [], "items": set(), "input": inp}
            groups.append(group)
            open_groups[key] = group
        group["rows"].append(row.id)
        group["items"].add(item)
        group["input"][spec.list_field].append(change)
    entries = [{"index": i, "rows": g["rows"], "input": g["input"]}
               for i, g in enumerate(groups)]
    calls = [entries[i:i + MUTATIONS_PER_CALL]
             for i in range(0, len(entries), MUTATIONS_PER_CALL)]
    return {"format": BATCH_FORMAT, "kind": kind, "calls": calls, "invalid": invalid}


def inventory_document(kind: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """One document with an aliased, idempotent mutation field per entry."""
    spec = INVENTORY_KINDS[kind]
    params = ", ".join(f"$in{e['index']}: {spec.input_type}!, $k{e['index']}: String!"
                       for e in entries)
    fields = "\n".join(f"  m{e['index']}: {spec.mutation}(input: $in{e['index']}) "
                       f"@idempotent(key: $k{e['index']}) {_GROUP_SELECTION}"
                       for e in entries)
    return f"mutation {spec.operation}({params}) {{\n{fields}\n}}"


# -- inventory: outcomes -----------------------------------------------------------------

_STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
_UNKNOWN_ITEM_CODES = frozenset({"INVALID_INVENTORY_ITEM", "INVALID_LOCATION",
                                 "ITEM_NOT_STOCKED_AT_LOCATION", "NON_MUTABLE_INVENTORY_ITEM"})
_DOCUMENT_CODES = frozenset({"INVALID_REASON", "INVALID_REFERENCE_DOCUMENT",
                             "INVALID_LEDGER_DOCUMENT", "INVALID_AVAILABLE_DOCUMENT",
                             "INVALID_QUANTITY_DOCUMENT", "MAX_ONE_LEDGER_DOCUMENT",
                             "INTERNAL_LEDGER_DOCUMENT"})


def user_error_code(code: str | None) -> str:
    """The ERR-601x code of an inventory userError code."""
    if code in _STALE_CODES:
        return ERR_STALE
    if code in _UNKNOWN_ITEM_CODES:
        return ERR_UNKNOWN_ITEM
    if code == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH":
        return ERR_KEY_MISMATCH
    if code in _DOCUMENT_CODES:
        return ERR_DOCUMENT_FIELD
    return ERR_USER_ERROR


def _failure(err: Mapping[str, Any]) -> RowFailure:
    code = err.get("code")
    code = code if isinstance(code, str) else None
    field_path = err.get("field")
    where = ".".join(str(p) for p in field_path) if isinstance(field_path, list) else ""
    message = str(err.get("message") or "refused")
    detail = f"{code or 'userError'}{' at ' + where if where else ''}: {message}"
    return RowFailure(user_error_code(code), f"Shopify: {detail}")


@dataclass
class _Outcome:
    applied: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    dead: dict[int, RowFailure] = field(default_factory=dict)
    conflict: dict[int, RowFailure] = field(default_factory=dict)
    retry_apart: list[int] = field(default_factory=list)
    send_alone: list[int] = field(default_factory=list)

    def settled(self) -> bool:
        return bool(self.applied or self.dead or self.conflict or self.retry_apart)

    def fail(self, row_id: int, failure: RowFailure) -> None:
        if failure.code == ERR_STALE:
            self.conflict[row_id] = failure
        else:
            self.dead[row_id] = failure

    def result(self) -> WorkResult:
        return WorkResult(applied=self.applied, dead=self.dead, conflict=self.conflict,
                          retry_apart=tuple(self.retry_apart),
                          send_alone=tuple(self.send_alone))


def _applied_rows(entry: Mapping[str, Any], spec: _InventoryKind,
                  group: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Row id → ``{"group_id", "quantity_after"?}`` for an applied alias.

    ``quantity_after`` is Shopify's ``quantityAfterChange`` of the row's item; when an item
    appears more than once and Shopify lists fewer changes than rows, only the item's last
    row gets the final quantity (the others' intermediate quantities are not known).
    """
    group_id = group.get("id")
    changes = group.get("changes") if isinstance(group.get("changes"), list) else []
    by_item: dict[str, list[Any]] = defaultdict(list)
    for change in changes or ():
        if not isinstance(change, Mapping) or change.get("name", "available") != "available":
            continue
        item = mapping(change.get("item"))
        if item is not None and isinstance(item.get("id"), str):
            by_item[item["id"]].append(change.get("quantityAfterChange"))
    inputs = entry["input"][spec.list_field]
    rows_of_item: dict[str, list[int]] = defaultdict(list)
    for row_id, change_input in zip(entry["rows"], inputs, strict=True):
        rows_of_item[change_input["inventoryItemId"]].append(row_id)
    out: dict[int, dict[str, Any]] = {}
    for item_id, row_ids in rows_of_item.items():
        after = by_item.get(item_id, [])
        for pos, row_id in enumerate(row_ids):
            answer: dict[str, Any] = {"group_id": group_id}
            if len(after) == len(row_ids):
                quantity = after[pos]
            elif after and pos == len(row_ids) - 1:
                quantity = after[-1]
            else:
                quantity = None
            if isinstance(quantity, int) and not isinstance(quantity, bool):
                answer["quantity_after"] = quantity
            out[row_id] = answer
    return out


def _alias_variables(key: str, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each alias's input and its own key, ``{batch key}-{index}``, whatever the request."""
    variables: dict[str, Any] = {}
    for e in entries:
        variables[f"in{e['index']}"] = e["input"]
        variables[f"k{e['index']}"] = f"{key}-{e['index']}"
    return variables


def _cost_exceeded(exc: PermanentError) -> bool:
    """Shopify's MAX_COST_EXCEEDED (or the local bucket's): the request, not its rows."""
    return isinstance(exc, CostExceeded) or exc.code == "MAX_COST_EXCEEDED"


def _kill_aliases(out: _Outcome, entries: Sequence[Mapping[str, Any]], live: set[int],
                  exc: PermanentError) -> None:
    for e in entries:
        for row_id in e["rows"]:
            if row_id in live:
                out.dead[row_id] = RowFailure(
                    exc.code if exc.code and exc.code.startswith("ERR-")
                    else ERR_DOCUMENT_REJECTED, exc.message)


def _judge_answer(out: _Outcome, entry: Mapping[str, Any], spec: _InventoryKind,
                  answer: GraphQLAnswer, live: set[int], *, own_key: bool) -> None:
    """The outcome of one alias in ``answer`` (or raise for the whole work)."""
    alias = f"m{entry['index']}"
    payload = mapping(answer.data.get(alias))
    if payload is None:
        error = graphql_error(answer.field_errors(alias) or list(answer.errors),
                              operation=spec.operation, mutation=True)
        if not isinstance(error, PermanentError):
            raise error
        _kill_aliases(out, [entry], live, error)
        return
    _judge_alias(out, entry, spec, payload, live, own_key=own_key)


def _judge_alias(out: _Outcome, entry: Mapping[str, Any], spec: _InventoryKind,
                 payload: Mapping[str, Any], live: set[int], *, own_key: bool) -> None:
    """Record the outcome of one alias (or raise for the whole work)."""
    rows: list[int] = list(entry["rows"])
    mine = [r for r in rows if r in live]
    user_errors = [e for e in payload.get("userErrors") or () if isinstance(e, Mapping)]
    group = mapping(payload.get("inventoryAdjustmentGroup"))
    if not user_errors and group is not None:
        for row_id, answer in _applied_rows(entry, spec, group).items():
            if row_id in live:
                out.applied[row_id] = answer
        return
    if not user_errors:
        raise OutcomeUnknown(f"Shopify answered {spec.mutation} with neither a group nor "
                             "userErrors")
    codes = {e.get("code") for e in user_errors}
    if "IDEMPOTENCY_CONCURRENT_REQUEST" in codes:
        raise TransientError(f"Shopify is still running {spec.mutation} under this "
                             "idempotency key; retrying later")
    if "IDEMPOTENCY_KEY_PARAMETER_MISMATCH" in codes:
        mismatch = next(e for e in user_errors
                        if e.get("code") == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH")
        if own_key:  # a row sent alone under its own key: a new attempt can only recur
            for row_id in mine:
                out.fail(row_id, _failure(mismatch))
        else:
            out.retry_apart.extend(mine)
        logger.error("shopify %s: idempotency key used with other variables (rows %s)",
                     spec.mutation, rows)
        return
    culprits: dict[int, RowFailure] = {}
    unidentified: list[Mapping[str, Any]] = []
    for err in user_errors:
        path = err.get("field")
        path = [str(p) for p in path] if isinstance(path, list) else []
        if len(path) >= 3 and path[1] == spec.list_field and path[2].isdigit() \
                and int(path[2]) < len(rows):
            culprits.setdefault(rows[int(path[2])], _failure(err))
        elif len(path) >= 2 and path[1] != spec.list_field:
            # the alias's shared input (reason, reference URI, name): every row carries it
            for row_id in rows:
                culprits.setdefault(row_id, _failure(err))
        else:
            unidentified.append(err)
    if not culprits and len(rows) == 1:
        culprits[rows[0]] = _failure(unidentified[0])
        unidentified = []
    for row_id in mine:
        if row_id in culprits:
            out.fail(row_id, culprits[row_id])
        else:
            out.retry_apart.append(row_id)
            if unidentified:
                out.send_alone.append(row_id)
    logger.warning("shopify %s refused %d row(s): %s", spec.mutation, len(rows),
                   messages({"message": f"{e.get('code')} {e.get('field')}: "
                              f"{e.get('message')}"} for e in user_errors))


class InventorySender:
    """Sends the inventory works of one shop (see the module docstring)."""

    def __init__(self, client: ShopifyClient, location_id: str) -> None:
        self.client = client
        self._location_id = location_id
        self._alias_cap = MUTATIONS_PER_CALL  # lowered when Shopify refuses a request's cost

    async def send(self, work: Work) -> WorkResult:
        spec = INVENTORY_KINDS[work.kind]
        own_key = work.payload.get("format") != BATCH_FORMAT
        plan: Mapping[str, Any] = (plan_inventory(work.kind, work.rows,
                                                  self._location_id)
                                   if own_key else work.payload)
        live = {r.id for r in work.rows}
        out = _Outcome()
        planned: set[int] = set()
        for bad in plan.get("invalid") or ():
            planned.add(bad["row"])
            if bad["row"] in live:
                out.dead[bad["row"]] = RowFailure(ERR_REFUSED, f"unusable outbox row: "
                                                                f"{bad['message']}")
        # The stored plan fixes each alias's input and key, not which request carries it:
        # aliases go in requests that never cost more than the bucket can hold.
        entries = []
        for call in plan["calls"]:
            for entry in call:
                planned.update(entry["rows"])
            entries += [e for e in call if live.intersection(e["rows"])]
        try:
            while entries:
                chunk = entries[:self._aliases_per_call()]
                try:
                    answer = await self.client.execute(
                        spec.operation, inventory_document(work.kind, chunk),
                        _alias_variables(work.idempotency_key, chunk),
                        cost=MUTATION_COST * len(chunk), mutation=True)
                except PermanentError as exc:
                    if _cost_exceeded(exc) and len(chunk) > 1:
                        self._alias_cap = len(chunk) // 2  # and the bucket learned its size
                        logger.warning("shopify %s: %d aliases cost more than Shopify takes"
                                       " in one request; sending fewer", spec.mutation,
                                       len(chunk))
                        continue
                    _kill_aliases(out, chunk, live, exc)  # this request only: go on
                    entries = entries[len(chunk):]
                    continue
                entries = entries[len(chunk):]
                for e in chunk:
                    _judge_answer(out, e, spec, answer, live, own_key=own_key)
        except SyncError as exc:
            if out.settled():  # earlier requests settled rows: they stay settled
                raise PartialWork(out.result(), exc) from exc
            raise
        for row_id in sorted(live - planned):
            logger.error("shopify %s: row %d is not in its batch's stored variables; "
                         "retrying it apart", work.kind, row_id)
            out.retry_apart.append(row_id)
        result = out.result()
        logger.info("shopify %s: %d applied, %d dead, %d conflict, %d to retry apart",
                    work.kind, len(result.applied), len(result.dead), len(result.conflict),
                    len(result.retry_apart))
        return result

    def _aliases_per_call(self) -> int:
        """How many aliased mutations one request may carry: their cost within both the
        single-query limit and the bucket's ``maximumAvailable``."""
        most = min(MAX_QUERY_COST, self.client.bucket.snapshot().maximum_available)
        fits = int(most // MUTATION_COST)
        return max(1, min(MUTATIONS_PER_CALL, self._alias_cap, fits))
