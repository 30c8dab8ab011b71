"""The live progress line on stderr: a tqdm bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

__all__ = ["ProgressDisplay"]

PLAIN_EVERY_S = 5.0


class ProgressDisplay:
    """Counts what the candidates report; `finished` advances the bar."""

    def __init__(self, total: int, label: str) -> None:
        self.counts: Counter[str] = Counter()
        self._total = total
        self._label = label
        self._started = time.monotonic()
        self._printed = 0.0
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="session", file=sys.stderr,
                             dynamic_ncols=True, leave=True)

    def update(self, kind: str) -> None:
        self.counts[kind] += 1
        if self._bar is not None:
            if kind == "finished":
                self._bar.update(1)
            self._bar.set_postfix_str(self._status(), refresh=True)
        elif time.monotonic() - self._printed >= PLAIN_EVERY_S or kind == "finished":
            self._print()

    def _status(self) -> str:
        c = self.counts
        live = c["connected"] - c["finished"] - c["dropped"]
        return (f"live {max(live, 0)} answers {c['answered']} "
                f"errors {c['error']} done {c['finished']}/{self._total}")

    def _print(self) -> None:
        self._printed = time.monotonic()
        elapsed = self._printed - self._started
        print(f"[{self._label} {elapsed:5.0f}s] {self._status()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._print()
