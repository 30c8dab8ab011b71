"""Credentials, and the middleware that enforces each route's declared access.

Management calls carry `Authorization: Bearer <API_KEY>`; candidate calls
carry their session's token (the header or `?token=`), or the API key;
review calls a review token (`engine.review`) the same ways, or the API key.
Without API_KEY (local mode) every call is allowed. Failures answer 401
with `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hmac
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import json_error
from api.keys import CONFIG, NODE, REGISTRY, REVIEW_KEYS, REVIEWER, SESSION
from api.lookup import not_live_error, parse_session_id, stored_row
from api.routes import Access, access_of
from engine.review import Reviewer
from engine.session import InterviewSession
from storage.pg import DatabaseUnavailable

__all__ = ["access_middleware", "rejoin_session"]


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit a request as its route's `Access` says, before the handler runs."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # no route: the router's 404 or 405
    access = access_of(request)
    if access is None:
        # `check_declared` stops the app from starting like this; fail closed anyway.
        raise RuntimeError(f"{request.method} {request.path} has no access declaration")
    if access is Access.MANAGEMENT:
        require_api_key(request)
    elif access is Access.CANDIDATE:
        request[SESSION] = await _candidate_session(request, rejoining=False)
    elif access is Access.CANDIDATE_REJOINING:
        # Not stored: the handler calls `rejoin_session` once the offer is good.
        await _candidate_session(request, rejoining=True)
    elif access in (Access.REVIEW, Access.REVIEW_DECIDE):
        request[REVIEWER] = await _reviewer(request, decide=access is Access.REVIEW_DECIDE)
    elif access is Access.MANAGEMENT_OR_CANDIDATE:
        session = request.app[REGISTRY].get(parse_session_id(request))
        if session is None:
            require_api_key(request)
        else:
            require_candidate(request, session)
    return await handler(request)


async def rejoin_session(request: web.Request) -> InterviewSession:
    """For a CANDIDATE_REJOINING route, once its offer is known to be good:
    the live session, reopened if its connection had dropped.

    Checked again rather than taken from the middleware: reading the offer
    awaited, and the session may have been parked or ended meanwhile.
    """
    session = await _candidate_session(request, rejoining=True)
    registry = request.app[REGISTRY]
    if registry.get(session.session_id) is not None:
        return session
    reopened = registry.rejoin(session.session_id)
    if reopened is None:
        raise await not_live_error(request, session.session_id)
    return reopened


def require_api_key(request: web.Request) -> None:
    """Management: `Authorization: Bearer <API_KEY>` unless in local mode."""
    api_key = request.app[CONFIG].api_key
    if api_key is not None and not _matches(_bearer(request), api_key):
        raise json_error(web.HTTPUnauthorized, "missing or wrong API key", **_CHALLENGE)


def require_candidate(request: web.Request, session: InterviewSession) -> None:
    """Candidate calls: the session's token (header or `?token=`) or the API key."""
    api_key = request.app[CONFIG].api_key
    if api_key is None:
        return
    given = _bearer(request) or request.query.get("token")
    if not (_matches(given, api_key) or session.token_matches(given)):
        raise json_error(web.HTTPUnauthorized, "missing or wrong session token", **_CHALLENGE)


async def _candidate_session(request: web.Request, *, rejoining: bool) -> InterviewSession:
    """The live session a candidate call names, authorised; when `rejoining`,
    a session parked within the grace window counts (it is not reopened here)."""
    session_id = parse_session_id(request)
    registry = request.app[REGISTRY]
    if rejoining:
        # A candidate rejoining right after a drop may race the drop's ending.
        await registry.wait_ended(session_id)
    session = registry.get(session_id)
    if session is None and rejoining:
        session = registry.parked(session_id) or await _continued(request, session_id)
    if session is None:
        _require_api_key_or_hide(request)
        raise await not_live_error(request, session_id)
    require_candidate(request, session)
    return session


async def _continued(request: web.Request, session_id: uuid.UUID) -> InterviewSession | None:
    """A rejoin for an interview whose node died: go on with it here, when it
    can (`api.node.Node.adopt`) and the caller holds its token."""
    try:
        row = await stored_row(request, session_id)
    except DatabaseUnavailable:
        return None
    if row is None:
        return None
    candidate = InterviewSession.from_checkpoint(row)
    if candidate is None:
        return None
    try:
        require_candidate(request, candidate)  # before anything is taken over
    except web.HTTPUnauthorized:
        _require_api_key_or_hide(request)  # a wrong token learns nothing of the session
        raise
    node = request.app[NODE]
    if node.draining and row.status in ("in_progress", "interrupted"):
        # Not here: a balancer's next try reaches a node that takes it.
        raise json_error(web.HTTPServiceUnavailable, node.refusal() or "draining",
                         **{"Retry-After": "1"})
    return await node.adopt(row)


async def _reviewer(request: web.Request, *, decide: bool) -> Reviewer:
    """The API key (everything), or a review token of the session in the path."""
    api_key = request.app[CONFIG].api_key
    if api_key is None:
        return Reviewer("local", can_decide=True, by_key=True)
    given = _bearer(request) or request.query.get("token")
    if _matches(given, api_key):
        return Reviewer("api-key", can_decide=True, by_key=True)
    session_id = parse_session_id(request)
    grant = None
    if given:
        tokens = await request.app[REVIEW_KEYS].tokens()  # 503 while the database is down
        grant = tokens.check(session_id, given)
    if grant is None:
        raise json_error(web.HTTPUnauthorized, "missing or wrong API key or review token",
                         **_CHALLENGE)
    if decide and not grant.can_decide:
        raise json_error(web.HTTPForbidden, "this review token may read, not decide")
    return Reviewer(grant.reviewer, can_decide=grant.can_decide, expires_at=grant.expires_at)


def _require_api_key_or_hide(request: web.Request) -> None:
    """For a session that is not live, only the API key may learn its fate."""
    api_key = request.app[CONFIG].api_key
    given = _bearer(request) or request.query.get("token")
    if api_key is not None and not _matches(given, api_key):
        # A token cannot be checked against a session that is not live; answer
        # as the spec asks (404/409) without saying more than "not live".
        raise json_error(web.HTTPNotFound, "no live session with this id")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _matches(given: str | None, expected: str | None) -> bool:
    # aiohttp hands raw non-UTF-8 header bytes over as surrogate escapes;
    # encode them back rather than fail (`.encode()` would raise, a 500).
    return given is not None and expected is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
