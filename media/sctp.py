"""A bound on what one data-channel message may hold before it is whole.

aiortc reassembles an SCTP message from its DATA chunks in memory with no
limit: a message's size is only known, and checked against the data
channel's 16 KB (`media.wire.MAX_MESSAGE_BYTES`) once its last chunk has
arrived. A candidate's peer that keeps sending fragments of one message
(ignoring the receive window we advertise, as a hostile sender may) would
grow that buffer without end. `bound_reassembly` caps the bytes waiting in
reassembly per SCTP association: past `MAX_REASSEMBLY_BYTES` the
association is aborted (the data channel closes; the call's media goes on)
and the peer is told why.

It wraps one instance's `_receive_data_chunk`, aiortc 1.x's handler of a
DATA chunk (`aiortc/rtcsctptransport.py`); `tests/test_hostile_media.py`
fails if an aiortc upgrade moves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtcsctptransport import RTCSctpTransport

__all__ = ["MAX_REASSEMBLY_BYTES", "bound_reassembly"]

log = logging.getLogger(__name__)

# Twice the receive window aiortc advertises (1 MiB): a sender that keeps to
# the window (browsers do) never comes near it, however its messages
# interleave; only one that ignores the window does. (aiortc's own sender
# ignores it too, but a flood of 5 KB messages from it peaks near 130 kB.)
MAX_REASSEMBLY_BYTES = 2 * 1024 * 1024


def bound_reassembly(transport: RTCSctpTransport, on_refused: Callable[[], None]) -> None:
    """Abort `transport`'s association when its reassembly holds too much."""
    original: Callable[[Any], Awaitable[None]] = transport._receive_data_chunk
    if getattr(original, "_bounded", False):
        return

    async def receive_data_chunk(chunk: Any) -> None:
        if _buffered(transport) + len(chunk.user_data) > MAX_REASSEMBLY_BYTES:
            if transport.state != "closed":
                log.warning("data channel: more than %d bytes of unfinished messages; "
                            "closing the channel", MAX_REASSEMBLY_BYTES)
                on_refused()
                asyncio.ensure_future(transport.stop())
            return
        await original(chunk)

    receive_data_chunk._bounded = True  # type: ignore[attr-defined]
    transport._receive_data_chunk = receive_data_chunk  # type: ignore[method-assign]


def _buffered(transport: RTCSctpTransport) -> int:
    streams = getattr(transport, "_inbound_streams", {})
    return sum(len(c.user_data) for s in streams.values() for c in s.reassembly)
