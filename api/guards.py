"""What the server refuses before any handler runs, whatever the route.

- A request body with a `Content-Encoding` (aiohttp would inflate it as it
  is read, so a small gzip body could expand without bound): 415.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import json_error

__all__ = ["guard_middleware"]


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what no route accepts, before the route's access is checked."""
    _refuse_encoded_body(request)
    return await handler(request)


def _refuse_encoded_body(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "request bodies must not be compressed (no Content-Encoding)",
            **{"Accept-Encoding": "identity"},
        )
