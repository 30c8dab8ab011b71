"""Security headers on every response the server sends.

- `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` on all.
- The candidate page, the review pages (`/review`, `/review/{id}`) and the
  static files get a Content-Security-Policy that
  allows only the server's own scripts, styles and connections (no inline
  script: `static/index.html` loads `static/page.js`). No `frame-ancestors`:
  integrators embed the page in an iframe (README, "The browser client").
- Everything else (JSON, files) gets `default-src 'none'`: nothing in an API
  answer is ever run or rendered as a page.

Added in `on_response_prepare`, so errors, static files and aiohttp's own
answers carry them too.
"""

from __future__ import annotations

from aiohttp import web

from api.keys import NODE

__all__ = ["PAGE_CSP", "API_CSP", "add_security_headers"]

PAGE_CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob: mediastream:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
))
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def add_security_headers(app: web.Application) -> None:
    """Register the headers on `app` (once, from `server.make_app`)."""
    app.on_response_prepare.append(_on_prepare)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    node = request.app.get(NODE)
    if node is not None:
        headers.setdefault("X-Node", node.node_id)  # which node answered (several behind a balancer)
    headers.setdefault("Referrer-Policy", "no-referrer")
    path = request.path
    page = path in ("/", "/review") or path.startswith(("/static/", "/review/"))
    headers.setdefault("Content-Security-Policy", PAGE_CSP if page else API_CSP)
