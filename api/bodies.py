"""Reading request bodies within size limits, and validating their fields."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from api.errors import json_error, too_large
from engine import jsontext
from engine.jsontext import NestedTooDeeply

__all__ = [
    "MAX_JSON_BYTES", "MAX_RESUME_BYTES", "MAX_URL", "MAX_SDP_BYTES", "MAX_FIELD_BYTES",
    "MAX_PARTS", "read_limited", "storable_text", "read_json_body", "read_multipart",
    "optional_text", "optional_uuid", "optional_url",
]

MAX_JSON_BYTES = 1024 * 1024
MAX_RESUME_BYTES = 5 * 1024 * 1024
MAX_URL = 2048
MAX_SDP_BYTES = 64 * 1024
# A multipart text field: MAX_URL characters of UTF-8 at most.
MAX_FIELD_BYTES = 4 * MAX_URL
MAX_PARTS = 16


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
        # On the loop: json's C parser holds the GIL throughout, so a thread
        # would not free the loop. A 1 MB body costs it tens of ms at most.
        body = jsontext.loads(raw)
    except (NestedTooDeeply, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise json_error(web.HTTPBadRequest, f"malformed JSON: {exc}") from None
    except RecursionError:  # a backstop: jsontext refuses deep text before parsing
        raise json_error(web.HTTPBadRequest, "malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the JSON body must be an object")
    return body


async def read_multipart(
    request: web.Request, fields: tuple[str, ...]
) -> tuple[dict[str, Any], bytes | None]:
    """The text parts named in `fields` and a 'resume' PDF part, each read
    within its limit; 400 for a malformed body or a part named twice, 413
    past a limit, 415 for an encoded part."""
    try:
        return await _read_parts(request, fields)
    except (BadHttpMessage, ValueError) as exc:
        # aiohttp's multipart reader raises these for a bad boundary or part
        # headers: the client's mistake, not the server's (found by fuzzing).
        raise json_error(web.HTTPBadRequest, f"malformed multipart body: {exc}") from None


async def _read_parts(
    request: web.Request, fields: tuple[str, ...]
) -> tuple[dict[str, Any], bytes | None]:
    values: dict[str, Any] = {}
    resume: bytes | None = None
    reader = await request.multipart()
    parts = 0
    async for part in reader:
        parts += 1
        if parts > MAX_PARTS:
            raise too_large(f"more than {MAX_PARTS} multipart parts", MAX_PARTS)
        if not isinstance(part, BodyPartReader):
            raise json_error(web.HTTPBadRequest, "nested multipart bodies are not accepted")
        _refuse_encoded(part)
        name = part.name
        if name is not None and (name in values or (name == "resume" and resume is not None)):
            raise json_error(web.HTTPBadRequest, f"multipart field {name[:64]!r} sent twice")
        if name == "resume":
            resume = await _read_resume_part(part)
        elif name in fields:
            raw = await _read_part(part, MAX_FIELD_BYTES, f"multipart field {name}")
            values[name] = raw.decode("utf-8", errors="replace")
        else:
            # Not kept, but read within a bound like any other part.
            await _read_part(part, MAX_FIELD_BYTES, "an unknown multipart part")
    return values, resume


def _refuse_encoded(part: BodyPartReader) -> None:
    """Parts are taken as sent: a compressed or transfer-encoded part could be
    a decompression bomb (and no browser sends one)."""
    encoding = part.headers.get("Content-Encoding", "identity").strip().lower()
    transfer = part.headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    if encoding != "identity" or transfer not in ("binary", "7bit", "8bit"):
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "multipart parts must not be encoded (no Content-Encoding or "
            "Content-Transfer-Encoding)",
        )


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(min(64 * 1024, limit + 1)):
        data += chunk
        if len(data) > limit:
            raise too_large(f"{what} larger than {limit // 1024} KB", limit)
    return bytes(data)


async def _read_resume_part(part: BodyPartReader) -> bytes:
    declared = part.headers.get("Content-Type", "application/pdf").split(";")[0].strip()
    if declared not in ("application/pdf", "application/octet-stream"):
        raise json_error(web.HTTPUnsupportedMediaType, f"resume must be a PDF, not {declared}")
    data = await _read_part(part, MAX_RESUME_BYTES, "resume")
    if not data.startswith(b"%PDF-"):
        raise json_error(web.HTTPUnsupportedMediaType, "resume is not a PDF file")
    return data


def optional_text(fields: dict[str, Any], name: str, limit: int) -> str | None:
    """A stripped string of at most `limit` characters; None if absent or blank."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise json_error(web.HTTPBadRequest, f"{name} must be a string")
    value = storable_text(value, name).strip()
    if len(value) > limit:
        raise json_error(web.HTTPBadRequest, f"{name} is longer than {limit} characters")
    return value or None


def storable_text(value: str, name: str) -> str:
    """`value`, or 400 if PostgreSQL could not store it: text columns and
    jsonb refuse NUL characters, and a lone surrogate cannot be encoded at all."""
    if "\x00" in value:
        raise json_error(web.HTTPBadRequest, f"{name} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise json_error(
            web.HTTPBadRequest, f"{name} must be valid Unicode text (no lone surrogates)"
        ) from None
    return value


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
