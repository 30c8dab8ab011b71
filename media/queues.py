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
from typing import Any, ParamSpec, TypeVar

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
    """A thread pool that counts the jobs submitted but not started yet, and
    runs work that can wait (`submit_when_idle`) only when it has nothing else."""

    def __init__(self, workers: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._waiting: dict[int, float] = {}  # token -> submit time, oldest first
        self._running = 0
        self._idle_jobs: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._closed = False
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
                self._start_idle_job()

        try:
            future = self._pool.submit(run)
        except BaseException:  # shut down: the job will never run
            self._forget(token)
            raise
        # A job cancelled before it started never runs: stop counting it too.
        future.add_done_callback(lambda _: self._forget(token))
        return future

    def submit_when_idle(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Run `fn(*args)` once no job waits or runs.

        For work that can wait (synthesizing phrases ahead of time): it never
        shares the threads with other jobs when it starts, though a job
        submitted while it runs waits for it. Submit the next such job when
        this one is done (as `MediaRuntime.warm_voice` does): two queued
        together could both start at the same idle moment. Cancelled by
        `shutdown` with `cancel_futures`, like a waiting job.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            self._idle_jobs.append((future, lambda: fn(*args, **kwargs)))
        self._start_idle_job()
        return future

    def _start_idle_job(self) -> None:
        while True:
            with self._lock:
                if self._waiting or self._running or not self._idle_jobs:
                    return
                future, call = self._idle_jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                inner = self.submit(call)
            except RuntimeError as error:  # shut down meanwhile
                future.set_exception(error)
                continue
            _chain(inner, future)
            return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            idle = list(self._idle_jobs) if cancel_futures else []
            if cancel_futures:
                self._idle_jobs.clear()
        for future, _ in idle:
            future.cancel()
        self._pool.shutdown(wait, cancel_futures=cancel_futures)

    def load(self) -> QueueLoad:
        with self._lock:
            if not self._waiting:
                return QueueLoad()
            oldest = next(iter(self._waiting.values()))
            return QueueLoad(len(self._waiting), time.monotonic() - oldest)

    def _forget(self, token: int) -> None:
        """The job ended, or will never run: it no longer waits."""
        with self._lock:
            self._waiting.pop(token, None)
        self._start_idle_job()


def _chain(inner: Future[T], outer: Future[T]) -> None:
    """`outer` (already running) ends as `inner` does."""
    def done(_: Future[T]) -> None:
        if inner.cancelled():
            outer.set_exception(RuntimeError("cancelled by shutdown"))
        elif (error := inner.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(inner.result())
    inner.add_done_callback(done)
