"""When the candidate's answer is over: a learned end-of-turn model, asked as
the pause grows, with what the transcript says as evidence.

A fixed silence is wrong both ways: too slow after a finished answer, and a
candidate who stops mid-sentence to think is cut off as soon as the silence
runs out. Instead, while the candidate is silent after speaking, the media
layer asks an end-of-turn model (`engine.ports.TurnModel`: Smart Turn v3.2)
at the silences in `EndOfTurnSettings.ask_at_s`, on the last seconds of the
answer's audio (`TurnProbe`: fed in the VAD's executor, the model asked in
an executor of its own). `judge()` turns the model's probabilities and the
answer's text into a decision:

- the silence reached `ceiling_s`: the turn is over, whatever was said
  (rule ``ceiling``);
- the text reads as unfinished (it trails off with "..." or a comma, has no
  final punctuation, or its last word is one a sentence cannot end on, such
  as "and", "the", "to"; in the committed transcript or in the speculative
  draft of the same audio), or the answer is shorter than
  `short_answer_words`: keep listening up to the ceiling (``text-open``,
  ``short``); a thinking pause looks like this far more often than a
  finished answer does;
- otherwise the model decides: the turn is over once every answer the model
  gave during this pause was at least `threshold` (``model``); one low
  answer means the candidate is probably going on (``model-open``), and
  only the ceiling ends that pause.

Every decision says which rule made it, the silence waited and the
probability, so the interviewer's timing can be explained afterwards
(`TurnDecision.as_record`).
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from config import DEFAULT_TURN_CEILING_S, DEFAULT_TURN_THRESHOLD
from engine.arrays import Float32Array
from engine.ports import TurnModel

__all__ = [
    "EndOfTurnSettings",
    "TurnAsk",
    "TurnDecision",
    "TurnEstimate",
    "TurnProbe",
    "judge",
    "text_cues",
]

SAMPLE_RATE = 16_000

# Words an English sentence (almost) never ends on: articles, conjunctions,
# prepositions, possessives, titles. Auxiliaries are left out on purpose:
# "...than he was." and "...it might be." are finished answers.
_OPEN_WORDS = frozenset(
    "a an the and or but nor because unless if than that which whose to of for "
    "with from by about into onto my his her their our your its mr mrs ms dr".split()
)
_WORDS = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class EndOfTurnSettings:
    """How the end of an answer is judged (see the module docstring)."""

    threshold: float = DEFAULT_TURN_THRESHOLD
    ceiling_s: float = DEFAULT_TURN_CEILING_S
    # Silences (seconds after the last voiced frame) at which the model is asked.
    ask_at_s: tuple[float, ...] = (0.2, 0.4, 0.7, 1.0, 1.5, 2.0, 2.5)
    short_answer_words: int = 8
    # The model sees at most this much audio, from `pre_speech_s` before the
    # answer's first word (Smart Turn v3 takes 8 s).
    max_audio_s: float = 8.0
    pre_speech_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not self.ask_at_s or list(self.ask_at_s) != sorted(self.ask_at_s):
            raise ValueError(f"ask_at_s must be increasing, got {self.ask_at_s}")
        if self.ceiling_s <= self.ask_at_s[0]:
            raise ValueError(
                f"ceiling_s ({self.ceiling_s}) must exceed the first ask ({self.ask_at_s[0]})")


@dataclass(frozen=True)
class TurnEstimate:
    """The model's answer at one point of a pause."""

    silence_s: float  # since the last voiced frame, in stream seconds
    probability: float  # P(the answer is complete)
    model_s: float = 0.0  # what the model call cost
    pause: int = 0  # which pause of the stream it is about (`TurnAsk.pause`)


@dataclass(frozen=True, eq=False)
class TurnAsk:
    """A question for the model that fell due: the answer's audio at one silence."""

    silence_s: float
    audio: Float32Array
    pause: int  # which pause of the stream (`TurnProbe`'s count)


@dataclass(frozen=True)
class TurnDecision:
    end: bool
    rule: str  # "ceiling", "model", "model-open", "text-open", "short", "silence"
    silence_s: float
    probability: float | None
    cues: tuple[str, ...] = ()

    def as_record(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "silence_s": round(self.silence_s, 3),
            "probability": None if self.probability is None else round(self.probability, 3),
            "cues": list(self.cues),
        }


def text_cues(answer: str, short_answer_words: int) -> tuple[str, ...]:
    """What in the text says the answer is not finished yet."""
    cues: list[str] = []
    text = answer.rstrip()
    if text.endswith(("...", "\u2026", "\u2014", "-", ",", ";", ":")):
        cues.append("trails-off")
    elif not text.endswith((".", "?", "!")):
        cues.append("no-final-punctuation")
    words = _WORDS.findall(text.lower())
    if words and words[-1] in _OPEN_WORDS:
        cues.append("open-word")
    if len(words) < short_answer_words:
        cues.append("short")
    return tuple(cues)


def judge(
    settings: EndOfTurnSettings,
    *,
    silence_s: float,
    estimates: list[TurnEstimate],
    answer: str,
    draft: str | None = None,
) -> TurnDecision:
    """Is the answer over, after `silence_s` of silence and these model answers?

    `draft`: the answer as the speculative transcript of this pause had it.
    Its cues count too: the quick draft decodes the audio sized to it and
    writes "..." where speech breaks off, while the 30 s decoding of the same
    audio tends to close every piece with a full stop.
    """
    latest = estimates[-1].probability if estimates else None
    cues = text_cues(answer, settings.short_answer_words)
    if draft is not None and draft != answer:
        cues = tuple(dict.fromkeys(cues + text_cues(draft, settings.short_answer_words)))
    if silence_s >= settings.ceiling_s:
        return TurnDecision(True, "ceiling", silence_s, latest, cues)
    if any(cue != "short" for cue in cues):
        return TurnDecision(False, "text-open", silence_s, latest, cues)
    if cues:
        return TurnDecision(False, "short", silence_s, latest, cues)
    if not estimates:
        return TurnDecision(False, "model", silence_s, None, cues)
    if all(e.probability >= settings.threshold for e in estimates):
        return TurnDecision(True, "model", silence_s, latest, cues)
    return TurnDecision(False, "model-open", silence_s, latest, cues)


class TurnProbe:
    """Says when the end-of-turn model is to be asked, and asks it.

    Fed, in order, every chunk of 16 kHz audio the VAD saw and where the VAD
    stands after it (`feed`, from one thread: the VAD's executor); `feed`
    returns the asks that fell due at the silences of `ask_at_s`, and
    `answer` puts one to the model. `answer` may run on another thread
    (the media layer's turn executor), so that a model call (about 60-160 ms
    of CPU) never holds up the VAD. Time is stream seconds, as in `engine.vad`.

    The model is asked only while its answer can still change the decision:
    once it said "not complete" in a pause (`judge` then waits for the
    ceiling; `stop_when_doubtful`), or the listener took the turn on the
    pause's draft transcript (`hold`), the rest of the pause is not asked
    about. Speech resumes: asks resume. `spared` counts the asks left out.
    A turn that ends by the ceiling then records that "not complete" answer
    as its probability, where it used to record the last scheduled ask's.
    """

    def __init__(
        self, model: TurnModel, settings: EndOfTurnSettings, *, stop_when_doubtful: bool = True,
    ) -> None:
        self._model = model
        self._settings = settings
        self._stop_when_doubtful = stop_when_doubtful
        self._keep = int(settings.max_audio_s * SAMPLE_RATE)
        self._ring: deque[Float32Array] = deque()
        self._ring_samples = 0
        self._time = 0.0
        self._answer_start: float | None = None
        self._last_voiced: float | None = None
        self._next_ask = 0
        self._pause = 0  # counts the pauses; the current one is asked about
        self._in_pause = False
        # The pause that is asked no more. Written by `answer` and `hold`, read
        # by `feed`: one assignment of a number, so no lock is needed, and an
        # answer that comes late holds its own (past) pause, not the next.
        self._held_pause = -1
        self.spared = 0

    def feed(
        self, pcm: Float32Array, *, last_voiced_at: float | None, speaking: bool,
        speech_started_at: float | None = None,
    ) -> list[TurnAsk]:
        """Take `pcm`; return the asks that fell due (at most one).

        `last_voiced_at`: end of the last confirmed voiced window (None: no
        speech yet). `speaking`: the VAD is in speech (or confirming it).
        `speech_started_at`: an utterance was confirmed in this chunk.
        """
        self._append(pcm)
        s = self._settings
        if speech_started_at is not None and (
            self._answer_start is None or self._last_voiced is None
            or speech_started_at - self._last_voiced >= s.ceiling_s
        ):
            # A new answer (the ceiling ended any earlier one): the model
            # hears it from just before its first word.
            self._answer_start = max(0.0, speech_started_at - s.pre_speech_s)
        self._last_voiced = last_voiced_at
        if speaking or last_voiced_at is None:
            if self._in_pause:
                self._pause += 1  # the pause is over; asks start again at the next one
                self._in_pause = False
            self._next_ask = 0
            return []
        self._in_pause = True
        silence = self._time - last_voiced_at
        due = False
        while self._next_ask < len(s.ask_at_s) and silence >= s.ask_at_s[self._next_ask]:
            self._next_ask += 1
            due = True
        if not due or silence >= s.ceiling_s:
            return []
        if self._held_pause == self._pause:
            self.spared += 1
            return []
        return [TurnAsk(silence, self._audio(), self._pause)]

    def answer(self, ask: TurnAsk) -> TurnEstimate:
        """The model's answer to `ask` (blocks for the model call)."""
        started = time.perf_counter()
        probability = self._model.probability(ask.audio)
        if self._stop_when_doubtful and probability < self._settings.threshold:
            # max: a late answer about an earlier pause must not undo a newer hold.
            self._held_pause = max(self._held_pause, ask.pause)
        return TurnEstimate(ask.silence_s, probability, time.perf_counter() - started, ask.pause)

    @property
    def pause(self) -> int:
        """The pause the stream is in, or the next one while speech goes on.

        An ask or answer about a lower one is about a pause the speaker has
        spoken after: its answer says nothing about the pause now.
        """
        return self._pause  # moved on when speech resumed

    def hold(self) -> None:
        """The listener took the turn: ask nothing more until speech resumes.

        Called from `feed`'s thread (the VAD's, where the turn reaches the VAD).
        """
        self._held_pause = self._pause

    def _append(self, pcm: Float32Array) -> None:
        self._ring.append(pcm)
        self._ring_samples += len(pcm)
        self._time += len(pcm) / SAMPLE_RATE
        while self._ring and self._ring_samples - len(self._ring[0]) >= self._keep:
            self._ring_samples -= len(self._ring.popleft())

    def _audio(self) -> Float32Array:
        """The answer's audio so far: from its start, at most `max_audio_s`."""
        audio = np.concatenate(list(self._ring)) if self._ring else np.zeros(0, np.float32)
        if self._answer_start is not None:
            since = int(max(0.0, self._time - self._answer_start) * SAMPLE_RATE)
            audio = audio[-since:] if since else audio[:0]
        return audio[-self._keep:]
