"""The interview media server: REST API, WebRTC signaling and static files.

Run it with `python server.py`; configuration comes from the environment
(see README.md and config.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import hmac
import json
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest

from adapters.malloc import limit_arenas
from adapters.resume import extract_resume_text
from config import Config, ConfigError
from engine.aio import cancel_and_wait
from engine.registry import SessionRegistry
from engine.session import InterviewSession, SessionRow, SessionStatus, pinned_session_id
from media.ice import use_loopback_only
from media.live import evidence_path
from media.metrics import MediaMetrics
from media.peer import SignalingError, check_offer
from media.service import AlreadyConnected, MediaService
from storage.embedded import start_embedded, stop_embedded
from storage.outbox import Outbox
from storage.pg import DatabaseUnavailable, SessionStore
from storage.writer import SessionWriter

log = logging.getLogger("server")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", SessionStore)
WRITER = web.AppKey("writer", SessionWriter)
REGISTRY = web.AppKey("registry", SessionRegistry)
FILE_IO = web.AppKey("file_io", ThreadPoolExecutor)
MEDIA = web.AppKey("media", MediaService)
METRICS = web.AppKey("metrics", MediaMetrics)

MAX_JSON_BYTES = 1024 * 1024
MAX_RESUME_BYTES = 5 * 1024 * 1024
MAX_JOB_ROLE = 200
MAX_URL = 2048
MAX_SDP_BYTES = 64 * 1024


# -- errors and access ------------------------------------------------------


def json_error(status: type[web.HTTPError], message: str, **headers: str) -> web.HTTPError:
    """An HTTP error whose body is `{"error": message}`."""
    return status(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


def too_large(message: str, max_size: int) -> web.HTTPError:
    return web.HTTPRequestEntityTooLarge(
        max_size=max_size,
        actual_size=max_size + 1,
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answers JSON; nothing escapes as a bare 500."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
    except DatabaseUnavailable:
        return web.json_response({"error": "database unavailable, try again"}, status=503)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


_BODY_HEADERS = frozenset({"content-type", "content-length"})


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _matches(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(
        given.encode(), expected.encode()
    )


def require_api_key(request: web.Request) -> None:
    """Management endpoints: `Authorization: Bearer <API_KEY>` unless in local mode."""
    api_key = request.app[CONFIG].api_key
    if api_key is not None and not _matches(_bearer(request), api_key):
        raise json_error(web.HTTPUnauthorized, "missing or wrong API key", **_CHALLENGE)


def require_candidate(request: web.Request, session: InterviewSession) -> None:
    """Candidate calls: the session's token (header or `?token=`) or the API key."""
    api_key = request.app[CONFIG].api_key
    if api_key is None:
        return
    given = _bearer(request) or request.query.get("token")
    if not (_matches(given, api_key) or _matches(given, session.token)):
        raise json_error(web.HTTPUnauthorized, "missing or wrong session token", **_CHALLENGE)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def parse_session_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["session_id"]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"session id must be a UUID, got {raw!r}") from None


def live_session(request: web.Request) -> InterviewSession:
    """The live session named in the path, or 404/409."""
    session_id = parse_session_id(request)
    session = request.app[REGISTRY].get(session_id)
    if session is None:
        raise json_error(web.HTTPNotFound, f"no live session {session_id}")
    return session


async def _not_live_error(request: web.Request, session_id: uuid.UUID) -> web.HTTPError:
    """409 if the session exists but has ended, else 404."""
    try:
        row = await _stored_row(request, session_id)
    except DatabaseUnavailable:
        row = None
    if row is not None:
        return json_error(web.HTTPConflict, f"session {session_id} has ended ({row.status})")
    return json_error(web.HTTPNotFound, f"no session {session_id}")


async def _stored_row(request: web.Request, session_id: uuid.UUID) -> SessionRow | None:
    queued = await request.app[WRITER].read_queued(session_id)
    if queued is not None:
        return queued
    return await request.app[STORE].fetch(session_id)


def base_url(request: web.Request) -> str:
    return request.app[CONFIG].public_url or f"{request.scheme}://{request.host}"


# -- session creation --------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    require_api_key(request)
    content_type = request.content_type
    if content_type == "application/json":
        fields, resume = await _read_json_body(request), None
    elif content_type == "multipart/form-data":
        fields, resume = await _read_multipart(request)
    else:
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "send application/json or multipart/form-data with a 'resume' PDF",
        )
    session = await _new_session(request, fields)
    if resume is not None:
        await _store_resume(request, session, resume)
    registry = request.app[REGISTRY]
    saved = await registry.add(session)
    log.info("session %s created for %r (%s)", session.session_id, session.job_role, saved)
    join_url = f"{base_url(request)}/?session={session.session_id}&token={session.token}"
    body = {"session_id": str(session.session_id), "token": session.token, "join_url": join_url}
    return web.json_response(body, status=201)


async def _read_limited(request: web.Request, limit: int, what: str) -> bytes:
    if (request.content_length or 0) > limit:
        raise too_large(f"{what} larger than {limit // 1024} KB", limit)
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise too_large(f"{what} larger than {limit // 1024} KB", limit)
    return raw


async def _read_json_body(request: web.Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    raw = await _read_limited(request, limit, "JSON body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise json_error(web.HTTPBadRequest, f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the JSON body must be an object")
    return body


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any], bytes | None]:
    fields: dict[str, Any] = {}
    resume: bytes | None = None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "resume":
            resume = await _read_resume_part(part)
        elif part.name in _FIELDS:
            fields[part.name] = (await part.read(decode=True))[:MAX_URL + 1].decode(
                "utf-8", errors="replace"
            )
    return fields, resume


async def _read_resume_part(part: BodyPartReader) -> bytes:
    declared = part.headers.get("Content-Type", "application/pdf").split(";")[0].strip()
    if declared not in ("application/pdf", "application/octet-stream"):
        raise json_error(web.HTTPUnsupportedMediaType, f"resume must be a PDF, not {declared}")
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > MAX_RESUME_BYTES:
            raise too_large("resume larger than 5 MB", MAX_RESUME_BYTES)
    if not data.startswith(b"%PDF-"):
        raise json_error(web.HTTPUnsupportedMediaType, "resume is not a PDF file")
    return bytes(data)


_FIELDS = ("job_role", "template_id", "interviewee_id", "resume_url")


async def _new_session(request: web.Request, fields: dict[str, Any]) -> InterviewSession:
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}")
    template_id = _optional_uuid(fields, "template_id")
    interviewee_id = _optional_uuid(fields, "interviewee_id")
    resume_url = _optional_url(fields, "resume_url")
    job_role = _optional_text(fields, "job_role", MAX_JOB_ROLE)
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
    config = request.app[CONFIG]
    session_id = (
        uuid.uuid4() if config.worker_index is None
        else pinned_session_id(config.worker_index, config.workers)
    )
    return InterviewSession(
        session_id=session_id,
        job_role=job_role,
        template_id=template_id,
        interviewee_id=interviewee_id,
        questions=questions,
        resume_url=resume_url,
        server_instance=instance.instance_id,
        server_run=instance.run_id,
    )


def _optional_text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise json_error(web.HTTPBadRequest, f"{name} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise json_error(web.HTTPBadRequest, f"{name} is longer than {limit} characters")
    return value or None


def _optional_uuid(fields: dict[str, Any], name: str) -> uuid.UUID | None:
    value = _optional_text(fields, name, 64)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"{name} must be a UUID, got {value!r}") from None


def _optional_url(fields: dict[str, Any], name: str) -> str | None:
    value = _optional_text(fields, name, MAX_URL)
    if value is not None and not value.startswith(("http://", "https://")):
        raise json_error(web.HTTPBadRequest, f"{name} must be an http(s) URL")
    return value


async def _store_resume(request: web.Request, session: InterviewSession, data: bytes) -> None:
    path = _resume_path(request.app, session.session_id)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(request.app[FILE_IO], _write_file, path, data)
    session.resume_url = f"{base_url(request)}/sessions/{session.session_id}/resume"
    session.resume_text = await loop.run_in_executor(request.app[FILE_IO], extract_resume_text, data)


def _resume_path(app: web.Application, session_id: uuid.UUID) -> Path:
    return app[CONFIG].data_dir / "resumes" / f"{session_id}.pdf"


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- session management ------------------------------------------------------


async def _current_row(request: web.Request) -> tuple[uuid.UUID, SessionRow]:
    """The session's row: live from memory, else stored (database or outbox)."""
    require_api_key(request)
    session_id = parse_session_id(request)
    session = request.app[REGISTRY].get(session_id)
    if session is not None:
        return session_id, session.to_row(SessionStatus.IN_PROGRESS)
    row = await _stored_row(request, session_id)
    if row is None:
        raise json_error(web.HTTPNotFound, f"no session {session_id}")
    return session_id, row


async def get_session(request: web.Request) -> web.Response:
    _, row = await _current_row(request)
    return web.json_response(row.to_json())


async def get_info(request: web.Request) -> web.Response:
    session_id, row = await _current_row(request)
    info = row.session_information or {}
    body = {
        "session_id": str(session_id),
        "session_information": info,
        "recording_url": row.recording_url,
    }
    return web.json_response(body)


async def save_session(request: web.Request) -> web.Response:
    require_api_key(request)
    session_id = parse_session_id(request)
    session = request.app[REGISTRY].get(session_id)
    if session is None:
        raise await _not_live_error(request, session_id)
    result = await request.app[REGISTRY].save(session)
    message = _SAVE_MESSAGES[result]
    return web.json_response({"status": result, "session_id": str(session_id), "message": message})


async def end_session(request: web.Request) -> web.Response:
    """Management, or the candidate ending their own interview (session token)."""
    session_id = parse_session_id(request)
    session = request.app[REGISTRY].get(session_id)
    if session is None:
        require_api_key(request)
    else:
        require_candidate(request, session)
    return await _finish(request, session_id, "ended")


async def delete_session(request: web.Request) -> web.Response:
    require_api_key(request)
    return await _finish(request, parse_session_id(request), "deleted")


async def _finish(request: web.Request, session_id: uuid.UUID, status: str) -> web.Response:
    result = await request.app[REGISTRY].end(session_id)
    if result is None:
        raise await _not_live_error(request, session_id)
    body = {
        "status": status,
        "session_id": str(session_id),
        "saved": result,
        "message": f"session {status}; {_SAVE_MESSAGES[result]}",
    }
    return web.json_response(body)


_SAVE_MESSAGES = {
    "saved": "row saved to the database",
    "queued": "database unavailable: row queued in the durable outbox, written when it is back",
    "dropped": "interviewee profile was deleted: row not stored",
}


async def get_resume(request: web.Request) -> web.StreamResponse:
    require_api_key(request)
    session_id = parse_session_id(request)
    path = _resume_path(request.app, session_id)
    if not await asyncio.get_running_loop().run_in_executor(None, path.is_file):
        raise json_error(web.HTTPNotFound, f"no resume for session {session_id}")
    return web.FileResponse(path, headers={"Content-Type": "application/pdf"})


STATIC_DIR = Path(__file__).resolve().parent / "static"


async def index(request: web.Request) -> web.StreamResponse:
    """The candidate page (`join_url` points here)."""
    return web.FileResponse(STATIC_DIR / "index.html")


async def client_config(request: web.Request) -> web.Response:
    """Settings the browser client needs before it starts."""
    config = request.app[CONFIG]
    return web.json_response({
        "max_framerate": config.max_framerate,
        "rejoin_grace_s": config.rejoin_grace_s,
        "keepalive_timeout_s": config.keepalive_timeout_s,
        "ice_servers": list(config.ice_servers),
    })


@web.middleware
async def cors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """CORS for the origins in `CORS_ORIGINS` ("*" allows any)."""
    origin = request.headers.get("Origin")
    allowed = request.app[CONFIG].cors_origins
    if origin is None or not allowed or not ("*" in allowed or origin in allowed):
        response: web.StreamResponse = await handler(request)
        return response
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, PATCH, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers["Access-Control-Expose-Headers"] = "Location"
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    if isinstance(response, web.HTTPException):
        raise response
    return response


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; protected like the management API."""
    require_api_key(request)
    # On the loop on purpose: collectors read the live pipelines' counters,
    # which only the loop mutates; a scrape takes well under a millisecond.
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    writer = request.app[WRITER]
    body = {
        "status": "ok",
        "live_sessions": len(request.app[REGISTRY]),
        "outbox": writer.outbox_size,
    }
    return web.json_response(body)


# -- signaling -------------------------------------------------------------


async def post_offer(request: web.Request) -> web.Response:
    """`{"sdp", "type": "offer"}` → `{"sdp", "type": "answer"}`."""
    parse_session_id(request)
    if request.content_type != "application/json":
        raise json_error(web.HTTPUnsupportedMediaType, "send the offer as application/json")
    body = await _read_json_body(request, limit=MAX_SDP_BYTES)
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer" or not isinstance(sdp, str) or not sdp.strip():
        raise json_error(web.HTTPBadRequest, 'expected {"sdp": "<offer SDP>", "type": "offer"}')
    # Only a well-formed offer may reopen a session whose connection dropped.
    _check_sdp(sdp)
    session = await _candidate_session(request, rejoin=True)
    answer = await _connect(request, session, sdp)
    return web.json_response({"sdp": answer, "type": "answer"})


async def post_whip(request: web.Request) -> web.Response:
    """WHIP (RFC 9725): an SDP offer in, `201` with the answer and a `Location`."""
    parse_session_id(request)
    if request.content_type != "application/sdp":
        raise json_error(web.HTTPUnsupportedMediaType, "WHIP offers are application/sdp")
    raw = await _read_limited(request, MAX_SDP_BYTES, "SDP offer")
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise json_error(web.HTTPBadRequest, "the SDP offer is not UTF-8 text") from None
    _check_sdp(sdp)
    session = await _candidate_session(request, rejoin=True)
    answer = await _connect(request, session, sdp)
    location = f"/whip/{session.session_id}/resource"
    return web.Response(
        status=201, text=answer, content_type="application/sdp", headers={"Location": location}
    )


async def delete_whip(request: web.Request) -> web.Response:
    session = await _candidate_session(request)
    await request.app[REGISTRY].end(session.session_id)
    return web.Response(status=200)


async def patch_whip(request: web.Request) -> web.Response:
    """No trickle ICE or ICE restart: RFC 9725 says 405 for PATCH then."""
    await _candidate_session(request)
    message = "trickle ICE and ICE restarts are not supported; send every candidate in the offer"
    raise web.HTTPMethodNotAllowed(
        "PATCH",
        ("DELETE",),
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


async def _candidate_session(request: web.Request, *, rejoin: bool = False) -> InterviewSession:
    """The live session a candidate call names, authorised; with `rejoin`, a
    session whose connection dropped within the grace window is reopened."""
    session_id = parse_session_id(request)
    registry = request.app[REGISTRY]
    if rejoin:
        # A candidate rejoining right after a drop may race the drop's ending.
        await registry.wait_ended(session_id)
    session = registry.get(session_id)
    parked = registry.parked(session_id) if session is None and rejoin else None
    if parked is not None:
        require_candidate(request, parked)
        session = registry.rejoin(session_id)
    if session is None:
        require_api_key_or_token_unknown(request)
        raise await _not_live_error(request, session_id)
    require_candidate(request, session)
    return session


def require_api_key_or_token_unknown(request: web.Request) -> None:
    """For a session that is not live, only the API key may learn its fate."""
    if request.app[CONFIG].api_key is not None and not _matches(
        _bearer(request) or request.query.get("token"), request.app[CONFIG].api_key
    ):
        # A token cannot be checked against a session that is not live; answer
        # as the spec asks (404/409) without saying more than "not live".
        raise json_error(web.HTTPNotFound, "no live session with this id")


def _check_sdp(sdp: str) -> None:
    try:
        check_offer(sdp)
    except SignalingError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


async def _connect(request: web.Request, session: InterviewSession, sdp: str) -> str:
    try:
        return await request.app[MEDIA].connect(session, sdp)
    except AlreadyConnected as exc:
        raise json_error(web.HTTPConflict, str(exc)) from None
    except SignalingError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


async def get_evidence(request: web.Request) -> web.StreamResponse:
    require_api_key(request)
    session_id = parse_session_id(request)
    name = request.match_info["name"]
    path = evidence_path(request.app[CONFIG].data_dir, session_id, name)
    if not await asyncio.get_running_loop().run_in_executor(None, path.is_file):
        raise json_error(web.HTTPNotFound, f"no evidence {name}")
    return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})


async def get_recording(request: web.Request) -> web.StreamResponse:
    """The session's recording (WebM), once it is finished."""
    require_api_key(request)
    session_id = parse_session_id(request)
    path = request.app[MEDIA].recording_path(session_id)
    if not await asyncio.get_running_loop().run_in_executor(None, path.is_file):
        raise json_error(web.HTTPNotFound, f"no finished recording for session {session_id}")
    return web.FileResponse(path, headers={"Content-Type": "video/webm"})


def evidence_url(app: web.Application, session_id: uuid.UUID, name: str) -> str:
    base = app[CONFIG].public_url or ""
    return f"{base}/sessions/{session_id}/evidence/{name}"


# -- application wiring ------------------------------------------------------


class Instance:
    """Who this process is: a stable id per data directory, and a run id."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(data_dir / ".lock", "w")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(f"DATA_DIR {data_dir} is in use by another server process") from None
        id_file = data_dir / "instance_id"
        if not id_file.exists():
            id_file.write_text(str(uuid.uuid4()))
        self.instance_id = id_file.read_text().strip()
        self.run_id = str(uuid.uuid4())

    def release(self) -> None:
        self._lock_file.close()


INSTANCE = web.AppKey("instance", Instance)


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    app[FILE_IO] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="file-io")
    app[INSTANCE] = await loop.run_in_executor(app[FILE_IO], Instance, config.data_dir)
    embedded = None
    if config.database_url is None:
        embedded, dsn = await loop.run_in_executor(app[FILE_IO], start_embedded, config.data_dir)
    else:
        dsn = config.database_url
    store = app[STORE] = SessionStore(dsn)
    await store.open()
    outbox = await loop.run_in_executor(app[FILE_IO], Outbox, config.data_dir / "outbox")
    writer = app[WRITER] = SessionWriter(
        store,
        outbox,
        server_instance=app[INSTANCE].instance_id,
        server_run=app[INSTANCE].run_id,
        stale_after_s=config.stale_after_s,
    )
    await writer.start()
    try:
        yield
    finally:
        await writer.close()
        await store.close()
        if embedded is not None:
            await loop.run_in_executor(app[FILE_IO], stop_embedded, embedded)
        app[INSTANCE].release()
        app[FILE_IO].shutdown(wait=False)


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    registry = app[REGISTRY] = SessionRegistry(
        app[WRITER],
        checkpoint_s=config.checkpoint_s,
        heartbeat_s=config.stale_after_s / 3,
        rejoin_grace_s=config.rejoin_grace_s,
    )
    metrics = app[METRICS] = MediaMetrics()
    ProcessCollector(registry=metrics.registry)  # CPU seconds and RSS of this process
    metrics.gauge("interview_live_sessions", "Live interview sessions", lambda: len(registry))
    writer = app[WRITER]
    metrics.gauge("interview_outbox_rows", "Rows waiting in the durable outbox",
                  lambda: writer.outbox_size)
    metrics.counter("interview_db_write_failures", "Row writes the database refused or missed",
                    lambda: writer.write_failures)
    app[MEDIA] = MediaService(
        config,
        registry,
        lambda session_id, name: evidence_url(app, session_id, name),
        lambda session_id: f"{config.public_url or ''}/sessions/{session_id}/recording",
        metrics,
    )
    await registry.start()
    try:
        yield
    finally:
        # Shutdown (SIGTERM included) ends and saves every live session,
        # closing its media first.
        await registry.end_all()
        await app[MEDIA].close()
        await registry.close()


def make_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware, error_middleware], client_max_size=MAX_RESUME_BYTES + 65536
    )
    app[CONFIG] = config
    if config.ice_loopback_only:
        use_loopback_only()
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(registry_ctx)
    app.router.add_post("/sessions", create_session)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_get("/sessions/{session_id}/info", get_info)
    app.router.add_post("/sessions/{session_id}/save", save_session)
    app.router.add_post("/sessions/{session_id}/end", end_session)
    app.router.add_get("/sessions/{session_id}/resume", get_resume)
    app.router.add_get("/sessions/{session_id}/evidence/{name:[A-Za-z0-9_.-]+\\.jpg}", get_evidence)
    app.router.add_post("/sessions/{session_id}/offer", post_offer)
    app.router.add_get("/sessions/{session_id}/recording", get_recording)
    app.router.add_post("/whip/{session_id}", post_whip)
    app.router.add_delete("/whip/{session_id}/resource", delete_whip)
    app.router.add_patch("/whip/{session_id}/resource", patch_whip)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/config", client_config)
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
    return app


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then end and save every live session."""
    if config.local_mode:
        log.warning(
            "API_KEY is not set: local mode, no authentication; serving on %s only", config.host
        )
    runner = web.AppRunner(make_app(config), handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.create_server((config.host, config.port), reuse_port=False)
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    print(f"Serving on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = None
    if config.worker_index is not None:
        orphan_watch = asyncio.create_task(_stop_when_orphaned(stop), name="orphan-watch")
    await stop.wait()
    log.info("shutting down: ending %d live session(s)", len(runner.app[REGISTRY]))
    await runner.cleanup()
    await cancel_and_wait(orphan_watch)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (even by SIGKILL) shuts down cleanly too."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the supervisor is gone; shutting this worker down")
    stop.set()


def main() -> None:
    limit_arenas()  # before any thread starts; see adapters/malloc.py
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        config = Config.from_env()
        if config.workers > 1 and config.worker_index is None:
            from workers import supervise

            asyncio.run(supervise(config))
        else:
            asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
