"""`GET /openapi.json` describes exactly the routes the server has, each with
the security its declared access asks for (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.openapi import UndescribedRoute, openapi_path
from api.routes import Access, Route, add_routes, declared
from config import Config
from server import make_app

NOWHERE = "postgresql://127.0.0.1:1/none"
SECURITY = {
    Access.PUBLIC: [],
    Access.MANAGEMENT: [{"apiKey": []}],
    Access.CANDIDATE: [{"apiKey": []}, {"sessionToken": []}, {"sessionTokenQuery": []}],
    Access.CANDIDATE_REJOINING: [{"apiKey": []}, {"sessionToken": []},
                                 {"sessionTokenQuery": []}],
    Access.MANAGEMENT_OR_CANDIDATE: [{"apiKey": []}, {"sessionToken": []},
                                     {"sessionTokenQuery": []}],
    Access.REVIEW: [{"apiKey": []}, {"reviewToken": []}, {"reviewTokenQuery": []}],
    Access.REVIEW_DECIDE: [{"apiKey": []}, {"reviewToken": []}, {"reviewTokenQuery": []}],
}


async def test_the_description_and_the_routes_agree(make_client, tmp_path: Path):
    client: TestClient = await make_client(api_key="k")
    resp = await client.get("/openapi.json")  # public, even with an API key
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    described = {
        (method.upper(), path): operation
        for path, operations in spec["paths"].items() for method, operation in operations.items()
    }
    app = client.server.app
    registered = {
        (route.method, openapi_path(route.resource.canonical)): access
        for route, access in declared(app).items() if route.resource is not None
    }
    assert set(described) == set(registered)
    assert len(registered) == len(list(app.router.routes()))
    for key, access in registered.items():
        assert described[key]["security"] == SECURITY[access], key
        assert described[key]["x-access"] == access.value
    schemes = spec["components"]["securitySchemes"]
    assert {name for sec in SECURITY.values() for req in sec for name in req} <= set(schemes)
    # Every path parameter is described.
    for (_, path), operation in described.items():
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert names == set(part[1:-1] for part in path.split("/") if part.startswith("{")), path


async def test_a_route_without_a_description_stops_start_up(tmp_path: Path):
    app = make_app(Config(database_url=NOWHERE, data_dir=tmp_path / "data"))

    async def extra(request: web.Request) -> web.Response:
        return web.Response()

    add_routes(app, [Route("GET", "/extra", extra, Access.PUBLIC)])
    server = TestServer(app, host="127.0.0.1", port=0)
    with pytest.raises(UndescribedRoute, match="/extra has no shape"):
        await server.start_server()
    await server.close()
