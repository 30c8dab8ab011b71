"""JSON errors, and the middleware that answers every error as JSON."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from storage.pg import DatabaseUnavailable

__all__ = ["json_error", "too_large", "error_middleware"]

log = logging.getLogger(__name__)


def json_error(status: type[web.HTTPError], message: str, **headers: str) -> web.HTTPError:
    """An HTTP error whose body is `{"error": message}`."""
    return status(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


def too_large(message: str, max_size: int) -> web.HTTPError:
    """413 with a JSON body."""
    return web.HTTPRequestEntityTooLarge(
        max_size=max_size,
        actual_size=max_size + 1,
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answers JSON; nothing escapes as a bare 500."""
    try:
        return await handler(request)
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


# aiohttp's own errors carry a text body; the JSON response sets its own.
_BODY_HEADERS = frozenset({"content-type", "content-length"})
