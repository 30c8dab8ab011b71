"""The session API: create, read, save, end and delete interview sessions."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from api.bodies import (
    optional_text, optional_url, optional_uuid, read_json_body, read_multipart,
)
from api.errors import json_error
from api.keys import CONFIG, FILE_IO, INSTANCE, LAYOUT, NODE, REGISTRY, RESUME_PARSER, STORE
from api.lookup import client_urls, not_live_error, parse_session_id, stored_row
from api.review import review_url
from adapters.resume import extract_resume_text
from engine.session import InterviewSession, SessionRow, SessionStatus
from routing import new_session_id
from layout import PublicUrls

__all__ = [
    "create_session", "get_session", "get_info", "save_session", "end_session", "delete_session",
]

log = logging.getLogger(__name__)

MAX_JOB_ROLE = 200
_FIELDS = ("job_role", "template_id", "interviewee_id", "resume_url")


async def create_session(request: web.Request) -> web.Response:
    """JSON fields, or multipart fields with a 'resume' PDF → 201 with the token."""
    content_type = request.content_type
    if content_type == "application/json":
        fields, resume = await read_json_body(request), None
    elif content_type == "multipart/form-data":
        fields, resume = await read_multipart(request, _FIELDS)
    else:
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "send application/json or multipart/form-data with a 'resume' PDF",
        )
    refusal = request.app[NODE].refusal()
    if refusal is not None:
        raise json_error(web.HTTPServiceUnavailable, refusal, **{"Retry-After": "1"})
    session = await _new_session(request, fields)
    urls = client_urls(request)
    if resume is not None:
        await _store_resume(request, session, resume, urls)
    saved = await request.app[REGISTRY].add(session)
    log.info("session %s created for %r (%s)", session.session_id, session.job_role, saved)
    body = {
        "session_id": str(session.session_id),
        "token": session.token,
        "join_url": urls.join(session.session_id, session.token),
        "review_url": await review_url(request, session.session_id),
    }
    return web.json_response(body, status=201)


async def _new_session(request: web.Request, fields: dict[str, Any]) -> InterviewSession:
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}")
    template_id = optional_uuid(fields, "template_id")
    interviewee_id = optional_uuid(fields, "interviewee_id")
    resume_url = optional_url(fields, "resume_url")
    job_role = optional_text(fields, "job_role", MAX_JOB_ROLE)
    store = request.app[STORE]
    questions: list[str] = []
    if template_id is not None:
        template = await store.fetch_template(template_id)
        if template is None:
            raise json_error(web.HTTPNotFound, f"no job template {template_id}")
        job_role = template.job_role or job_role
        questions = template.questions
    if not job_role:
        raise json_error(web.HTTPBadRequest, "job_role is required (or a template_id)")
    if interviewee_id is not None and not await store.interviewee_exists(interviewee_id):
        raise json_error(web.HTTPNotFound, f"no interviewee profile {interviewee_id}")
    instance = request.app[INSTANCE]
    return InterviewSession(
        session_id=new_session_id(request.app[CONFIG].worker_index),
        job_role=job_role,
        template_id=template_id,
        interviewee_id=interviewee_id,
        questions=questions,
        resume_url=resume_url,
        server_instance=instance.instance_id,
        server_run=instance.run_id,
    )


async def _store_resume(
    request: web.Request, session: InterviewSession, data: bytes, urls: PublicUrls
) -> None:
    path = request.app[LAYOUT].resume(session.session_id)
    loop, file_io = asyncio.get_running_loop(), request.app[FILE_IO]
    await loop.run_in_executor(file_io, _write_file, path, data)
    session.resume_url = urls.resume(session.session_id)
    # In a child process with time and memory limits (api/resume_text.py).
    session.resume_text = await request.app[RESUME_PARSER].text_of(data)


def _write_file(path: Path, data: bytes) -> None:
    """Atomically (a reader never sees half a file), readable by this user only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


async def get_session(request: web.Request) -> web.Response:
    _, row = await _current_row(request)
    return web.json_response(row.to_json())


async def get_info(request: web.Request) -> web.Response:
    session_id, row = await _current_row(request)
    body = {
        "session_id": str(session_id),
        "session_information": row.session_information or {},
        "recording_url": row.recording_url,
    }
    return web.json_response(body)


async def _current_row(request: web.Request) -> tuple[uuid.UUID, SessionRow]:
    """The session's row: live from memory, else stored (database or outbox)."""
    session_id = parse_session_id(request)
    interview = request.app[REGISTRY].interview(session_id)
    if interview is not None and interview.is_live:
        return session_id, interview.row()
    row = await stored_row(request, session_id)
    if row is None:
        raise json_error(web.HTTPNotFound, f"no session {session_id}")
    return session_id, row


async def save_session(request: web.Request) -> web.Response:
    """Checkpoint a live session now."""
    session_id = parse_session_id(request)
    session = request.app[REGISTRY].get(session_id)
    if session is None:
        raise await not_live_error(request, session_id)
    result = _durable_or_503(await request.app[REGISTRY].save(session))
    message = _SAVE_MESSAGES[result]
    return web.json_response({"status": result, "session_id": str(session_id), "message": message})


async def end_session(request: web.Request) -> web.Response:
    """Management, or the candidate ending their own interview (session token)."""
    return await _finish(request, parse_session_id(request), "ended")


async def delete_session(request: web.Request) -> web.Response:
    return await _finish(request, parse_session_id(request), "deleted")


async def _finish(request: web.Request, session_id: uuid.UUID, status: str) -> web.Response:
    result = await request.app[REGISTRY].end(session_id)
    if result is None:
        raise await not_live_error(request, session_id)
    _durable_or_503(result)
    body = {
        "status": status,
        "session_id": str(session_id),
        "saved": result,
        "message": f"session {status}; {_SAVE_MESSAGES[result]}",
    }
    return web.json_response(body)


def _durable_or_503(result: str) -> str:
    """A row held in memory only (full disk, database down) is not durable: say so."""
    if result == "held":
        raise json_error(web.HTTPServiceUnavailable, _SAVE_MESSAGES[result], **{"Retry-After": "10"})
    return result


_SAVE_MESSAGES = {
    "saved": "row saved to the database",
    "queued": "database unavailable: row queued in the durable outbox, written when it is back",
    "dropped": "interviewee profile was deleted: row not stored",
    "held": "database and disk both unavailable: row held in memory only, retried",
    "quarantined": "the database refused the row's content: kept aside on disk, not retried",
}
