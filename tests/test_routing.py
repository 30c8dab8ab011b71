"""routing.py: the one rule for which worker owns a session id."""

from __future__ import annotations

import uuid

import pytest

from config import Config, ConfigError
from routing import MAX_WORKERS, new_session_id, session_in_path, worker_of


def test_a_worker_mints_ids_it_owns_and_keeps_them_when_the_fleet_grows():
    for workers in (1, 2, 3, 7, MAX_WORKERS):
        for index in {0, workers // 2, workers - 1}:
            session_id = new_session_id(index)
            assert session_id.version == 4
            assert worker_of(session_id, workers) == index
            assert worker_of(session_id, MAX_WORKERS) == index  # growing keeps the owner


def test_any_id_spreads_and_matches_the_last_two_hex_digits():
    ids = [new_session_id(None) for _ in range(2000)]
    counts = [sum(worker_of(i, 4) == w for i in ids) for w in range(4)]
    assert min(counts) > 350  # about 500 each
    for session_id in ids[:50]:
        # What a proxy computes from the path: the last two hex digits, mod N.
        assert worker_of(session_id, 3) == int(str(session_id)[34:36], 16) % 3
        assert worker_of(session_id, 2) == session_id.int % 2  # the older rule, for N = 2


def test_an_index_out_of_range_is_refused():
    with pytest.raises(ValueError):
        new_session_id(MAX_WORKERS)


def test_session_in_path():
    sid = uuid.uuid4()
    assert session_in_path(f"/sessions/{sid}") == sid
    assert session_in_path(f"/sessions/{sid}/offer") == sid
    assert session_in_path(f"/whip/{sid}/resource") == sid
    assert session_in_path("/sessions/not-a-uuid/offer") is None
    assert session_in_path("/sessions") is None
    assert session_in_path("/static/app.js") is None


def test_config_refuses_more_workers_than_an_id_can_name():
    assert Config.from_env({"WORKERS": str(MAX_WORKERS)}).workers == MAX_WORKERS
    with pytest.raises(ConfigError, match="WORKERS must be at most 256"):
        Config.from_env({"WORKERS": str(MAX_WORKERS + 1)})
