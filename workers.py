"""`WORKERS=N`: one event loop per core, sessions pinned to a worker process.

The Python event loop is the first bottleneck of one process (it decodes and
routes every RTP packet). With `WORKERS=N`, this supervisor starts N worker
processes (each a full server on a private loopback port with its own data
directory `DATA_DIR/worker-<i>`) and serves the public address itself as a
thin HTTP front:

- `POST /sessions` goes to the worker with the fewest live sessions, which
  creates a session id that maps to itself (`routing.worker_of`);
- every other call naming a session goes to the worker the id maps to, so
  any front, or several fronts behind a load balancer, route without shared
  state; media then flows straight between the candidate and that worker,
  whose SDP answer carries its own ICE candidates;
- `/metrics` merges the workers' metrics with a `worker` label; `/healthz`
  sums them; everything else (static files, `/config`) goes to worker 0.

All workers share one database: the configured one, or one embedded
PostgreSQL started here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from config import Config
from routing import worker_of
from storage.embedded import start_embedded, stop_embedded

__all__ = ["supervise"]

log = logging.getLogger("workers")

_SESSION_PATH = re.compile(r"^/(?:sessions|whip)/([0-9a-fA-F-]{36})(?:/|$)")
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})  # Host passes through: workers build join/resume URLs from it
FRONT: web.AppKey[Front] = web.AppKey("front")


class Front:
    """Routes HTTP calls to the worker that owns the session."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.http = aiohttp.ClientSession(auto_decompress=False)
        self._next = itertools.cycle(range(len(ports)))

    def url(self, index: int, request: web.Request) -> str:
        return f"http://127.0.0.1:{self.ports[index]}{request.rel_url}"

    async def least_loaded(self) -> int:
        loads = await asyncio.gather(*(self._live(i) for i in range(len(self.ports))))
        best = min(loads)
        # Ties rotate, so an idle fleet still spreads new sessions.
        for _ in range(len(self.ports)):
            index = next(self._next)
            if loads[index] == best:
                return index
        return loads.index(best)

    async def _live(self, index: int) -> int:
        try:
            async with self.http.get(f"http://127.0.0.1:{self.ports[index]}/healthz") as resp:
                return int((await resp.json())["live_sessions"])
        except (aiohttp.ClientError, KeyError, ValueError):
            return 1 << 30  # unreachable: last choice


async def route(request: web.Request) -> web.StreamResponse:
    front = request.app[FRONT]
    match = _SESSION_PATH.match(request.path)
    if match:
        try:
            index = worker_of(uuid.UUID(match.group(1)), len(front.ports))
        except ValueError:
            index = 0  # the worker answers the malformed id with its own 400
    elif request.method == "POST" and request.path == "/sessions":
        index = await front.least_loaded()
    else:
        index = 0
    return await forward(request, front, index)


async def forward(request: web.Request, front: Front, index: int) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    body = await request.read()
    async with front.http.request(
        request.method, front.url(index, request), headers=headers, data=body,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={
            k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
        })
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


async def metrics(request: web.Request) -> web.Response:
    """Every worker's metrics, each sample labelled with its worker."""
    front = request.app[FRONT]
    texts = await asyncio.gather(*(_fetch(request, front, i) for i in range(len(front.ports))))
    seen: set[str] = set()
    lines: list[str] = []
    for index, text in enumerate(texts):
        for line in text.splitlines():
            if line.startswith("#"):
                if line not in seen:
                    seen.add(line)
                    lines.append(line)
            elif line:
                lines.append(_label(line, f'worker="{index}"'))
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8")


async def _fetch(request: web.Request, front: Front, index: int) -> str:
    headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    async with front.http.get(f"http://127.0.0.1:{front.ports[index]}/metrics",
                              headers=headers) as resp:
        if resp.status != 200:
            raise _passthrough_error(resp.status, await resp.text())
        return await resp.text()


def _passthrough_error(status: int, text: str) -> web.HTTPException:
    error = web.HTTPException(text=text, content_type="application/json")
    error.set_status(status)
    return error


def _label(sample: str, label: str) -> str:
    name, _, rest = sample.partition(" ")
    if name.endswith("}"):
        return f"{name[:-1]},{label}}} {rest}"
    return f"{name}{{{label}}} {rest}"


async def healthz(request: web.Request) -> web.Response:
    front = request.app[FRONT]
    live = await asyncio.gather(*(front._live(i) for i in range(len(front.ports))))
    return web.json_response({"status": "ok", "workers": len(live), "live_sessions": sum(live)})


def front_app(ports: list[int]) -> web.Application:
    app = web.Application(client_max_size=6 * 1024 * 1024)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[FRONT] = Front(ports)
        yield
        await app[FRONT].http.close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", route)
    return app


async def _spawn(config: Config, index: int, dsn: str) -> tuple[asyncio.subprocess.Process, int]:
    env = dict(os.environ, WORKERS=str(config.workers), WORKER_INDEX=str(index),
               HOST="127.0.0.1", PORT="0", DATABASE_URL=dsn,
               DATA_DIR=str(config.data_dir / f"worker-{index}"), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("server.py")), env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if line.startswith("Serving on "):
            port = int(line.rsplit(":", 1)[1])
            asyncio.get_running_loop().create_task(_relay(proc.stdout), name=f"worker-{index}-out")
            return proc, port
    raise RuntimeError(f"worker {index} exited before serving (status {await proc.wait()})")


async def _relay(stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(line.decode())


async def supervise(config: Config) -> None:
    """Run the workers and the front until SIGTERM/SIGINT; then stop them all."""
    loop = asyncio.get_running_loop()
    embedded = None
    if config.database_url is None:
        embedded, dsn = await asyncio.to_thread(start_embedded, config.data_dir)
    else:
        dsn = config.database_url
    procs: list[asyncio.subprocess.Process] = []
    try:
        spawned = [await _spawn(config, i, dsn) for i in range(config.workers)]
        procs = [proc for proc, _ in spawned]
        runner = web.AppRunner(front_app([port for _, port in spawned]), access_log=None,
                               handle_signals=False)
        await runner.setup()
        sock = socket.create_server((config.host, config.port))
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("front for %d workers on ports %s", config.workers, [p for _, p in spawned])
        print(f"Serving on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
    finally:
        await _stop_workers(procs)
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded)


async def _stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM: each worker ends and saves its live sessions before exiting."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except asyncio.TimeoutError:
            log.error("worker %d did not stop; killing it", proc.pid)
            proc.kill()
            await proc.wait()

