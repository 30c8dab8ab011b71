"""The live progress line on stderr: a tqdm bar on a terminal, plain lines otherwise.

The bar runs over the step's planned time (ramp + duration); its text counts
what the candidates report: live connections, answers, errors, sessions done.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from typing import Any

__all__ = ["ProgressDisplay"]

PLAIN_EVERY_S = 5.0


class ProgressDisplay:
    def __init__(self, sessions: int, planned_s: float, label: str) -> None:
        self.counts: Counter[str] = Counter()
        self._sessions = sessions
        self._planned_s = max(1, round(planned_s))
        self._label = label
        self._started = time.monotonic()
        self._printed = 0.0
        self._bar: Any = None
        self._ticker: asyncio.Task[None] | None = None
        if sys.stderr.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=self._planned_s, desc=label, file=sys.stderr, dynamic_ncols=True,
                             bar_format="{desc}: {bar} {n_fmt}/{total_fmt} s{postfix}")

    def start(self) -> None:
        """Refresh once a second until `close()`."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="progress")

    def update(self, kind: str) -> None:
        self.counts[kind] += 1
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - self._started
            if self._bar is not None:
                self._bar.update(min(self._planned_s, int(elapsed)) - self._bar.n)
            elif elapsed - self._printed >= PLAIN_EVERY_S:
                self._print()

    def _status(self) -> str:
        c = self.counts
        live = c["connected"] - c["dropped"] - c["finished"]
        return (f"live {max(live, 0)} answers {c['answered']} errors {c['error']} "
                f"done {c['finished']}/{self._sessions}")

    def _print(self) -> None:
        self._printed = time.monotonic() - self._started
        print(f"[{self._label} {self._printed:4.0f}s] {self._status()}", file=sys.stderr, flush=True)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._bar is not None:
            self._bar.set_postfix_str(self._status())
            self._bar.close()
        else:
            self._print()
