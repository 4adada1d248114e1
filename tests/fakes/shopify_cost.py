"""Shopify's published query-cost rules, computed from a parsed document (tests only).

Shopify counts what a query may cost before it runs it (``extensions.cost.requestedQueryCost``)
and refuses one that asks more than 1000 points (``MAX_COST_EXCEEDED``). Its published rules
(shopify.dev, "GraphQL Admin API rate limits", and ``shared/facts/upstreams.md``), applied here
to the document itself with graphql-core and Shopify's schema, variables resolved:

- a scalar or enum field costs 0;
- an object field costs 1, plus what is selected inside it (a list of objects that is not a
  connection counts as one object);
- an interface or union costs the most expensive of its possible selections;
- a connection (a ``…Connection`` type with ``nodes`` or ``edges``) costs 2, plus ``first``
  (or ``last``) times the cost of one node with everything selected inside it; nested
  connections multiply the same way. ``pageInfo`` and the cursor are part of the 2;
- a mutation field costs 10.

So ``productVariants(first: 250) { nodes { id } }`` requests 2 + 250 x 1 = 252, and a page
of variants with their product, inventory item, level and quantities 2 + 250 x 5 = 1252:
refused. :func:`actual_cost` counts the same way over what the answer holds (the nodes
returned instead of ``first``), as Shopify's ``actualQueryCost`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    is_leaf_type,
    value_from_ast_untyped,
)

#: The most one query may request.
MAX_QUERY_COST = 1000
#: What one mutation field costs.
MUTATION_COST = 10
#: What a connection costs besides its nodes.
CONNECTION_COST = 2
OBJECT_COST = 1

Fragments = Mapping[str, FragmentDefinitionNode]


def max_cost_message(requested: int, max_cost: int = MAX_QUERY_COST) -> str:
    """Shopify's own words when a query asks too much."""
    return (f"Query cost is {requested}, which exceeds the single query max cost limit "
            f"({max_cost}).\n\nSee https://shopify.dev/concepts/about-apis/rate-limits for "
            "more information on how the\ncost of a query is calculated.\n\nTo query larger "
            "amounts of data with fewer limits, bulk operations should be used instead.\nSee "
            "https://shopify.dev/tutorials/perform-bulk-operations-with-admin-api for usage "
            "details.\n")


class _Counter:
    def __init__(self, schema: GraphQLSchema, doc: Any, op: OperationDefinitionNode,
                 variables: Mapping[str, Any]) -> None:
        self.schema = schema
        self.fragments: Fragments = {d.name.value: d for d in doc.definitions
                                     if isinstance(d, FragmentDefinitionNode)}
        self.values = dict(variables)
        for vd in op.variable_definitions or ():
            name = vd.variable.name.value
            if name not in self.values and vd.default_value is not None:
                self.values[name] = value_from_ast_untyped(vd.default_value)

    # -- the rules ------------------------------------------------------------------------

    def selection(self, parent: GraphQLNamedType, sel: SelectionSetNode | None,
                  data: Any = None, *, actual: bool = False) -> int:
        """What a selection set on ``parent`` costs (over ``data`` with ``actual``)."""
        if sel is None:
            return 0
        common = 0
        by_type: dict[str, int] = {}
        for node, condition in self._flatten(parent, sel):
            cost = self.field(parent if condition is None else condition, node, data,
                              actual=actual)
            if condition is None or condition is parent:
                common += cost
            else:
                by_type[condition.name] = by_type.get(condition.name, 0) + cost
        return common + max(by_type.values(), default=0)

    def field(self, parent: GraphQLNamedType, node: FieldNode, data: Any, *,
              actual: bool) -> int:
        name = node.name.value
        if name.startswith("__"):
            return 0
        fields = getattr(parent, "fields", None)
        definition = fields.get(name) if isinstance(fields, Mapping) else None
        if definition is None:
            return 0  # validation refuses it anyway
        named = get_named_type(definition.type)
        if is_leaf_type(named):
            return 0
        key = node.alias.value if node.alias else name
        value = data.get(key) if actual and isinstance(data, Mapping) else None
        if actual and value is None:
            return 0
        if self._is_connection(named):
            return self._connection(named, node, definition, value, actual=actual)
        if actual and isinstance(value, list):
            return OBJECT_COST + max((self.selection(named, node.selection_set, v,
                                                     actual=True) for v in value), default=0)
        return OBJECT_COST + self.selection(named, node.selection_set, value, actual=actual)

    def _connection(self, connection: GraphQLNamedType, node: FieldNode, definition: Any,
                    value: Any, *, actual: bool) -> int:
        node_type = self._node_type(connection)
        selections = list(self._node_selections(connection, node.selection_set))
        if actual:
            nodes = self._returned_nodes(node.selection_set, value)
            return CONNECTION_COST + sum(
                OBJECT_COST + max((self.selection(node_type, s, n, actual=True)
                                   for s in selections), default=0)
                for n in nodes)
        size = self._page_size(node, definition)
        one = OBJECT_COST + max((self.selection(node_type, s) for s in selections), default=0)
        return CONNECTION_COST + size * one

    # -- connections ----------------------------------------------------------------------

    @staticmethod
    def _is_connection(named: GraphQLNamedType) -> bool:
        return (isinstance(named, GraphQLObjectType) and named.name.endswith("Connection")
                and ("nodes" in named.fields or "edges" in named.fields))

    @staticmethod
    def _node_type(connection: GraphQLNamedType) -> GraphQLNamedType:
        assert isinstance(connection, GraphQLObjectType)
        if "nodes" in connection.fields:
            return get_named_type(connection.fields["nodes"].type)
        edge = get_named_type(connection.fields["edges"].type)
        assert isinstance(edge, GraphQLObjectType)
        return get_named_type(edge.fields["node"].type)

    def _node_selections(self, connection: GraphQLNamedType,
                         sel: SelectionSetNode | None) -> Iterable[SelectionSetNode | None]:
        """The selection sets of one node: under ``nodes`` and under ``edges { node }``."""
        for field, _ in self._flatten(connection, sel):
            if field.name.value == "nodes":
                yield field.selection_set
            elif field.name.value == "edges":
                edge = get_named_type(connection.fields["edges"].type)  # type: ignore[attr-defined]
                for inner, _ in self._flatten(edge, field.selection_set):
                    if inner.name.value == "node":
                        yield inner.selection_set

    def _returned_nodes(self, sel: SelectionSetNode | None, value: Any) -> list[Any]:
        if not isinstance(value, Mapping):
            return []
        for field in self._fields(sel):
            key = field.alias.value if field.alias else field.name.value
            if field.name.value == "nodes" and isinstance(value.get(key), list):
                return list(value[key])
            if field.name.value == "edges" and isinstance(value.get(key), list):
                out = []
                for edge in value[key]:
                    for inner in self._fields(field.selection_set):
                        if inner.name.value == "node" and isinstance(edge, Mapping):
                            out.append(edge.get(inner.alias.value if inner.alias
                                                else "node"))
                return out
        return []

    def _page_size(self, node: FieldNode, definition: Any) -> int:
        given: dict[str, Any] = {}
        for arg in node.arguments or ():
            given[arg.name.value] = value_from_ast_untyped(arg.value, self.values)
        for name in ("first", "last"):
            value = given.get(name)
            if value is None and name not in given and name in definition.args:
                default = definition.args[name].default_value
                value = default if isinstance(default, int) else None
            if isinstance(value, int) and not isinstance(value, bool):
                return max(value, 0)
        return 0

    # -- selections -----------------------------------------------------------------------

    def _fields(self, sel: SelectionSetNode | None) -> list[FieldNode]:
        return [f for f, _ in self._flatten(None, sel)]

    def _flatten(self, parent: GraphQLNamedType | None, sel: SelectionSetNode | None,
                 condition: GraphQLNamedType | None = None,
                 ) -> Iterable[tuple[FieldNode, GraphQLNamedType | None]]:
        """The fields of a selection set, each with the type condition it sits under
        (``None``: the parent itself), fragments expanded."""
        if sel is None:
            return
        for item in sel.selections:
            if isinstance(item, FieldNode):
                yield item, condition
            elif isinstance(item, InlineFragmentNode):
                inner = self._condition(parent, item.type_condition.name.value
                                        if item.type_condition else None, condition)
                yield from self._flatten(parent, item.selection_set, inner)
            elif isinstance(item, FragmentSpreadNode):
                fragment = self.fragments.get(item.name.value)
                if fragment is not None:
                    inner = self._condition(parent, fragment.type_condition.name.value,
                                            condition)
                    yield from self._flatten(parent, fragment.selection_set, inner)

    def _condition(self, parent: GraphQLNamedType | None, name: str | None,
                   outer: GraphQLNamedType | None) -> GraphQLNamedType | None:
        if name is None or parent is None:
            return outer
        found = self.schema.get_type(name)
        if found is None or found is parent:
            return outer
        if isinstance(parent, GraphQLObjectType) and isinstance(
                found, GraphQLInterfaceType | GraphQLUnionType):
            return outer  # a condition the parent always meets
        return found


def _root(schema: GraphQLSchema, op: OperationDefinitionNode) -> GraphQLObjectType:
    root = schema.mutation_type if op.operation == OperationType.MUTATION else \
        schema.query_type
    assert root is not None
    return root


def requested_cost(schema: GraphQLSchema, doc: Any, op: OperationDefinitionNode,
                   variables: Mapping[str, Any]) -> int:
    """What Shopify requests for ``op`` before running it (module docstring)."""
    counter = _Counter(schema, doc, op, variables)
    if op.operation == OperationType.MUTATION:
        return MUTATION_COST * max(1, len(counter._fields(op.selection_set)))
    return counter.selection(_root(schema, op), op.selection_set)


def actual_cost(schema: GraphQLSchema, doc: Any, op: OperationDefinitionNode,
                variables: Mapping[str, Any], data: Mapping[str, Any] | None) -> int:
    """What the answer cost: the same rules over the nodes returned."""
    if op.operation == OperationType.MUTATION:
        return requested_cost(schema, doc, op, variables)
    counter = _Counter(schema, doc, op, variables)
    return counter.selection(_root(schema, op), op.selection_set, data or {}, actual=True)


__all__ = ["CONNECTION_COST", "MAX_QUERY_COST", "MUTATION_COST", "OBJECT_COST", "actual_cost",
           "max_cost_message", "requested_cost"]
