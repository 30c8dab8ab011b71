"""The reviewer's API: an interview's timeline, decisions on its flags, the sessions list.

Access (see `api.auth`): the API key opens everything; a review token opens
one interview's review (`read`), and with the `decide` scope records
decisions in its reviewer's name. The pages that use this are
`static/review.html` (one interview) and `static/sessions.html` (the list).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from api.bodies import read_json_body
from api.errors import json_error
from api.files import STATIC_DIR
from api.forward import recorder_of
from api.keys import CONFIG, LAYOUT, REGISTRY, REVIEW_KEYS, REVIEWER, STORE, WEBHOOKS
from api.lookup import client_urls, parse_session_id, stored_row
from engine.review import (
    Decision,
    FlagDecision,
    ReviewScope,
    ReviewStatus,
    ReviewTokens,
    check_note,
    check_reviewer,
    review_of,
    timeline,
)
from engine.session import SessionRow
from storage.pg import MAX_DECISIONS, DecisionLogFull
from storage.webhooks import REVIEW_DECIDED

__all__ = [
    "get_review", "put_flag", "put_review", "post_review_token", "list_sessions",
    "review_page", "sessions_page",
]

log = logging.getLogger(__name__)

MAX_LIST = 200
# A token minted with `ttl_s`: from a minute to a year.
TOKEN_TTL_RANGE_S = (60.0, 365 * 24 * 3600.0)
# The page's media URLs carry a token in the query (a <video> sends no
# header): a read-only one of its own, short-lived, never the caller's.
MEDIA_TOKEN_TTL_S = 12 * 3600.0


async def review_url(request: web.Request, session_id: uuid.UUID) -> str | None:
    """The read-only review link of a session (None while the database is down)."""
    keys = request.app[REVIEW_KEYS]
    try:
        tokens = await asyncio.wait_for(keys.tokens(), 2.0)
    except Exception as exc:  # the session is created anyway; the link can be minted later
        log.warning("no review link for session %s: %r", session_id, exc)
        return None
    token = tokens.mint(session_id, ttl_s=request.app[CONFIG].review_token_ttl_s)
    return client_urls(request).review(session_id, token)


# -- one interview -------------------------------------------------------------------


async def get_review(request: web.Request) -> web.Response:
    """Everything the review page shows, on the recording's clock."""
    session_id = parse_session_id(request)
    row, live = await _row(request, session_id)
    decisions = await request.app[STORE].decisions(session_id)
    lines = timeline(row.session_information)
    review = review_of(decisions, len(lines["flags"]))
    for flag, decision in zip(lines["flags"], review["flags"]):
        flag["decision"] = decision
    info = row.session_information or {}
    body: dict[str, Any] = {
        "session_id": str(session_id),
        "status": row.status,
        "live": live,
        "job_role": info.get("job_role"),
        "start_time": _iso(row.start_time),
        "end_time": _iso(row.end_time),
        "duration_s": _duration(row.start_time, row.end_time),
        "recording_url": row.recording_url,
        "recording_ready": await _recording_ready(request, session_id, row, live),
        "transcript": lines["transcript"],
        "flags": lines["flags"],
        "report": row.interview_report,
        "review": {k: v for k, v in review.items() if k != "flags"},
        "you": {"reviewer": request[REVIEWER].name, "can_decide": request[REVIEWER].can_decide},
        "media_token": await _media_token(request, session_id),
    }
    return web.json_response(body, headers={"Cache-Control": "private, no-store"})


async def _media_token(request: web.Request, session_id: uuid.UUID) -> str:
    """A read-only token for the page's media URLs: MEDIA_TOKEN_TTL_S, and
    never past the caller's own token (so it cannot renew an expiring one)."""
    reviewer = request[REVIEWER]
    now = time.time()
    ttl_s = MEDIA_TOKEN_TTL_S
    if reviewer.expires_at is not None:
        ttl_s = min(ttl_s, reviewer.expires_at - now)
    tokens = await request.app[REVIEW_KEYS].tokens()
    return tokens.mint(session_id, ReviewScope.READ, reviewer.name, ttl_s=ttl_s, now=now)


async def put_flag(request: web.Request) -> web.Response:
    """`{"decision": "confirmed"|"dismissed"|"open", "note"?}` on flag `{flag}`."""
    session_id = parse_session_id(request)
    flag = _flag_index(request)
    fields = await read_json_body(request)
    _only(fields, ("decision", "note", "reviewer"))
    decision = _choice(fields.get("decision"), FlagDecision, "decision")
    note = _checked(check_note, fields.get("note"))
    row, _ = await _row(request, session_id)
    flags = len(timeline(row.session_information)["flags"])
    if flag >= flags:
        raise json_error(web.HTTPNotFound, f"session {session_id} has {flags} flag(s); "
                                           f"no flag {flag}")
    entry = await _add_decision(request, session_id, flag, decision, note, fields)
    if entry is None:
        raise _not_stored_yet(session_id)
    log.info("session %s: flag %d %s by %s", session_id, flag, decision, entry.decided_by)
    return web.json_response(entry.to_json())


async def put_review(request: web.Request) -> web.Response:
    """`{"status": "in_review"|"cleared"|"rejected"|"unreviewed", "note"?}`."""
    session_id = parse_session_id(request)
    fields = await read_json_body(request)
    _only(fields, ("status", "note", "reviewer"))
    status = ReviewStatus(_choice(fields.get("status"), ReviewStatus, "status"))
    note = _checked(check_note, fields.get("note"))
    row, _ = await _row(request, session_id)
    store = request.app[STORE]
    entry = await _add_decision(request, session_id, None, status, note, fields)
    if entry is None:
        raise _not_stored_yet(session_id)
    log.info("session %s: review %s by %s", session_id, status, entry.decided_by)
    if status.decided:
        decisions = await store.decisions(session_id)
        flags = len(timeline(row.session_information)["flags"])
        try:
            await _announce(request, session_id, entry.to_json(), review_of(decisions, flags))
        except OSError as exc:
            # The decision is logged: a retry would log it twice. The event is lost.
            log.error("session %s: the review.decided webhook could not be stored: %r",
                      session_id, exc)
    return web.json_response(entry.to_json())


async def _add_decision(request: web.Request, session_id: uuid.UUID, flag: int | None,
                        decision: str, note: str | None,
                        fields: dict[str, Any]) -> Decision | None:
    try:
        return await request.app[STORE].add_decision(
            session_id, flag, decision, note, _decided_by(request, fields),
            bounded=not request[REVIEWER].by_key)
    except DecisionLogFull:
        raise json_error(web.HTTPConflict, f"session {session_id}'s review log is full "
                                           f"({MAX_DECISIONS} decisions)") from None


async def _announce(
    request: web.Request, session_id: uuid.UUID, entry: dict[str, Any], review: dict[str, Any],
) -> None:
    """The `review.decided` webhook (sent when WEBHOOK_URL is set): the
    interview was cleared or rejected."""
    sender = request.app[WEBHOOKS]  # a no-op without WEBHOOK_URL
    data = {
        "session_id": str(session_id),
        "review_status": entry["decision"],
        "note": entry["note"],
        "decided_by": entry["decided_by"],
        "decided_at": entry["decided_at"],
        "open_flags": review["open_flags"],
        "flags": review["flags"],
    }
    # One event per logged decision: its place in the log is its identity.
    event_id = str(uuid.uuid5(session_id, f"review.decided:{entry['id']}"))
    await sender.emit(REVIEW_DECIDED, data, event_id=event_id)


async def post_review_token(request: web.Request) -> web.Response:
    """Management: a review link for one interview, `{"scope"?, "reviewer"?, "ttl_s"?}`."""
    session_id = parse_session_id(request)
    fields = await read_json_body(request)
    _only(fields, ("scope", "reviewer", "ttl_s"))
    scope = ReviewScope(_choice(fields.get("scope", "read"), ReviewScope, "scope"))
    reviewer = _checked(check_reviewer, fields.get("reviewer", "api-key holder"))
    ttl_s = fields.get("ttl_s", request.app[CONFIG].review_token_ttl_s)
    low, high = TOKEN_TTL_RANGE_S
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not low <= ttl_s <= high:
        raise json_error(web.HTTPBadRequest,
                         f"ttl_s must be a number of seconds from {low:.0f} to {high:.0f}")
    await _row(request, session_id)  # 404 for a session that does not exist
    tokens = await request.app[REVIEW_KEYS].tokens()
    now = time.time()
    token = tokens.mint(session_id, scope, reviewer, ttl_s=float(ttl_s), now=now)
    body = {
        "session_id": str(session_id), "scope": scope.value, "reviewer": reviewer,
        "token": token, "review_url": client_urls(request).review(session_id, token),
        "expires_at": datetime.fromtimestamp(int(now + ttl_s), timezone.utc).isoformat(),
    }
    return web.json_response(body, status=201)


# -- the list ------------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    """Management: recent sessions, newest first;
    `?status=&review_status=&since=&until=&limit=&after=` (`after`: the
    previous page's `next`)."""
    query = request.query
    _only(dict(query), ("status", "review_status", "since", "until", "limit", "after"))
    status = query.get("status") or None
    if status is not None and status not in _ROW_STATUSES:
        raise json_error(web.HTTPBadRequest, f"status must be one of {', '.join(_ROW_STATUSES)}")
    review_status = query.get("review_status") or None
    if review_status is not None:
        review_status = _choice(review_status, ReviewStatus, "review_status")
    since, until = _date(query, "since"), _date(query, "until")
    try:
        limit = int(query.get("limit", "50"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIST:
        raise json_error(web.HTTPBadRequest, f"limit must be an integer from 1 to {MAX_LIST}")
    raw_after = query.get("after")
    after = _cursor(raw_after) if raw_after else None
    summaries = await request.app[STORE].list_sessions(
        status=status, since=since, until=until, review_status=review_status, limit=limit + 1,
        after=after)
    more, summaries = len(summaries) > limit, summaries[:limit]
    urls = client_urls(request)
    sessions = [{
        "session_id": str(s.session_id),
        "status": s.status,
        "job_role": s.job_role,
        "start_time": _iso(s.start_time),
        "end_time": _iso(s.end_time),
        "duration_s": _duration(s.start_time, s.end_time),
        "flags": s.flags,
        "open_flags": s.open_flags,
        "review_status": s.review_status,
        "review_page": urls.review_page(s.session_id),
    } for s in summaries]
    last = summaries[-1] if more else None
    cursor = None if last is None else _encode_cursor(last.start_time, last.session_id)
    return web.json_response({"sessions": sessions, "next": cursor},
                             headers={"Cache-Control": "private, no-store"})


def _encode_cursor(start_time: datetime | None, session_id: uuid.UUID) -> str:
    """Where a page ended, opaque to the caller and safe in a URL as it is:
    base64url of `<start time or ->~<id>`."""
    plain = f"{'-' if start_time is None else start_time.isoformat()}~{session_id}"
    return base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")


def _cursor(raw: str) -> tuple[datetime | None, uuid.UUID]:
    try:
        plain = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        when, _, sid = plain.rpartition("~")
        start = None if when == "-" else datetime.fromisoformat(when)
        if start is not None and start.tzinfo is None:
            raise ValueError(when)
        return start, uuid.UUID(sid)
    except (ValueError, binascii.Error):  # (UnicodeDecodeError is a ValueError)
        raise json_error(web.HTTPBadRequest,
                         "after must be the `next` of a previous page") from None


# -- pages ---------------------------------------------------------------------------


async def review_page(request: web.Request) -> web.StreamResponse:
    """The review page (`review_url`); it holds no data, its script fetches it."""
    parse_session_id(request)
    return web.FileResponse(STATIC_DIR / "review.html",
                            headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})


async def sessions_page(request: web.Request) -> web.StreamResponse:
    """The sessions list page (it asks for the API key)."""
    return web.FileResponse(STATIC_DIR / "sessions.html",
                            headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})


# -- helpers -------------------------------------------------------------------------

_ROW_STATUSES = ("scheduled", "in_progress", "completed", "interrupted", "expired")


async def _row(request: web.Request, session_id: uuid.UUID) -> tuple[SessionRow, bool]:
    """The session's row (live from memory, else stored) and whether it is live."""
    interview = request.app[REGISTRY].interview(session_id)
    if interview is not None and interview.is_live:
        return interview.row(), True
    row = await stored_row(request, session_id)
    if row is None:
        raise json_error(web.HTTPNotFound, f"no session {session_id}")
    return row, False


def _decided_by(request: web.Request, fields: dict[str, Any]) -> str:
    """Who the audit log names: the token's reviewer, or the key holder (with a name)."""
    reviewer = request[REVIEWER]
    if not reviewer.by_key or "reviewer" not in fields:
        return reviewer.name
    return f"{reviewer.name}: {_checked(check_reviewer, fields['reviewer'])}"


def _flag_index(request: web.Request) -> int:
    raw = request.match_info["flag"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise json_error(web.HTTPBadRequest, f"flag must be a flag's index, got {raw!r}")
    return int(raw)


def _only(fields: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown field(s): {', '.join(unknown)}")


def _choice(value: object, kind: type[FlagDecision] | type[ReviewStatus] | type[ReviewScope],
            name: str) -> str:
    choices = [member.value for member in kind]
    if not isinstance(value, str) or value not in choices:
        raise json_error(web.HTTPBadRequest, f"{name} must be one of {', '.join(choices)}")
    return value


def _checked(check: Any, value: object) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


def _date(query: Any, name: str) -> datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"{name} must be an ISO-8601 date or time") from None
    if value.tzinfo is None:
        raise json_error(web.HTTPBadRequest, f"{name} needs a time zone (e.g. 2026-12-01T00:00Z)")
    return value


def _not_stored_yet(session_id: uuid.UUID) -> web.HTTPError:
    return json_error(web.HTTPServiceUnavailable,
                      f"session {session_id}'s row is not in the database yet; try again",
                      **{"Retry-After": "5"})


async def _recording_ready(request: web.Request, session_id: uuid.UUID, row: SessionRow,
                           live: bool) -> bool:
    """Whether the finished recording can be fetched: here, or from the node
    that recorded it (several nodes without a shared MEDIA_DIR)."""
    path = request.app[LAYOUT].recording(session_id)
    if await asyncio.get_running_loop().run_in_executor(None, path.is_file):
        return True
    return not live and row.recording_url is not None and (
        await recorder_of(request, row)) is not None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 1)
