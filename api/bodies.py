"""Reading request bodies within size limits, and validating their fields."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import BodyPartReader, web

from api.errors import json_error, too_large

__all__ = [
    "MAX_JSON_BYTES", "MAX_RESUME_BYTES", "MAX_URL", "MAX_SDP_BYTES",
    "read_limited", "read_json_body", "read_multipart",
    "optional_text", "optional_uuid", "optional_url",
]

MAX_JSON_BYTES = 1024 * 1024
MAX_RESUME_BYTES = 5 * 1024 * 1024
MAX_URL = 2048
MAX_SDP_BYTES = 64 * 1024


async def read_limited(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body, or 413 past `limit` bytes (declared or sent)."""
    if (request.content_length or 0) > limit:
        raise too_large(f"{what} larger than {limit // 1024} KB", limit)
    # `read(n)` returns as soon as some data is there: a body arriving in
    # several TCP segments (or chunks) must be read until EOF or the limit.
    data = bytearray()
    while chunk := await request.content.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise too_large(f"{what} larger than {limit // 1024} KB", limit)
    return bytes(data)


async def read_json_body(request: web.Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object body, or 400/413."""
    raw = await read_limited(request, limit, "JSON body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise json_error(web.HTTPBadRequest, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise json_error(web.HTTPBadRequest, "malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the JSON body must be an object")
    return body


async def read_multipart(
    request: web.Request, fields: tuple[str, ...]
) -> tuple[dict[str, Any], bytes | None]:
    """The text parts named in `fields` (cut past MAX_URL) and a 'resume' PDF part."""
    values: dict[str, Any] = {}
    resume: bytes | None = None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "resume":
            resume = await _read_resume_part(part)
        elif part.name in fields:
            values[part.name] = (await part.read(decode=True))[:MAX_URL + 1].decode(
                "utf-8", errors="replace"
            )
    return values, resume


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


def optional_text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    """A stripped string of at most `limit` characters; None if absent or blank."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise json_error(web.HTTPBadRequest, f"{name} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise json_error(web.HTTPBadRequest, f"{name} is longer than {limit} characters")
    return value or None


def optional_uuid(fields: dict[str, Any], name: str) -> uuid.UUID | None:
    value = optional_text(fields, name, 64)
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"{name} must be a UUID, got {value!r}") from None


def optional_url(fields: dict[str, Any], name: str) -> str | None:
    value = optional_text(fields, name, MAX_URL)
    if value is not None and not value.startswith(("http://", "https://")):
        raise json_error(web.HTTPBadRequest, f"{name} must be an http(s) URL")
    return value
