"""The `WORKERS=N` front: the public address, routing each call to its worker.

`POST /sessions` goes to the live worker with the fewest live sessions, which
mints an id it owns; every other call naming a session goes to the worker
that owns it (`routing.py` holds the one rule); `/metrics` merges the
workers' metrics with a `worker` label; `/healthz` reports each worker;
everything else goes to the first live worker. While a session's worker is
down, a read of it is answered by a live worker from the database and any
other call gets a JSON `503` with `Retry-After`: the same rule, the same node
directory and the same fallback as several machines behind HAProxy
(`deploy/haproxy.cfg`, `api/forward.py`), on one machine. The API key is
checked here before any body is read, and no body larger than the worker's
own limits is buffered. The workers themselves (their processes, links and restarts) are
`workers.py`'s.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from config import Config
from routing import session_in_path, worker_of
from workers import STARTING_RETRY_S, Worker

__all__ = ["Front", "front_app"]

log = logging.getLogger("front")

# The largest bodies a worker reads (server.py): a resume upload, which only
# the API key may send, and an SDP offer, which a session token may send.
MANAGEMENT_BODY_MAX = 5 * 1024 * 1024 + 64 * 1024
CANDIDATE_BODY_MAX = 64 * 1024

_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "content-length",
})  # Host passes through: workers build join/resume URLs from it
# Only a node (or this front) sets it; a client's is dropped, as HAProxy does
# (deploy/haproxy.cfg).
_FORWARDED = "x-forwarded-node"

# Short: while a killed worker is being restarted its socket (the
# supervisor's) still accepts, and a health check waits there until the new
# worker answers; a longer wait would hide the whole restart behind one check.
HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=0.75)


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
        """The live worker with the fewest live sessions; ties take turns.

        As HAProxy's pool does, it prefers workers whose health is `ok` to
        full ones and full ones to draining ones (which refuse new sessions,
        with a 503 of their own, when every worker drains).
        """
        up = [w for w in self.workers if w.state == "up"]
        loads = await asyncio.gather(*(self.health(w) for w in up))
        answered = [(w, h) for w, h in zip(up, loads) if h is not None]
        admitting = [(w, h) for w, h in answered if h.get("status") != "draining"]
        ok = [(w, h) for w, h in admitting if h.get("status") == "ok"]
        counts = {w.index: int(h["live_sessions"]) for w, h in (ok or admitting or answered)}
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
                # 503 with a body is a worker that is up but takes no new
                # sessions (draining or full): still up for its own.
                up = resp.status == 200 or (resp.status == 503 and isinstance(body, dict)
                                            and body.get("status") in ("draining", "full"))
                return body if up and isinstance(body, dict) else None
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
    stand_in = False
    if worker is not None and worker.state != "up" and request.method in ("GET", "HEAD"):
        # What a node does when the node holding a session does not answer
        # (api/forward.py), and what HAProxy's backup servers do for a dead
        # node: a read is answered by a live worker, from the last row saved.
        # A write waits (503) for the owner's restart, which goes on with it.
        live = front.first_up()
        if live is not None:
            worker, stand_in = live, True
    if worker is None:
        worker = await front.least_loaded() if creating else front.first_up()
    if worker is None or worker.state != "up":
        return unavailable(worker)
    limit = MANAGEMENT_BODY_MAX if keyed else CANDIDATE_BODY_MAX
    body = await _read_body(request, limit)
    if body is None:
        return _error(413, f"request body larger than {limit // 1024} KB")
    return await forward(request, front, worker, body, stand_in=stand_in)


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


def _passed_on(request: web.Request) -> dict[str, str]:
    """The request's headers a worker gets: end to end ones, Host and Origin
    included (a local-mode worker checks them), never a client's X-Forwarded-Node."""
    return {k: v for k, v in request.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != _FORWARDED}


async def forward(request: web.Request, front: Front, worker: Worker,
                  body: bytes, *, stand_in: bool = False) -> web.StreamResponse:
    headers = _passed_on(request)
    if stand_in:
        # Answer there: the owner's socket (held here while it restarts)
        # would keep a forwarded call waiting.
        headers[_FORWARDED] = "front"
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


async def drain(request: web.Request) -> web.Response:
    """`POST`/`DELETE /admin/drain` drains this machine: every live worker, at once.

    Each worker answers as a node does; the status is theirs when they agree
    (202, 200, or the same 400), else the highest; the body lists each one's.
    """
    front = request.app[FRONT]
    if not front.keyed(request):
        return _unauthorized()
    body = await _read_body(request, CANDIDATE_BODY_MAX)
    if body is None:
        return _error(413, f"request body larger than {CANDIDATE_BODY_MAX // 1024} KB")
    up = [w for w in front.workers if w.state == "up"]
    if not up:
        return unavailable(None)
    headers = _passed_on(request)
    answers = await asyncio.gather(*(_call(front, w, request.method, request.path_qs,
                                           headers, body) for w in up))
    reports = [{"worker": w.index, "status": status, **answer}
               for w, (status, answer) in zip(up, answers)]
    return web.json_response({"workers": reports}, status=max(s for s, _ in answers))


async def _call(front: Front, worker: Worker, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, Any]]:
    try:
        async with front.http.request(method, f"{worker.base_url}{path}", headers=headers,
                                      data=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            answer = await resp.json()
            return resp.status, answer if isinstance(answer, dict) else {"answer": answer}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return 503, {"error": f"worker {worker.index} did not answer: {exc!r}"}


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
    # As a node's: every live worker draining (or full) takes no new session,
    # and a 503 says so to a load balancer in front of several machines.
    statuses = [r["status"] for r in reports if r["state"] == "up"]
    if statuses and all(s in ("draining", "full") for s in statuses):
        status = "draining" if all(s == "draining" for s in statuses) else "full"
    else:
        status = "ok" if up == len(reports) else "degraded" if up else "down"
    body = {
        "status": status,
        "workers": reports,
        "live_sessions": sum(r["live_sessions"] or 0 for r in reports),
        "outbox": sum(r["outbox"] or 0 for r in reports),
    }
    return web.json_response(body, status=200 if status in ("ok", "degraded") else 503)


async def _report(front: Front, worker: Worker) -> dict[str, Any]:
    health = await front.health(worker) if worker.state == "up" else None
    state = "unresponsive" if worker.state == "up" and health is None else worker.state
    return {
        "worker": worker.index,
        "state": state,
        "pid": (worker.proc.pid if worker.proc is not None and state not in ("down", "stopped")
                else None),
        "restarts": worker.restarts,
        "last_exit": worker.last_exit,
        "status": None if health is None else health.get("status"),
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
    app.router.add_route("POST", "/admin/drain", drain)
    app.router.add_route("DELETE", "/admin/drain", drain)
    app.router.add_route("*", "/{tail:.*}", route)
    return app
