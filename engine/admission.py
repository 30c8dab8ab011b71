"""Admission control: a new call only while the machine has room for it.

Capacity differs 4x between machines sold as "2 cores", so there is no
number for an operator to guess. The server measures its own load, from two
signals it has anyway:

- CPU: this process's CPU seconds per second of wall time, over the cores it
  may run on, smoothed over a few seconds (`cpu_window_s`);
- queue age: the oldest item waiting in any of its media queues (audio for the
  VAD, speech for Whisper, frames for the detector...), over `queue_age_full_s`:
  a stage that is behind makes the machine full whatever the CPU says.

The load is the larger of the two (0 idle, 1 full). A new connection is
admitted below `admit_below` (LiveKit admits below 0.7), and below
`max_sessions` calls when that is set. A candidate rejoining an interview
that already started is always admitted: refusing them would break an
interview that was promised. Past capacity the answer is "busy, retry in
`retry_after_s`", not a degraded interview for everyone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AdmissionSettings", "LoadMeter", "Refusal"]


@dataclass(frozen=True)
class AdmissionSettings:
    admit_below: float = 0.7
    max_sessions: int | None = None
    cpu_window_s: float = 3.0
    queue_age_full_s: float = 2.0
    retry_after_s: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.admit_below <= 1.0:
            raise ValueError(f"admit_below must be in (0, 1], got {self.admit_below!r}")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions!r}")


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after_s: int


class LoadMeter:
    """Feed it CPU-time readings and queue ages; it says whether to admit."""

    def __init__(self, settings: AdmissionSettings, cores: int) -> None:
        self.settings = settings
        self._cores = max(1, cores)
        self._last: tuple[float, float] | None = None  # (wall, cpu seconds)
        self.cpu = 0.0
        self.queue_age_s = 0.0
        self.refused = 0

    @property
    def load(self) -> float:
        return max(self.cpu, self.queue_age_s / self.settings.queue_age_full_s)

    def sample(self, wall: float, cpu_seconds: float, queue_age_s: float) -> None:
        """One reading: a monotonic wall clock, the process's CPU time, the
        oldest queued item's age."""
        self.queue_age_s = queue_age_s
        if self._last is not None:
            dt = wall - self._last[0]
            if dt > 0:
                busy = max(0.0, (cpu_seconds - self._last[1]) / dt / self._cores)
                # An exponential moving average with time constant cpu_window_s.
                alpha = 1.0 - math.exp(-dt / self.settings.cpu_window_s)
                self.cpu += alpha * (busy - self.cpu)
        self._last = (wall, cpu_seconds)

    def refusal(self, calls: int, *, continuing: bool, count: bool = True) -> Refusal | None:
        """None to admit a new call now; else why not and when to retry.
        `count=False` asks without counting a refusal (health checks)."""
        if continuing:
            return None
        s = self.settings
        reason = None
        if s.max_sessions is not None and calls >= s.max_sessions:
            reason = f"the server holds its most interviews ({s.max_sessions})"
        elif self.load >= s.admit_below:
            reason = f"the server is busy (load {self.load:.2f})"
        if reason is None:
            return None
        self.refused += count
        return Refusal(reason, s.retry_after_s)
