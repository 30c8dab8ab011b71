"""Capacity of several nodes behind HAProxy, on one machine (issue 15).

Builds the topology of tests/test_topology.py with `testing/topology.py`:
PostgreSQL, `--nodes` servers (`WORKERS=<nodes> WORKER_INDEX=<i>`) and
HAProxy with the shipped `deploy/haproxy.cfg`, each in its own network
namespace; then runs the load generator from this process's own namespace
(the candidates') against HAProxy's address:

    python -m loadtest --server http://10.77.0.3 --api-key ... --find-capacity ...

so every session is created through the proxy's pool and its calls routed by
its id, and the media goes straight to its node. The load generator reports
per node (the `X-Node` of each answer, each node's /metrics on its own
address). This prints the capacity, per node and in total, and leaves the
load test's `result.json` and `summary.md` in `--out`, with every part's log.

Must run as root; it re-runs itself under `unshare -n -m -p -f --mount-proc`,
so nothing reaches the machine's network and every process it started dies
with it:

    sudo .venv/bin/python scripts/bench_topology.py --out artifacts/bench-topology

Nodes run with the server's defaults (offline interviewer and voice,
recording on, `HF_HUB_OFFLINE=1`) plus any `--node-env KEY=VALUE`: unlike the
topology test's nodes (`INTERVIEWER=0`), since the load test's candidates
answer when the interviewer listens and time its voice.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testing.topology import Topology  # noqa: E402

API_KEY = "bench-topology-key"
INSIDE = "BENCH_TOPOLOGY_INSIDE"  # set on the re-run inside the private namespaces
HAPROXY_NOTICES_S = 4.0  # HAProxy's first health checks (inter 1s, rise 2)
NODE_DEFAULTS = {"HF_HUB_OFFLINE": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2, choices=(2, 3))
    p.add_argument("--duration", type=float, default=60.0, help="seconds per candidate")
    p.add_argument("--max-sessions", type=int, default=8, help="upper bound of --find-capacity")
    p.add_argument("--scenario", default="mixed")
    p.add_argument("--slo-p95-turn-latency", type=float, default=4.0, metavar="SECONDS")
    p.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path,
                   default=REPO / "artifacts" / f"bench-topology-{dt.datetime.now():%Y%m%d-%H%M%S}")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    if os.environ.get(INSIDE) != "1":
        if os.geteuid() != 0:
            print("bench_topology: needs root (network namespaces)", file=sys.stderr)
            return 2
        command = ["unshare", "-n", "-m", "-p", "-f", "--mount-proc",
                   sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        return subprocess.run(command, check=False, cwd=REPO,
                              env={**os.environ, INSIDE: "1"}).returncode
    return asyncio.run(inside(args))


async def inside(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-topology-"))
    extra = dict(pair.split("=", 1) for pair in args.node_env)
    async with Topology(work, nodes=args.nodes) as topo:
        await topo.start_database()
        env = [{**topo.node_env(i, API_KEY), **NODE_DEFAULTS, **extra} for i in range(args.nodes)]
        # Node 0 first: it applies the schema, which two nodes at once would race on.
        await topo.start_node(0, env[0])
        await asyncio.gather(*(topo.start_node(i, env[i]) for i in range(1, args.nodes)))
        await topo.start_haproxy()
        await asyncio.sleep(HAPROXY_NOTICES_S)
        command = [sys.executable, "-m", "loadtest", "--server", topo.lb_url, "--api-key", API_KEY,
                   "--find-capacity", "--max-sessions", str(args.max_sessions),
                   "--duration", f"{args.duration:g}", "--scenario", args.scenario,
                   "--slo-p95-turn-latency", f"{args.slo_p95_turn_latency:g}",
                   "--out", str(args.out / "loadtest")]
        print("+", " ".join(command).replace(API_KEY, "***"), flush=True)
        proc = await asyncio.create_subprocess_exec(*command, cwd=REPO)
        code = await proc.wait()
    _keep_logs(work, args.out)
    result = args.out / "loadtest" / "result.json"
    if not result.exists():
        print(f"bench_topology: the load test wrote no result (exit {code})", file=sys.stderr)
        return 2
    print(capacity_report(json.loads(result.read_text())))
    return code


def _keep_logs(work: Path, out: Path) -> None:
    for log in work.glob("*.log"):
        (out / log.name).write_bytes(log.read_bytes())


def capacity_report(document: dict[str, Any]) -> str:
    """Per step, each node's sessions and SLO-relevant figures; the capacity, per node and total."""
    lines = ["| sessions | node | held | completed | turn p50/p95 s | refused | CPU mean % | RSS max MB | step SLO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in document["runs"]:
        verdict = "pass" if run["slo"]["passed"] else "FAIL"
        for node in run["nodes"]:
            t = node["turn_latency_s"]
            lines.append(f"| {run['sessions']} | {node['node_index']} ({node['node_id'][:8]}) "
                         f"| {node['sessions']} | {node['completed']} | {t['p50']} / {t['p95']} "
                         f"| {node['refusals']} | {node['cpu_pct']['mean']} | {node['rss_mb_max']} "
                         f"| {verdict} |")
    cap = document.get("capacity") or {}
    held = cap.get("sessions_held", 0)
    step = next((r for r in document["runs"] if r["sessions"] == held), None)
    per_node = {str(n["node_index"]): n["sessions"] for n in step["nodes"]} if step else {}
    lines += ["", f"capacity: {held} simultaneous session(s) in total (per node at that step: "
              f"{per_node}); broke at {cap.get('broke_at')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
