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
_SCHEMAS: Json = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "NewSession": {"type": "object", "properties": _TEXT_FIELDS, "additionalProperties": False},
    "NewSessionForm": {
        "type": "object", "additionalProperties": False,
        "properties": {**_TEXT_FIELDS, "resume": {"type": "string", "format": "binary",
                                                  "contentMediaType": "application/pdf"}},
    },
    "Created": {"type": "object", "required": ["session_id", "token", "join_url"], "properties": {
        "session_id": {"type": "string", "format": "uuid"}, "token": {"type": "string"},
        "join_url": {"type": "string"}}},
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
    ("GET", "/healthz"): {"summary": "Health", "responses": {"200": _json(
        {"type": "object", "required": ["status"]}, "ok")}},
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
