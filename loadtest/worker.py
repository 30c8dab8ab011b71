"""A client worker process: many candidates on one event loop.

Workers are started with the `spawn` method. Each loads the media library
once, reports `ready`, waits for the shared start signal (so the ramp is
measured from one moment across processes), runs its candidates, and sends
back their results with its own CPU use, from which the cost of one peer is
derived. Everything goes back to the parent on one queue as
`(kind, worker, index, payload)` tuples.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from loadtest.candidate import Candidate, CandidatePlan, CandidateResult
from loadtest.media import MediaLibrary

__all__ = ["WorkerJob", "WorkerResult", "is_loopback", "run_worker"]

READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WorkerJob:
    worker: int
    manifest: Path
    plans: tuple[CandidatePlan, ...]


@dataclass
class WorkerResult:
    worker: int
    candidates: list[CandidateResult] = field(default_factory=list)
    cpu_s: float = 0.0  # process CPU (every thread) while candidates ran
    wall_s: float = 0.0
    max_rss_mb: float = 0.0
    peer_s: float = 0.0  # connected peer-seconds
    loop_errors: list[str] = field(default_factory=list)  # unhandled task errors: bugs

    @property
    def cpu_per_peer_pct(self) -> float | None:
        return 100 * self.cpu_s / self.peer_s if self.peer_s > 0 else None


def run_worker(job: WorkerJob, queue: Any, go: Any, start_at: Any) -> None:
    """Process entry point (spawned): `go` is an Event, `start_at` a shared double."""
    logging.basicConfig(level=logging.WARNING)
    if is_loopback(job.plans[0].server if job.plans else ""):
        from media.ice import use_loopback_only

        use_loopback_only()
    library = MediaLibrary.load(job.manifest)
    queue.put(("ready", job.worker, -1, ""))
    if not go.wait(READY_TIMEOUT_S):
        queue.put(("worker_done", job.worker, -1, WorkerResult(job.worker)))
        return
    result = asyncio.run(_run(job.worker, job.plans, library, queue, start_at.value))
    queue.put(("worker_done", job.worker, -1, result))


async def _run(worker: int, plans: tuple[CandidatePlan, ...], library: MediaLibrary,
               queue: Any, t0: float) -> WorkerResult:
    def progress(kind: str, index: int, detail: str) -> None:
        queue.put((kind, worker, index, detail))

    loop_errors: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: loop_errors.append(str(context.get("exception") or context["message"])))
    cpu0, wall0 = time.process_time(), time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        candidates = [Candidate(plan, library, http, progress, t0) for plan in plans]
        results = await asyncio.gather(*(c.run() for c in candidates))
    return WorkerResult(
        worker=worker,
        candidates=list(results),
        cpu_s=time.process_time() - cpu0,
        wall_s=time.monotonic() - wall0,
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peer_s=sum(r.active_s for r in results),
        loop_errors=loop_errors[:20],
    )


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
