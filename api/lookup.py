"""The session a request names: its id in the path, its live state or its stored row."""

from __future__ import annotations

import uuid

from aiohttp import web

from api.errors import json_error
from api.keys import CONFIG, STORE, WRITER
from engine.session import SessionRow
from layout import PublicUrls
from storage.pg import DatabaseUnavailable

__all__ = ["client_urls", "parse_session_id", "stored_row", "not_live_error"]


def client_urls(request: web.Request) -> PublicUrls:
    """URLs for the caller: under PUBLIC_URL, else the host it reached us by
    (on a call another node forwarded, the host it reached that node by)."""
    public = request.app[CONFIG].public_url
    if public:
        return PublicUrls(public)
    scheme, host = request.scheme, request.host
    if "X-Forwarded-Node" in request.headers:
        scheme = request.headers.get("X-Forwarded-Proto", scheme)
        host = request.headers.get("X-Forwarded-Host", host)
    return PublicUrls(f"{scheme}://{host}")


def parse_session_id(request: web.Request) -> uuid.UUID:
    """The `{session_id}` path segment, or 400."""
    raw = request.match_info["session_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"session id must be a UUID, got {raw!r}") from None


async def stored_row(request: web.Request, session_id: uuid.UUID) -> SessionRow | None:
    """The newest stored row: still queued for the database, or in it."""
    queued = await request.app[WRITER].read_queued(session_id)
    if queued is not None:
        return queued
    return await request.app[STORE].fetch(session_id)


async def not_live_error(request: web.Request, session_id: uuid.UUID) -> web.HTTPError:
    """409 if the session exists but has ended, else 404."""
    try:
        row = await stored_row(request, session_id)
    except DatabaseUnavailable:
        row = None
    if row is not None:
        return json_error(web.HTTPConflict, f"session {session_id} has ended ({row.status})")
    return json_error(web.HTTPNotFound, f"no session {session_id}")
