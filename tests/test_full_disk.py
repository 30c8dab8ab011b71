"""A full disk and a database down at once: the row is held, then stored.

The disk is a real tmpfs of a few MiB, filled for real; the database is a
real PostgreSQL, stopped and started for real.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.keys import REGISTRY, WRITER
from config import Config
from server import make_app
from storage.outbox import Outbox
from storage.pg import DatabaseUnavailable
from tests.test_writer_faults import Cluster, row, running_writer, stored


def _mount_tmpfs(mountpoint: Path, size: str) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem of the test's own."""
    mountpoint = tmp_path / "disk"
    _mount_tmpfs(mountpoint, "8m")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; the file to delete to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            os.write(fd, chunk)  # short writes near the end, then ENOSPC
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (disk / "probe").write_bytes(b"x")
    return filler


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path / "pg")  # not on the small disk
    await cluster.start()
    yield cluster
    await cluster.stop()


async def eventually(check: Any, timeout: float = 20.0) -> None:
    """Wait for a background retry, checked every 0.1 s, at most `timeout`."""
    for _ in range(int(timeout * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("not done in time")


async def test_a_save_with_a_full_disk_and_the_database_down_is_held_then_stored(
    cluster: Cluster, small_disk: Path, loop_errors: list[Any]
):
    config = Config(database_url=cluster.dsn, data_dir=small_disk / "data", checkpoint_s=60.0)
    client = TestClient(TestServer(make_app(config), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        resp = await client.post("/sessions", json={"job_role": "SRE"})
        assert resp.status == 201
        sid = (await resp.json())["session_id"]
        app = client.server.app
        app[REGISTRY].get(uuid.UUID(sid)).add_turn("user", "I kept the pager quiet.")

        await cluster.stop()
        filler = fill(small_disk)
        resp = await client.post(f"/sessions/{sid}/save")
        assert resp.status == 503 and resp.headers["Retry-After"]
        assert "held in memory" in (await resp.json())["error"]
        assert app[WRITER].held_size == 1

        filler.unlink()  # space comes back first: the row goes to the outbox
        outbox = small_disk / "data" / "outbox" / f"{sid}.json"
        await eventually(outbox.exists, timeout=60)
        history = json.loads(outbox.read_text())["session_information"]["conversation_history"]
        assert history == [{"role": "user", "content": "I kept the pager quiet."}]
        assert app[WRITER].held_size == 0

        await cluster.start()  # then the database (the app retries at most every 30 s)
        await asyncio.wait_for(app[WRITER].wait_idle(), 60)
        assert (await stored(cluster.dsn))[uuid.UUID(sid)] == "scheduled"  # nobody joined it
        assert not outbox.exists()
    finally:
        await client.close()


async def test_the_database_coming_back_takes_rows_the_full_disk_could_not(
    cluster: Cluster, small_disk: Path, loop_errors: list[Any]
):
    outbox_dir = small_disk / "outbox"
    # A previous run of this instance left a live interview in the outbox.
    left = row("in_progress")
    Outbox(outbox_dir).put(left)
    await cluster.stop()
    filler = fill(small_disk)
    # Start-up cannot rewrite it as `interrupted` on disk: held in memory.
    async with running_writer(cluster.dsn, outbox_dir) as writer:
        assert writer.held_size == 1 and writer.outbox_size == 1
        ended = row()
        assert await writer.save(ended) == "held"
        assert await writer.read_queued(ended.session_id) == ended
        assert writer.held_size == 2

        await cluster.start()  # the disk stays full
        await asyncio.wait_for(writer.wait_idle(), 30)
        assert await stored(cluster.dsn) == {
            left.session_id: "interrupted", ended.session_id: "completed"}
        assert writer.held_size == 0 and writer.outbox_size == 0
    filler.unlink()
    assert not list(outbox_dir.glob("*.json"))


async def test_a_refused_row_on_a_full_disk_is_quarantined_once_there_is_room(
    database_url: str, small_disk: Path, loop_errors: list[Any]
):
    async with running_writer(database_url, small_disk / "outbox") as writer:
        filler = fill(small_disk)
        bad = row(recording_url="\u0000")
        assert await writer.save(bad) == "held"  # refused, and no room to keep it aside
        filler.unlink()
        await asyncio.wait_for(writer.wait_idle(), 30)
        assert writer.rows_quarantined == 1 and writer.held_size == 0
        assert (small_disk / "outbox" / "quarantine" / f"{bad.session_id}.json").exists()


async def test_rows_held_in_memory_are_bounded(
    database_url: str, small_disk: Path, loop_errors: list[Any]
):
    unreachable = "postgresql://postgres@127.0.0.1:1/nowhere"
    async with running_writer(unreachable, small_disk / "outbox", max_held=2) as writer:
        filler = fill(small_disk)
        first, second = row(), row()
        assert await writer.save(first) == "held"
        assert await writer.save(second) == "held"
        assert await writer.save(replace(first, status="interrupted")) == "held"
        with pytest.raises(DatabaseUnavailable):  # RowNotAccepted: the HTTP layer's 503
            await writer.save(row())
        assert writer.held_size == 2
        filler.unlink()
        await eventually(lambda: writer.held_size == 0)
        assert writer.outbox_size == 2
        queued = await writer.read_queued(first.session_id)
        assert queued is not None and queued.status == "interrupted"
