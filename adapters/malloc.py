"""Keep glibc's malloc from growing an arena per thread.

glibc gives a new thread's first allocation a fresh malloc arena until there
are 8 per core, and an arena's freed memory is seldom returned to the system.
A media server starts threads all day (peer connections, recorders,
executors), so without a limit its RSS climbs in steps for the first quarter
of an hour of load and then stays at the higher level (BENCHMARKS.md, soak).
Two arenas keep it flat at no measurable cost on this workload.

`server.main()` calls `limit_arenas` first thing. It sits with the adapters
because it is the one piece of process start-up that calls into the C
library (through ctypes), as the others call into their SDKs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's <malloc.h>
DEFAULT_ARENAS = 2


def limit_arenas(env: Mapping[str, str] | None = None, arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas` for threads started from now on.

    Call it first thing in the process, before threads start (glibc fixes its
    limit once more than 8 arenas exist). An explicit `MALLOC_ARENA_MAX` or
    `glibc.malloc.arena_max` tunable in the environment wins (glibc has
    already read it); so does a non-glibc C library, where there is nothing
    to do. Returns whether the limit was set here.
    """
    env = os.environ if env is None else env
    if env.get("MALLOC_ARENA_MAX", "").strip() or "arena_max" in env.get("GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("mallopt(M_ARENA_MAX, %d) failed; RSS may grow with threads", arenas)
        return False
    return True
