"""The route table's vocabulary: every route says who may call it.

A route is added with `add_routes` together with its `Access`; the
application refuses to start while any route lacks one (`check_declared`),
so a handler cannot be left unprotected by forgetting to check a credential.
`api.auth.access_middleware` enforces the declared level before the handler
runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

__all__ = ["Access", "Route", "Static", "UndeclaredRoute", "add_routes", "access_of",
           "declared", "check_declared"]


class Access(enum.Enum):
    """Who may call a route (every level is open in local mode, without API_KEY)."""

    PUBLIC = "public"
    # `Authorization: Bearer <API_KEY>`.
    MANAGEMENT = "management"
    # The API key, or the token (header or `?token=`) of the live session in
    # the path; the handler finds that session under `api.keys.SESSION`.
    CANDIDATE = "candidate"
    # As CANDIDATE, and a session whose connection dropped within the grace
    # window counts too; the handler reopens it with `api.auth.rejoin_session`
    # once the offer is known to be good.
    CANDIDATE_REJOINING = "candidate, rejoining"
    # The API key; or, while the session in the path is live, its token
    # (a candidate may end their own interview).
    MANAGEMENT_OR_CANDIDATE = "management, or the live session's candidate"
    # The API key, or a review token of the session in the path (header or
    # `?token=`); the handler finds who under `api.keys.REVIEWER`.
    REVIEW = "review"
    # As REVIEW, with a token of the `decide` scope.
    REVIEW_DECIDE = "review, deciding"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access


@dataclass(frozen=True)
class Static:
    """Files under `directory`, served below `prefix` (symlinks not followed)."""

    prefix: str
    directory: Path
    access: Access


class UndeclaredRoute(RuntimeError):
    """A route was added to the router without an access declaration."""


_ACCESS = web.AppKey("access", dict[web.AbstractRoute, Access])


def add_routes(app: web.Application, table: Iterable[Route | Static]) -> None:
    """Add the table's routes (GET also answers HEAD, as `add_get` does)."""
    declared = app.setdefault(_ACCESS, {})
    for entry in table:
        if isinstance(entry, Static):
            resource = app.router.add_static(entry.prefix, entry.directory, follow_symlinks=False)
            declared.update((route, entry.access) for route in resource)
            continue
        head = (hdrs.METH_HEAD,) if entry.method == hdrs.METH_GET else ()
        for method in (*head, entry.method):
            declared[app.router.add_route(method, entry.path, entry.handler)] = entry.access


def declared(app: web.Application) -> Mapping[web.AbstractRoute, Access]:
    """Every route added by `add_routes`, with its access."""
    return app.get(_ACCESS, {})


def access_of(request: web.Request) -> Access | None:
    """The declared access of the route a request matched (None: undeclared)."""
    return declared(request.app).get(request.match_info.route)


async def check_declared(app: web.Application) -> None:
    """An `on_startup` hook: refuse to start with an undeclared route."""
    known = declared(app)
    missing = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if route not in known
    ]
    if missing:
        raise UndeclaredRoute(
            f"route(s) without an access declaration: {', '.join(missing)}; add them with "
            "api.routes.add_routes"
        )
