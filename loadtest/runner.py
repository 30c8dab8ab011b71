"""One load step: N candidates over K worker processes against one server.

The parent process never touches media. It starts the workers (spawn), waits
until each has loaded the media, gives them one common start time so the
ramp holds across processes, shows progress from their reports, samples the
server, and when they are done reads every session's row back through the
API. What it gathers is a `StepData`, turned into numbers by `analysis`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.candidate import CandidatePlan, CandidateResult
from loadtest.monitor import MetricsSnapshot, ServerMonitor, ServerSample
from loadtest.nodes import NodeInfo, NodeMonitors, list_nodes
from loadtest.progress import ProgressDisplay
from loadtest.scenarios import scenario_for
from loadtest.worker import WorkerJob, WorkerResult, run_worker

__all__ = ["ServerTarget", "StepData", "StepSettings", "run_step"]

READY_TIMEOUT_S = 120.0
START_MARGIN_S = 0.5
ROW_TIMEOUT_S = 40.0  # keepalive (8 s) + saving, with room for a loaded server
ROW_POLL_S = 0.5
# A row in these is not final yet (nobody joined; still live).
OPEN_STATUSES = ("scheduled", "in_progress")


@dataclass(frozen=True)
class ServerTarget:
    url: str
    api_key: str | None = field(default=None, repr=False)
    pid: int | None = None  # known when spawned here: psutil can watch it
    data_dir: Path | None = None
    exit_code: Callable[[], int | None] | None = None  # spawned: None while it runs


@dataclass(frozen=True)
class StepSettings:
    sessions: int
    ramp_s: float
    duration_s: float
    scenario: str
    workers: int
    settle_s: float
    manifest: Path


@dataclass
class StepData:
    settings: StepSettings
    wall_s: float = 0.0
    session_ids: dict[int, str] = field(default_factory=dict)  # candidate index -> session id
    workers: list[WorkerResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the run's own, not a candidate's
    rows: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    samples: list[ServerSample] = field(default_factory=list)
    metrics_before: MetricsSnapshot | None = None
    metrics_after: MetricsSnapshot | None = None
    metrics_available: bool = False
    # Behind a balancer: the nodes `/admin/nodes` listed, and each one's own samples.
    nodes: list[NodeInfo] = field(default_factory=list)
    node_samples: dict[str, list[ServerSample]] = field(default_factory=dict)

    @property
    def candidates(self) -> list[CandidateResult]:
        found = [c for w in self.workers for c in w.candidates]
        return sorted(found, key=lambda c: c.index)


def plan_candidates(settings: StepSettings, target: ServerTarget) -> list[CandidatePlan]:
    n = settings.sessions
    return [
        CandidatePlan(
            index=i,
            scenario=scenario_for(settings.scenario, i).name,
            start_offset_s=settings.ramp_s * i / n,
            duration_s=settings.duration_s,
            settle_s=settings.settle_s,
            server=target.url,
            api_key=target.api_key,
        )
        for i in range(n)
    ]


async def run_step(settings: StepSettings, target: ServerTarget, http: aiohttp.ClientSession,
                   label: str) -> StepData:
    data = StepData(settings)
    monitor = ServerMonitor(http, target.url, target.api_key, target.pid, target.data_dir)
    data.nodes = await list_nodes(http, target.url, target.api_key)
    nodes = await NodeMonitors.for_nodes(http, data.nodes, target.api_key)
    # Several nodes: the balancer's address answers from any one of them, so it
    # is not watched; the nodes are, each on its own URL, and their sum is the server.
    data.metrics_before = await (nodes.scrape() if nodes.monitors else monitor.scrape())
    await (nodes.start() if nodes.monitors else monitor.start())
    started = time.monotonic()
    try:
        display = ProgressDisplay(settings.sessions, settings.ramp_s + settings.duration_s, label)
        await _run_workers(settings, target, data, display)
        data.wall_s = time.monotonic() - started
        code = target.exit_code() if target.exit_code is not None else None
        if code is not None:
            data.errors.append(f"the server exited during the run (exit code {code}); see its log")
        await _read_rows(http, target, data)
    finally:
        await monitor.stop()
        await nodes.stop()
    data.node_samples = nodes.samples()
    data.samples = nodes.combined() if nodes.monitors else monitor.samples
    data.metrics_after = await (nodes.scrape() if nodes.monitors else monitor.scrape())
    data.metrics_available = data.metrics_after is not None and all(
        m.metrics_available for m in (nodes.monitors.values() if nodes.monitors else [monitor]))
    return data


def _jobs(settings: StepSettings, plans: list[CandidatePlan]) -> list[WorkerJob]:
    """Deal candidates round-robin so each worker's share of the ramp is even."""
    count = max(1, min(settings.workers, len(plans)))
    return [WorkerJob(w, settings.manifest, tuple(plans[w::count])) for w in range(count)]


async def _run_workers(settings: StepSettings, target: ServerTarget, data: StepData,
                       display: ProgressDisplay) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    jobs = _jobs(settings, plan_candidates(settings, target))
    ready = _Countdown(len(jobs))
    inbox = _Inbox(queue, asyncio.get_running_loop(),
                   lambda msg: _handle(msg, data, display, ready))
    procs = [ctx.Process(target=run_worker, args=(job, queue, go, start_at),
                         name=f"loadtest-worker-{job.worker}") for job in jobs]
    try:
        for proc in procs:
            proc.start()
        await asyncio.wait_for(ready.wait(), READY_TIMEOUT_S)
        start_at.value = time.time() + START_MARGIN_S
        go.set()
        display.start()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, p.join) for p in procs))
    finally:
        go.set()  # a worker still waiting must not hang
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        await inbox.close()
        await display.close()
    _note_exits(procs, data)


def _note_exits(procs: list[Any], data: StepData) -> None:
    returned = {w.worker for w in data.workers}
    for number, proc in enumerate(procs):
        if number not in returned:
            data.errors.append(f"worker {number} exited with code {proc.exitcode} "
                                      f"and no results")


def _handle(msg: tuple[str, int, int, Any], data: StepData, display: ProgressDisplay,
            ready: _Countdown) -> None:
    kind, _worker, index, payload = msg
    if kind == "ready":
        ready.tick()
    elif kind == "worker_done":
        data.workers.append(payload)
    else:
        if kind == "created":
            data.session_ids[index] = payload
        display.update(kind)


class _Countdown:
    def __init__(self, count: int) -> None:
        self._left = count
        self._done = asyncio.Event()
        if count <= 0:
            self._done.set()

    def tick(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


class _Inbox:
    """Moves worker messages from the multiprocessing queue onto the event loop."""

    def __init__(self, queue: Any, loop: asyncio.AbstractEventLoop,
                 handle: Callable[[Any], None]) -> None:
        self._queue = queue
        self._thread = threading.Thread(
            target=self._pump, args=(loop, handle), name="loadtest-inbox", daemon=True)
        self._thread.start()

    def _pump(self, loop: asyncio.AbstractEventLoop, handle: Callable[[Any], None]) -> None:
        while (msg := self._queue.get()) is not None:
            loop.call_soon_threadsafe(handle, msg)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        # Messages handed to the loop just before the sentinel run now.
        await asyncio.sleep(0)


# -- rows -----------------------------------------------------------------------


async def _read_rows(http: aiohttp.ClientSession, target: ServerTarget, data: StepData) -> None:
    """Each session's row once it is no longer in progress (or the last seen)."""
    ids = sorted(set(data.session_ids.values()) | {c.session_id for c in data.candidates
                                                    if c.session_id})
    rows = await asyncio.gather(*(_final_row(http, target, sid) for sid in ids))
    data.rows = dict(zip(ids, rows))


async def _final_row(http: aiohttp.ClientSession, target: ServerTarget,
                     session_id: str) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    deadline = time.monotonic() + ROW_TIMEOUT_S
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{target.url}/sessions/{session_id}", headers=headers) as resp:
                row = await resp.json() if resp.status == 200 else row
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass
        closing = ((row or {}).get("session_information") or {}).get("closing")
        if row is not None and row.get("status") not in OPEN_STATUSES and not closing:
            return row
        # The server saves asynchronously after the candidate leaves; it has
        # no notification to wait on, so ask again shortly.
        await asyncio.sleep(ROW_POLL_S)
    return row
