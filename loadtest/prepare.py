"""Build, once, the pre-encoded media the simulated candidates send.

Candidates must be cheap, so nothing is decoded or encoded while a load test
runs: this module encodes real speech and real photos into WebM files
(Opus and VP8, the codecs a browser sends) in a cache directory, with a
`manifest.json` that records what each file holds. Building is skipped when
the manifest already matches the sources.

* speech: every `tests/data/speech/*.wav` that has a `.txt` transcript, as
  48 kHz mono Opus in 20 ms packets (one packet per RTP frame), plus the
  voiced span of the clip (where speech starts and ends), so latencies can be
  measured from the last voiced packet sent;
* silence: one second of digital silence, sent between answers, since a
  real microphone never stops sending and the server's VAD needs the pause;
* video: each scenario photo letterboxed into 640x480 at 10 fps, slowly
  panning with light sensor noise (a still picture would flatter the
  server's VP8 decoder), a keyframe every 2 s, looped seamlessly.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import sys
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_CACHE",
    "PHOTOS",
    "PHOTOS_DIR",
    "SPEECH_DIR",
    "MediaSources",
    "SpeechInfo",
    "ensure_media",
    "main",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "artifacts" / "loadtest-media"
SPEECH_DIR = REPO / "tests" / "data" / "speech"
PHOTOS_DIR = REPO.parent / "shared" / "testdata" / "photos"
MANIFEST_VERSION = 2

# The scenario photos, by the role they play.
PHOTOS = {
    "one_person": "coco_000000000436_1person_eating_closeup.jpg",
    "two_persons": "coco_000000000165_2persons_indoor.jpg",
    "phone": "coco_000000005060_1person_mirror_selfie_phone.jpg",
    "no_person": "coco_000000516008_laptop_desk_noperson.jpg",
}

RATE = 48_000
PACKET_SAMPLES = 960  # 20 ms
VIDEO_SIZE = (640, 480)
VIDEO_FPS = 10
VIDEO_FRAMES = 40  # a 4 s loop
VIDEO_GOP = 20
VIDEO_BITRATE = 800_000
PAN_PX = 6  # radius of the slow circular pan
NOISE_SIGMA = 2.0
# Without a `.lab` alignment, a 20 ms frame counts as voiced above this RMS,
# in dB below the clip's loudest frame (LibriVox breath and room noise sit near -30).
VOICED_DB = -25.0


@dataclass(frozen=True)
class MediaSources:
    speech_dir: Path = SPEECH_DIR
    photos_dir: Path = PHOTOS_DIR


@dataclass(frozen=True)
class SpeechInfo:
    name: str
    file: str  # relative to the cache directory
    text: str
    duration_s: float
    voiced_start_s: float
    voiced_end_s: float


def ensure_media(cache: Path = DEFAULT_CACHE, sources: MediaSources = MediaSources()) -> Path:
    """The manifest of an up-to-date cache, building what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    # Two runs starting at once (a test and a benchmark) build it once.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_locked(cache, sources)


def _ensure_locked(cache: Path, sources: MediaSources) -> Path:
    manifest_path = cache / "manifest.json"
    fingerprint = _fingerprint(sources)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return manifest_path
    manifest = _build(cache, sources)
    manifest["fingerprint"] = fingerprint
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return manifest_path


def _fingerprint(sources: MediaSources) -> str:
    """Changes when a source file, or how files are encoded, changes."""
    digest = hashlib.sha256(f"v{MANIFEST_VERSION}".encode())
    for path in sorted(_speech_wavs(sources.speech_dir)) + [
        sources.photos_dir / name for name in PHOTOS.values()
    ]:
        for part in (path, path.with_suffix(".txt"), path.with_suffix(".lab")):
            if part.is_file():
                digest.update(part.name.encode())
                digest.update(hashlib.sha256(part.read_bytes()).digest())
    return digest.hexdigest()


def _speech_wavs(speech_dir: Path) -> list[Path]:
    wavs = [p for p in speech_dir.glob("*.wav") if p.with_suffix(".txt").is_file()]
    if not wavs:
        raise FileNotFoundError(f"no speech clips with .txt transcripts in {speech_dir}")
    return wavs


def _build(cache: Path, sources: MediaSources) -> dict[str, object]:
    (cache / "speech").mkdir(parents=True, exist_ok=True)
    (cache / "video").mkdir(parents=True, exist_ok=True)
    speech = [_encode_speech(wav, cache) for wav in sorted(_speech_wavs(sources.speech_dir))]
    _encode_opus(np.zeros(RATE, np.int16), cache / "silence.webm")
    video = {}
    for role, name in PHOTOS.items():
        photo = sources.photos_dir / name
        if not photo.is_file():
            raise FileNotFoundError(f"photo for {role!r} not found: {photo}")
        _encode_video(photo, cache / "video" / f"{role}.webm")
        video[role] = {"file": f"video/{role}.webm", "photo": name, "fps": VIDEO_FPS,
                       "frames": VIDEO_FRAMES}
    return {
        "version": MANIFEST_VERSION,
        "speech": [asdict(s) for s in speech],
        "silence": "silence.webm",
        "video": video,
    }


# -- speech ---------------------------------------------------------------------


def _encode_speech(wav: Path, cache: Path) -> SpeechInfo:
    pcm, rate = _read_wav(wav)
    pcm48 = _resample(pcm, rate)
    start, end = _aligned_span(wav.with_suffix(".lab")) or voiced_span(pcm48, RATE)
    relative = f"speech/{wav.stem}.webm"
    _encode_opus(pcm48, cache / relative)
    return SpeechInfo(
        name=wav.stem,
        file=relative,
        text=wav.with_suffix(".txt").read_text().strip(),
        duration_s=round(len(pcm48) / RATE, 3),
        voiced_start_s=round(start, 3),
        voiced_end_s=round(end, 3),
    )


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


def _resample(pcm: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return pcm
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)


def _aligned_span(lab: Path) -> tuple[float, float] | None:
    """(start, end) of speech from a `.lab` alignment ("time time label" lines)."""
    if not lab.is_file():
        return None
    marks = [(float(t), label) for t, _, label in (line.split() for line in lab.read_text().splitlines())
             if label in ("speech", "silence")]
    starts = [t for t, label in marks if label == "speech"]
    if not starts:
        return None
    ends = [t for t, label in marks if label == "silence" and t > starts[-1]]
    return starts[0], ends[0] if ends else marks[-1][0]


def voiced_span(pcm: np.ndarray, rate: int, frame_s: float = 0.02) -> tuple[float, float]:
    """(start, end) in seconds of the frames louder than `VOICED_DB` below the peak."""
    size = int(rate * frame_s)
    count = len(pcm) // size
    if count == 0:
        return 0.0, 0.0
    frames = pcm[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9
    voiced = np.flatnonzero(20 * np.log10(rms / rms.max()) > VOICED_DB)
    return float(voiced[0] * frame_s), float((voiced[-1] + 1) * frame_s)


def _encode_opus(pcm: np.ndarray, path: Path) -> None:
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=RATE, layout="mono")
        stream.bit_rate = 32_000
        stream.options = {"application": "voip", "frame_duration": "20"}
        for start in range(0, len(pcm), PACKET_SAMPLES):
            chunk = np.zeros(PACKET_SAMPLES, np.int16)
            piece = pcm[start:start + PACKET_SAMPLES]
            chunk[: len(piece)] = piece
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


# -- video ----------------------------------------------------------------------


def _encode_video(photo: Path, path: Path) -> None:
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=VIDEO_FPS)
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = VIDEO_BITRATE
        stream.codec_context.gop_size = VIDEO_GOP
        # As a browser encodes: no look-ahead, no hidden alt-ref frames.
        stream.options = {"deadline": "good", "cpu-used": "4", "lag-in-frames": "0",
                          "auto-alt-ref": "0", "keyint_min": str(VIDEO_GOP)}
        for index, rgb in enumerate(_camera_frames(photo)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            frame.pict_type = av.video.frame.PictureType.I if index % VIDEO_GOP == 0 else (
                av.video.frame.PictureType.NONE)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _camera_frames(photo: Path) -> Iterator[np.ndarray]:
    """The photo as a camera sees it: a slow circular pan with sensor noise."""
    width, height = VIDEO_SIZE
    margin = 2 * PAN_PX
    canvas = _letterbox(photo, (width + margin, height + margin))
    rng = np.random.default_rng(7)
    for index in range(VIDEO_FRAMES):
        angle = 2 * math.pi * index / VIDEO_FRAMES
        x = PAN_PX + round(PAN_PX * math.cos(angle))
        y = PAN_PX + round(PAN_PX * math.sin(angle))
        view = canvas[y:y + height, x:x + width].astype(np.float32)
        view += rng.normal(0, NOISE_SIGMA, view.shape).astype(np.float32)
        yield np.clip(view, 0, 255).astype(np.uint8)


def _letterbox(photo: Path, size: tuple[int, int]) -> np.ndarray:
    image = Image.open(photo).convert("RGB")
    image.thumbnail(size)
    canvas = Image.new("RGB", size)
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return np.asarray(canvas)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE, help="cache directory")
    parser.add_argument("--speech-dir", type=Path, default=SPEECH_DIR)
    parser.add_argument("--photos-dir", type=Path, default=PHOTOS_DIR)
    args = parser.parse_args(argv)
    try:
        manifest = ensure_media(args.out, MediaSources(args.speech_dir, args.photos_dir))
    except (FileNotFoundError, ValueError) as exc:
        print(f"prepare_loadtest_media: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0
