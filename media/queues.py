"""Queues and executors that can say how much work waits in them, and how long.

`/metrics` exports, per queue, how many items wait and the age of the oldest
one: the first sign that a stage (ASR, detection, the VAD, TTS, file writes)
is falling behind, long before anything is dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

__all__ = ["MeteredExecutor", "QueueLoad", "StampedQueue"]

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class QueueLoad:
    """Items waiting and the age in seconds of the oldest one (0 when empty)."""

    depth: int = 0
    oldest_s: float = 0.0

    @staticmethod
    def combine(loads: Iterable[QueueLoad]) -> QueueLoad:
        """Many queues of one kind (one per session) as one: depths add up."""
        depth, oldest = 0, 0.0
        for load in loads:
            depth += load.depth
            oldest = max(oldest, load.oldest_s)
        return QueueLoad(depth, oldest)


class StampedQueue(asyncio.Queue[T]):
    """An `asyncio.Queue` that remembers when each waiting item was put."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._put_at: deque[float] = deque()

    def _put(self, item: T) -> None:
        self._put_at.append(time.monotonic())
        super()._put(item)

    def _get(self) -> T:
        self._put_at.popleft()
        return super()._get()

    def load(self) -> QueueLoad:
        if not self._put_at:
            return QueueLoad()
        return QueueLoad(len(self._put_at), time.monotonic() - self._put_at[0])


class MeteredExecutor(Executor):
    """A thread pool that counts the jobs submitted but not started yet."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._waiting: dict[int, float] = {}  # token -> submit time, oldest first
        self._running = 0
        self.cpu_seconds = 0.0  # CPU time its threads spent in jobs

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        token = next(self._tokens)
        with self._lock:
            self._waiting[token] = time.monotonic()

        def run() -> T:
            with self._lock:  # at once: never seen as neither waiting nor running
                self._waiting.pop(token, None)
                self._running += 1
            cpu = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - cpu
                with self._lock:
                    self.cpu_seconds += spent
                    self._running -= 1

        try:
            future = self._pool.submit(run)
        except BaseException:  # shut down: the job will never run
            self._started(token)
            raise
        # A job cancelled before it started never runs: stop counting it too.
        future.add_done_callback(lambda _: self._started(token))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait, cancel_futures=cancel_futures)

    @property
    def busy(self) -> bool:
        """Whether a job waits or runs: work that can wait should not start now."""
        with self._lock:
            return bool(self._waiting or self._running)

    def load(self) -> QueueLoad:
        with self._lock:
            if not self._waiting:
                return QueueLoad()
            oldest = next(iter(self._waiting.values()))
            return QueueLoad(len(self._waiting), time.monotonic() - oldest)

    def _started(self, token: int) -> None:
        with self._lock:
            self._waiting.pop(token, None)
