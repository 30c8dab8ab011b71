"""glibc malloc arenas: the server caps them so RSS does not climb with threads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from adapters.malloc import limit_arenas
from tests.conftest import REPO

# 32 threads contend on malloc at once; then glibc's malloc_info() lists one
# <heap> per arena. Prints the arena count.
PROBE = r"""
import ctypes, ctypes.util, sys, tempfile, threading
from adapters.malloc import limit_arenas
if sys.argv[1] == "limit":
    assert limit_arenas()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(32)
def churn():
    start.wait()
    for _ in range(300):
        for p in [libc.malloc(4096) for _ in range(20)]:
            libc.free(p)
threads = [threading.Thread(target=churn) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(open(out.name).read().count("<heap nr="))
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are a glibc feature")
def test_limit_keeps_threads_to_two_arenas() -> None:
    assert _arenas("none") > 2  # glibc's own limit is 8 per core
    assert _arenas("limit") <= 2


def test_explicit_malloc_arena_max_wins() -> None:
    assert limit_arenas({"MALLOC_ARENA_MAX": "4"}) is False
    assert limit_arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False

