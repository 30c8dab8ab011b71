"""Piper out of process: a pool of `adapters.piper_worker` programs behind `Synthesizer`.

piper-tts is GPL-3.0-or-later; this server is Apache-2.0 and never imports
it. `PiperPool` starts `processes` workers (`sys.executable -m
adapters.piper_worker`) and speaks the worker's frame protocol (described
there) over their pipes. `synthesize` still blocks, one sentence per call,
from the media layer's `tts` executor: with as many threads as workers,
each call borrows an idle worker.

A worker that dies or stalls mid-sentence is killed and restarted, and the
sentence is tried once more on the new one; if that fails too, espeak-ng
(when installed) says that sentence, so the interview goes on. A worker
that dies while idle is restarted at once by the thread waiting on its
process, so the next sentence does not wait for a start (seconds).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from adapters.piper_worker import HEADER, MAX_FRAME
from adapters.procstat import process_cpu_seconds
from engine.arrays import Int16Array
from engine.ports import Synthesizer, SynthesizerUnavailable
from engine.resample import resample

__all__ = ["PiperPool", "WorkerFailed"]

logger = logging.getLogger(__name__)


_START_TIMEOUT_S = 60.0
_SENTENCE_TIMEOUT_S = 20.0
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class WorkerFailed(RuntimeError):
    """A worker died, stalled, or broke the protocol."""


class _Worker:
    """One worker program and its pipes; used by one thread at a time."""

    def __init__(self, command: list[str], on_exit: Callable[[_Worker, int], None]) -> None:
        self._command = command
        self._on_exit = on_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self.sample_rate = 0
        self.busy = False  # a request is on its way (tests kill it then)
        self.exited_cpu_s = 0.0  # CPU time of this worker's programs that exited
        self.lock = threading.Lock()  # held while speaking or restarting

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        # Run from the project root so `-m adapters.piper_worker` resolves
        # even when the server was started from elsewhere.
        self._proc = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=_PROJECT_ROOT, bufsize=0, close_fds=True,
        )
        kind, payload = self._read_frame(time.monotonic() + _START_TIMEOUT_S)
        if kind != b"R":
            raise WorkerFailed(f"worker sent {kind!r} instead of ready")
        self.sample_rate = int(json.loads(payload)["sample_rate"])
        proc = self._proc
        threading.Thread(target=self._watch, args=(proc,), name=f"piper-watch-{proc.pid}",
                         daemon=True).start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            # Wait for the exit without reaping it: the zombie's CPU times
            # are still readable, so a restart keeps its CPU counted.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            self.exited_cpu_s += process_cpu_seconds(proc.pid)
        except (ChildProcessError, OSError):
            pass  # reaped elsewhere already
        proc.wait()
        self._on_exit(self, proc.pid)

    @property
    def cpu_seconds(self) -> float:
        """CPU time of this worker's programs so far, the exited ones included."""
        live = self.pid
        return self.exited_cpu_s + (0.0 if live is None else process_cpu_seconds(live))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # already broken: the worker died
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def speak(self, text: str) -> Int16Array:
        """Send one request and gather its PCM; raises `WorkerFailed`."""
        if self._proc is None or self._proc.stdin is None:
            raise WorkerFailed("worker is not running")
        payload = text.encode("utf-8")
        self.busy = True
        try:
            self._proc.stdin.write(HEADER.pack(b"T", len(payload)) + payload)
            deadline = time.monotonic() + _SENTENCE_TIMEOUT_S
            pieces: list[Int16Array] = []
            while True:
                kind, data = self._read_frame(deadline)
                if kind == b"E":
                    break
                if kind == b"X":
                    raise WorkerFailed(data.decode("utf-8", "replace"))
                pieces.append(np.frombuffer(data, dtype="<i2").astype(np.int16))
        except OSError as exc:  # BrokenPipeError: it died before reading
            raise WorkerFailed(f"worker pipe failed: {exc}") from exc
        finally:
            self.busy = False
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def _read_frame(self, deadline: float) -> tuple[bytes, bytes]:
        kind, length = HEADER.unpack(self._read_exact(HEADER.size, deadline))
        if length > MAX_FRAME:
            raise WorkerFailed(f"frame of {length} bytes is over the limit")
        return kind, self._read_exact(length, deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = bytearray()
        while len(buffer) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerFailed("worker stalled")
            data = os.read(fd, size - len(buffer))
            if not data:
                raise WorkerFailed(f"worker exited ({self._proc.poll()})")
            buffer += data
        return bytes(buffer)


class PiperPool:
    """`Synthesizer` over `processes` Piper worker programs; restarts them as needed."""

    def __init__(
        self,
        processes: int = 1,
        fallback: Synthesizer | None = None,
        worker_args: tuple[str, ...] = (),
    ) -> None:
        """Start the workers (in parallel) and wait until each has loaded its voice."""
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        command = [sys.executable, "-m", "adapters.piper_worker", *worker_args]
        self._workers = [_Worker(command, self._exited) for _ in range(processes)]
        self._closed = False
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._fallback = fallback
        self._lock = threading.Lock()
        self.restarts = 0
        self.fallbacks = 0
        started = time.perf_counter()
        with ThreadPoolExecutor(processes) as starter:
            failures = [f.exception() for f in [starter.submit(w.start) for w in self._workers]]
        if any(failures):
            self.close()
            raise SynthesizerUnavailable(f"Piper worker failed to start: {failures}")
        self.sample_rate: int = self._workers[0].sample_rate
        self.voice_name = "piper:worker"
        for worker in self._workers:
            self._idle.put(worker)
        logger.info("started %d Piper worker(s) in %.2fs", processes, time.perf_counter() - started)

    @property
    def cpu_seconds(self) -> float:
        """CPU time the Piper worker programs spent, restarted ones included."""
        return sum(w.cpu_seconds for w in self._workers)

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    @property
    def busy_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.busy and w.pid is not None]

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text` on an idle worker; blocks (see the module doc for failures)."""
        return self.speak(text)[0]

    def speak(self, text: str) -> tuple[Int16Array, str]:
        """(PCM, the voice that said it): Piper's, or espeak-ng's after two failures."""
        if not text.strip():
            return np.zeros(0, np.int16), self.voice_name
        worker = self._idle.get()
        try:
            with worker.lock:
                return self._speak_on(worker, text)
        finally:
            self._idle.put(worker)

    def _speak_on(self, worker: _Worker, text: str) -> tuple[Int16Array, str]:
        for attempt in (1, 2):
            try:
                return worker.speak(text), self.voice_name
            except WorkerFailed as exc:
                logger.warning("Piper worker %s failed (attempt %d): %s", worker.pid, attempt, exc)
                if not self._restart(worker):
                    break
        return self._fall_back(text)

    def _exited(self, worker: _Worker, pid: int) -> None:
        """A worker's process ended: restart it now if it was idle, not at the next sentence."""
        if self._closed or worker.pid != pid:
            return  # stopped on purpose, or already replaced by a speaking thread
        with worker.lock:
            if not self._closed and worker.pid == pid:
                logger.warning("Piper worker %s exited while idle; restarting it", pid)
                self._restart(worker)

    def _restart(self, worker: _Worker) -> bool:
        worker.stop()
        if self._closed:
            return False  # closed meanwhile: no program nobody would stop
        try:
            worker.start()
        except (WorkerFailed, OSError, ValueError, KeyError):
            logger.exception("Piper worker failed to restart")
            worker.stop()
            return False
        with self._lock:
            self.restarts += 1
        return True

    def _fall_back(self, text: str) -> tuple[Int16Array, str]:
        if self._fallback is None:
            raise WorkerFailed("Piper failed twice and there is no fallback voice")
        with self._lock:
            self.fallbacks += 1
        pcm = self._fallback.synthesize(text)
        if self._fallback.sample_rate != self.sample_rate:
            pcm = resample(pcm, self._fallback.sample_rate, self.sample_rate)
        return pcm, "fallback"

    def close(self) -> None:
        """Stop every worker; idempotent.

        Workers also exit on their own when this process dies (their stdin
        closes). A call after `close` starts its worker again, so models
        handed to several apps in a test keep working.
        """
        self._closed = True
        for worker in self._workers:
            worker.stop()

