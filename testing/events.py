"""What the server says on the `events` data channel, timestamped on arrival."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventLog"]


@dataclass(frozen=True)
class Event:
    at: float  # monotonic arrival time
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.body.get("type"))


class EventLog:
    """Data-channel events in arrival order; waiters wake on each arrival.

    One log may outlive a connection: a candidate that rejoins hands the same
    log to its new peer, so the conversation reads as one.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def add(self, raw: str | bytes) -> None:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {"type": "unparsable", "raw": repr(raw)[:200]}
        self.events.append(Event(time.monotonic(), body if isinstance(body, dict) else {}))
        waiter, self._changed = self._changed, asyncio.Event()
        waiter.set()

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    def find(self, match: Callable[[Event], bool], since: int = 0) -> int | None:
        return next((i for i in range(since, len(self.events)) if match(self.events[i])), None)

    async def wait_for(
        self, match: Callable[[Event], bool], *, since: int = 0, timeout: float
    ) -> int | None:
        """Index of the first matching event at or after `since`; None on timeout."""
        found: int | None = None

        def matched() -> bool:
            nonlocal found
            found = self.find(match, since)
            return found is not None

        await self.until(matched, timeout)
        return found

    async def until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` holds, checking it after each arrival; False on timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        return True
