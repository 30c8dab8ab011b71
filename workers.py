"""`WORKERS=N`: one event loop per core, sessions pinned to a worker process.

The Python event loop is the first bottleneck of one process (it decodes and
routes every RTP packet). With `WORKERS=N`, this supervisor runs N worker
processes, each a full server with its own data directory
`DATA_DIR/worker-<i>`, and serves the public address itself as a thin front
(`front.py`):

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
import json
import logging
import math
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path


from config import Config, ConfigError
from layout import DataLayout
from storage.embedded import start_embedded, stop_embedded

__all__ = ["WorkerLink", "WorkerSettings", "attach", "supervise"]

log = logging.getLogger("workers")

SERVER = Path(__file__).with_name("server.py")
LINK_FLAG = "--worker-link"


MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0  # a worker up this long before dying restarts without delay growth
STARTING_RETRY_S = 2
STARTUP_TIMEOUT_S = 120.0  # models load lazily: starting is imports and a database pool
STOP_TIMEOUT_S = 60.0


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
        # "starting", then "up"; "down" while it waits to restart; "stopped"
        # once it exited on the supervisor's SIGTERM (drained, or shut down).
        self.state = "starting"
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

    async def stop(self, drain_s: float = 0.0) -> None:
        """SIGTERM: the worker ends and saves its live sessions, then exits
        (first draining for up to `drain_s`, its DRAIN_TIMEOUT_S)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S + drain_s)
            except asyncio.TimeoutError:
                log.error("worker %d (pid %d) did not stop; killing it", self.index, proc.pid)
                proc.kill()
                await proc.wait()
        self.state = "stopped"
        self._release_link()
        self.listener.close()

    def signal_again(self) -> None:
        """A second SIGTERM: a draining worker cuts its drain short."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

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


# -- running it all ------------------------------------------------------------


async def supervise(config: Config) -> None:
    """Run the workers and the front until SIGTERM/SIGINT; then stop them all."""
    embedded = None
    if config.database_url is None:
        embedded, dsn = await asyncio.to_thread(start_embedded, config.data_dir)
    else:
        dsn = config.database_url
    layout = DataLayout(config.data_dir, config.media_dir)
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
        await _serve_front(config, workers, keepers)
    finally:
        await _stop_workers(workers, keepers, config.drain_timeout_s)
        if embedded is not None:
            await asyncio.to_thread(stop_embedded, embedded)


async def _stop_workers(workers: list[Worker], keepers: list[asyncio.Task[None]],
                        drain_s: float) -> None:
    for task in keepers:
        task.cancel()  # a worker that exits now stays down
    await asyncio.gather(*keepers, return_exceptions=True)
    await asyncio.gather(*(w.stop(drain_s) for w in workers))


async def _drain_workers(workers: list[Worker], keepers: list[asyncio.Task[None]],
                         drain_s: float, stop: asyncio.Event) -> None:
    """SIGTERM with DRAIN_TIMEOUT_S: every worker drains while the front goes on
    routing their sessions' calls; a second signal cuts the drains short."""
    stop.clear()
    stopping = asyncio.create_task(_stop_workers(workers, keepers, drain_s), name="drain")
    second = asyncio.create_task(stop.wait(), name="second-signal")
    await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        for worker in workers:
            worker.signal_again()
    second.cancel()
    await stopping


async def _serve_front(config: Config, workers: list[Worker],
                       keepers: list[asyncio.Task[None]]) -> None:
    from aiohttp import web

    from front import front_app  # here: `front` imports this module's `Worker`

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
        if config.drain_timeout_s > 0:
            log.info("draining %d worker(s) for up to %.0f s", len(workers),
                     config.drain_timeout_s)
            await _drain_workers(workers, keepers, config.drain_timeout_s, stop)
    finally:
        await runner.cleanup()
