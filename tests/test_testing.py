"""The test kit's own seams: the launcher's one parser, its failure, the event log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from testing import EventLog, ServerExited, parse_serving_url, start_server


def test_serving_line_is_parsed_in_one_place():
    assert parse_serving_url("Serving on http://127.0.0.1:43121\n") == "http://127.0.0.1:43121"
    assert parse_serving_url("INFO something else") is None
    assert parse_serving_url("Serving on nothing") is None


async def test_a_server_that_exits_before_serving_says_why(tmp_path: Path):
    with pytest.raises(ServerExited, match="PORT must be an integer"):
        async with start_server({"PORT": "http", "DATA_DIR": str(tmp_path)}):
            pytest.fail("it never served")


async def test_event_log_wakes_waiters_on_arrival(loop_errors: list):
    log = EventLog()
    asyncio.get_running_loop().call_later(0.05, log.add, '{"type": "pong"}')
    assert await log.wait_for(lambda e: e.type == "pong", timeout=5) == 0
    assert not await log.until(lambda: len(log.events) > 1, timeout=0.05)
    log.add(b"\xff")
    assert log.events[-1].type == "unparsable"
