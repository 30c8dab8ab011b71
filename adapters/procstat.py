"""CPU time of a process or thread, read from Linux's /proc."""

from __future__ import annotations

import os

__all__ = ["process_cpu_seconds", "thread_cpu_seconds", "thread_ids"]


def _cpu_seconds(stat_path: str) -> float:
    """User + system CPU seconds in a /proc `stat` file (0 where unreadable: gone)."""
    try:
        with open(stat_path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of process `pid` (also readable while it is an unreaped zombie)."""
    return _cpu_seconds(f"/proc/{pid}/stat")


def thread_cpu_seconds(tid: int) -> float:
    """CPU seconds of thread `tid` of this process."""
    return _cpu_seconds(f"/proc/self/task/{tid}/stat")


def thread_ids() -> set[int]:
    """This process's threads (empty where /proc is missing)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()
