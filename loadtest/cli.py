"""`python -m loadtest`: the command line, one run or a capacity search.

Exit status: 0 when every SLO held, 1 when one broke (each broken check is
printed), 2 for bad arguments or a run that could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from loadtest.analysis import Slo, analyse
from loadtest.media import MediaLibrary
from loadtest.nodes import NodeInfo, list_nodes, reachable
from loadtest.prepare import DEFAULT_CACHE, PHOTOS_DIR, SPEECH_DIR, MediaSources, ensure_media
from loadtest.report import summary_markdown, write_plots, write_result
from loadtest.runner import ServerTarget, StepSettings, run_step
from loadtest.scenarios import SCENARIOS
from loadtest.serverproc import redact, spawn_server
from loadtest.warmup import warm_up
from loadtest.worker import is_loopback

__all__ = ["LoadTestConfig", "main"]

REPO = Path(__file__).resolve().parents[1]
CHOICES = (*SCENARIOS, "mixed")


class UsageError(ValueError):
    """An argument is out of range or contradicts another."""


@dataclass(frozen=True)
class LoadTestConfig:
    sessions: int
    ramp_s: float
    duration_s: float
    scenario: str
    server: str | None  # None: spawn one
    api_key: str | None = field(repr=False)
    workers: int | None  # None: one per CPU, at most one per session
    slo: Slo
    out: Path
    find_capacity: bool
    max_sessions: int
    plots: bool
    settle_s: float
    warmup: bool
    media: Path
    server_env: dict[str, str]
    sources: MediaSources = MediaSources()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoadTestConfig:
        """Validate eagerly; raise UsageError naming the argument."""
        _require(args.sessions >= 1, "--sessions must be at least 1")
        _require(args.ramp >= 0, "--ramp must be 0 or more seconds")
        _require(args.duration > 0, "--duration must be more than 0 seconds")
        _require(args.settle >= 0, "--settle must be 0 or more seconds")
        _require(args.workers is None or args.workers >= 1, "--workers must be at least 1")
        _require(0 <= args.slo_min_analysed <= 1, "--slo-min-analysed is a ratio from 0 to 1")
        _require(args.slo_max_lost_rows >= 0, "--slo-max-lost-rows must be 0 or more")
        _require(args.slo_p95_turn_latency > 0, "--slo-p95-turn-latency must be positive")
        _require(not args.server_env or args.spawn_server, "--server-env needs --spawn-server")
        if args.server is not None:
            parts = urlsplit(args.server)
            _require(parts.scheme in ("http", "https") and bool(parts.hostname),
                     f"--server must be an http(s) URL, got {args.server!r}")
        return cls(
            sessions=args.sessions, ramp_s=args.ramp, duration_s=args.duration,
            scenario=args.scenario, server=args.server and args.server.rstrip("/"),
            api_key=args.api_key, workers=args.workers,
            slo=Slo(args.slo_p95_turn_latency, args.slo_min_analysed, args.slo_max_lost_rows),
            out=args.out or REPO / "artifacts" / "loadtest" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            find_capacity=args.find_capacity, max_sessions=args.max_sessions,
            plots=not args.no_plots, settle_s=args.settle, warmup=not args.no_warmup,
            media=args.media, server_env=_env_pairs(args.server_env),
            sources=MediaSources(args.speech_dir, args.photos_dir),
        )

    def step(self, sessions: int, manifest: Path) -> StepSettings:
        workers = min(self.workers or os.cpu_count() or 1, sessions)
        return StepSettings(sessions, self.ramp_s, self.duration_s, self.scenario, workers,
                            self.settle_s, manifest)

    def session_counts(self) -> list[int]:
        """1, 2, 4, 6, 8, ... up to --max-sessions when searching; else --sessions."""
        if not self.find_capacity:
            return [self.sessions]
        counts = [1, 2] + list(range(4, self.max_sessions + 1, 2))
        return [n for n in counts if n <= self.max_sessions]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        _require(bool(sep) and key.isidentifier(), f"--server-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load-test the interview server with simulated candidates (real aiortc peers).")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="base URL of a running server, e.g. http://127.0.0.1:8080")
    target.add_argument("--spawn-server", action="store_true",
                        help="start server.py here (temporary DATA_DIR, embedded PostgreSQL, loopback ICE)")
    p.add_argument("--sessions", type=int, default=2, help="concurrent candidates (default 2)")
    p.add_argument("--ramp", type=float, default=0.0, help="seconds over which candidates start")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds each candidate stays connected (default 60)")
    p.add_argument("--scenario", choices=CHOICES, default="answers")
    p.add_argument("--api-key", help="the server's API_KEY (also given to a spawned server)")
    p.add_argument("--workers", type=int, help="client processes (default min(sessions, CPUs))")
    p.add_argument("--slo-p95-turn-latency", type=float, default=1.5, metavar="SECONDS")
    p.add_argument("--slo-min-analysed", type=float, default=0.95, metavar="RATIO")
    p.add_argument("--slo-max-lost-rows", type=int, default=0, metavar="ROWS")
    p.add_argument("--out", type=Path, help="output directory (default artifacts/loadtest/<timestamp>)")
    p.add_argument("--find-capacity", action="store_true",
                   help="run 1, 2, 4, 6, 8, ... sessions until an SLO breaks")
    p.add_argument("--max-sessions", type=int, default=32, help="upper bound of --find-capacity")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds to wait for the reply to a candidate's last answer")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the throwaway session that loads the server's models first")
    p.add_argument("--media", type=Path, default=DEFAULT_CACHE, help="pre-encoded media cache")
    p.add_argument("--speech-dir", type=Path, default=SPEECH_DIR,
                   help="the recorded answers the cache is built from (*.wav with .txt)")
    p.add_argument("--photos-dir", type=Path, default=PHOTOS_DIR,
                   help="the scenario photos the cache is built from")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for --spawn-server (e.g. END_OF_TURN_S=1.0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = LoadTestConfig.from_args(args)
    except UsageError as exc:
        parser().error(str(exc))
    try:
        document = asyncio.run(_run(config))
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    return _finish(config, document)


def _finish(config: LoadTestConfig, document: dict[str, Any]) -> int:
    write_result(config.out, document)
    summary = summary_markdown(document)
    (config.out / "summary.md").write_text(summary)
    if config.plots:
        write_plots(config.out, document["runs"], config.slo.p95_turn_latency_s)
    print(summary)
    print(f"results in {config.out}")
    for run in document["runs"][-1:]:
        for check in (c for c in run["slo"]["checks"] if not c["ok"]):
            print(f"SLO broken at {run['sessions']} session(s): {check['name']} {check['target']}: "
                  f"measured {check['value']} {check['note']}".rstrip(), file=sys.stderr)
    return 0 if document["passed"] else 1


async def _run(config: LoadTestConfig) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    manifest = await loop.run_in_executor(None, ensure_media, config.media, config.sources)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    timeout = aiohttp.ClientTimeout(total=30)
    async with _target(config) as (target, server_info), aiohttp.ClientSession(timeout=timeout) as http:
        await _check_health(http, target.url)
        if is_loopback(target.url):
            from media.ice import use_loopback_only

            use_loopback_only()
        nodes = await list_nodes(http, target.url, config.api_key)
        server_info["nodes"] = [asdict(n) for n in nodes]
        if config.warmup:
            library = await loop.run_in_executor(None, MediaLibrary.load, manifest)
            warmup_s = await _warm_up_nodes(http, target.url, config.api_key, library, nodes)
            server_info["warmup_s"] = round(warmup_s, 3)
        runs, capacity = await _steps(config, target, http, manifest)
    return {"version": 1, "started_at": started, "settings": _settings(config),
            "server": server_info, "runs": runs, "capacity": capacity,
            "passed": all(r["slo"]["passed"] for r in runs) if capacity is None
            else capacity["sessions_held"] > 0}


async def _warm_up_nodes(http: aiohttp.ClientSession, url: str, api_key: str | None,
                         library: MediaLibrary, nodes: list[NodeInfo]) -> float:
    """Warm every node on its own URL when several answer from here (through a
    balancer only one would be warmed); else the server at `url`. The longest."""
    direct = await reachable(http, nodes) if len(nodes) > 1 else []
    urls = [str(n.url) for n in direct] if direct and len(direct) == len(nodes) else [url]
    return max(await asyncio.gather(*(warm_up(http, u, api_key, library) for u in urls)))


async def _steps(config: LoadTestConfig, target: ServerTarget, http: aiohttp.ClientSession,
                 manifest: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    runs: list[dict[str, Any]] = []
    held = 0
    for count in config.session_counts():
        data = await run_step(config.step(count, manifest), target, http, f"{count} session(s)")
        run = analyse(data, config.slo)
        runs.append(run)
        print(f"{count} session(s): SLO {'held' if run['slo']['passed'] else 'BROKEN'}",
              file=sys.stderr, flush=True)
        if not run["slo"]["passed"]:
            break
        held = count
    if not config.find_capacity:
        return runs, None
    broke_at = runs[-1]["sessions"] if runs and not runs[-1]["slo"]["passed"] else None
    return runs, {"sessions_held": held, "broke_at": broke_at}


@asynccontextmanager
async def _target(config: LoadTestConfig) -> AsyncIterator[tuple[ServerTarget, dict[str, Any]]]:
    if config.server is not None:
        yield ServerTarget(config.server, config.api_key), {"url": config.server, "mode": "given"}
        return
    async with spawn_server(config.out / "server.log", api_key=config.api_key,
                            extra_env=config.server_env) as proc:
        info = {"url": proc.url, "mode": "spawned", "pid": proc.pid, "script": str(proc.script),
                "env": redact(proc.env),
                "log": str(config.out / "server.log")}
        yield ServerTarget(proc.url, config.api_key, proc.pid, proc.data_dir, proc.exit_code), info


async def _check_health(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/healthz") as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}/healthz answered HTTP {resp.status}")


def _settings(config: LoadTestConfig) -> dict[str, Any]:
    settings = asdict(config)
    settings.pop("api_key")
    return {**settings, "out": str(config.out), "media": str(config.media),
            "sources": {k: str(v) for k, v in asdict(config.sources).items()},
            "slo": asdict(config.slo), "server_env": redact(config.server_env)}
