"""Files the server keeps and serves: resumes, recordings, evidence pictures,
and the candidate page."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from aiohttp import web

from api.errors import json_error
from api.forward import forward_to_recorder
from api.keys import LAYOUT
from api.lookup import parse_session_id

__all__ = ["STATIC_DIR", "EVIDENCE_NAME", "get_resume", "get_recording", "get_evidence", "index"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The `{name}` pattern of evidence routes: a plain JPEG file name, no path.
EVIDENCE_NAME = r"[A-Za-z0-9_.-]+\.jpg"


async def get_resume(request: web.Request) -> web.StreamResponse:
    session_id = parse_session_id(request)
    # An attachment: a PDF opened inline runs the browser's PDF viewer on
    # whatever the candidate uploaded.
    return await _serve(request, session_id, request.app[LAYOUT].resume(session_id),
                        f"no resume for session {session_id}",
                        "application/pdf", f'attachment; filename="{session_id}-resume.pdf"')


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The session's recording (WebM), once it is finished."""
    session_id = parse_session_id(request)
    return await _serve(request, session_id, request.app[LAYOUT].recording(session_id),
                        f"no finished recording for session {session_id}",
                        "video/webm", f'inline; filename="{session_id}.webm"')


async def get_evidence(request: web.Request) -> web.StreamResponse:
    """An anomaly's evidence picture (JPEG)."""
    session_id = parse_session_id(request)
    name = request.match_info["name"]
    return await _serve(request, session_id, request.app[LAYOUT].evidence(session_id, name),
                        f"no evidence {name}",
                        "image/jpeg", f'inline; filename="{session_id}-{name}"')


async def _serve(
    request: web.Request, session_id: uuid.UUID, path: Path, missing: str, content_type: str,
    disposition: str,
) -> web.StreamResponse:
    """The file at `path`; else from the node that recorded it (several nodes
    without a shared MEDIA_DIR); else 404 with `missing`."""
    if not await _is_file(path):
        elsewhere = await forward_to_recorder(request, session_id)
        if elsewhere is not None:
            return elsewhere
        raise json_error(web.HTTPNotFound, missing)
    return web.FileResponse(path, headers=_file_headers(content_type, disposition))


async def index(request: web.Request) -> web.StreamResponse:
    """The candidate page (`join_url` points here)."""
    return web.FileResponse(STATIC_DIR / "index.html")


def _file_headers(content_type: str, disposition: str) -> dict[str, str]:
    """Interview files are personal data: named, typed, never cached by a proxy."""
    return {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "Cache-Control": "private, no-store",
    }


async def _is_file(path: Path) -> bool:
    # A stat can block on a slow disk: off the loop.
    return await asyncio.get_running_loop().run_in_executor(None, path.is_file)
