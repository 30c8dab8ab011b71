"""Disk space under `DATA_DIR`: a reserve kept free, and retention of old media files.

Recordings share the data directory with the embedded database and the
outbox, and they are by far the largest thing written there. `DiskReserve`
lets the media side refuse to start a recording once free space falls below a
floor, so that the space left goes to rows; `RetentionSweeper` deletes
finished recordings and evidence pictures older than the retention period.

No asyncpg here: the media side imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path

from engine.aio import cancel_and_wait

__all__ = ["DiskReserve", "RetentionSweeper"]

log = logging.getLogger(__name__)

# Files still being written: never deleted, however old.
_IN_PROGRESS_SUFFIXES = (".part", ".tmp")


class DiskReserve:
    """Free space below which no new recording starts.

    `admit_recording()` is cheap enough to call on the loop: one `statvfs`
    at most every `cache_s`. A floor of 0 admits everything.
    """

    def __init__(
        self,
        path: Path,
        floor_bytes: int,
        *,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.floor_bytes = floor_bytes
        self._cache_s = cache_s
        self._clock = clock
        self._checked_at: float | None = None
        self._free: int | None = None
        self.recordings_refused = 0

    def free_bytes(self) -> int | None:
        """Bytes free for this process's writes, or None if they cannot be known."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self._cache_s:
            self._checked_at = now
            self._free = self._statvfs()
        return self._free

    def below_floor(self) -> bool:
        free = self.free_bytes()
        return self.floor_bytes > 0 and free is not None and free < self.floor_bytes

    def admit_recording(self, what: str = "a recording") -> bool:
        """Whether `what` may start; a refusal is counted and logged."""
        if not self.below_floor():
            return True
        self.recordings_refused += 1
        log.warning("%s not started: %d MiB free under %s, below the %d MiB reserve",
                    what, (self._free or 0) >> 20, self.path, self.floor_bytes >> 20)
        return False

    def _statvfs(self) -> int | None:
        try:
            stats = os.statvfs(self.path)
        except OSError as exc:
            # Unknown is not full: refusing every recording would be worse.
            log.warning("cannot read free space of %s: %s", self.path, exc)
            return None
        return stats.f_bavail * stats.f_frsize


class RetentionSweeper:
    """Deletes files older than `max_age_s` under `directories`, every `interval_s`.

    Only finished files go: `.part` and `.tmp` ones are being written. Empty
    per-session folders left behind are removed too. The sweep walks the disk
    in `executor`, never on the loop. `max_age_s=None` keeps everything.
    """

    def __init__(
        self,
        directories: Iterable[Path],
        max_age_s: float | None,
        *,
        executor: Executor,
        interval_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directories = tuple(directories)
        self.max_age_s = max_age_s
        self._executor = executor
        self._interval_s = interval_s
        self._clock = clock
        self._stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self.files_deleted = 0

    async def start(self) -> None:
        if self.max_age_s is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention-sweeper")

    async def close(self) -> None:
        self._stopping.set()  # a sweep under way stops at its next file
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def sweep_once(self) -> int:
        """One sweep in the executor; the number of files deleted."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.sweep)

    def sweep(self) -> int:
        """Delete what is past retention now (blocking); the number of files deleted."""
        if self.max_age_s is None:
            return 0
        cutoff = self._clock() - self.max_age_s
        deleted = 0
        for directory in self.directories:
            deleted += self._sweep_tree(directory, cutoff, top=True)
        self.files_deleted += deleted
        if deleted:
            log.info("retention: deleted %d file(s) older than %.1f day(s)",
                     deleted, self.max_age_s / 86400)
        return deleted

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("retention sweep failed; next one in %.0fs", self._interval_s)
            await asyncio.sleep(self._interval_s)

    def _sweep_tree(self, directory: Path, cutoff: float, *, top: bool = False) -> int:
        deleted = 0
        try:
            # Before deleting in it, which makes it look new: only a folder
            # untouched for the whole period goes (a new one may be about to
            # get its first file).
            old = directory.stat().st_mtime < cutoff
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if self._stopping.is_set():
                return deleted
            try:
                if entry.is_dir(follow_symlinks=False):
                    deleted += self._sweep_tree(Path(entry.path), cutoff)
                elif _expired(entry, cutoff):
                    os.unlink(entry.path)
                    deleted += 1
            except OSError as exc:  # gone meanwhile, or not ours to delete
                log.warning("retention: cannot remove %s: %s", entry.path, exc)
        if old and not top:
            with contextlib.suppress(OSError):  # not empty, or gone
                directory.rmdir()
        return deleted


def _expired(entry: os.DirEntry[str], cutoff: float) -> bool:
    if not entry.is_file(follow_symlinks=False) or entry.name.endswith(_IN_PROGRESS_SUFFIXES):
        return False
    return entry.stat(follow_symlinks=False).st_mtime < cutoff
