"""Every route declares who may call it; the app will not start otherwise."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.routes import Access, UndeclaredRoute, check_declared, declared
from config import Config
from server import make_app
from tests.conftest import AppFactory

# No server listens here: reaching the database would fail differently.
NOWHERE = "postgresql://127.0.0.1:1/none"

M, C, P, R = Access.MANAGEMENT, Access.CANDIDATE, Access.PUBLIC, Access.REVIEW
S = "/sessions/{session_id}"
ROUTE_TABLE = {
    ("POST", "/sessions"): M, ("GET", "/sessions"): M, ("HEAD", "/sessions"): M,
    ("GET", S): M, ("HEAD", S): M, ("DELETE", S): M,
    ("GET", f"{S}/info"): M, ("HEAD", f"{S}/info"): M,
    ("POST", f"{S}/save"): M,
    ("POST", f"{S}/end"): Access.MANAGEMENT_OR_CANDIDATE,
    ("GET", f"{S}/resume"): M, ("HEAD", f"{S}/resume"): M,
    ("GET", f"{S}/evidence/{{name}}"): R, ("HEAD", f"{S}/evidence/{{name}}"): R,
    ("GET", f"{S}/recording"): R, ("HEAD", f"{S}/recording"): R,
    ("GET", f"{S}/review"): R, ("HEAD", f"{S}/review"): R,
    ("PUT", f"{S}/review"): Access.REVIEW_DECIDE,
    ("PUT", f"{S}/flags/{{flag}}"): Access.REVIEW_DECIDE,
    ("POST", f"{S}/review-tokens"): M,
    ("GET", "/review"): P, ("HEAD", "/review"): P,
    ("GET", "/review/{session_id}"): P, ("HEAD", "/review/{session_id}"): P,
    ("POST", f"{S}/offer"): Access.CANDIDATE_REJOINING,
    ("POST", "/whip/{session_id}"): Access.CANDIDATE_REJOINING,
    ("DELETE", "/whip/{session_id}/resource"): C,
    ("PATCH", "/whip/{session_id}/resource"): C,
    ("GET", "/healthz"): P, ("HEAD", "/healthz"): P,
    ("GET", "/metrics"): M, ("HEAD", "/metrics"): M,
    ("POST", "/admin/drain"): M, ("DELETE", "/admin/drain"): M,
    ("GET", "/admin/nodes"): M, ("HEAD", "/admin/nodes"): M,
    ("GET", "/config"): P, ("HEAD", "/config"): P,
    ("GET", "/openapi.json"): P, ("HEAD", "/openapi.json"): P,
    ("GET", "/"): P, ("HEAD", "/"): P,
    ("GET", "/static"): P, ("HEAD", "/static"): P,
}


async def test_every_route_declares_its_access(tmp_path: Path):
    app = make_app(Config(database_url=NOWHERE, data_dir=tmp_path / "data"))
    await check_declared(app)  # does not raise
    routes = list(app.router.routes())
    assert all(route in declared(app) for route in routes)
    table = {
        (route.method, route.resource.canonical.replace(r"{name:[A-Za-z0-9_.-]+\.jpg}", "{name}")):
        declared(app)[route]
        for route in routes if route.resource is not None
    }
    assert table == ROUTE_TABLE


async def test_an_undeclared_route_stops_start_up(tmp_path: Path):
    app = make_app(Config(database_url=NOWHERE, data_dir=tmp_path / "data"))

    async def forgotten(request: web.Request) -> web.Response:
        return web.Response(text="no credential asked")

    app.router.add_get("/forgotten", forgotten)
    server = TestServer(app, host="127.0.0.1", port=0)
    with pytest.raises(UndeclaredRoute, match="GET /forgotten"):
        await server.start_server()
    await server.close()
    assert not (tmp_path / "data").exists()  # refused before anything started


async def test_candidate_routes_need_the_live_sessions_token(make_client: AppFactory):
    client = await make_client(api_key="k")
    key = {"Authorization": "Bearer k"}
    resp = await client.post("/sessions", json={"job_role": "QA"}, headers=key)
    body = await resp.json()
    sid, token = body["session_id"], body["token"]
    other = await (await client.post("/sessions", json={"job_role": "QA"}, headers=key)).json()
    resource = f"/whip/{sid}/resource"
    resp = await client.delete(resource)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    wrong = {"Authorization": f"Bearer {other['token']}"}  # another session's token
    assert (await client.delete(resource, headers=wrong)).status == 401
    assert (await client.delete(resource, params={"token": token})).status == 200
    # Not live any more: a token learns nothing more, the API key learns it ended.
    resp = await client.delete(resource, params={"token": token})
    assert resp.status == 404 and (await resp.json())["error"] == "no live session with this id"
    assert (await client.delete(resource, headers=key)).status == 409
    unknown = f"/whip/{uuid.uuid4()}/resource"
    assert (await client.delete(unknown, headers=key)).status == 404
    # Ending: a token only ends its own live session; otherwise management.
    assert (await client.post(f"/sessions/{sid}/end", params={"token": token})).status == 401
    assert (await client.post(f"/sessions/{other['session_id']}/end", headers=wrong)).status == 200
    # HEAD is guarded like GET; public routes stay open.
    assert (await client.head("/metrics")).status == 401
    assert (await client.head("/metrics", headers=key)).status == 200
    assert (await client.get("/config")).status == 200
    assert (await client.get("/static/nope.js")).status == 404
