"""Streaming voice activity detection on Silero VAD v6.

The network sits behind `engine.ports.VadModel` (the ONNX model that
faster-whisper bundles: `adapters.silero.SileroVadModel`). It is stateless
across calls (the LSTM state is passed in and out), so one model serves
every stream; each `VoiceActivityDetector` carries its own RNN state,
context and state machine.

Time is "stream seconds": samples fed so far divided by 16 000. The
detector never reads a clock, so it behaves the same on a live call, a
file, or a test that feeds faster than real time.

State machine::

    quiet --p>=threshold--> starting --enough voiced--> speaking
    starting --long silence--> quiet          (too short: dropped)
    speaking --p<neg_threshold--> stopping --p>=threshold--> speaking
    stopping --post_roll of silence--> stopping   (SpeechPaused, once)
    stopping --end_silence--> quiet           (SpeechEnded)
    stopping --end_paused(end), once paused--> quiet   (SpeechEnded: the listener took the turn)

While speaking, a long utterance is cut into pieces (`SpeechCut`) so the
transcript of its last piece does not wait on everything said before it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.arrays import Float32Array
from engine.ports import VadModel

__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "SpeechCut",
    "SpeechEnded",
    "SpeechPaused",
    "SpeechSegment",
    "SpeechStarted",
    "VadEvent",
    "VadSettings",
    "VadState",
    "VoiceActivityDetector",
    "to_float32",
]

SAMPLE_RATE = 16_000
WINDOW_SAMPLES = 512  # 32 ms: the only window size v6 takes at 16 kHz
CONTEXT_SAMPLES = 64  # v6 wants the previous window's tail prepended
_STATE_SHAPE = (1, 1, 128)


def to_float32(pcm: npt.NDArray[np.int16] | Float32Array) -> Float32Array:
    """Mono 16 kHz PCM as float32 in [-1, 1); int16 is scaled, float32 kept."""
    if pcm.ndim != 1:
        raise ValueError(f"expected mono 1-D PCM, got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / np.float32(32768.0)
    if pcm.dtype == np.float32:
        return pcm  # type: ignore[return-value]
    raise TypeError(f"expected int16 or float32 PCM, got {pcm.dtype}")


@dataclass(frozen=True)
class VadSettings:
    """Thresholds and durations of the speech state machine.

    `split_after_ms`: once the current piece is this long, cut it at the
    quietest window of the next pause. `max_segment_ms`: cut at the
    quietest window since `split_after_ms` even if no pause came.
    """

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 250
    end_silence_ms: int = 600
    pre_roll_ms: int = 300
    post_roll_ms: int = 200
    split_after_ms: int = 6_000
    max_segment_ms: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ValueError(
                "need 0 < neg_threshold <= threshold < 1, got "
                f"neg_threshold={self.neg_threshold}, threshold={self.threshold}"
            )
        for name in ("min_speech_ms", "end_silence_ms", "split_after_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("pre_roll_ms", "post_roll_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_segment_ms <= self.split_after_ms:
            raise ValueError(
                f"max_segment_ms ({self.max_segment_ms}) must exceed "
                f"split_after_ms ({self.split_after_ms})"
            )

    def windows(self, ms: int) -> int:
        """How many 32 ms windows cover `ms` milliseconds (rounded up)."""
        return -(-ms * SAMPLE_RATE // (1000 * WINDOW_SAMPLES))


class VadState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class SpeechStarted:
    """Speech confirmed; `at` is the start of its first voiced window."""

    at: float


@dataclass(frozen=True)
class SpeechSegment:
    """A committed piece of speech, in stream seconds.

    `audio` spans [start, end) and includes the pre-roll (first piece) and
    post-roll (last piece). `last_voiced_at` is the end of the last window
    at or above the threshold inside this piece.
    """

    audio: Float32Array = field(repr=False)
    start: float
    end: float
    last_voiced_at: float


@dataclass(frozen=True)
class SpeechCut(SpeechSegment):
    """A piece of a long utterance that is still going on."""


@dataclass(frozen=True)
class SpeechEnded(SpeechSegment):
    """The last piece of an utterance: the speaker stopped."""


@dataclass(frozen=True)
class SpeechPaused:
    """The speaker has been silent for the post-roll: the utterance so far.

    Not committed: the speaker may go on. If they do not, the `SpeechEnded`
    that follows holds the same audio (same `start` and `end`), so work
    started on this one (a speculative transcript) can stand for it.
    """

    audio: Float32Array = field(repr=False)
    start: float
    end: float
    last_voiced_at: float


VadEvent = SpeechStarted | SpeechCut | SpeechEnded | SpeechPaused


class _SileroStream:
    """One stream's RNN state and 64-sample context."""

    def __init__(self, model: VadModel) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def probabilities(self, windows: Float32Array) -> Float32Array:
        """Probabilities of [n, 512] consecutive windows, in one model call."""
        tails = windows[:, -CONTEXT_SAMPLES:]
        contexts = np.concatenate([self._context[None, :], tails[:-1]], axis=0)
        inputs = np.ascontiguousarray(np.concatenate([contexts, windows], axis=1))
        probs, self._h, self._c = self._model.run(inputs, self._h, self._c)
        self._context = tails[-1].copy()
        return probs


def _seconds(window_index: int) -> float:
    return window_index * WINDOW_SAMPLES / SAMPLE_RATE


class _Segment:
    """Windows of the piece being built, with their probabilities.

    Positions are window indices in the stream, so times stay exact
    multiples of 32 ms however long the stream runs.
    """

    def __init__(self, first: int) -> None:
        self.first = first
        self.windows: list[Float32Array] = []
        self.probs: list[float] = []

    def append(self, window: Float32Array, prob: float) -> None:
        self.windows.append(window)
        self.probs.append(prob)

    @property
    def start(self) -> float:
        return _seconds(self.first)

    def last_voiced_index(self, upto: int, threshold: float) -> int | None:
        for i in range(min(upto, len(self.probs) - 1), -1, -1):
            if self.probs[i] >= threshold:
                return i
        return None

    def take(self, count: int, threshold: float) -> tuple[Float32Array, float, float, float]:
        """Remove the first `count` windows: (audio, start, end, last_voiced_at).

        With no voiced window among them, `last_voiced_at` is `start`.
        """
        voiced = self.last_voiced_index(count - 1, threshold)
        last_voiced = _seconds(self.first + (voiced + 1 if voiced is not None else 0))
        start, end = self.start, _seconds(self.first + count)
        audio = np.concatenate(self.windows[:count]) if count else np.zeros(0, np.float32)
        del self.windows[:count], self.probs[:count]
        self.first += count
        return audio, start, end, last_voiced


class VoiceActivityDetector:
    """Per-stream VAD: feed PCM of any chunk size, get `VadEvent`s back.

    Not thread-safe: one stream, one caller. Cost is one model call per
    `feed` that completes at least one 32 ms window.
    """

    def __init__(self, model: VadModel, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        self._silero = _SileroStream(model)
        s = self.settings
        self._pre_roll: deque[tuple[Float32Array, float]] = deque(
            maxlen=s.windows(s.pre_roll_ms)
        )
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows_seen = 0
        self._last_voiced_end: float | None = None
        self._paused_sent = False
        self._state = VadState.QUIET
        self._segment = _Segment(0)
        self._voiced_windows = 0
        # Index in the segment of the first window after the last voiced one
        # (starting) or of the first window below neg_threshold (stopping).
        self._pause_start = 0

    @property
    def state(self) -> VadState:
        """Where the state machine is now."""
        return self._state

    @property
    def stream_time(self) -> float:
        """Seconds of audio fed so far, including a partial window."""
        return (self._windows_seen * WINDOW_SAMPLES + len(self._pending)) / SAMPLE_RATE

    @property
    def last_voiced_at(self) -> float | None:
        """End of the last voiced window of confirmed speech (None: none yet)."""
        return self._last_voiced_end

    @property
    def paused(self) -> bool:
        """The speaker is in the pause its last `SpeechPaused` reported (no voice since)."""
        return self._state is VadState.STOPPING and self._paused_sent

    @property
    def windows_seen(self) -> int:
        """Number of 32 ms windows run through the model."""
        return self._windows_seen

    def feed(self, pcm: npt.NDArray[np.int16] | Float32Array) -> list[VadEvent]:
        """Consume mono 16 kHz PCM (int16 or float32); O(len(pcm))."""
        samples = to_float32(pcm)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        count = len(samples) // WINDOW_SAMPLES
        self._pending = samples[count * WINDOW_SAMPLES :].copy()
        if count == 0:
            return []
        windows = samples[: count * WINDOW_SAMPLES].reshape(count, WINDOW_SAMPLES)
        probs = self._silero.probabilities(windows)
        events: list[VadEvent] = []
        for window, prob in zip(windows, probs.tolist()):
            events.extend(self._step(window.copy(), prob))
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close a confirmed utterance, drop an unconfirmed one."""
        events: list[VadEvent] = []
        if self._state in (VadState.SPEAKING, VadState.STOPPING):
            events.append(self._end_utterance())
        self._to_quiet()
        return events

    def end_paused(self, end: float) -> list[VadEvent]:
        """End the utterance now if it is the one paused with audio up to `end`.

        For a listener that has decided the speaker is done (the end of the
        turn) before `end_silence_ms` ran out: the `SpeechEnded` holds the
        same audio as that `SpeechPaused`. Nothing happens if the speaker
        went on since, or the utterance has already ended.
        """
        if self._state is not VadState.STOPPING or not self._paused_sent:
            return []
        s = self.settings
        count = len(self._segment.windows)
        voiced = self._segment.last_voiced_index(count - 1, s.threshold)
        keep = (voiced + 1 if voiced is not None else 0) + s.windows(s.post_roll_ms)
        if abs(_seconds(self._segment.first + keep) - end) > 1e-6:
            return []
        event = self._end_utterance()
        self._to_quiet()
        return [event]

    def reset(self) -> None:
        """Forget everything, as if the stream started anew at time 0."""
        self._silero.reset()
        self._pre_roll.clear()
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows_seen = 0
        self._last_voiced_end = None
        self._to_quiet()

    def _step(self, window: Float32Array, prob: float) -> list[VadEvent]:
        index = self._windows_seen
        self._windows_seen += 1
        if self._state is VadState.QUIET:
            return self._on_quiet(window, prob, index)
        self._segment.append(window, prob)
        if self._state is VadState.STARTING:
            events = self._on_starting(prob)
        elif self._state is VadState.SPEAKING:
            events = self._on_speaking(prob)
        else:
            events = self._on_stopping(prob)
        if prob >= self.settings.threshold and self._state is VadState.SPEAKING:
            self._last_voiced_end = _seconds(index + 1)
            self._paused_sent = False
        return events

    def _on_quiet(self, window: Float32Array, prob: float, index: int) -> list[VadEvent]:
        if prob < self.settings.threshold:
            self._pre_roll.append((window, prob))
            return []
        self._segment = _Segment(index - len(self._pre_roll))
        for old_window, old_prob in self._pre_roll:
            self._segment.append(old_window, old_prob)
        self._pre_roll.clear()
        self._segment.append(window, prob)
        self._state = VadState.STARTING
        self._voiced_windows = 1
        self._pause_start = len(self._segment.windows)
        return self._confirm_if_enough()

    def _on_starting(self, prob: float) -> list[VadEvent]:
        s = self.settings
        if prob >= s.threshold:
            self._voiced_windows += 1
            self._pause_start = len(self._segment.windows)
            return self._confirm_if_enough()
        # Any window below threshold counts here, not only below neg_threshold:
        # noise hovering between the two must not keep a candidate open forever.
        unvoiced = len(self._segment.windows) - self._pause_start
        if unvoiced >= s.windows(s.end_silence_ms):
            self._abandon_start()
        return []

    def _confirm_if_enough(self) -> list[VadEvent]:
        s = self.settings
        if self._voiced_windows < s.windows(s.min_speech_ms):
            return []
        self._state = VadState.SPEAKING
        first = next(i for i, p in enumerate(self._segment.probs) if p >= s.threshold)
        return [SpeechStarted(at=_seconds(self._segment.first + first))]

    def _abandon_start(self) -> None:
        # Too little speech to be an utterance; its audio is still fine pre-roll.
        self._pre_roll.extend(zip(self._segment.windows, self._segment.probs))
        self._to_quiet()

    def _on_speaking(self, prob: float) -> list[VadEvent]:
        s = self.settings
        count = len(self._segment.windows)
        if prob < s.neg_threshold:
            self._state = VadState.STOPPING
            self._pause_start = count - 1
            return []
        if count >= s.windows(s.max_segment_ms):
            return [self._cut(self._quietest(s.windows(s.split_after_ms), count - 1))]
        return []

    def _on_stopping(self, prob: float) -> list[VadEvent]:
        s = self.settings
        count = len(self._segment.windows)
        if prob >= s.threshold:
            self._state = VadState.SPEAKING
            if count - 1 >= s.windows(s.split_after_ms):
                # The speaker paused and went on: the pause is the natural cut.
                return [self._cut(self._quietest(self._pause_start, count - 2))]
            return []
        if count - self._pause_start >= s.windows(s.end_silence_ms):
            event = self._end_utterance()
            self._to_quiet()
            return [event]
        if not self._paused_sent:
            voiced = self._segment.last_voiced_index(count - 1, s.threshold)
            voiced_end = voiced + 1 if voiced is not None else 0
            keep = voiced_end + s.windows(s.post_roll_ms)
            if count >= keep:
                self._paused_sent = True
                # The audio `_end_utterance` will take if nothing more is voiced.
                first = self._segment.first
                return [SpeechPaused(
                    audio=np.concatenate(self._segment.windows[:keep]),
                    start=_seconds(first), end=_seconds(first + keep),
                    last_voiced_at=_seconds(first + voiced_end),
                )]
        return []

    def _quietest(self, first: int, last: int) -> int:
        """Index of the lowest-probability window in [first, last]."""
        probs = self._segment.probs[first : last + 1]
        return first + int(np.argmin(probs))

    def _cut(self, index: int) -> SpeechCut:
        audio, start, end, last_voiced = self._segment.take(index + 1, self.settings.threshold)
        return SpeechCut(audio=audio, start=start, end=end, last_voiced_at=last_voiced)

    def _end_utterance(self) -> SpeechEnded:
        s = self.settings
        count = len(self._segment.windows)
        voiced = self._segment.last_voiced_index(count - 1, s.threshold)
        keep = (voiced + 1 if voiced is not None else 0) + s.windows(s.post_roll_ms)
        audio, start, end, last_voiced = self._segment.take(min(keep, count), s.threshold)
        # What is left is silence after the post-roll: pre-roll for the next one.
        self._pre_roll.extend(zip(self._segment.windows, self._segment.probs))
        return SpeechEnded(audio=audio, start=start, end=end, last_voiced_at=last_voiced)

    def _to_quiet(self) -> None:
        self._state = VadState.QUIET
        self._segment = _Segment(self._windows_seen)
        self._voiced_windows = 0
        self._pause_start = 0
