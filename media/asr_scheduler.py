"""One transcription scheduler per process: every session's speech pieces, fairly.

A plain thread pool runs jobs in the order they come, so one session's
burst of long pieces sits in front of another session's short answer. The
scheduler keeps a FIFO lane per session and, whenever an ASR thread is
free, picks the next job in rounds:

1. a lane head that has waited `max_wait_s` or more goes first (oldest
   first): nothing waits much longer than that plus the jobs running;
2. otherwise each session with work gets one job per round, the shortest
   piece first among the sessions not yet served in this round.

It is bounded: past `max_pending` waiting jobs, `submit_piece` raises
`AsrBacklogFull` and counts the drop.

Transcriptions (`submit_transcription`) that are due together are decoded
in one batch, up to `max_batch` and the transcriber's own `max_batch`
(WhisperTranscriber: 4 for fitted pieces, 1 at 30 s), when the transcriber
can batch: on CPU a
batch of 2-4 fitted pieces costs 0.55-0.70 of the pieces one by one
(BENCHMARKS.md, "ASR sized to the answer"). A batch pads every piece to
its longest one, so only pieces at most `batch_ratio` times as long as
the one picked by the rules above join it, one per session, in the
order those rules would serve them next.

It is also an `Executor`: `run_in_executor(scheduler, fn)` jobs go in a
lane of their own, so code that only knows an executor keeps working.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from engine.ports import BatchTranscriber, Transcriber, TranscriptResult
from media.queues import QueueLoad

__all__ = ["AsrBacklogFull", "AsrScheduler", "SchedulerStats"]

T = TypeVar("T")
P = ParamSpec("P")
_EXECUTOR_LANE = "(executor)"
_SAMPLE_RATE = 16_000
_MAX_BATCH_S = 30.0  # one encoder window: longer pieces are chunked, never batched


class AsrBacklogFull(RuntimeError):
    """The scheduler already holds `max_pending` jobs; this one was dropped."""


@dataclass
class SchedulerStats:
    served: int = 0
    dropped: int = 0
    overdue: int = 0  # jobs picked because they had waited max_wait_s
    batches: int = 0  # decodes of more than one piece
    batched: int = 0  # pieces decoded in those
    cpu_seconds: float = 0.0  # CPU time of the scheduler's threads in jobs


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: Future[Any]
    audio_s: float
    queued_at: float = field(default_factory=time.monotonic)
    # Set for a transcription: who decodes it and what, so it can join a batch.
    transcriber: Transcriber | None = None
    audio: Any = None


class AsrScheduler(Executor):
    """`workers` threads that take jobs from per-session lanes, fairly."""

    def __init__(
        self, workers: int, name: str, *, max_pending: int = 64, max_wait_s: float = 5.0,
        max_batch: int = 4, batch_ratio: float = 1.5,
    ) -> None:
        if workers < 1 or max_pending < 1 or max_wait_s <= 0 or max_batch < 1 or batch_ratio < 1:
            raise ValueError(
                f"need workers >= 1, max_pending >= 1, max_wait_s > 0, max_batch >= 1, "
                f"batch_ratio >= 1; got {workers}, {max_pending}, {max_wait_s}, "
                f"{max_batch}, {batch_ratio}"
            )
        self._max_batch = max_batch
        self._batch_ratio = batch_ratio
        self._workers = workers
        self._name = name
        self._max_pending = max_pending
        self._max_wait_s = max_wait_s
        self._lanes: dict[str, deque[_Job]] = {}
        self._served_this_round: set[str] = set()
        self._pending = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count()
        self.stats = SchedulerStats()

    def submit_piece(
        self, session: str, audio_s: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Queue `fn(*args)` for `session`, a piece of `audio_s` seconds.

        Raises `AsrBacklogFull` (and counts it) when the scheduler is full,
        RuntimeError after `shutdown`.
        """
        future: Future[T] = Future()
        self._queue(session, _Job(lambda: fn(*args, **kwargs), future, audio_s))
        return future

    def submit_transcription(
        self, session: str, transcriber: Transcriber, audio: Any, *, urgent: bool = False
    ) -> Future[TranscriptResult]:
        """Queue `transcriber.transcribe(audio)` for `session`; it may join a batch.

        `urgent`: ahead of the session's other waiting pieces (a speculative
        draft the end of the turn waits for goes before pieces that are only
        for the record); other sessions' turns are not affected.
        """
        future: Future[TranscriptResult] = Future()
        audio_s = len(audio) / _SAMPLE_RATE
        job = _Job(lambda: transcriber.transcribe(audio), future, audio_s, transcriber=transcriber,
                   audio=audio)
        self._queue(session, job, urgent=urgent)
        return future

    def _queue(self, session: str, job: _Job, *, urgent: bool = False) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            if self._pending >= self._max_pending:
                self.stats.dropped += 1
                raise AsrBacklogFull(f"{self._pending} transcriptions already waiting")
            lane = self._lanes.setdefault(session, deque())
            if urgent:
                lane.appendleft(job)
            else:
                lane.append(job)
            self._pending += 1
            if len(self._threads) < self._workers:
                self._start_thread()
            self._cond.notify()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """`Executor.submit`: a job with no session, in a lane of its own."""
        return self.submit_piece(_EXECUTOR_LANE, 0.0, fn, *args, **kwargs)

    def load(self) -> QueueLoad:
        """Jobs waiting for a thread and the age of the oldest (`asr_jobs`)."""
        with self._cond:
            if not self._pending:
                return QueueLoad()
            oldest = min(lane[0].queued_at for lane in self._lanes.values() if lane)
            return QueueLoad(self._pending, time.monotonic() - oldest)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                for lane in self._lanes.values():
                    for job in lane:
                        job.future.cancel()
                    lane.clear()
                self._pending = 0
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()

    def _start_thread(self) -> None:
        # Daemon threads, started on demand: a runtime nobody shut down
        # must not keep the interpreter alive.
        thread = threading.Thread(
            target=self._work, name=f"{self._name}_{next(self._ids)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while jobs := self._next_jobs():
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            cpu = time.thread_time()
            if len(jobs) == 1:
                _run(jobs[0])
            elif jobs:
                self._run_batch(jobs)
            spent = time.thread_time() - cpu
            with self._cond:
                self.stats.cpu_seconds += spent

    def _run_batch(self, jobs: list[_Job]) -> None:
        transcriber = jobs[0].transcriber
        assert isinstance(transcriber, BatchTranscriber)
        try:
            results = transcriber.transcribe_batch([job.audio for job in jobs])
        except BaseException as error:
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _next_jobs(self) -> list[_Job]:
        """Block until there is work: one job, or a batch ([]: shut down and drained)."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return []
                self._cond.wait()
            now = time.monotonic()
            session = self._pick(now)
            jobs, used = [self._take(session)], {session}
            first = jobs[0]
            if not self._batchable(first, first):
                return jobs
            assert isinstance(first.transcriber, BatchTranscriber)
            limit = min(self._max_batch, first.transcriber.max_batch)
            while len(jobs) < limit:
                candidates = [s for s, lane in self._lanes.items()
                              if s not in used and self._batchable(lane[0], first)]
                if not candidates:
                    break
                # Those not served this round first, then shortest, then oldest.
                session = min(candidates, key=lambda s: (
                    s in self._served_this_round, self._lanes[s][0].audio_s,
                    self._lanes[s][0].queued_at))
                self._served_this_round.add(session)
                used.add(session)
                jobs.append(self._take(session))
            if len(jobs) > 1:
                self.stats.batches += 1
                self.stats.batched += len(jobs)
            return jobs

    def _take(self, session: str) -> _Job:
        job = self._lanes[session].popleft()
        if not self._lanes[session]:
            del self._lanes[session]
        self._pending -= 1
        self.stats.served += 1
        return job

    def _batchable(self, job: _Job, first: _Job) -> bool:
        """Can `job` join a batch led by `first`?"""
        return (
            self._max_batch > 1
            and job.transcriber is not None
            and job.transcriber is first.transcriber
            and isinstance(job.transcriber, BatchTranscriber)
            and 0 < job.audio_s <= _MAX_BATCH_S
            and job.audio_s <= self._batch_ratio * max(first.audio_s, 1.0)
        )

    def _pick(self, now: float) -> str:
        """The lane to serve next (called with the lock held, some lane non-empty)."""
        heads = {session: lane[0] for session, lane in self._lanes.items() if lane}
        overdue = [s for s, job in heads.items() if now - job.queued_at >= self._max_wait_s]
        if overdue:
            self.stats.overdue += 1
            chosen = min(overdue, key=lambda s: heads[s].queued_at)
        else:
            fresh = [s for s in heads if s not in self._served_this_round]
            if not fresh:  # everyone waiting has had a turn: a new round
                self._served_this_round.clear()
                fresh = list(heads)
            chosen = min(fresh, key=lambda s: (heads[s].audio_s, heads[s].queued_at))
        self._served_this_round.add(chosen)
        return chosen


def _run(job: _Job) -> None:
    try:
        result = job.fn()
    except BaseException as error:  # handed to whoever awaits the future
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
