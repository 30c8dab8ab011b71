"""Watching the server while the load runs: CPU, memory, live sessions, /metrics.

Every second the monitor records the server's CPU (% of one core) and RSS,
and the live session count. CPU and RSS come from psutil when this process
started the server (it knows the PID, and finds the embedded PostgreSQL by
its data directory), else from the server's own `process_*` metrics. The
`/metrics` endpoint is optional: without it (404) the frame counters and
server-side histograms are reported as unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["HistogramSummary", "MetricsSnapshot", "ServerMonitor", "ServerSample"]

Key = tuple[str, tuple[tuple[str, str], ...]]
_DB_LOOKUPS = 10
_GREATEST_OF_WORKERS = frozenset({"interview_queue_oldest_seconds"})


@dataclass(frozen=True)
class MetricsSnapshot:
    """One scrape of `/metrics`: every sample by (name, sorted labels)."""

    samples: dict[Key, float]

    @classmethod
    def parse(cls, text: str) -> MetricsSnapshot:
        """Samples by name and labels; a `WORKERS=N` server's per-worker samples
        (label `worker`) are summed, so it reads like one process (ages: the
        greatest)."""
        samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            merge = max if family.name in _GREATEST_OF_WORKERS else sum
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "worker"}
                key = (s.name, tuple(sorted(labels.items())))
                samples[key] = merge((samples[key], float(s.value))) if key in samples else float(s.value)
        return cls(samples)

    @classmethod
    def combine(cls, snapshots: Iterable[MetricsSnapshot]) -> MetricsSnapshot:
        """Several nodes' scrapes as one server's: summed (ages: the greatest)."""
        samples: dict[Key, float] = {}
        for snapshot in snapshots:
            for key, v in snapshot.samples.items():
                merge = max if key[0] in _GREATEST_OF_WORKERS else sum
                samples[key] = merge((samples[key], v)) if key in samples else v
        return cls(samples)

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """The samples of `name` that have just the label `label`, by its value."""
        return {labels[0][1]: v for (n, labels), v in self.samples.items()
                if n == name and len(labels) == 1 and labels[0][0] == label}

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, in bound order."""
        found = [(float(dict(labels)["le"]), v) for (n, labels), v in self.samples.items()
                 if n == f"{name}_bucket" and len(labels) == 1]
        return sorted(found)


@dataclass(frozen=True)
class HistogramSummary:
    count: int
    mean: float | None
    p50: float | None
    p95: float | None

    @classmethod
    def between(cls, start: MetricsSnapshot | None, end: MetricsSnapshot, name: str) -> HistogramSummary:
        """What was observed between two scrapes (start None: since the server began)."""
        def delta(metric: str) -> float:
            before = start.value(metric) if start else None
            return (end.value(metric) or 0.0) - (before or 0.0)
        count = round(delta(f"{name}_count"))
        before = dict(start.buckets(name)) if start else {}
        buckets = [(le, c - before.get(le, 0.0)) for le, c in end.buckets(name)]
        mean = delta(f"{name}_sum") / count if count else None
        return cls(count, mean, _quantile(buckets, 0.5), _quantile(buckets, 0.95))


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding the rank."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the last finite bucket: its bound is all we know
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1)
        lower_bound, lower_count = bound, count
    return None


@dataclass
class ServerSample:
    t: float  # seconds since the monitor started
    cpu_pct: float | None  # % of one core, server process
    rss_mb: float | None
    db_cpu_pct: float | None = None  # embedded PostgreSQL, when spawned here
    db_rss_mb: float | None = None
    live_sessions: int | None = None
    # From /metrics: items waiting and the oldest one's age, by queue name.
    queue_depth: dict[str, float] = field(default_factory=dict)
    queue_oldest_s: dict[str, float] = field(default_factory=dict)


class _CpuMeter:
    """CPU % of a changing set of processes between successive reads."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self._at: float | None = None

    def read(self, processes: Iterable[psutil.Process]) -> tuple[float | None, float]:
        now, used, rss, seen = time.monotonic(), 0.0, 0, {}
        for proc in processes:
            with contextlib.suppress(psutil.Error):
                times, rss = proc.cpu_times(), rss + proc.memory_info().rss
                seen[proc.pid] = times.user + times.system
                used += seen[proc.pid] - self._last.get(proc.pid, seen[proc.pid])
        pct = None if self._at is None else 100 * used / max(now - self._at, 1e-6)
        self._last, self._at = seen, now
        return pct, rss / 2**20


@dataclass
class ServerMonitor:
    http: aiohttp.ClientSession
    url: str
    api_key: str | None = field(default=None, repr=False)
    pid: int | None = None
    data_dir: Path | None = None
    interval_s: float = 1.0
    samples: list[ServerSample] = field(default_factory=list)
    metrics_available: bool | None = None
    last_metrics: MetricsSnapshot | None = None

    def __post_init__(self) -> None:
        self._server = _process(self.pid)
        self._postmaster: psutil.Process | None = None
        self._server_cpu, self._db_cpu = _CpuMeter(), _CpuMeter()
        self._metrics_cpu: tuple[float, float] | None = None
        self._db_lookups = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="server-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def mark(self) -> float:
        """Seconds since the monitor started (to line events up with samples)."""
        return time.monotonic() - self._started

    async def scrape(self) -> MetricsSnapshot | None:
        """`/metrics` now, or None when the server has none (remembered)."""
        if self.metrics_available is False:
            return None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            async with self.http.get(f"{self.url}/metrics", headers=headers) as resp:
                if resp.status != 200:
                    # Refused or absent: none to read. Anything else (a 5xx from a
                    # proxy under load) may pass: ask again next time.
                    if resp.status in (401, 403, 404):
                        self.metrics_available = False
                    return None
                snapshot = MetricsSnapshot.parse(await resp.text())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        self.metrics_available, self.last_metrics = True, snapshot
        return snapshot

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            self.samples.append(await self._sample())
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - began)))

    async def _sample(self) -> ServerSample:
        sample = ServerSample(self.mark(), None, None)
        snapshot = await self.scrape()
        if self._server is not None:
            sample.cpu_pct, sample.rss_mb = self._server_cpu.read(_server_tree(self._server))
            sample.db_cpu_pct, sample.db_rss_mb = self._read_database()
        elif snapshot is not None:
            sample.cpu_pct, sample.rss_mb = self._from_metrics(snapshot)
        if snapshot is not None:
            sample.queue_depth = snapshot.by_label("interview_queue_depth", "queue")
            sample.queue_oldest_s = snapshot.by_label("interview_queue_oldest_seconds", "queue")
        live = snapshot.value("interview_live_sessions") if snapshot else await self._health_live()
        sample.live_sessions = None if live is None else int(live)
        return sample

    def _read_database(self) -> tuple[float | None, float | None]:
        if self._postmaster is None and self._db_lookups < _DB_LOOKUPS:
            self._db_lookups += 1  # an external database is never found: stop looking
            self._postmaster = _find_postmaster(self.data_dir)
        if self._postmaster is None:
            return None, None
        with contextlib.suppress(psutil.Error):
            return self._db_cpu.read([self._postmaster, *self._postmaster.children()])
        return None, None

    def _from_metrics(self, snapshot: MetricsSnapshot) -> tuple[float | None, float | None]:
        cpu_s = snapshot.value("process_cpu_seconds_total")
        rss = snapshot.value("process_resident_memory_bytes")
        pct = None
        now = time.monotonic()
        if cpu_s is not None and self._metrics_cpu is not None:
            then, before = self._metrics_cpu
            pct = 100 * (cpu_s - before) / max(now - then, 1e-6)
        if cpu_s is not None:
            self._metrics_cpu = (now, cpu_s)
        return pct, None if rss is None else rss / 2**20

    async def _health_live(self) -> float | None:
        try:
            async with self.http.get(f"{self.url}/healthz") as resp:
                return float((await resp.json())["live_sessions"]) if resp.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            return None


def _server_tree(server: psutil.Process) -> list[psutil.Process]:
    """The server and its worker processes (`WORKERS=N`), not the database."""
    with contextlib.suppress(psutil.Error):
        children = server.children(recursive=True)
        return [server, *(c for c in children if c.name() != "postgres")]
    return [server]


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _find_postmaster(data_dir: Path | None) -> psutil.Process | None:
    """The embedded PostgreSQL daemonizes, so it is found by its data directory
    (only the postmaster's command line names it)."""
    if data_dir is None:
        return None
    needle = str(data_dir)
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and any(needle in part for part in cmdline):
            return proc
    return None
