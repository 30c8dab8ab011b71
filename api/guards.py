"""What the server refuses before any handler runs, whatever the route.

- A request body with a `Content-Encoding` (aiohttp would inflate it as it
  is read, so a small gzip body could expand without bound): 415.
- In local mode (no API_KEY) nothing is authenticated, so the server must
  not be reachable through a browser on behalf of another site:
  - a `Host` that is not a loopback name or address with this server's port,
    an address the connection arrived on, or `PUBLIC_URL`'s host: 421 (DNS
    rebinding: evil.example resolving to 127.0.0.1 keeps its own name in
    `Host`);
  - a state-changing request (POST, DELETE, PATCH, PUT) whose `Origin` is
    neither the server's own nor in `CORS_ORIGINS`: 403 (a cross-site form
    post needs no CORS preflight).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import json_error
from api.keys import CONFIG
from config import Config, is_loopback

__all__ = ["guard_middleware"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what no route accepts, before the route's access is checked."""
    _refuse_encoded_body(request)
    config = request.app[CONFIG]
    if config.local_mode:
        _check_host(request, config)
        if request.method not in _SAFE_METHODS:
            _check_origin(request, config)
    return await handler(request)


def _refuse_encoded_body(request: web.Request) -> None:
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "request bodies must not be compressed (no Content-Encoding)",
            **{"Accept-Encoding": "identity"},
        )


def _check_host(request: web.Request, config: Config) -> None:
    host, port = _split_host(request.headers.get("Host", ""), request.scheme)
    if host is not None and _host_allowed(request, config, host, port):
        return
    raise json_error(
        web.HTTPMisdirectedRequest,
        "this server (local mode, no API_KEY) answers only requests addressed to "
        "localhost, its own address, or PUBLIC_URL",
    )


def _host_allowed(request: web.Request, config: Config, host: str, port: int) -> bool:
    # PUBLIC_URL's name, whatever the port: a proxy in front may use another.
    if config.public_url is not None and host == urlsplit(config.public_url).hostname:
        return True
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local_address, local_port = (sockname[0], sockname[1]) if sockname else (None, None)
    # Behind the WORKERS front, `Host` names the front's port, not this worker's.
    if config.worker_index is None and port != local_port:
        return False
    # An address literal cannot be rebound; a name other than localhost can.
    return is_loopback(host) or host == str(local_address).lower()


def _split_host(header: str, scheme: str) -> tuple[str | None, int]:
    """`Host` as (lowercase name or address without brackets, port)."""
    try:
        parts = urlsplit(f"//{header.strip()}")
        port = parts.port
    except ValueError:
        return None, 0
    if not parts.hostname or parts.username is not None or parts.path:
        return None, 0
    return parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _check_origin(request: web.Request, config: Config) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser's cross-site request (curl, the test suite, WHIP clients)
    own = f"{request.scheme}://{request.host}"
    public = urlsplit(config.public_url or "")
    if origin in (own, f"{public.scheme}://{public.netloc}") or "*" in config.cors_origins or origin in config.cors_origins:
        return
    raise json_error(
        web.HTTPForbidden,
        f"cross-site request from origin {origin[:200]!r} refused: allow it with CORS_ORIGINS",
    )
