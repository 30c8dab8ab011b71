"""The data channel's wire format: the one place events become JSON and back.

Out: each `engine.events` event is `{"type": <its kind>, ...its fields}`.
In: `{"type": "ping"}` and `{"type": "end"}`; anything else is answered with
an error event (it never takes the connection down).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from engine import jsontext
from engine.events import ClientMessage, EndRequest, Event, Ping
from engine.jsontext import NestedTooDeeply

__all__ = ["MAX_MESSAGE_BYTES", "decode", "encode"]

MAX_MESSAGE_BYTES = 16 * 1024
# A message is a flat object ({"type": "ping"}); a little room for more.
MAX_MESSAGE_DEPTH = 8

_INBOUND: dict[str, ClientMessage] = {"ping": Ping(), "end": EndRequest()}


def encode(event: Event) -> str:
    body: dict[str, Any] = {"type": event.kind}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        body[field.name] = list(value) if isinstance(value, tuple) else value
    return json.dumps(body)


def decode(raw: str | bytes) -> ClientMessage | str:
    """The candidate's message, or the text of the error to answer it with."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return f"message larger than {MAX_MESSAGE_BYTES} bytes"
    try:
        message = jsontext.loads(raw, max_depth=MAX_MESSAGE_DEPTH)
    except NestedTooDeeply:
        return f"JSON messages may nest at most {MAX_MESSAGE_DEPTH} levels"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # the last: a backstop
        return "messages must be JSON objects"
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "messages must be JSON objects with a string 'type'"
    known = _INBOUND.get(message["type"])
    if known is None:
        return "unknown message type (known: ping, end)"  # never echo input
    return known
