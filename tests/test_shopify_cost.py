"""The Shopify fake counts a query's cost as Shopify publishes it (issue 16 item 2).

Each case rests on Shopify's published rules ("GraphQL Admin API rate limits" on
shopify.dev, and ``shared/facts/upstreams.md``): a scalar or enum field costs 0, an object
1, a connection 2 + ``first``/``last`` times the cost of one node with everything selected
inside it, nested connections multiplied; an interface or union the most of its possible
selections; a mutation field 10; a query may not request more than 1000
(``MAX_COST_EXCEEDED``, refused before it runs). The figures are computed by
``tests/fakes/shopify_cost.py`` from the parsed document and Shopify's schema.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from graphql import GraphQLSchema, parse
from graphql.utilities import get_operation_ast

from sync.shopify_admin.orders import FIND_ORDER_COST, FIND_ORDER_DOCUMENT
from sync.shopify_admin.pull import PAGE_SIZE, PULL_DOCUMENT, pull_cost
from tests.fakes.shopify import FakeShopify, load_admin_schema
from tests.fakes.shopify_cost import actual_cost, requested_cost

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return load_admin_schema()


def cost(schema: GraphQLSchema, document: str, variables: dict[str, Any] | None = None) -> int:
    doc = parse(document)
    op = get_operation_ast(doc)
    assert op is not None
    return requested_cost(schema, doc, op, variables or {})


def test_scalars_are_free_and_an_object_costs_one(schema: GraphQLSchema) -> None:
    """Shopify's own example: ``shop`` is an object (1); its scalars cost nothing."""
    assert cost(schema, "{ shop { id name currencyCode } }") == 1


def test_a_connection_costs_two_plus_first_times_one_node(schema: GraphQLSchema) -> None:
    """``first: 10`` of ids: 2 + 10 x 1 = 12, the figure Shopify answers for it."""
    assert cost(schema, "{ products(first: 10) { edges { node { id } } } }") == 12
    assert cost(schema, "{ productVariants(first: 250) { nodes { id } } }") == 252
    assert cost(schema, "{ productVariants(last: 3) { pageInfo { hasNextPage } nodes { id } }"
                        " }") == 2 + 3


def test_a_node_costs_everything_selected_inside_it(schema: GraphQLSchema) -> None:
    """The issue's figure: 250 variants with product, item, level and quantities request
    2 + 250 x 5 = 1252 (the variant, product, item, level and quantities, 1 each)."""
    document = """query($loc: ID!) { productVariants(first: 250) { nodes {
        id sku product { id title } inventoryItem { id inventoryLevel(locationId: $loc) {
        quantities(names: ["available"]) { name quantity } } } } } }"""
    assert cost(schema, document, {"loc": "gid://shopify/Location/1"}) == 1252


def test_nested_connections_multiply(schema: GraphQLSchema) -> None:
    document = "{ products(first: 10) { nodes { id variants(first: 5) { nodes { id } } } } }"
    assert cost(schema, document) == 2 + 10 * (1 + 2 + 5 * 1)


def test_variables_and_their_defaults_are_resolved(schema: GraphQLSchema) -> None:
    document = "query($n: Int = 40) { orders(first: $n) { nodes { id } } }"
    assert cost(schema, document) == 42
    assert cost(schema, document, {"n": 5}) == 7


def test_aliases_and_fragments_count_each_time(schema: GraphQLSchema) -> None:
    document = """query { a: shop { id } b: shop { ...S } }
                  fragment S on Shop { name }"""
    assert cost(schema, document) == 2


def test_an_abstract_type_costs_its_most_expensive_selection(schema: GraphQLSchema) -> None:
    document = """{ node(id: "gid://shopify/Product/1") { id
        ... on Product { title }
        ... on ProductVariant { product { id } inventoryItem { id } } } }"""
    assert cost(schema, document) == 1 + 2


def test_a_mutation_field_costs_ten(schema: GraphQLSchema) -> None:
    document = """mutation { a: inventoryAdjustQuantities(input: {name: "available",
        reason: "correction", changes: []}) { userErrors { message } }
        b: inventoryAdjustQuantities(input: {name: "available", reason: "correction",
        changes: []}) { inventoryAdjustmentGroup { id changes { delta } } } }"""
    assert cost(schema, document) == 20


def test_the_actual_cost_counts_the_nodes_returned(schema: GraphQLSchema) -> None:
    doc = parse("{ products(first: 10) { nodes { id } } }")
    op = get_operation_ast(doc)
    assert op is not None
    data = {"products": {"nodes": [{"id": "a"}, {"id": "b"}]}}
    assert actual_cost(schema, doc, op, {}, data) == 2 + 2


def test_the_daemons_own_arithmetic_agrees_with_shopifys(schema: GraphQLSchema) -> None:
    """The figures the daemon charges its bucket with are the ones Shopify computes."""
    variables = {"first": PAGE_SIZE, "after": None, "locationId": "gid://shopify/Location/1"}
    assert cost(schema, PULL_DOCUMENT, variables) == pull_cost(PAGE_SIZE) == 998
    assert cost(schema, PULL_DOCUMENT, {**variables, "first": 250}) == 1253 > 1000
    assert cost(schema, FIND_ORDER_DOCUMENT, {"q": "x"}) == FIND_ORDER_COST == 7


async def test_a_query_over_1000_is_refused_before_it_runs(schema: GraphQLSchema) -> None:
    """Shopify's answer: HTTP 200, no data, one error with code MAX_COST_EXCEEDED, the
    cost and the limit, and its own message."""
    async with FakeShopify(schema=schema) as shop, aiohttp.ClientSession() as http:
        shop.seed_variant("A", available=1)
        body = {"query": PULL_DOCUMENT, "operationName": "EdgedPullVariants",
                "variables": {"first": 250, "after": None,
                              "locationId": shop.default_location_id}}
        async with http.post(shop.graphql_url(), json=body,
                             headers={"X-Shopify-Access-Token": "t"}) as r:
            assert r.status == 200
            answer = await r.json()
        assert "data" not in answer
        [error] = answer["errors"]
        assert error["extensions"]["code"] == "MAX_COST_EXCEEDED"
        assert (error["extensions"]["cost"], error["extensions"]["maxCost"]) == (1253, 1000)
        assert error["message"].startswith("Query cost is 1253, which exceeds the single"
                                           " query max cost limit (1000).")
        assert answer["extensions"]["cost"]["requestedQueryCost"] == 1253
        assert shop.bucket.available == shop.bucket.maximum  # nothing was charged
        assert [r.code for r in shop.rejected] == ["MAX_COST_EXCEEDED"]
