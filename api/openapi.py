"""The REST API's OpenAPI 3.1 description, served at `GET /openapi.json`.

Built from the routes the application really has (`api.routes.declared`),
each with its declared `Access` as the operation's security, plus the
request and response shapes written here per route. A route added without
a shape here stops the description from being built (`UndescribedRoute`),
and `tests/test_openapi.py` checks the two agree both ways.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from api.bodies import MAX_URL
from api.routes import Access, declared

__all__ = ["UndescribedRoute", "check_described", "describe", "openapi_json"]

Json = dict[str, Any]


class UndescribedRoute(RuntimeError):
    """A declared route has no shape in `_OPERATIONS`."""


async def openapi_json(request: web.Request) -> web.Response:
    """The description of this server's REST API (public)."""
    # Built per call: a few dozen routes, well under a millisecond.
    return web.json_response(describe(request.app))


async def check_described(app: web.Application) -> None:
    """An `on_startup` hook: refuse to start with a route this module does not describe."""
    describe(app)


def describe(app: web.Application) -> Json:
    """The OpenAPI 3.1 document for every route `app` serves."""
    paths: dict[str, Json] = {}
    for route, access in declared(app).items():
        if route.resource is None:
            continue
        path = openapi_path(route.resource.canonical)
        key = ("GET" if route.method == "HEAD" else route.method, path)
        shape = _OPERATIONS.get(key)
        if shape is None:
            raise UndescribedRoute(f"{route.method} {path} has no shape in api/openapi.py")
        operation = _operation(shape, access, head=route.method == "HEAD")
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Interview media server",
            "version": "1",
            "description": (
                "Errors are {\"error\": \"...\"}. Without API_KEY (local mode) no call "
                "is authenticated and the security below is not enforced."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": _SECURITY_SCHEMES, "schemas": _SCHEMAS},
    }


def openapi_path(canonical: str) -> str:
    """aiohttp's `/a/{name:regex}` as OpenAPI's `/a/{name}`; static roots as `/static/{path}`."""
    if canonical == "/static":
        return "/static/{path}"
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", canonical)


def security_of(access: Access) -> list[Json]:
    """The OpenAPI security requirement for a declared access level."""
    if access is Access.PUBLIC:
        return []
    if access is Access.MANAGEMENT:
        return [{"apiKey": []}]
    if access in (Access.REVIEW, Access.REVIEW_DECIDE):
        return [{"apiKey": []}, {"reviewToken": []}, {"reviewTokenQuery": []}]
    return [{"apiKey": []}, {"sessionToken": []}, {"sessionTokenQuery": []}]


def _operation(shape: Json, access: Access, *, head: bool) -> Json:
    operation: Json = {
        "summary": shape["summary"],
        "x-access": access.value,
        "security": security_of(access),
        "responses": {
            code: ({"description": body["description"]} if head else body)
            for code, body in shape["responses"].items()
        },
    }
    if "parameters" in shape:
        operation["parameters"] = shape["parameters"]
    if "requestBody" in shape and not head:
        operation["requestBody"] = shape["requestBody"]
    if head:
        operation["summary"] = f"{shape['summary']} (headers only)"
    return operation


# -- shapes ------------------------------------------------------------------------


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _file(media_type: str, description: str) -> Json:
    return {"description": description,
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


def _errors(*codes: int) -> Json:
    return {str(code): _json(_ref("Error"), _ERROR_TEXT[code]) for code in codes}


_ERROR_TEXT = {
    400: "malformed request", 401: "missing or wrong credentials",
    403: "cross-site request refused (local mode)", 404: "unknown session, template or file",
    405: "method not allowed", 409: "the session has ended, or is connected already",
    413: "body over its limit", 415: "unsupported media type or encoding",
    421: "Host not served (local mode)", 503: "the database is unreachable",
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True,
               "schema": {"type": "string", "format": "uuid"}}
_SESSION = [_SESSION_ID]
_TEXT_FIELDS: Json = {
    "job_role": {"type": "string", "minLength": 1, "maxLength": 200},
    "template_id": {"type": "string", "format": "uuid"},
    "interviewee_id": {"type": "string", "format": "uuid"},
    "resume_url": {"type": "string", "format": "uri", "maxLength": MAX_URL,
                   "pattern": "^https?://"},
}
_REVIEW_STATUSES = ["unreviewed", "in_review", "cleared", "rejected"]
_HTML = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
_SCHEMAS: Json = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["ok", "draining", "full"]}, "node": {"type": "string"},
        "live_sessions": {"type": "integer"}, "admits": {"type": "boolean"},
        "draining": {"type": "boolean"}, "load": {"type": "number"}}},
    "Drain": {"type": "object", "properties": {
        "node_id": {"type": "string"}, "draining": {"type": "boolean"},
        "interviews": {"type": "integer"}, "deadline_in_s": {"type": ["number", "null"]}}},
    "NewSession": {"type": "object", "properties": _TEXT_FIELDS, "additionalProperties": False},
    "NewSessionForm": {
        "type": "object", "additionalProperties": False,
        "properties": {**_TEXT_FIELDS, "resume": {"type": "string", "format": "binary",
                                                  "contentMediaType": "application/pdf"}},
    },
    "Created": {"type": "object", "required": ["session_id", "token", "join_url", "review_url"],
                "properties": {
        "session_id": {"type": "string", "format": "uuid"}, "token": {"type": "string"},
        "join_url": {"type": "string"},
        "review_url": {"type": ["string", "null"],
                       "description": "read-only review link (null while the database is down)"}}},
    "Review": {"type": "object", "required": ["session_id", "status", "transcript", "flags",
                                              "review"], "properties": {
        "session_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
        "duration_s": {"type": ["number", "null"]},
        "recording_url": {"type": ["string", "null"]}, "recording_ready": {"type": "boolean"},
        "transcript": {"type": "array", "items": {"type": "object", "properties": {
            "role": {"enum": ["assistant", "user"]}, "content": {"type": "string"},
            "offset_s": {"type": ["number", "null"]},
            "end_offset_s": {"type": ["number", "null"]}}}},
        "flags": {"type": "array", "items": {"type": "object", "properties": {
            "flag": {"type": "integer"}, "type": {"type": "string"},
            "offset_s": {"type": ["number", "null"]}, "evidence_url": {"type": ["string", "null"]},
            "decision": {"oneOf": [{"type": "null"}, _ref("Decision")]}}}},
        "report": {"type": ["object", "null"]},
        "media_token": {"type": "string", "description":
                        "a read-only review token, valid 12 h, for the recording's and the "
                        "evidence's URLs (?token=)"},
        "review": {"type": "object", "properties": {
            "status": {"enum": _REVIEW_STATUSES}, "open_flags": {"type": "integer"},
            "history": {"type": "array", "items": _ref("Decision")}}}}},
    "Decision": {"type": "object", "required": ["decision", "decided_by", "decided_at"],
                 "properties": {
        "flag": {"type": ["integer", "null"]}, "decision": {"type": "string"},
        "note": {"type": ["string", "null"]}, "decided_by": {"type": "string"},
        "decided_at": {"type": "string", "format": "date-time"}}},
    "FlagDecision": {"type": "object", "required": ["decision"], "additionalProperties": False,
                     "properties": {
        "decision": {"enum": ["open", "confirmed", "dismissed"]},
        "note": {"type": ["string", "null"], "maxLength": 2000},
        "reviewer": {"type": "string", "maxLength": 80,
                     "description": "with the API key: the person, for the audit log"}}},
    "ReviewDecision": {"type": "object", "required": ["status"], "additionalProperties": False,
                       "properties": {
        "status": {"enum": _REVIEW_STATUSES},
        "note": {"type": ["string", "null"], "maxLength": 2000},
        "reviewer": {"type": "string", "maxLength": 80}}},
    "NewReviewToken": {"type": "object", "additionalProperties": False, "properties": {
        "scope": {"enum": ["read", "decide"]}, "reviewer": {"type": "string", "maxLength": 80},
        "ttl_s": {"type": "number", "minimum": 60, "maximum": 31536000,
                  "description": "seconds the token stays valid (default REVIEW_TOKEN_TTL_S)"}}},
    "ReviewToken": {"type": "object", "required": ["token", "review_url"], "properties": {
        "session_id": {"type": "string"}, "scope": {"enum": ["read", "decide"]},
        "reviewer": {"type": "string"}, "token": {"type": "string"},
        "review_url": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"}}},
    "SessionList": {"type": "object", "required": ["sessions"], "properties": {
        "sessions": {"type": "array", "items": {"type": "object", "properties": {
            "session_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
            "job_role": {"type": ["string", "null"]},
            "start_time": {"type": ["string", "null"]}, "end_time": {"type": ["string", "null"]},
            "duration_s": {"type": ["number", "null"]}, "flags": {"type": "integer"},
            "open_flags": {"type": "integer"}, "review_status": {"enum": _REVIEW_STATUSES},
            "review_page": {"type": "string"}}}},
        "next": {"type": ["string", "null"],
                 "description": "pass as `after` for the next page; null on the last"}}},
    "Row": {"type": "object", "properties": {
        "session_id": {"type": "string", "format": "uuid"},
        "status": {"enum": ["in_progress", "completed", "interrupted"]}}},
    "Info": {"type": "object", "required": ["session_id", "session_information"], "properties": {
        "session_id": {"type": "string"}, "session_information": {"type": "object"},
        "recording_url": {"type": ["string", "null"]}}},
    "Saved": {"type": "object", "required": ["status", "session_id"], "properties": {
        "status": {"enum": ["saved", "queued", "dropped"]}, "session_id": {"type": "string"},
        "message": {"type": "string"}}},
    "Finished": {"type": "object", "required": ["status", "session_id", "saved"], "properties": {
        "status": {"enum": ["ended", "deleted"]}, "session_id": {"type": "string"},
        "saved": {"enum": ["saved", "queued", "dropped"]}, "message": {"type": "string"}}},
    "Offer": {"type": "object", "required": ["sdp", "type"], "properties": {
        "sdp": {"type": "string", "maxLength": 65536}, "type": {"const": "offer"}}},
    "Answer": {"type": "object", "required": ["sdp", "type"], "properties": {
        "sdp": {"type": "string"}, "type": {"const": "answer"}}},
}
_SECURITY_SCHEMES: Json = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "API_KEY"},
    "sessionToken": {"type": "http", "scheme": "bearer",
                     "description": "the session's token (from POST /sessions)"},
    "sessionTokenQuery": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "the session's token, as in the join URL"},
    "reviewToken": {"type": "http", "scheme": "bearer",
                    "description": "a review token (review_url, or POST .../review-tokens); "
                                   "only the 'decide' scope may record decisions"},
    "reviewTokenQuery": {"type": "apiKey", "in": "query", "name": "token",
                         "description": "a review token, as in the review_url"},
}
_S = "/sessions/{session_id}"
_OPERATIONS: dict[tuple[str, str], Json] = {
    ("POST", "/sessions"): {
        "summary": "Create an interview session",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("NewSession")},
            "multipart/form-data": {"schema": _ref("NewSessionForm")}}},
        "responses": {"201": _json(_ref("Created"), "created"),
                      **_errors(400, 401, 403, 404, 413, 415, 503)},
    },
    ("GET", "/sessions"): {
        "summary": "Recent sessions with their review state, newest first",
        "parameters": [
            {"name": "status", "in": "query", "schema": {"enum": [
                "scheduled", "in_progress", "completed", "interrupted", "expired"]}},
            {"name": "review_status", "in": "query", "schema": {"enum": _REVIEW_STATUSES}},
            {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
            {"name": "limit", "in": "query",
             "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
            {"name": "after", "in": "query", "description": "the previous page's `next`",
             "schema": {"type": "string"}}],
        "responses": {"200": _json(_ref("SessionList"), "the sessions"),
                      **_errors(400, 401, 503)},
    },
    ("GET", f"{_S}/review"): {
        "summary": "The review: transcript and flags on the recording's clock, decisions",
        "parameters": _SESSION,
        "responses": {"200": _json(_ref("Review"), "the review"),
                      **_errors(400, 401, 404, 503)},
    },
    ("PUT", f"{_S}/review"): {
        "summary": "Set the interview's review status (audited)", "parameters": _SESSION,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("ReviewDecision")}}},
        "responses": {"200": _json(_ref("Decision"), "recorded"),
                      "403": _json(_ref("Error"), "a read-only review token"),
                      "409": _json(_ref("Error"), "the session's review log is full"),
                      **_errors(400, 401, 404, 503)},
    },
    ("PUT", f"{_S}/flags/{{flag}}"): {
        "summary": "Confirm or dismiss one anomaly flag (audited)",
        "parameters": [_SESSION_ID, {"name": "flag", "in": "path", "required": True,
                                     "schema": {"type": "integer", "minimum": 0}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("FlagDecision")}}},
        "responses": {"200": _json(_ref("Decision"), "recorded"),
                      "403": _json(_ref("Error"), "a read-only review token"),
                      "409": _json(_ref("Error"), "the session's review log is full"),
                      **_errors(400, 401, 404, 503)},
    },
    ("POST", f"{_S}/review-tokens"): {
        "summary": "Mint a review link for one interview", "parameters": _SESSION,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("NewReviewToken")}}},
        "responses": {"201": _json(_ref("ReviewToken"), "minted"),
                      **_errors(400, 401, 404, 503)},
    },
    ("GET", "/review"): {"summary": "The sessions list page (asks for the API key)",
                         "responses": {"200": _HTML}},
    ("GET", "/review/{session_id}"): {"summary": "The review page (review_url)",
                                      "parameters": _SESSION,
                                      "responses": {"200": _HTML, **_errors(400)}},
    ("GET", _S): {"summary": "The session's row", "parameters": _SESSION,
                  "responses": {"200": _json(_ref("Row"), "the row"), **_errors(400, 401, 404)}},
    ("DELETE", _S): {"summary": "End and save the session", "parameters": _SESSION,
                     "responses": {"200": _json(_ref("Finished"), "deleted"),
                                   **_errors(400, 401, 404, 409)}},
    ("GET", f"{_S}/info"): {"summary": "What reviewers read", "parameters": _SESSION,
                            "responses": {"200": _json(_ref("Info"), "the information"),
                                          **_errors(400, 401, 404)}},
    ("POST", f"{_S}/save"): {"summary": "Checkpoint a live session", "parameters": _SESSION,
                             "responses": {"200": _json(_ref("Saved"), "saved"),
                                           **_errors(400, 401, 404, 409)}},
    ("POST", f"{_S}/end"): {"summary": "End and save the session", "parameters": _SESSION,
                            "responses": {"200": _json(_ref("Finished"), "ended"),
                                          **_errors(400, 401, 404, 409)}},
    ("GET", f"{_S}/resume"): {"summary": "The uploaded resume", "parameters": _SESSION,
                              "responses": {"200": _file("application/pdf", "the PDF"),
                                            **_errors(400, 401, 404)}},
    ("GET", f"{_S}/recording"): {"summary": "The finished recording", "parameters": _SESSION,
                                 "responses": {"200": _file("video/webm", "the recording"),
                                               **_errors(400, 401, 404)}},
    ("GET", f"{_S}/evidence/{{name}}"): {
        "summary": "An anomaly's evidence picture",
        "parameters": [_SESSION_ID, {"name": "name", "in": "path", "required": True,
                                     "schema": {"type": "string",
                                                "pattern": r"^[A-Za-z0-9_.-]+\.jpg$"}}],
        "responses": {"200": _file("image/jpeg", "the picture"), **_errors(400, 401, 404)},
    },
    ("POST", f"{_S}/offer"): {
        "summary": "WebRTC offer in, answer out", "parameters": _SESSION,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("Offer")}}},
        "responses": {"200": _json(_ref("Answer"), "the answer"),
                      **_errors(400, 401, 404, 409, 413, 415)},
    },
    ("POST", "/whip/{session_id}"): {
        "summary": "WHIP (RFC 9725): SDP offer in, answer out", "parameters": _SESSION,
        "requestBody": {"required": True, "content": {
            "application/sdp": {"schema": {"type": "string", "maxLength": 65536}}}},
        "responses": {"201": {"description": "the answer",
                              "headers": {"Location": {"schema": {"type": "string"}}},
                              "content": {"application/sdp": {"schema": {"type": "string"}}}},
                      **_errors(400, 401, 404, 409, 413, 415)},
    },
    ("DELETE", "/whip/{session_id}/resource"): {
        "summary": "WHIP hang-up: the interview ends", "parameters": _SESSION,
        "responses": {"200": {"description": "ended"}, **_errors(400, 401, 404, 409)},
    },
    ("PATCH", "/whip/{session_id}/resource"): {
        "summary": "No trickle ICE or ICE restart", "parameters": _SESSION,
        "responses": {**_errors(400, 401, 404, 405, 409)},
    },
    ("GET", "/healthz"): {"summary": "Health: 503 while draining or full (new sessions elsewhere)",
                          "responses": {
        "200": _json(_ref("Health"), "ok: takes new sessions"),
        "503": _json(_ref("Health"), "draining or full: serves its own sessions only")}},
    ("POST", "/admin/drain"): {
        "summary": "Drain this node: no new sessions; live ones end by the deadline",
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False,
            "properties": {"deadline_s": {"type": "number", "minimum": 0}}}}}},
        "responses": {"202": _json(_ref("Drain"), "draining"), **_errors(400, 401)}},
    ("DELETE", "/admin/drain"): {
        "summary": "Stop draining: admit new sessions again",
        "responses": {"200": _json(_ref("Drain"), "admitting"), **_errors(401)}},
    ("GET", "/admin/nodes"): {
        "summary": "The node directory", "responses": {
            "200": _json({"type": "object", "properties": {
                "this_node": {"type": "string"}, "nodes": {"type": "array"}}}, "the nodes"),
            **_errors(401, 503)}},
    ("GET", "/metrics"): {"summary": "Prometheus metrics", "responses": {
        "200": {"description": "text format", "content": {"text/plain": {"schema": {
            "type": "string"}}}}, **_errors(401)}},
    ("GET", "/config"): {"summary": "The browser client's settings", "responses": {
        "200": _json({"type": "object", "properties": {"ice_servers": {"type": "array"}}},
                     "settings")}},
    ("GET", "/openapi.json"): {"summary": "This description", "responses": {
        "200": _json({"type": "object"}, "OpenAPI 3.1")}},
    ("GET", "/"): {"summary": "The candidate page (join_url)", "responses": {
        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}},
    ("GET", "/static/{path}"): {
        "summary": "The browser client's files",
        "parameters": [{"name": "path", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "a file"}, **_errors(403, 404)},
    },
}
