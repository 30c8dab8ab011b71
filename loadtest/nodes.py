"""Several nodes behind one address: which nodes there are, and each one's CPU and RSS.

A load balancer in front of several servers ("nodes") answers from any of
them. Every response names its node in `X-Node`, and `GET /admin/nodes`
(management) lists the nodes with their own URLs. The candidates record the
`X-Node` of their answers (which node holds each session); this module lists
the nodes and, when there are several and their own URLs answer from here,
samples each one's `/metrics` on that URL (`process_cpu_seconds_total`,
`process_resident_memory_bytes`): through the balancer, which node answers
a scrape is not known. The step's counters and histograms are then all the
nodes' summed, and its server CPU and RSS their sum. With one node the run's
own `ServerMonitor` is that node's (psutil when it was spawned here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.monitor import MetricsSnapshot, ServerMonitor, ServerSample

__all__ = ["NodeInfo", "NodeMonitors", "list_nodes", "reachable"]

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class NodeInfo:
    """One entry of `GET /admin/nodes`."""

    node_id: str
    node_index: int | None
    url: str | None
    alive: bool = True

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> NodeInfo:
        index = body.get("node_index")
        return cls(str(body["node_id"]), None if index is None else int(index),
                   body.get("url") or None, bool(body.get("alive", True)))


async def list_nodes(http: aiohttp.ClientSession, url: str, api_key: str | None) -> list[NodeInfo]:
    """The node directory in index order; [] when the server has none or refuses."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with http.get(f"{url}/admin/nodes", headers=headers) as resp:
            if resp.status != 200:
                return []
            body = await resp.json()
        nodes = [NodeInfo.from_json(n) for n in body.get("nodes") or []]
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return sorted(nodes, key=lambda n: (n.node_index is None, n.node_index or 0, n.node_id))


async def reachable(http: aiohttp.ClientSession, nodes: list[NodeInfo]) -> list[NodeInfo]:
    """The alive nodes whose own URL answers `/healthz` from here (any status:
    a full or draining node answers 503)."""
    async def answers(node: NodeInfo) -> bool:
        try:
            async with http.get(f"{node.url}/healthz",
                                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)):
                return True
        except (TimeoutError, aiohttp.ClientError):
            return False
    candidates = [n for n in nodes if n.alive and n.url]
    found = await asyncio.gather(*(answers(n) for n in candidates))
    return [n for n, ok in zip(candidates, found) if ok]


@dataclass
class NodeMonitors:
    """A `ServerMonitor` per node on the node's own URL (its `/metrics` only)."""

    monitors: dict[str, ServerMonitor] = field(default_factory=dict)

    @classmethod
    async def for_nodes(cls, http: aiohttp.ClientSession, nodes: list[NodeInfo],
                        api_key: str | None) -> NodeMonitors:
        """None watched unless there are several nodes (one is the run's own monitor)."""
        if len(nodes) < 2:
            return cls()
        return cls({n.node_id: ServerMonitor(http, str(n.url), api_key)
                    for n in await reachable(http, nodes)})

    async def start(self) -> None:
        for monitor in self.monitors.values():
            await monitor.start()

    async def stop(self) -> None:
        for monitor in self.monitors.values():
            await monitor.stop()

    async def scrape(self) -> MetricsSnapshot | None:
        """Every node's `/metrics` summed, or None unless each one answered
        (through a balancer, successive scrapes may come from different nodes)."""
        if not self.monitors:
            return None
        found = await asyncio.gather(*(m.scrape() for m in self.monitors.values()))
        return None if None in found else MetricsSnapshot.combine(s for s in found if s is not None)

    def combined(self) -> list[ServerSample]:
        """CPU and RSS of all the nodes together, second by second."""
        series = list(self.samples().values())
        combined = []
        for at_once in zip(*series):
            cpu = [s.cpu_pct for s in at_once]
            rss = [s.rss_mb for s in at_once]
            combined.append(ServerSample(
                at_once[0].t, None if None in cpu else sum(c or 0.0 for c in cpu),
                None if None in rss else sum(r or 0.0 for r in rss),
                live_sessions=sum(s.live_sessions or 0 for s in at_once),
                queue_depth=_merged((s.queue_depth for s in at_once), sum),
                queue_oldest_s=_merged((s.queue_oldest_s for s in at_once), max)))
        return combined

    def samples(self) -> dict[str, list[ServerSample]]:
        return {node_id: m.samples for node_id, m in self.monitors.items()}


def _merged(values: Iterable[dict[str, float]], merge: Callable[[Iterable[float]], float]
            ) -> dict[str, float]:
    by_name: dict[str, list[float]] = {}
    for value in values:
        for name, v in value.items():
            by_name.setdefault(name, []).append(v)
    return {name: merge(vs) for name, vs in by_name.items()}
