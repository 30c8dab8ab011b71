"""What the end-to-end drivers share: checks written as JSON, steps that
fail without ending the run, polling.

A driver (tests/browser/driver.py, tests/topology/driver.py) runs in its own
namespaces and writes `{"checks": {name: {"ok", "detail"}}, "timings": {...}}`
to a file; its pytest test asserts each check, so every step's result is
visible even when a later one fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["Checks", "guarded", "poll", "run_checks"]


class Checks:
    """What the run found, check by check, written as JSON at the end."""

    def __init__(self, out: Path) -> None:
        self._out = out
        self.checks: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()

    def record(self, name: str, ok: bool, detail: str) -> bool:
        self.checks[name] = {"ok": ok, "detail": detail}
        print(f"[{time.monotonic() - self._t0:6.1f}s] {'PASS' if ok else 'FAIL'} {name}: {detail}",
              flush=True)
        return ok

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self._t0, 2)

    def write(self) -> None:
        self._out.write_text(json.dumps({"checks": self.checks, "timings": self.timings}, indent=2))


async def guarded(checks: Checks, name: str, step: Awaitable[Any]) -> Any:
    """Run a step; an exception becomes a failed check rather than ending the run."""
    try:
        return await step
    except Exception as exc:  # noqa: BLE001 - every failure is a result to report
        checks.record(name, False, f"{type(exc).__name__}: {exc}")
        return None


async def poll(probe: Callable[[], Awaitable[Any]], timeout_s: float, every_s: float = 0.25) -> Any:
    """The first truthy result of `probe`, or its last result after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(every_s)


async def run_checks(
    out: Path, timeout_s: float, body: Callable[[Checks], Awaitable[None]]
) -> None:
    """Run `body` within `timeout_s`; whatever happens, its checks are written to `out`."""
    checks = Checks(out)
    try:
        await asyncio.wait_for(body(checks), timeout_s)
    except Exception as exc:  # noqa: BLE001 - written to the results, which the test asserts
        checks.record("run", False, f"{type(exc).__name__}: {exc}")
    finally:
        checks.mark("done")
        checks.write()
