"""Property-based fuzzing of the REST API from its own OpenAPI description
(schemathesis), against the real app on loopback with a real PostgreSQL.

The property: no answer is a 5xx, the server stays up, and the sessions it
had accepted before the fuzzing are all still there and saved (issue 11).
Bounded: a few dozen examples per operation and generation mode.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import AppFactory



@schemathesis.serializer("application/sdp")
def _sdp(ctx: Any, value: Any) -> bytes:
    """WHIP offers: text as sent, lone surrogates and all."""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8", "surrogatepass")


EXAMPLES = 20  # per operation and mode: about a minute on two shared cores
WITNESSES = 3


def fuzz(base_url: str, target: str) -> list[str]:
    """Run every operation's fuzzer; the failures (after shrinking) as text."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    # Closed when done, not left to the garbage collector mid-way through a later test.
    with requests.Session() as http:
        _fuzz_all(schema, base_url, target, http, failures)
    return failures


def _fuzz_all(schema: Any, base_url: str, target: str, http: requests.Session,
              failures: list[str]) -> None:
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [operation.as_strategy(generation_mode=mode)]
            if "{session_id}" in operation.path:
                # Half the examples aim at a live session, not a random id.
                strategies.append(operation.as_strategy(
                    generation_mode=mode, path_parameters={"session_id": target}))
            try:
                _fuzz_one(st.one_of(strategies), base_url, http)
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): negative mode has no cases.
                assert mode is GenerationMode.NEGATIVE, operation.label


def _fuzz_one(cases: st.SearchStrategy[Any], base_url: str, http: requests.Session) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=cases)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=http, timeout=30)
        assert response.status_code < 500, (
            f"{response.status_code} for {case.method} {case.formatted_path}: "
            f"{response.text[:300]!r}\n{case.as_curl_command()}"
        )

    run()


@pytest.mark.timeout(600)
async def test_fuzzing_the_api_finds_no_5xx_and_loses_no_session(
    make_client: AppFactory, db: asyncpg.Connection
):
    client: TestClient = await make_client()
    witnesses = []
    for i in range(WITNESSES):
        resp = await client.post("/sessions", json={"job_role": f"Witness {i}"})
        assert resp.status == 201
        witnesses.append((await resp.json())["session_id"])
    resp = await client.post("/sessions", json={"job_role": "Target"})
    target = (await resp.json())["session_id"]
    base_url = str(client.make_url("")).rstrip("/")

    # The fuzzer speaks blocking HTTP: in a thread, while this loop serves it.
    failures = await asyncio.to_thread(fuzz, base_url, target)
    assert not failures, "\n\n".join(failures)

    health = await client.get("/healthz")
    assert health.status == 200
    for i, sid in enumerate(witnesses):
        live = await client.get(f"/sessions/{sid}")
        assert live.status == 200 and (await live.json())["status"] == "scheduled"  # invitations nobody joined
        row = await db.fetchrow("SELECT * FROM interview_sessions WHERE session_id = $1",
                                uuid.UUID(sid))
        assert row is not None and row["status"] == "scheduled", sid
        assert json.loads(row["session_information"])["job_role"] == f"Witness {i}"
