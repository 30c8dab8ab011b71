"""The pre-encoded media a worker's candidates share, held in memory.

Each worker process demuxes the cache once (`MediaLibrary.load`); every
candidate in it then sends the same immutable packet payloads, so a peer
costs no decoding, no encoding and no file access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av

from testing.tracks import EncodedClip, SpeechClip

__all__ = ["EncodedClip", "MediaLibrary", "SpeechClip"]

AUDIO_FRAME_S = 0.02


@dataclass(frozen=True)
class MediaLibrary:
    speech: tuple[SpeechClip, ...]
    silence: EncodedClip
    video: dict[str, EncodedClip]

    @classmethod
    def load(cls, manifest_path: Path) -> MediaLibrary:
        manifest = json.loads(manifest_path.read_text())
        root = manifest_path.parent
        speech = tuple(
            SpeechClip(
                name=entry["name"],
                text=entry["text"],
                clip=_demux(root / entry["file"], "audio"),
                voiced_start_s=entry["voiced_start_s"],
                voiced_end_s=entry["voiced_end_s"],
            )
            for entry in manifest["speech"]
        )
        video = {role: _demux(root / entry["file"], "video")
                 for role, entry in manifest["video"].items()}
        return cls(speech, _demux(root / manifest["silence"], "audio"), video)

    def clip(self, index: int) -> SpeechClip:
        """The answers cycle through the clips."""
        return self.speech[index % len(self.speech)]


def _demux(path: Path, kind: str) -> EncodedClip:
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if kind == "video" else container.streams.audio[0]
        rate = container.streams.video[0].average_rate if kind == "video" else None
        packets = [p for p in container.demux(stream) if p.size]
        payloads = tuple(bytes(p) for p in packets)
        keyframes = tuple(bool(p.is_keyframe) for p in packets)
    if not payloads:
        raise ValueError(f"{path} holds no {kind} packets")
    if kind == "video":
        if not keyframes[0] or not rate:
            raise ValueError(f"{path} does not start with a keyframe at a known frame rate")
        return EncodedClip(payloads, keyframes, 1 / float(rate))
    first = packets[0]
    frame_s = float((first.duration or 0) * first.time_base) if first.time_base else 0.0
    if abs(frame_s - AUDIO_FRAME_S) > 1e-6:
        # One packet per 20 ms RTP frame is what the tracks pace by.
        raise ValueError(f"{path}: expected 20 ms Opus packets, found {frame_s * 1000:g} ms")
    return EncodedClip(payloads, keyframes, AUDIO_FRAME_S)
