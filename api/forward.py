"""Any node answers a call about any session: it serves it, or forwards it to the node that holds it.

A load balancer in front (deploy/haproxy.cfg) sends a session's calls to the
node its id names, so forwarding is the exception: a session taken over by
another node, a node reached directly, a balancer that lost its state. When
the session in a request's path is not held here, the node directory
(`storage.nodes`) names the live node that holds it, and the request goes
there as it came (method, path, query, headers, body) and its answer comes
back as it went, streamed. A forwarded request carries `X-Forwarded-Node`
and is never forwarded again. Sessions no node holds (ended ones) are
answered here, from the shared database.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from api.errors import json_error
from api.keys import NODE, REGISTRY
from api.lookup import stored_row
from engine.session import SessionRow
from storage.nodes import NodeInfo
from routing import session_in_path
from storage.pg import DatabaseUnavailable

__all__ = ["FORWARDED", "FORWARDER", "Forwarder", "forward_middleware", "forward_to_recorder",
           "recorder_of"]

log = logging.getLogger(__name__)

FORWARDED = "X-Forwarded-Node"
# Hop-by-hop headers (RFC 9110 §7.6.1) and those the two legs set for
# themselves. The caller's Host goes as X-Forwarded-Host: the holder builds
# the caller's URLs (join, review links) from it (`api.lookup.client_urls`).
_DROP = frozenset(h.lower() for h in (
    hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION,
    hdrs.TE, hdrs.TRAILER, hdrs.TRANSFER_ENCODING, hdrs.UPGRADE, hdrs.HOST,
    hdrs.CONTENT_LENGTH, hdrs.X_FORWARDED_HOST, hdrs.X_FORWARDED_PROTO,
))
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=60)


class Forwarder:
    """The HTTP client one node uses to reach the others."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None
        self.forwarded = 0
        self.failed = 0

    def client(self) -> aiohttp.ClientSession:
        if self._http is None:
            # Bodies pass through as they are (no decompression, no redirects).
            self._http = aiohttp.ClientSession(timeout=_TIMEOUT, auto_decompress=False)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


FORWARDER = web.AppKey("forwarder", Forwarder)


@web.middleware
async def forward_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    session_id = session_in_path(request.path)
    node = request.app.get(NODE)
    if session_id is None or node is None or FORWARDED in request.headers:
        return await handler(request)
    if request.app[REGISTRY].interview(session_id) is not None:
        return await handler(request)  # held here
    owner = await _owner(request, session_id)
    if owner is None or owner[0] == node.node_id:
        return await handler(request)
    try:
        return await _forward(request, owner[0], owner[1])
    except _Unreachable:
        if request.method in (hdrs.METH_GET, hdrs.METH_HEAD):
            # The holder does not answer (it may have just died): a read is
            # answered here, from the last row it saved.
            return await handler(request)
        # A rejoin comes back once the holder counts as dead, and is then
        # continued here (`api.node.Node.adopt`); a 503 keeps it trying.
        raise json_error(web.HTTPServiceUnavailable,
                         f"the node holding this session ({owner[0]}) does not answer; "
                         "try again shortly", **{"Retry-After": "2"}) from None


async def recorder_of(request: web.Request, row: SessionRow) -> NodeInfo | None:
    """The live node, other than this one, that recorded `row`'s interview."""
    node = request.app.get(NODE)
    recorder = (row.session_information or {}).get("server_instance")
    if node is None or not recorder or recorder == node.node_id:
        return None
    try:
        nodes = {n.node_id: n for n in await node.directory.nodes()}
    except DatabaseUnavailable:
        return None
    found = nodes.get(str(recorder))
    return found if found is not None and found.alive and found.url else None


async def forward_to_recorder(request: web.Request,
                              session_id: uuid.UUID) -> web.StreamResponse | None:
    """A file (recording, evidence, resume) this node lacks, from the node that
    recorded it while that node is up; None when there is no such node."""
    if request.app.get(NODE) is None or FORWARDED in request.headers:
        return None
    try:
        row = await stored_row(request, session_id)
    except DatabaseUnavailable:
        return None
    found = None if row is None else await recorder_of(request, row)
    if found is None or found.url is None:
        return None
    try:
        return await _forward(request, found.node_id, found.url)
    except _Unreachable:
        return None  # answered here: 404


async def _owner(request: web.Request, session_id: uuid.UUID) -> tuple[str, str] | None:
    try:
        # Bounded: with the database slow or gone, a call is answered here at once.
        info = await asyncio.wait_for(request.app[NODE].directory.owner(session_id), 1.0)
    except (DatabaseUnavailable, TimeoutError):
        return None  # answered here: from the outbox, or a clear 503 from the handler
    if info is None or not info.url:
        return None
    return info.node_id, info.url


async def _forward(request: web.Request, node_id: str, base_url: str) -> web.StreamResponse:
    forwarder = request.app[FORWARDER]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    headers[FORWARDED] = request.app[NODE].node_id
    headers[hdrs.X_FORWARDED_HOST] = request.host
    headers[hdrs.X_FORWARDED_PROTO] = request.scheme
    peer = request.remote or ""
    headers[hdrs.X_FORWARDED_FOR] = ", ".join(
        p for p in (request.headers.get(hdrs.X_FORWARDED_FOR), peer) if p)
    body = await request.read() if request.can_read_body else None
    url = f"{base_url}{request.rel_url}"
    out: web.StreamResponse | None = None
    try:
        async with forwarder.client().request(
                request.method, url, headers=headers, data=body, allow_redirects=False) as resp:
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            for name, value in resp.headers.items():
                if name.lower() not in _DROP and name.lower() != "x-node":
                    out.headers.add(name, value)
            out.headers["X-Node"] = node_id
            if resp.content_length is not None:
                out.content_length = resp.content_length
            await out.prepare(request)
            async for chunk in resp.content.iter_chunked(65536):
                await out.write(chunk)
            await out.write_eof()
            forwarder.forwarded += 1
            return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        forwarder.failed += 1
        log.warning("forwarding %s %s to node %s failed: %r", request.method, request.path,
                    node_id, exc)
        if out is not None and out.prepared:
            return out  # cut short mid-body: the client sees a truncated answer
        raise _Unreachable(node_id) from exc


class _Unreachable(Exception):
    """The node that holds (or recorded) the session did not answer."""
