"""For operators and the browser client: health, metrics, client settings."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.bodies import read_json_body
from api.errors import json_error
from api.keys import CONFIG, MEDIA, METRICS, NODE, REGISTRY, WRITER
from api.node import Node
from api.turn import client_ice_servers

__all__ = ["healthz", "metrics", "client_config", "post_drain", "delete_drain", "get_nodes"]


async def healthz(request: web.Request) -> web.Response:
    """200 while this node takes new sessions; 503 when it is draining or full
    (a load balancer then sends new sessions elsewhere; its own go on)."""
    media, node = request.app[MEDIA], request.app[NODE]
    status, code = node.health()
    body = {
        "status": status,
        "node": node.node_id,
        "live_sessions": len(request.app[REGISTRY]),
        "outbox": request.app[WRITER].outbox_size,
        # For a load balancer: this node's load and whether it takes new calls.
        "load": round(media.load.load, 3),
        "admits": code == 200,
        "draining": node.draining,
    }
    return web.json_response(body, status=code)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; protected like the management API."""
    # On the loop on purpose: collectors read the live pipelines' counters,
    # which only the loop mutates; a scrape takes well under a millisecond.
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def client_config(request: web.Request) -> web.Response:
    """Settings the browser client needs before it starts; TURN entries carry
    a fresh, expiring credential (api/turn.py), so nothing here is cached."""
    config = request.app[CONFIG]
    return web.json_response({
        "max_framerate": config.max_framerate,
        "rejoin_grace_s": config.rejoin_grace_s,
        "keepalive_timeout_s": config.keepalive_timeout_s,
        "ice_servers": client_ice_servers(config),
    }, headers={"Cache-Control": "no-store"})


# -- this node (api/node.py) -------------------------------------------------------


async def post_drain(request: web.Request) -> web.Response:
    """Management: `{"deadline_s"?}` (default `DRAIN_TIMEOUT_S`, else 30 min) → 202."""
    fields = await read_json_body(request) if request.can_read_body else {}
    unknown = sorted(set(fields) - {"deadline_s"})
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}")
    node = request.app[NODE]
    deadline = fields.get("deadline_s", node.drain_default_s)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not (
            0 <= deadline <= 7 * 24 * 3600):
        raise json_error(web.HTTPBadRequest, "deadline_s must be a number of seconds, 0 to a week")
    node.drain(float(deadline))
    return web.json_response(_drain_state(node), status=202)


async def delete_drain(request: web.Request) -> web.Response:
    """Management: admit new sessions again."""
    node = request.app[NODE]
    node.undrain()
    return web.json_response(_drain_state(node))


async def get_nodes(request: web.Request) -> web.Response:
    """Management: the node directory (every node's heartbeat, load and state)."""
    node = request.app[NODE]
    nodes = await node.directory.nodes()
    return web.json_response({"this_node": node.node_id,
                              "nodes": [n.to_json() for n in nodes]})


def _drain_state(node: Node) -> dict[str, Any]:
    left = None if node.drain_deadline is None else max(0.0, node.drain_deadline - time.monotonic())
    return {"node_id": node.node_id, "draining": node.draining, "interviews": node.holding(),
            "deadline_in_s": None if left is None else round(left, 1)}
