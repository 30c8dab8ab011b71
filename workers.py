"""`WORKERS=N`: one event loop per core, sessions pinned to a worker process.

The Python event loop is the first bottleneck of one process (it decodes and
routes every RTP packet). With `WORKERS=N`, this supervisor runs N worker
processes, each a full server with its own data directory
`DATA_DIR/worker-<i>`, and serves the public address itself as a thin front:

- `POST /sessions` goes to the live worker with the fewest live sessions,
  which mints an id it owns (`routing.py` holds the one rule);
- every other call naming a session goes to the worker that owns it, so
  several fronts behind a load balancer route without shared state; media
  then flows straight between the candidate and that worker;
- `/metrics` merges the workers' metrics with a `worker` label; `/healthz`
  reports each worker; everything else goes to the first live worker.

Each worker is a slot with a fixed index, data directory and loopback
listening socket, which the supervisor binds once and hands down (`pass_fds`)
with a private socketpair, the worker's link. Over the link go the few
settings a worker differs by (`WorkerSettings`, one JSON line), then back a
"ready" line; the link's end of file tells a worker its supervisor is gone.

A worker that dies, however it dies, is restarted in the same slot. Until it
is ready again, calls for its sessions get a JSON `503` with `Retry-After`,
and new sessions go to the other workers.

All workers share one database: the configured one, or one embedded
PostgreSQL started here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from config import Config, ConfigError
from layout import DataLayout
from routing import session_in_path, worker_of
from storage.embedded import start_embedded, stop_embedded

__all__ = ["WorkerLink", "WorkerSettings", "attach", "supervise"]

log = logging.getLogger("workers")

SERVER = Path(__file__).with_name("server.py")
LINK_FLAG = "--worker-link"

# The largest bodies a worker reads (server.py): a resume upload, which only
# the API key may send, and an SDP offer, which a session token may send.
MANAGEMENT_BODY_MAX = 5 * 1024 * 1024 + 64 * 1024
CANDIDATE_BODY_MAX = 64 * 1024

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0  # a worker up this long before dying restarts without delay growth
STARTING_RETRY_S = 2
STARTUP_TIMEOUT_S = 120.0  # models load lazily: starting is imports and a database pool
STOP_TIMEOUT_S = 60.0
HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})  # Host passes through: workers build join/resume URLs from it


# -- the link between the supervisor and one worker -------------------------


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker's configuration differs by from its supervisor's.

    Everything else the worker reads from the same environment, with the
    same `Config.from_env()`, so the two cannot disagree.
    """

    index: int
    data_dir: Path
    database_url: str = field(repr=False)
    listen_fd: int

    def encode(self) -> bytes:
        body = {"index": self.index, "data_dir": str(self.data_dir),
                "database_url": self.database_url, "listen_fd": self.listen_fd}
        return json.dumps(body).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> WorkerSettings:
        try:
            body = json.loads(line)
            return cls(int(body["index"]), Path(body["data_dir"]),
                       str(body["database_url"]), int(body["listen_fd"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"malformed worker settings from the supervisor: {exc}") from None


@dataclass
class WorkerLink:
    """A worker's side of its link: its settings, socket and supervisor."""

    settings: WorkerSettings
    listener: socket.socket
    channel: socket.socket

    def config(self, base: Config) -> Config:
        """`base` (this process's `Config.from_env()`) as this worker's."""
        return replace(
            base, host="127.0.0.1", port=self.listener.getsockname()[1],
            data_dir=self.settings.data_dir, database_url=self.settings.database_url,
            worker_index=self.settings.index,
        )

    async def announce_ready(self) -> None:
        # A supervisor already gone is noticed by `wait_supervisor_gone`.
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(self.channel, b"ready\n")

    async def wait_supervisor_gone(self) -> None:
        """Return once the supervisor has died (even by SIGKILL) or let go."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # a reset link: gone too
            while await loop.sock_recv(self.channel, 4096):
                pass


def attach(argv: Sequence[str]) -> WorkerLink | None:
    """The link named on the command line, or `None` outside a supervisor.

    Blocks until the supervisor has sent this worker's settings.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(LINK_FLAG, type=int)
    fd = parser.parse_known_args(list(argv))[0].worker_link
    if fd is None:
        return None
    channel = socket.socket(fileno=fd)
    line = b""
    while not line.endswith(b"\n"):
        chunk = channel.recv(4096)
        if not chunk:
            raise ConfigError("the supervisor closed the worker link before sending settings")
        line += chunk
    settings = WorkerSettings.decode(line)
    channel.setblocking(False)
    return WorkerLink(settings, socket.socket(fileno=settings.listen_fd), channel)


# -- the supervisor's side: one restartable slot per worker ------------------


class Worker:
    """One worker slot: fixed index, data directory and listening socket; the
    process in it is replaced whenever it dies."""

    def __init__(self, index: int, data_dir: Path, database_url: str) -> None:
        self.index = index
        self.data_dir = data_dir
        self._database_url = database_url
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.state = "starting"  # then "up"; "down" while it waits to restart
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.last_exit: str | None = None
        self._retry_at = 0.0
        self._link: asyncio.StreamWriter | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def retry_after_s(self) -> int:
        if self.state == "down":
            left = self._retry_at - asyncio.get_running_loop().time()
            return max(1, math.ceil(left)) + STARTING_RETRY_S
        return STARTING_RETRY_S

    async def start(self) -> bool:
        """Start a process in this slot; return whether it became ready."""
        self.state = "starting"
        parent, child = socket.socketpair()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SERVER), f"{LINK_FLAG}={child.fileno()}",
                pass_fds=(child.fileno(), self.listener.fileno()),
                # Terminal signals reach the supervisor only; it stops the workers.
                start_new_session=True,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, self._link = await asyncio.open_unix_connection(sock=parent)
        settings = WorkerSettings(self.index, self.data_dir, self._database_url,
                                  self.listener.fileno())
        self._link.write(settings.encode())
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                # The end of file instead of "ready": the worker died while starting.
                if await reader.readline() != b"ready\n":
                    return False
        except TimeoutError:
            log.error("worker %d (pid %d) not ready after %.0f s; killing it",
                      self.index, self.proc.pid, STARTUP_TIMEOUT_S)
            self.proc.kill()
            return False
        self.state = "up"
        log.info("worker %d (pid %d) up on port %d", self.index, self.proc.pid, self.port)
        return True

    async def keep_alive(self) -> None:
        """Restart the process whenever it dies, until cancelled."""
        loop = asyncio.get_running_loop()
        delay = MIN_BACKOFF_S
        while True:
            assert self.proc is not None
            started = loop.time()
            status = await self.proc.wait()
            self._release_link()
            self.state, self.last_exit = "down", _describe_exit(status)
            if loop.time() - started >= STABLE_S:
                delay = MIN_BACKOFF_S
            self._retry_at = loop.time() + delay
            log.error("worker %d (pid %d) %s; restarting it in %.0f s",
                      self.index, self.proc.pid, self.last_exit, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF_S)
            self.restarts += 1
            try:
                await self.start()
            except Exception:  # e.g. out of file descriptors: try again later
                log.exception("worker %d could not be restarted", self.index)

    async def stop(self) -> None:
        """SIGTERM: the worker ends and saves its live sessions, then exits."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.error("worker %d (pid %d) did not stop; killing it", self.index, proc.pid)
                proc.kill()
                await proc.wait()
        self._release_link()
        self.listener.close()

    def _release_link(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


# -- the front ---------------------------------------------------------------


class Front:
    """Routes HTTP calls to the worker that owns the session."""

    def __init__(self, workers: list[Worker], api_key: str | None) -> None:
        self.workers = workers
        self._api_key = api_key
        self.http = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        self._turn = itertools.count()

    def keyed(self, request: web.Request) -> bool:
        """Whether the call may act as management: the API key, or local mode."""
        if self._api_key is None:
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self._api_key.encode()
        )

    def owner(self, request: web.Request) -> Worker | None:
        session_id = session_in_path(request.path)
        if session_id is None:
            return None
        return self.workers[worker_of(session_id, len(self.workers))]

    def first_up(self) -> Worker | None:
        return next((w for w in self.workers if w.state == "up"), None)

    async def least_loaded(self) -> Worker | None:
        """The live worker with the fewest live sessions; ties take turns."""
        up = [w for w in self.workers if w.state == "up"]
        loads = await asyncio.gather(*(self.health(w) for w in up))
        counts = {w.index: int(h["live_sessions"]) for w, h in zip(up, loads) if h is not None}
        if not counts:
            return None
        best = min(counts.values())
        tied = [i for i, count in counts.items() if count == best]
        return self.workers[tied[next(self._turn) % len(tied)]]

    async def health(self, worker: Worker) -> dict[str, Any] | None:
        """The worker's own `/healthz`, or `None` when it does not answer."""
        try:
            async with self.http.get(f"{worker.base_url}/healthz",
                                     timeout=HEALTH_TIMEOUT) as resp:
                body = await resp.json()
                return body if resp.status == 200 and isinstance(body, dict) else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None


FRONT: web.AppKey[Front] = web.AppKey("front", Front)


def unavailable(worker: Worker | None) -> web.Response:
    if worker is None:
        message, retry_after = "no worker is up; retry shortly", STARTING_RETRY_S
    else:
        state = "restarting" if worker.state == "up" else worker.state  # died under a call
        message = f"worker {worker.index} is {state}; retry shortly"
        retry_after = worker.retry_after_s()
    return web.json_response({"error": message}, status=503,
                             headers={"Retry-After": str(retry_after)})


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _unauthorized() -> web.Response:
    return _error(401, "missing or wrong API key", **{"WWW-Authenticate": "Bearer"})


async def route(request: web.Request) -> web.StreamResponse:
    front = request.app[FRONT]
    keyed = front.keyed(request)
    creating = request.method == "POST" and request.path == "/sessions"
    if creating and not keyed:
        return _unauthorized()  # before reading a byte of the (resume-sized) body
    worker = front.owner(request)
    if worker is None:
        worker = await front.least_loaded() if creating else front.first_up()
    if worker is None or worker.state != "up":
        return unavailable(worker)
    limit = MANAGEMENT_BODY_MAX if keyed else CANDIDATE_BODY_MAX
    body = await _read_body(request, limit)
    if body is None:
        return _error(413, f"request body larger than {limit // 1024} KB")
    return await forward(request, front, worker, body)


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or `None` once it is larger than `limit`."""
    if (request.content_length or 0) > limit:
        return None
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def forward(request: web.Request, front: Front, worker: Worker,
                  body: bytes) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    response: web.StreamResponse | None = None
    try:
        async with front.http.request(
            request.method, f"{worker.base_url}{request.rel_url}", headers=headers,
            data=body, allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            })
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientConnectionError:
        if response is not None and response.prepared:
            raise  # too late for a status: the client sees the connection close
        # The worker died under this call; its keeper restarts it.
        return unavailable(worker)


async def metrics(request: web.Request) -> web.Response:
    """Every live worker's metrics, each sample labelled with its worker."""
    front = request.app[FRONT]
    if not front.keyed(request):
        return _unauthorized()
    auth = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
    texts = await asyncio.gather(*(_fetch_metrics(front, w, auth) for w in front.workers))
    seen: set[str] = set()
    lines = _slot_metrics(front.workers)
    for worker, text in zip(front.workers, texts):
        for line in (text or "").splitlines():
            if line.startswith("#"):
                if line not in seen:
                    seen.add(line)
                    lines.append(line)
            elif line:
                lines.append(_label(line, f'worker="{worker.index}"'))
    return web.Response(text="\n".join(lines) + "\n",
                        content_type="text/plain", charset="utf-8")


async def _fetch_metrics(front: Front, worker: Worker, headers: dict[str, str]) -> str | None:
    if worker.state != "up":
        return None
    try:
        async with front.http.get(f"{worker.base_url}/metrics", headers=headers,
                                  timeout=HEALTH_TIMEOUT) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


def _slot_metrics(workers: list[Worker]) -> list[str]:
    lines = ["# HELP interview_worker_up Whether the worker process is up (1) or not (0)",
             "# TYPE interview_worker_up gauge"]
    lines += [f'interview_worker_up{{worker="{w.index}"}} {int(w.state == "up")}'
              for w in workers]
    lines += ["# HELP interview_worker_restarts_total Times the worker was restarted",
              "# TYPE interview_worker_restarts_total counter"]
    lines += [f'interview_worker_restarts_total{{worker="{w.index}"}} {w.restarts}'
              for w in workers]
    return lines


def _label(sample: str, label: str) -> str:
    name, _, rest = sample.partition(" ")
    if name.endswith("}"):
        return f"{name[:-1]},{label}}} {rest}"
    return f"{name}{{{label}}} {rest}"


async def healthz(request: web.Request) -> web.Response:
    """`ok` when every worker is up, `degraded` when some are, else `down` (503)."""
    front = request.app[FRONT]
    reports = await asyncio.gather(*(_report(front, w) for w in front.workers))
    up = sum(r["state"] == "up" for r in reports)
    body = {
        "status": "ok" if up == len(reports) else "degraded" if up else "down",
        "workers": reports,
        "live_sessions": sum(r["live_sessions"] or 0 for r in reports),
        "outbox": sum(r["outbox"] or 0 for r in reports),
    }
    return web.json_response(body, status=200 if up else 503)


async def _report(front: Front, worker: Worker) -> dict[str, Any]:
    health = await front.health(worker) if worker.state == "up" else None
    state = "unresponsive" if worker.state == "up" and health is None else worker.state
    return {
        "worker": worker.index,
        "state": state,
        "pid": worker.proc.pid if worker.proc is not None and state != "down" else None,
        "restarts": worker.restarts,
        "last_exit": worker.last_exit,
        "live_sessions": None if health is None else health.get("live_sessions"),
        "outbox": None if health is None else health.get("outbox"),
    }


def _cors(origins: tuple[str, ...]) -> Any:
    """CORS on the front's own answers (401, 413, 503); a worker's carry theirs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        origin = request.headers.get("Origin")
        # Forwarded answers are already sent (prepared), with the worker's CORS.
        if origin is not None and ("*" in origins or origin in origins) and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return middleware


def front_app(workers: list[Worker], config: Config) -> web.Application:
    app = web.Application(middlewares=[_cors(config.cors_origins)])

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[FRONT] = Front(workers, config.api_key)
        yield
        await app[FRONT].http.close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", route)
    return app


# -- running it all ------------------------------------------------------------


async def supervise(config: Config) -> None:
    """Run the workers and the front until SIGTERM/SIGINT; then stop them all."""
    embedded = None
    if config.database_url is None:
        embedded, dsn = await asyncio.to_thread(start_embedded, config.data_dir)
    else:
        dsn = config.database_url
    layout = DataLayout(config.data_dir)
    workers = [Worker(i, layout.worker(i).root, dsn) for i in range(config.workers)]
    keepers: list[asyncio.Task[None]] = []
    try:
        # Worker 0 first: it applies the schema, which two workers applying
        # at once to a fresh database would race on.
        if not await workers[0].start():
            raise RuntimeError("worker 0 exited before serving")
        ready = await asyncio.gather(*(w.start() for w in workers[1:]))
        if not all(ready):
            failed = [w.index for w, ok in zip(workers[1:], ready) if not ok]
            raise RuntimeError(f"worker(s) {failed} exited before serving")
        keepers = [asyncio.create_task(w.keep_alive(), name=f"worker-{w.index}-keeper")
                   for w in workers]
        await _serve_front(config, workers)
    finally:
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in workers))
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded)


async def _serve_front(config: Config, workers: list[Worker]) -> None:
    runner = web.AppRunner(front_app(workers, config), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        sock = socket.create_server((config.host, config.port))
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("front for %d workers on ports %s", len(workers), [w.port for w in workers])
        print(f"Serving on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
