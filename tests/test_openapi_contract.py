"""The OpenAPI document declares what the daemon really answers (issue 7, defect 18)."""

from __future__ import annotations

from tests.helpers import Api


async def test_the_contract_matches_the_answers(api: Api) -> None:
    status, doc = await api.get("/v1/openapi.json")
    assert status == 200
    paths = doc["paths"]
    refunds = paths["/v1/payments/{id}/refunds"]["post"]["responses"]
    assert {"201", "202"} <= set(refunds)
    health = paths["/healthz"]["get"]["responses"]
    assert {"200", "503"} <= set(health)
    params = {p["name"]: p["schema"] for p in paths["/v1/payments"]["get"]["parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 200,
                               "default": 50}
    assert "approved" in params["state"]["enum"]
    wait = {p["name"]: p["schema"] for p in paths["/v1/payments/{id}"]["get"]["parameters"]}
    assert wait["wait"]["type"] == "number"
    assert wait["wait"]["maximum"] == 60
    responses = doc["components"]["responses"]
    assert "ERR-1011" in responses["NotFound"]["description"]
    assert "Allow" in responses["MethodNotAllowed"]["headers"]
    create = paths["/v1/payments"]["post"]["responses"]
    assert "ERR-1019" in create["503"]["description"]
    assert "ERR-1017" in create["400"]["description"]
    assert "ERR-1018" in create["408"]["description"]
    # and the daemon answers as declared: a typed parameter out of range is ERR-1013
    status, body = await api.get("/v1/payments?limit=201")
    assert (status, body["error"]["code"]) == (400, "ERR-1013")
    assert "ERR-1013" in paths["/v1/payments"]["get"]["responses"]["400"]["description"]
