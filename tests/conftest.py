"""Shared fixtures: a real PostgreSQL, a fresh database per test, the app."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from config import Config
from testing import start_database

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPEECH = REPO / "tests" / "data" / "speech"
CLIP = SPEECH / "sense_and_sensibility_01_austen_64kb-0870"

# The ASR model is joined once per user into a cache (~/.cache); tests keep
# theirs apart: the servers they start inherit it, a `Config` they build
# names it (`user_cache_dir=MODEL_CACHE_DIR`).
_XDG_CACHE = tempfile.mkdtemp(prefix="ims-test-cache-")
os.environ["XDG_CACHE_HOME"] = _XDG_CACHE
MODEL_CACHE_DIR = Config.from_env({"XDG_CACHE_HOME": _XDG_CACHE}).model_cache_dir


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """In front of pytest's unraisable-exception hook: an object whose repr
    raises is described by its type instead. pytest's hook would fail on it
    and report only "Failed to process unraisable exception" (seen once in
    CI, in test_fuzz_media); this way the exception itself is reported (and
    still fails the test)."""
    report = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        try:
            repr(unraisable.object)
        except BaseException as exc:  # noqa: BLE001 - any repr failure
            unraisable = SimpleNamespace(
                exc_type=unraisable.exc_type, exc_value=unraisable.exc_value,
                exc_traceback=unraisable.exc_traceback, err_msg=unraisable.err_msg,
                object=f"<a {type(unraisable.object).__qualname__} whose repr raised {exc!r}>")
        report(unraisable)

    sys.unraisablehook = hook


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_XDG_CACHE, ignore_errors=True)


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointed at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin DSN: `TEST_DATABASE_URL` when set, else an embedded PostgreSQL."""
    dsn = os.environ.get("TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    cluster = start_database(tmp_path_factory.mktemp("pgcluster"))
    yield cluster.dsn
    cluster.stop()


@pytest.fixture
async def database_url(pg_cluster: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_cluster)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_cluster, name)
    admin = await asyncpg.connect(pg_cluster)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Fail the test if the loop's exception handler fires (unhandled task errors)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(None)
    assert not errors, f"unhandled errors in the event loop: {errors}"


AppFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client(
    database_url: str, tmp_path: Path, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[AppFactory]:
    """Start the real app on loopback; `await make_client(api_key=...)`."""
    from server import make_app

    clients: list[TestClient] = []

    async def factory(models: Any = None, **overrides: Any) -> TestClient:
        config = replace(
            Config(database_url=database_url, data_dir=tmp_path / "data", checkpoint_s=0.2,
                   user_cache_dir=MODEL_CACHE_DIR),
            **overrides,
        )
        client = TestClient(TestServer(make_app(config, models), host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def client(make_client: AppFactory) -> TestClient:
    return await make_client()
