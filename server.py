"""The interview media server: wires the HTTP API (`api/`) into one application.

Run it with `python server.py`; configuration comes from the environment
(see README.md and config.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from aiohttp import web

from api import files, openapi, operations, review, sessions, signaling
from api.auth import access_middleware
from api.bodies import MAX_RESUME_BYTES
from api.cors import cors_middleware
from api.errors import error_middleware
from api.forward import forward_middleware
from api.guards import guard_middleware
from api.headers import add_security_headers
from api.keys import CONFIG, LAYOUT, MODELS, NODE, REGISTRY, URLS
from api.lifecycle import registry_ctx, storage_ctx
from api.node import Node
from api.routes import Access, Route, Static, add_routes, check_declared
from config import Config, ConfigError
from engine.aio import cancel_and_wait
from adapters.malloc import limit_arenas
from layout import DataLayout, PublicUrls
from media.ice import use_loopback_only
from media.runtime import MediaModels
from workers import WorkerLink, attach, supervise

log = logging.getLogger("server")

_SESSION = "/sessions/{session_id}"
_WHIP = "/whip/{session_id}"
_EVIDENCE = f"{_SESSION}/evidence/{{name:{files.EVIDENCE_NAME}}}"

# Every route with who may call it (see `Access`); `api.auth.access_middleware`
# enforces it, and the app will not start with a route missing from here.
ROUTES: tuple[Route | Static, ...] = (
    Route("POST", "/sessions", sessions.create_session, Access.MANAGEMENT),
    Route("GET", "/sessions", review.list_sessions, Access.MANAGEMENT),
    Route("GET", _SESSION, sessions.get_session, Access.MANAGEMENT),
    Route("DELETE", _SESSION, sessions.delete_session, Access.MANAGEMENT),
    Route("GET", f"{_SESSION}/info", sessions.get_info, Access.MANAGEMENT),
    Route("POST", f"{_SESSION}/save", sessions.save_session, Access.MANAGEMENT),
    Route("POST", f"{_SESSION}/end", sessions.end_session, Access.MANAGEMENT_OR_CANDIDATE),
    Route("GET", f"{_SESSION}/resume", files.get_resume, Access.MANAGEMENT),
    Route("GET", _EVIDENCE, files.get_evidence, Access.REVIEW),
    Route("GET", f"{_SESSION}/recording", files.get_recording, Access.REVIEW),
    Route("GET", f"{_SESSION}/review", review.get_review, Access.REVIEW),
    Route("PUT", f"{_SESSION}/review", review.put_review, Access.REVIEW_DECIDE),
    Route("PUT", f"{_SESSION}/flags/{{flag}}", review.put_flag, Access.REVIEW_DECIDE),
    Route("POST", f"{_SESSION}/review-tokens", review.post_review_token, Access.MANAGEMENT),
    Route("POST", f"{_SESSION}/offer", signaling.post_offer, Access.CANDIDATE_REJOINING),
    Route("POST", _WHIP, signaling.post_whip, Access.CANDIDATE_REJOINING),
    Route("DELETE", f"{_WHIP}/resource", signaling.delete_whip, Access.CANDIDATE),
    Route("PATCH", f"{_WHIP}/resource", signaling.patch_whip, Access.CANDIDATE),
    Route("GET", "/healthz", operations.healthz, Access.PUBLIC),
    Route("GET", "/metrics", operations.metrics, Access.MANAGEMENT),
    Route("POST", "/admin/drain", operations.post_drain, Access.MANAGEMENT),
    Route("DELETE", "/admin/drain", operations.delete_drain, Access.MANAGEMENT),
    Route("GET", "/admin/nodes", operations.get_nodes, Access.MANAGEMENT),
    Route("GET", "/config", operations.client_config, Access.PUBLIC),
    Route("GET", "/openapi.json", openapi.openapi_json, Access.PUBLIC),
    Route("GET", "/", files.index, Access.PUBLIC),
    Route("GET", "/review", review.sessions_page, Access.PUBLIC),
    Route("GET", "/review/{session_id}", review.review_page, Access.PUBLIC),
    Static("/static", files.STATIC_DIR, Access.PUBLIC),
)


def make_app(config: Config, models: MediaModels | None = None) -> web.Application:
    """The application; `models` replace those loaded on the first call (tests)."""
    app = web.Application(
        # CORS outermost, so that errors get its headers too; forwarding before
        # access (the node that holds the session checks the credentials);
        # access last, so that its refusals are JSON errors like any other.
        middlewares=[cors_middleware, error_middleware, guard_middleware, forward_middleware,
                     access_middleware],
        client_max_size=MAX_RESUME_BYTES + 65536,
    )
    app[CONFIG] = config
    app[MODELS] = models
    app[LAYOUT] = DataLayout(config.data_dir)
    app[URLS] = PublicUrls(config.public_url or "")
    if config.ice_loopback_only:
        use_loopback_only()
    # First, before any cleanup context starts the database.
    app.on_startup.insert(0, check_declared)
    app.on_startup.insert(1, openapi.check_described)
    add_security_headers(app)
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(registry_ctx)
    add_routes(app, ROUTES)
    return app


async def serve(config: Config, link: WorkerLink | None = None) -> None:
    """Run until SIGTERM or SIGINT, then end and save every live session.

    With `link`, this is a `WORKERS=N` worker: it serves on the socket its
    supervisor handed down, and stops too when the supervisor is gone.
    """
    if config.local_mode:
        log.warning(
            "API_KEY is not set: local mode, no authentication (HOST=%s; Host and Origin "
            "checked)", config.host
        )
    runner = web.AppRunner(make_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    if link is None:
        sock = socket.create_server((config.host, config.port), reuse_port=False)
    else:
        sock = link.listener
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    if config.node_url is None:
        # What other nodes reach this one at; a wildcard address names no one.
        wildcard = host in ("0.0.0.0", "::")
        runner.app[NODE].url = None if wildcard else f"http://{_url_host(host)}:{port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor_watch = None
    if link is None:
        print(f"Serving on http://{host}:{port}", flush=True)
    else:
        log.info("worker %d serving on http://%s:%d", link.settings.index, host, port)
        await link.announce_ready()
        supervisor_watch = asyncio.create_task(
            _stop_when_orphaned(link, stop), name="supervisor-watch"
        )
    await stop.wait()
    if config.drain_timeout_s > 0:
        await _drain(runner.app[NODE], config.drain_timeout_s, stop)
    log.info("shutting down: ending %d live session(s)", len(runner.app[REGISTRY]))
    await runner.cleanup()
    await cancel_and_wait(supervisor_watch)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _drain(node: Node, deadline_s: float, stop: asyncio.Event) -> None:
    """SIGTERM with DRAIN_TIMEOUT_S: no new sessions, the live ones may finish;
    a second signal cuts it short."""
    stop.clear()
    node.drain(deadline_s)
    second = asyncio.create_task(stop.wait(), name="second-signal")
    drained = asyncio.create_task(node.drained(), name="drained")
    await asyncio.wait({second, drained}, return_when=asyncio.FIRST_COMPLETED)
    await cancel_and_wait(second, drained)


async def _stop_when_orphaned(link: WorkerLink, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (even by SIGKILL) shuts down cleanly too."""
    await link.wait_supervisor_gone()
    if not stop.is_set():
        log.warning("the supervisor is gone; shutting this worker down")
        stop.set()


def main() -> None:
    limit_arenas()  # before any thread starts; see engine/malloc.py
    os.umask(0o077)  # resumes, recordings, evidence, the outbox: this user's only
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        config = Config.from_env()
        link = attach(sys.argv[1:])  # set when a WORKERS=N supervisor started us
        if link is not None:
            asyncio.run(serve(link.config(config), link))
        elif config.workers > 1 and config.worker_index is None:
            asyncio.run(supervise(config))
        else:
            asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
