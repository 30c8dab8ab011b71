"""The free-space reserve on a real small filesystem, retention of old media files."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from config import Config, ConfigError
from layout import DataLayout
from storage.disk import DiskReserve, RetentionSweeper
from tests.test_full_disk import eventually, fill, small_disk

__all__ = ["small_disk"]  # the fixture, shared with test_full_disk

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_reserve_refuses_recordings_below_the_floor(small_disk: Path, caplog: Any):
    clock = Clock()
    reserve = DiskReserve(small_disk, floor_bytes=4 << 20, clock=clock)
    assert reserve.admit_recording()
    free = reserve.free_bytes()
    assert free is not None and 7 << 20 < free <= 8 << 20

    filler = small_disk / "recording.webm"
    filler.write_bytes(b"\0" * (5 << 20))  # 3 MiB left, under the 4 MiB floor
    assert reserve.admit_recording()  # the cached answer, for up to a second
    clock.now += 1.0
    assert not reserve.admit_recording("session abc's recording")
    assert reserve.recordings_refused == 1
    assert "session abc's recording not started" in caplog.text

    filler.unlink()
    clock.now += 1.0
    assert reserve.admit_recording() and reserve.recordings_refused == 1


def test_a_full_disk_refuses_and_a_zero_floor_admits(small_disk: Path):
    fill(small_disk)
    assert DiskReserve(small_disk, floor_bytes=1).below_floor()
    assert DiskReserve(small_disk, floor_bytes=0).admit_recording()
    # Free space that cannot be read is not taken for a full disk.
    assert DiskReserve(small_disk / "missing", floor_bytes=1 << 40).admit_recording()


def make_media(layout: DataLayout, age_days: float, name: str) -> Path:
    path = layout.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"media")
    then = time.time() - age_days * DAY
    os.utime(path, (then, then))
    return path


def test_retention_deletes_only_finished_files_past_the_period(tmp_path: Path):
    layout = DataLayout(tmp_path)
    old_session, new_session = uuid.uuid4(), uuid.uuid4()
    expired = [
        make_media(layout, 8, f"recordings/{old_session}.webm"),
        make_media(layout, 8, f"evidence/{old_session}/phone-1.jpg"),
        make_media(layout, 8, f"evidence/{old_session}/phone-2.jpg"),
    ]
    kept = [
        make_media(layout, 1, f"recordings/{new_session}.webm"),
        make_media(layout, 8, f"recordings/{new_session}.webm.part"),  # still being written
        make_media(layout, 8, "recordings/other.webm.tmp"),
        make_media(layout, 1, f"evidence/{new_session}/phone-1.jpg"),
        make_media(layout, 30, "resumes/kept.pdf"),  # not media: out of scope
    ]
    old_folder = layout.evidence_dir / str(old_session)
    then = time.time() - 8 * DAY
    os.utime(old_folder, (then, then))
    with ThreadPoolExecutor(1) as pool:
        sweeper = RetentionSweeper((layout.recordings_dir, layout.evidence_dir), 7 * DAY,
                                   executor=pool)
        assert sweeper.sweep() == 3
    assert not any(p.exists() for p in expired)
    assert all(p.exists() for p in kept)
    assert not old_folder.exists()
    assert layout.recordings_dir.is_dir() and layout.evidence_dir.is_dir()
    assert sweeper.files_deleted == 3


async def test_the_sweeper_runs_off_the_loop_and_stops(tmp_path: Path, loop_errors: list[Any]):
    layout = DataLayout(tmp_path)
    old = make_media(layout, 3, "recordings/a.webm")
    threads: list[str] = []
    with ThreadPoolExecutor(1, thread_name_prefix="file-io") as pool:
        sweeper = RetentionSweeper([layout.recordings_dir], 2 * DAY, executor=pool)
        real_sweep = sweeper.sweep

        def sweep() -> int:
            import threading
            threads.append(threading.current_thread().name)
            return real_sweep()

        sweeper.sweep = sweep  # type: ignore[method-assign]
        await sweeper.start()
        await eventually(lambda: sweeper.files_deleted == 1)
        await sweeper.close()
        await sweeper.close()  # idempotent
    assert not old.exists()
    assert threads and threads[0].startswith("file-io")
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "retention-sweeper"]


async def test_no_retention_keeps_everything(tmp_path: Path):
    layout = DataLayout(tmp_path)
    old = make_media(layout, 3650, "recordings/a.webm")
    with ThreadPoolExecutor(1) as pool:
        sweeper = RetentionSweeper([layout.recordings_dir], None, executor=pool)
        await sweeper.start()
        assert await sweeper.sweep_once() == 0
        await sweeper.close()
    assert old.exists()


def test_disk_settings_from_the_environment():
    default = Config.from_env({})
    assert default.disk_reserve_mb == 512 and default.disk_reserve_bytes == 512 << 20
    assert default.recording_retention_days is None and default.recording_retention_s is None
    config = Config.from_env({"DISK_RESERVE_MB": "0", "RECORDING_RETENTION_DAYS": "0.5"})
    assert config.disk_reserve_bytes == 0 and config.recording_retention_s == DAY / 2
    for bad in ({"DISK_RESERVE_MB": "-1"}, {"DISK_RESERVE_MB": "1.5"},
                {"RECORDING_RETENTION_DAYS": "0"}, {"RECORDING_RETENTION_DAYS": "nan"},
                {"RECORDING_RETENTION_DAYS": "inf"}, {"RECORDING_RETENTION_DAYS": "week"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Config.from_env(bad)
