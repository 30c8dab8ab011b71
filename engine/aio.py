"""Small asyncio helpers shared by the engine and the media layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable

__all__ = ["KeyedLock", "aclose_quietly", "cancel_and_wait"]

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel `tasks` and wait until they are done.

    Unlike awaiting each task inside `suppress(CancelledError)`, this never
    swallows the *caller's* own cancellation; a task that failed instead of
    stopping is logged, so its exception is never left unretrieved.
    """
    pending = {t for t in tasks if t is not None and t is not asyncio.current_task()}
    for task in pending:
        task.cancel()
    if not pending:
        return
    await asyncio.wait(pending)
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())


class KeyedLock:
    """One asyncio lock per key, made on first use and dropped once unused."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


async def aclose_quietly(iterator: AsyncIterator[object]) -> None:
    """Close an async generator early so what feeds it (an HTTP stream) is
    released now; an error while closing is logged, not raised (the error
    that matters, if any, is elsewhere)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.debug("error while closing a stream", exc_info=True)
