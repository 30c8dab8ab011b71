"""WebRTC signaling: a JSON offer/answer exchange, and WHIP (RFC 9725)."""

from __future__ import annotations

import json

from aiohttp import web

from api.auth import rejoin_session
from api.bodies import MAX_SDP_BYTES, read_json_body, read_limited
from api.errors import json_error
from api.keys import MEDIA, REGISTRY, SESSION
from engine.session import InterviewSession
from layout import PublicUrls
from media.peer import SignalingError, check_offer
from media.service import AlreadyConnected

__all__ = ["post_offer", "post_whip", "delete_whip", "patch_whip"]

# The WHIP resource's `Location` is a path: RFC 9725 resolves it against the
# URL the client posted to, whatever host that was.
_RELATIVE = PublicUrls()


async def post_offer(request: web.Request) -> web.Response:
    """`{"sdp", "type": "offer"}` → `{"sdp", "type": "answer"}`."""
    if request.content_type != "application/json":
        raise json_error(web.HTTPUnsupportedMediaType, "send the offer as application/json")
    body = await read_json_body(request, limit=MAX_SDP_BYTES)
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer" or not isinstance(sdp, str) or not sdp.strip():
        raise json_error(web.HTTPBadRequest, 'expected {"sdp": "<offer SDP>", "type": "offer"}')
    # Only a well-formed offer may reopen a session whose connection dropped.
    _check_sdp(sdp)
    session = await rejoin_session(request)
    answer = await _connect(request, session, sdp)
    return web.json_response({"sdp": answer, "type": "answer"})


async def post_whip(request: web.Request) -> web.Response:
    """WHIP: an SDP offer in, `201` with the answer and a `Location`."""
    if request.content_type != "application/sdp":
        raise json_error(web.HTTPUnsupportedMediaType, "WHIP offers are application/sdp")
    raw = await read_limited(request, MAX_SDP_BYTES, "SDP offer")
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise json_error(web.HTTPBadRequest, "the SDP offer is not UTF-8 text") from None
    _check_sdp(sdp)
    session = await rejoin_session(request)
    answer = await _connect(request, session, sdp)
    location = _RELATIVE.whip_resource(session.session_id)
    return web.Response(
        status=201, text=answer, content_type="application/sdp", headers={"Location": location}
    )


async def delete_whip(request: web.Request) -> web.Response:
    """The WHIP client hangs up: the interview ends."""
    await request.app[REGISTRY].end(request[SESSION].session_id)
    return web.Response(status=200)


async def patch_whip(request: web.Request) -> web.Response:
    """No trickle ICE or ICE restart: RFC 9725 says 405 for PATCH then."""
    message = "trickle ICE and ICE restarts are not supported; send every candidate in the offer"
    raise web.HTTPMethodNotAllowed(
        "PATCH",
        ("DELETE",),
        text=json.dumps({"error": message}),
        content_type="application/json",
    )


def _check_sdp(sdp: str) -> None:
    try:
        check_offer(sdp)
    except SignalingError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


async def _connect(request: web.Request, session: InterviewSession, sdp: str) -> str:
    refusal = request.app[MEDIA].refusal(session)
    if refusal is not None:
        # Past capacity: "busy, come back" rather than a worse interview for everyone.
        raise json_error(web.HTTPServiceUnavailable, f"{refusal.reason}; retry shortly",
                         **{"Retry-After": str(refusal.retry_after_s)})
    try:
        return await request.app[MEDIA].connect(session, sdp)
    except AlreadyConnected as exc:
        raise json_error(web.HTTPConflict, str(exc)) from None
    except SignalingError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None
