"""A resume's text, extracted by pypdf in a child process within limits.

pypdf is pure Python: a crafted PDF (a page of ten million text operators,
a deep object graph) holds the GIL for minutes, and the media of every live
session stalls with it. So the extraction runs in a child process
(`python -m api.resume_text`) with a wall-clock limit and an address-space
limit (`RLIMIT_AS`, set by the child before it reads the PDF), a few at a
time. A PDF the child cannot read within them gives "" (the session is still
created and the PDF kept, as for any unreadable resume: the interviewer asks
about it instead), and the reason is logged.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ResumeParser", "ResumeLimits"]

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class ResumeLimits:
    timeout_s: float = 10.0
    memory_bytes: int = 512 * 1024 * 1024
    parallel: int = 2


class ResumeParser:
    """Runs the extraction in child processes, at most `limits.parallel` at once."""

    def __init__(self, limits: ResumeLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.parallel)

    async def text_of(self, pdf: bytes) -> str:
        """The resume's text, or "" when it cannot be read within the limits."""
        async with self._slots:
            return await self._run_child(pdf)

    async def _run_child(self, pdf: bytes) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "api.resume_text", str(self.limits.memory_bytes),
            cwd=_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(pdf), self.limits.timeout_s)
        except TimeoutError:
            log.warning("resume PDF (%d bytes) not parsed within %.1f s; no resume text",
                        len(pdf), self.limits.timeout_s)
            return ""
        finally:
            # Timed out, or the request was cancelled: the child must not outlive it.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        tail = err.decode("utf-8", "replace")[-_STDERR_TAIL:].strip()
        if proc.returncode != 0:
            log.warning("resume parser exited with status %s (%d-byte PDF); no resume text: %s",
                        proc.returncode, len(pdf), tail)
            return ""
        if tail:
            log.info("resume parser: %s", tail)
        return out.decode("utf-8", "replace")


def _child_main(argv: list[str]) -> None:
    """In the child: limit memory, then read the PDF on stdin, the text to stdout."""
    memory = int(argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # The parent kills a slow child; this is the backstop if the parent died.
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
    pdf = sys.stdin.buffer.read()
    from adapters.resume import extract_resume_text

    text = extract_resume_text(pdf)
    # No surrogates or NUL characters may reach the prompt or a log line.
    sys.stdout.buffer.write(text.replace("\x00", " ").encode("utf-8", "replace"))


if __name__ == "__main__":
    _child_main(sys.argv)
