"""CORS for the origins in `CORS_ORIGINS` ("*" allows any)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from api.keys import CONFIG

__all__ = ["cors_middleware"]


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers preflights itself; adds the CORS headers to every other answer,
    errors included (outermost, so it sees them all)."""
    origin = request.headers.get("Origin")
    allowed = request.app[CONFIG].cors_origins
    if origin is None or not allowed or not ("*" in allowed or origin in allowed):
        return await handler(request)
    response: web.StreamResponse
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, PATCH, OPTIONS"
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
