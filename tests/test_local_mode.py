"""Local mode (no API_KEY) is safe only on loopback, and only for requests a
browser makes on the page's own behalf (issue 11)."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config import Config, ConfigError
from tests.conftest import REPO, AppFactory


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "interviews.example.org"])
def test_no_api_key_on_a_public_address_is_refused(host: str):
    with pytest.raises(ConfigError, match=f"API_KEY is not set and HOST={host} is not a loopback"):
        Config.from_env({"HOST": host})
    assert Config.from_env({"HOST": host, "ALLOW_UNAUTHENTICATED": "1"}).local_mode
    assert not Config.from_env({"HOST": host, "API_KEY": "k"}).local_mode


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_without_a_key_is_fine(host: str):
    assert Config.from_env({"HOST": host}).local_mode


async def test_the_server_exits_with_status_2():
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "ALLOW_UNAUTHENTICATED")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "server.py"), cwd=REPO, env={**env, "HOST": "0.0.0.0"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"configuration error: API_KEY is not set and HOST=0.0.0.0" in err


def with_host(client: TestClient, host: str) -> dict[str, str]:
    return {"Host": host.format(port=client.server.port)}


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1",
                                  "localhost:1", "127.0.0.1.nip.io:{port}", "", "a b"])
async def test_a_foreign_host_header_is_421(client: TestClient, host: str, db: asyncpg.Connection):
    for method, path in (("GET", "/healthz"), ("POST", "/sessions"), ("GET", "/")):
        resp = await client.request(method, path, json={"job_role": "QA"},
                                    headers=with_host(client, host))
        assert resp.status == 421, (host, path, resp.status)
        assert "error" in await resp.json()
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}",
                                  "[::1]:{port}"])
async def test_loopback_host_headers_are_served(client: TestClient, host: str):
    resp = await client.get("/healthz", headers=with_host(client, host))
    assert resp.status == 200, host


async def test_public_urls_host_is_served(make_client: AppFactory):
    client = await make_client(public_url="https://interviews.example.org")
    resp = await client.get("/healthz", headers={"Host": "interviews.example.org"})
    assert resp.status == 200
    resp = await client.get("/healthz", headers={"Host": "other.example.org"})
    assert resp.status == 421


async def test_with_an_api_key_any_host_is_served(make_client: AppFactory):
    client = await make_client(api_key="k")
    resp = await client.get("/healthz", headers={"Host": "interviews.example.org"})
    assert resp.status == 200


async def test_a_cross_site_form_post_is_403(client: TestClient, db: asyncpg.Connection):
    # What <form method=post action="http://127.0.0.1:8080/sessions"> on evil.example sends.
    form = {"Origin": "https://evil.example",
            "Content-Type": "multipart/form-data; boundary=b"}
    body = b'--b\r\nContent-Disposition: form-data; name="job_role"\r\n\r\nQA\r\n--b--\r\n'
    resp = await client.post("/sessions", data=body, headers=form)
    assert resp.status == 403, await resp.text()
    assert "CORS_ORIGINS" in (await resp.json())["error"]
    resp = await client.post("/sessions", json={"job_role": "QA"}, headers={"Origin": "null"})
    assert resp.status == 403
    assert await db.fetchval("SELECT count(*) FROM interview_sessions") == 0
    own = f"http://127.0.0.1:{client.server.port}"
    resp = await client.post("/sessions", json={"job_role": "QA"}, headers={"Origin": own})
    assert resp.status == 201


async def test_an_allowed_origin_may_post(make_client: AppFactory):
    client = await make_client(cors_origins=("https://ats.example.org",))
    resp = await client.post("/sessions", json={"job_role": "QA"},
                             headers={"Origin": "https://ats.example.org"})
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ats.example.org"


async def test_a_preflight_allows_every_method_the_routes_use(make_client: AppFactory):
    from api.routes import Route
    from server import ROUTES

    client = await make_client(cors_origins=("https://ats.example.org",))
    resp = await client.options("/sessions/00000000-0000-4000-8000-000000000000/review",
                                headers={"Origin": "https://ats.example.org",
                                         "Access-Control-Request-Method": "PUT"})
    assert resp.status == 204
    allowed = {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    methods = {route.method for route in ROUTES if isinstance(route, Route)}
    assert "PUT" in methods and methods <= allowed  # PUT: review decisions
