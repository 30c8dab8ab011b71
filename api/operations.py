"""For operators and the browser client: health, metrics, client settings."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.keys import CONFIG, METRICS, REGISTRY, WRITER
from api.turn import client_ice_servers

__all__ = ["healthz", "metrics", "client_config"]


async def healthz(request: web.Request) -> web.Response:
    body = {
        "status": "ok",
        "live_sessions": len(request.app[REGISTRY]),
        "outbox": request.app[WRITER].outbox_size,
    }
    return web.json_response(body)


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
