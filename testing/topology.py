"""Several machines on one: network namespaces joined by veth pairs and a bridge.

`Topology` builds, from the caller's own private network namespace, a
small network of parts, each in its own namespace with its own address in
one private /24 (no default route anywhere, so nothing leaves it):

    br     the bridge every part's veth pair ends on
    db     PostgreSQL listening on its address (the `pgserver` binaries)
    lb     HAProxy with `deploy/haproxy.cfg`
    n0..   one `python server.py` each (`WORKERS=<nodes> WORKER_INDEX=<i>`)
    cand   the caller's own namespace: its HTTP clients and aiortc peers are
           the candidates, and reach the nodes only through the bridge

It changes nothing outside: it refuses to run in the machine's initial
network or mount namespace, and mounts its own /run/netns. Run it as root
under `unshare -n -m -p -f --mount-proc` (tests/test_topology.py does), so
that every process it started dies with the caller however the caller ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import asyncpg

from testing.process import ServerProcess, start_server

__all__ = ["HAPROXY_CONFIG", "Part", "Topology", "TopologyError"]

HAPROXY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
PREFIX = "10.77.0"  # the /24 every part has its address in
NODE_PORT = 8080
DB_PORT = 5432
LB_PORT = 80
DB_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver's own user
READY_TIMEOUT_S = 30.0


class TopologyError(RuntimeError):
    """The topology could not be built or a part did not start."""


@dataclass(frozen=True)
class Part:
    """One namespace and its address on the bridge."""

    name: str
    address: str

    @property
    def exec(self) -> tuple[str, ...]:
        """The prefix that runs a command in this part's namespace."""
        return ("ip", "netns", "exec", self.name)


def _run(*args: str) -> None:
    proc = subprocess.run(args, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TopologyError(f"{' '.join(args)}: {proc.stderr.strip()}")


def _check_private() -> None:
    """Refuse to touch the machine's own network or mounts."""
    links = subprocess.run(["ip", "-o", "link", "show"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    if len(links) != 1 or ": lo:" not in links[0]:
        raise TopologyError("refusing to build outside a fresh network namespace (it has "
                            f"{len(links)} links): run under unshare -n -m -p -f --mount-proc")
    # As PID 1 of its own PID namespace (--mount-proc: a mount namespace of its
    # own too), /proc/1 is this process; otherwise PID 1's is the machine's.
    if os.getpid() != 1 and os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt"):
        raise TopologyError("refusing to mount /run/netns in the machine's mount namespace: "
                            "run under unshare -n -m -p -f --mount-proc")


class Topology:
    """The parts, their processes, and the teardown (`async with`)."""

    def __init__(self, work: Path, nodes: int = 3) -> None:
        if not 2 <= nodes <= 3:
            raise ValueError(f"deploy/haproxy.cfg routes 2 or 3 nodes, not {nodes}")
        self.work = work
        self.db = Part("db", f"{PREFIX}.2")
        self.lb = Part("lb", f"{PREFIX}.3")
        self.cand = Part("cand", f"{PREFIX}.4")  # the caller's own namespace
        self.nodes = [Part(f"n{i}", f"{PREFIX}.{10 + i}") for i in range(nodes)]
        self.dsn = f"postgresql://postgres@{self.db.address}:{DB_PORT}/postgres"
        self.lb_url = f"http://{self.lb.address}"
        self._stack = AsyncExitStack()
        self._children: list[asyncio.subprocess.Process] = []
        self.servers: dict[int, ServerProcess] = {}

    def node_url(self, index: int) -> str:
        return f"http://{self.nodes[index].address}:{NODE_PORT}"

    async def __aenter__(self) -> Topology:
        await asyncio.to_thread(self.build)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- the network -------------------------------------------------------------

    def build(self) -> None:
        """The namespaces, the bridge and one veth pair per part (blocks)."""
        _check_private()
        Path("/run/netns").mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run/netns")
        _run("ip", "netns", "add", "br")
        _run("ip", "-n", "br", "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", "br", "link", "set", "br0", "up")
        _run("ip", "link", "set", "lo", "up")
        for part in (self.db, self.lb, *self.nodes):
            _run("ip", "netns", "add", part.name)
            _run("ip", "-n", part.name, "link", "set", "lo", "up")
            self._attach(part, ("ip", "-n", part.name))
        self._attach(self.cand, ("ip",))

    def _attach(self, part: Part, ip: tuple[str, ...]) -> None:
        peer = f"b-{part.name}"
        _run(*ip, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", "br")
        _run("ip", "-n", "br", "link", "set", peer, "master", "br0")
        _run("ip", "-n", "br", "link", "set", peer, "up")
        _run(*ip, "addr", "add", f"{part.address}/24", "dev", "eth0")
        _run(*ip, "link", "set", "eth0", "up")

    def routes(self) -> dict[str, str]:
        """Each part's routing table (`ip route`), to show nothing leads outside."""
        tables = {}
        for part in (self.db, self.lb, *self.nodes, self.cand):
            ip = ("ip",) if part is self.cand else ("ip", "-n", part.name)
            tables[part.name] = subprocess.run(
                [*ip, "route", "show", "table", "all"], check=True, capture_output=True,
                text=True).stdout
        return tables

    # -- the parts' processes --------------------------------------------------------

    async def _spawn(self, part: Part, args: tuple[str, ...], log: Path,
                     env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *part.exec, *args, stdout=out, stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env})
        self._children.append(proc)
        return proc

    async def start_database(self) -> str:
        """PostgreSQL in `db`, on its address, trusting this /24 only; its DSN."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (root, CI).
            warnings.simplefilter("ignore")
            # pgserver's binaries, and its helpers for running them as its own user.
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        pgdata = self.work / "postgres"
        pgdata.mkdir(parents=True)
        ensure_user_exists(DB_USER)
        ensure_prefix_permissions(pgdata)
        shutil.chown(pgdata, DB_USER, DB_USER)
        # setpriv execs (runuser would fork): the process signalled is PostgreSQL.
        as_db_user = ("setpriv", f"--reuid={DB_USER}", f"--regid={DB_USER}", "--init-groups", "--")
        await asyncio.to_thread(
            _run, *as_db_user, str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata),
            "-U", "postgres", "--auth=trust", "--encoding=utf8")
        (pgdata / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all all {PREFIX}.0/24 trust\n")
        await self._spawn(self.db, (
            *as_db_user, str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata),
            "-h", self.db.address, "-p", str(DB_PORT), "-k", str(pgdata),
        ), self.work / "postgres.log")
        await self._until_ready(self._database_ready, "PostgreSQL")
        return self.dsn

    async def _database_ready(self) -> bool:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            return False
        await conn.close()
        return True

    async def start_haproxy(self, config: Path = HAPROXY_CONFIG) -> str:
        """HAProxy in `lb` with `config`, the nodes as its servers; its URL."""
        env = {"LB_BIND": f"{self.lb.address}:{LB_PORT}", "NODES": str(len(self.nodes))}
        for i, node in enumerate(self.nodes):
            env[f"NODE{i}_ADDR"] = f"{node.address}:{NODE_PORT}"
        await self._spawn(self.lb, ("haproxy", "-db", "-f", str(config)),
                          self.work / "haproxy.log", env)
        await self._until_ready(self._lb_ready, "HAProxy")
        return self.lb_url

    async def _lb_ready(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.lb.address, LB_PORT)
        except OSError:
            return False
        writer.close()
        return True

    async def _until_ready(self, probe: Callable[[], Awaitable[bool]], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while not await probe():
            if any(p.returncode is not None for p in self._children):
                raise TopologyError(f"{what} exited while starting; see {self.work}")
            if loop.time() > deadline:
                raise TopologyError(f"{what} not ready after {READY_TIMEOUT_S:g} s")
            await asyncio.sleep(0.2)

    def node_env(self, index: int, api_key: str) -> dict[str, str]:
        """What node `index` is started with: its address, the shared database,
        its own data directory, its share of the id space, the proxy's URL."""
        return {
            "HOST": self.nodes[index].address, "PORT": str(NODE_PORT),
            "DATABASE_URL": self.dsn, "DATA_DIR": str(self.work / f"n{index}"),
            "API_KEY": api_key, "WORKERS": str(len(self.nodes)), "WORKER_INDEX": str(index),
            "PUBLIC_URL": self.lb_url,
        }

    async def start_node(self, index: int, env: Mapping[str, str]) -> ServerProcess:
        """`python server.py` in node `index`'s namespace; stopped by `close()`."""
        server = await self._stack.enter_async_context(start_server(
            env, log_path=self.work / f"n{index}.log", wrapper=self.nodes[index].exec,
            start_timeout_s=90, stop_timeout_s=20))
        self.servers[index] = server
        return server

    async def kill_node(self, index: int) -> None:
        """SIGKILL: the node's process dies at once, saving nothing."""
        process = self.servers[index].process
        process.kill()
        await process.wait()

    async def close(self) -> None:
        """Stop the nodes (SIGTERM), then HAProxy and PostgreSQL; remove the namespaces."""
        try:
            await self._stack.aclose()
        finally:
            for proc in reversed(self._children):
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except asyncio.TimeoutError:
                        proc.kill()
                        await proc.wait()
            for part in ("br", self.db.name, self.lb.name, *(n.name for n in self.nodes)):
                with contextlib.suppress(TopologyError):
                    _run("ip", "netns", "del", part)
