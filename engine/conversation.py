"""Turn-taking made for interviews: when to listen, when to answer, when to stop.

`Conversation` drives one interview. It is fed the candidate's voice activity
(`voice(active)` from the VAD), transcripts (provisional ones of an
utterance the candidate may go on with, and committed ones) and the
end-of-turn model's answers (`turn_estimate`), and speaks through a `Voice`.
With `TurnSettings.end_of_turn` set, `engine.turns.judge` decides when an
answer is over (the model, the text, a ceiling); without it, the older fixed
rule applies: `end_of_turn_s` of silence, plus a grace when the answer so far
is short or stops mid-sentence. Speech over the interviewer that lasts past
`barge_in_s` interrupts it; shorter backchannels ("mm-hm") do not. Transcripts
that repeat the interviewer's own words (its voice leaking back through the
candidate's speakers) are not taken as answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from config import DEFAULT_END_OF_TURN_S, DEFAULT_INTERVIEW_MINUTES, DEFAULT_NUDGE_S
from engine.aio import cancel_and_wait
from engine.events import ErrorEvent, Event, InterviewerEvent, StateEvent
from engine.interviewer import InterviewerEngine, Move, MoveKind
from engine.turns import EndOfTurnSettings, TurnDecision, TurnEstimate, judge, text_cues

if TYPE_CHECKING:
    from engine.interview import Interview

__all__ = [
    "Conversation",
    "ConversationState",
    "QuestionLog",
    "Spoken",
    "TurnMetrics",
    "TurnSettings",
    "Voice",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnSettings:
    end_of_turn_s: float = DEFAULT_END_OF_TURN_S
    short_answer_grace_s: float = 0.8
    mid_sentence_grace_s: float = 0.6
    short_answer_words: int = 8
    barge_in_s: float = 0.6
    # How long the VAD needs before it reports speech (its min_speech_ms).
    vad_confirm_s: float = 0.25
    nudge_s: float = DEFAULT_NUDGE_S
    max_minutes: float = DEFAULT_INTERVIEW_MINUTES
    # The learned end of turn; None: the fixed silence above decides.
    end_of_turn: EndOfTurnSettings | None = None


@dataclass(frozen=True)
class Spoken:
    text: str  # what was actually played (whole sentences, or up to the interruption)
    interrupted: bool
    first_audio_at: float | None  # loop time of the first audio frame sent
    audio_s: float


class Voice(Protocol):
    async def say(
        self, sentences: AsyncIterator[str], on_start: Callable[[str], None] | None = None
    ) -> Spoken:
        """Synthesize and play each sentence as it arrives; return when done.

        `on_start(sentence)` is called as each sentence's first audio goes out.
        """
        ...

    def interrupt(self) -> None:
        """Stop playing now (barge-in)."""
        ...


@dataclass
class TurnMetrics:
    """One candidate turn → interviewer reply, in loop seconds."""

    last_voiced_at: float
    end_of_turn_at: float
    transcript_at: float
    first_sentence_at: float | None = None
    first_audio_at: float | None = None
    decision: TurnDecision | None = None  # why the turn ended when it did

    def as_dict(self) -> dict[str, object]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.last_voiced_at, 3)
        out: dict[str, object] = {
            "asr_s": since(self.transcript_at),
            "end_of_turn_s": since(self.end_of_turn_at),
            "first_sentence_s": since(self.first_sentence_at),
            "turn_latency_s": since(self.first_audio_at),
        }
        if self.decision is not None:
            out.update(self.decision.as_record())
        return out


@dataclass
class QuestionLog:
    index: int
    question: str
    answers: list[str] = field(default_factory=list)
    speech_s: float = 0.0


@dataclass
class ConversationState:
    """The conversation so far, kept by the `Interview` across calls: a
    candidate who rejoins continues where they were."""

    engine: InterviewerEngine
    questions: dict[int, QuestionLog] = field(default_factory=dict)
    turns: list[TurnMetrics] = field(default_factory=list)
    interviewer_audio_s: float = 0.0
    started_at: float | None = None  # loop time of the first greeting

    def snapshot(self, now: float) -> dict[str, Any]:
        """The state to go on from, as JSON: checkpointed with the row, so
        that another node can continue the interview after this one died."""
        return {
            "plan": self.engine.snapshot(),
            "questions": [
                {"index": q.index, "question": q.question, "answers": list(q.answers),
                 "speech_s": round(q.speech_s, 3)}
                for _, q in sorted(self.questions.items())
            ],
            "interviewer_audio_s": round(self.interviewer_audio_s, 3),
            "elapsed_s": None if self.started_at is None else round(now - self.started_at, 3),
        }

    def restore(self, data: Mapping[str, Any], now: float) -> None:
        """Go on from a `snapshot()`; `now` is this loop's time."""
        plan = data.get("plan")
        if isinstance(plan, Mapping):
            self.engine.restore(plan)
        for item in data.get("questions") or []:
            if isinstance(item, Mapping) and isinstance(item.get("index"), int):
                self.questions[item["index"]] = QuestionLog(
                    item["index"], str(item.get("question", "")),
                    [str(a) for a in item.get("answers") or []],
                    float(item.get("speech_s") or 0.0))
        audio = data.get("interviewer_audio_s")
        self.interviewer_audio_s = float(audio) if isinstance(audio, (int, float)) else 0.0
        elapsed = data.get("elapsed_s")
        if isinstance(elapsed, (int, float)):
            self.started_at = now - float(elapsed)  # so its time limit still holds


_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class _Taken:
    """A provisional transcript an ended turn took, until its committed twin comes."""

    span: tuple[float, float] | None
    text: str
    question: QuestionLog


class Conversation:
    def __init__(
        self,
        interview: Interview,
        voice: Voice,
        *,
        settings: TurnSettings,
        notify: Callable[[Event], object],
        on_finished: Callable[[], None],
        on_turn: Callable[[TurnMetrics], None] | None = None,
        on_answer_taken: Callable[[tuple[float, float]], None] | None = None,
    ) -> None:
        if interview.conversation is None:
            raise ValueError("the interview has no conversation state (no interviewer)")
        memory = self._memory = interview.conversation
        self._engine = memory.engine
        self._voice = voice
        self._session = interview.record
        self._settings = settings
        self._notify = notify
        self._on_finished = on_finished
        self._on_turn = on_turn
        # Told the span (stream seconds) of a provisional utterance a turn
        # ended on, so the media layer can commit it without more silence.
        self._on_answer_taken = on_answer_taken
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._candidate_speaking = False
        self._awaiting_transcript = False
        self._pieces: list[str] = []
        # When the answer's pieces, and the provisional one, were heard (loop time).
        self._heard: tuple[float, float] | None = None
        self._provisional_heard: tuple[float, float] | None = None
        # The provisional transcript of the utterance in progress, its span,
        # and the span of one an ended turn already took (its committed
        # twin is not added again).
        self._provisional: str | None = None
        self._provisional_span: tuple[float, float] | None = None
        self._taken: _Taken | None = None
        self._estimates: list[TurnEstimate] = []  # the model's answers during this pause
        self._pause_draft: str | None = None  # the provisional text seen during this pause
        self._draft_after = 0
        self._last_voiced_at = 0.0
        self._transcript_at = 0.0
        self._last_activity = self._loop.time()
        self._speaking = False
        self._said_last = ""
        self._resuming = memory.started_at is not None
        if memory.started_at is None:
            memory.started_at = self._loop.time()
        self._started_at = memory.started_at
        self._barge_timer: asyncio.TimerHandle | None = None
        self.state = "idle"
        self.questions = memory.questions
        self.turns = memory.turns
        self.barge_ins = 0
        self.echoes_ignored = 0
        self._task: asyncio.Task[None] | None = None

    # -- inputs from the media layer ------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"conversation-{self._session.session_id}")

    def voice(self, active: bool) -> None:
        """The candidate's voice turned on (confirmed speech) or off (a pause began)."""
        now = self._loop.time()
        self._candidate_speaking = active
        self._last_activity = now
        if active:
            self._awaiting_transcript = True  # this speech will be transcribed
            self._estimates = []
            self._provisional = self._provisional_span = self._pause_draft = None
            if self._speaking and self._barge_timer is None:
                wait = max(0.0, self._settings.barge_in_s - self._settings.vad_confirm_s)
                self._barge_timer = self._loop.call_later(wait, self._barge_in)
        elif self._barge_timer is not None:
            self._barge_timer.cancel()  # a backchannel: too short to interrupt
            self._barge_timer = None
        self._changed.set()

    def turn_estimate(self, estimate: TurnEstimate) -> None:
        """The end-of-turn model's answer at one point of the current pause."""
        if not self._candidate_speaking:
            self._estimates.append(estimate)
            self._changed.set()

    def transcript(
        self, text: str, *, utterance_done: bool, latency_s: float, speech_s: float,
        span: tuple[float, float] | None = None, provisional: bool = False,
        heard: tuple[float, float] | None = None,
    ) -> None:
        """A transcript; `heard` is when its speech arrived (loop time, first to last)."""
        now = self._loop.time()
        text = text.strip()
        echo = bool(text) and self._is_echo(text)
        if provisional:
            if not echo and not self._candidate_speaking:
                self._provisional, self._provisional_span = text or None, span
                self._provisional_heard = heard
                self._pause_draft = text or None
                self._draft_after = len(self._pieces)  # the pieces before the draft's audio
                self._note_voiced(now, latency_s)
            self._changed.set()
            return
        if utterance_done:
            self._awaiting_transcript = False
        if span is not None and span == self._provisional_span:
            self._provisional = self._provisional_span = None
        taken = self._taken
        if span is not None and taken is not None and span == taken.span:
            # An ended turn already took this utterance's provisional text:
            # the committed transcript of the same audio replaces it there.
            self._taken = None
            taken.question.speech_s += speech_s  # the question it answered, not the next
            if text and not echo and text != taken.text:
                self._revise_answer(taken.text, text)
        elif echo:
            self.echoes_ignored += 1
            log.info("ignoring the interviewer's own voice heard back: %r", text)
        elif text:
            self._pieces.append(text)
            self._heard = _union(self._heard, heard)
            self._session.answer_in_progress(" ".join(self._pieces))
            self._note_voiced(now, latency_s)
            self._current_question().speech_s += speech_s
        self._changed.set()

    def _note_voiced(self, now: float, latency_s: float) -> None:
        self._last_voiced_at = now - latency_s
        self._transcript_at = now

    async def close(self) -> None:
        if self._barge_timer is not None:
            self._barge_timer.cancel()
        if self._task is not None and self._speaking:
            # Keep what was already said: stop the voice, let the turn be recorded.
            self._voice.interrupt()
            await asyncio.wait({self._task}, timeout=1.0)
        await cancel_and_wait(self._task)
        self._commit_answer()

    # -- the interview ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self._resuming:
                move = self._engine.resume()
            else:
                move = self._engine.decide("", time_left_s=self._time_left(), nudges=0)
            metrics: TurnMetrics | None = None
            nudges = 0  # consecutive nudges already given
            while True:
                await self._speak(move, metrics)
                if move.kind is MoveKind.CLOSE:
                    break
                answer, metrics = await self._listen()
                move = self._engine.decide(answer, time_left_s=self._time_left(), nudges=nudges)
                nudges = nudges + 1 if move.kind is MoveKind.NUDGE else 0
        except Exception:
            log.exception("session %s: the interviewer failed", self._session.session_id)
            self._notify(ErrorEvent("the interviewer failed; recording goes on"))
            return
        finally:
            self._set_state("ended")
        self._on_finished()

    def _time_left(self) -> float:
        return self._settings.max_minutes * 60 - (self._loop.time() - self._started_at)

    async def _speak(self, move: Move, metrics: TurnMetrics | None) -> None:
        if move.kind is not MoveKind.NUDGE or move.question_index not in self.questions:
            self.questions.setdefault(
                move.question_index, QuestionLog(move.question_index, move.text)
            )
        self._set_state("thinking")
        history = list(self._session.conversation_history)
        sentences = self._engine.say(move, history)
        spoken = await self._play(self._announce(sentences, metrics))
        if metrics is not None:
            metrics.first_audio_at = spoken.first_audio_at
            self.turns.append(metrics)
            if self._on_turn is not None:
                self._on_turn(metrics)
        self._memory.interviewer_audio_s += spoken.audio_s
        if spoken.text:
            self._said_last = spoken.text
            began = spoken.first_audio_at
            self._session.add_turn("assistant", spoken.text, at=began,
                                   until=None if began is None else began + spoken.audio_s)
        if move.kind in (MoveKind.OPEN, MoveKind.NEXT, MoveKind.REPEAT):
            self.questions[move.question_index].question = spoken.text or move.text

    async def _announce(
        self, sentences: AsyncIterator[str], metrics: TurnMetrics | None
    ) -> AsyncIterator[str]:
        async for sentence in sentences:
            if metrics is not None and metrics.first_sentence_at is None:
                metrics.first_sentence_at = self._loop.time()
            yield sentence

    def _started_saying(self, sentence: str) -> None:
        """Captions follow the voice: sent as each sentence starts playing."""
        self._set_state("speaking")
        self._notify(InterviewerEvent(sentence))

    async def _play(self, sentences: AsyncIterator[str]) -> Spoken:
        self._speaking = True
        try:
            spoken = await self._voice.say(sentences, self._started_saying)
        finally:
            self._speaking = False
            if self._barge_timer is not None:
                self._barge_timer.cancel()
                self._barge_timer = None
        if spoken.interrupted:
            self.barge_ins += 1
        return spoken

    def _barge_in(self) -> None:
        self._barge_timer = None
        if self._speaking and self._candidate_speaking:
            log.info("barge-in: the candidate spoke over the interviewer")
            self._voice.interrupt()

    async def _listen(self) -> tuple[str, TurnMetrics | None]:
        self._set_state("listening")
        # What was heard while the interviewer spoke is not part of the answer.
        self._pieces, self._heard = [], None
        self._provisional = self._provisional_span = self._pause_draft = None
        self._estimates = []
        self._session.answer_in_progress("")
        started = self._loop.time()
        while True:
            now = self._loop.time()
            deadline, decision = self._listen_deadline(started, now)
            if deadline is not None and now >= deadline:
                return self._end_turn(now, decision)
            self._changed.clear()
            timeout = None if deadline is None else deadline - now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def _listen_deadline(self, started: float, now: float) -> tuple[float | None, TurnDecision | None]:
        """When the turn ends if nothing changes meanwhile, and by which rule."""
        if self._candidate_speaking:
            return None, None
        learned = self._settings.end_of_turn
        has_text = bool(self._pieces) or self._provisional is not None
        if self._awaiting_transcript and (learned is None or self._provisional is None):
            return None, None
        if not has_text:
            return max(started, self._last_activity) + self._settings.nudge_s, None
        answer = self._answer_so_far()
        if learned is None:
            wait = self._required_silence()
            cues = text_cues(answer, self._settings.short_answer_words)
            return self._last_voiced_at + wait, TurnDecision(True, "silence", wait, None, cues)
        silence = now - self._last_voiced_at
        if self._estimates:
            silence = max(silence, self._estimates[-1].silence_s)
        draft = None
        if self._pause_draft is not None:
            draft = " ".join([*self._pieces[: self._draft_after], self._pause_draft])
        decision = judge(learned, silence_s=silence, estimates=self._estimates, answer=answer,
                         draft=draft)
        if decision.end:
            return now, decision
        ceiling = self._last_voiced_at + learned.ceiling_s
        return ceiling, TurnDecision(True, "ceiling", learned.ceiling_s, decision.probability,
                                     decision.cues)

    def _answer_so_far(self) -> str:
        return " ".join([*self._pieces, *([self._provisional] if self._provisional else [])])

    def _required_silence(self) -> float:
        s = self._settings
        answer = " ".join(self._pieces)
        wait = s.end_of_turn_s
        if len(answer.split()) < s.short_answer_words:
            wait += s.short_answer_grace_s
        if not answer.rstrip().endswith((".", "?", "!")):
            wait += s.mid_sentence_grace_s
        return wait

    def _end_turn(self, now: float, decision: TurnDecision | None) -> tuple[str, TurnMetrics | None]:
        if not self._pieces and self._provisional is None:
            return "", None
        if decision is not None:
            decision = TurnDecision(decision.end, decision.rule, now - self._last_voiced_at,
                                    decision.probability, decision.cues)
        metrics = TurnMetrics(self._last_voiced_at, now, self._transcript_at, decision=decision)
        taken = self._provisional_span if self._provisional is not None else None
        answer = self._commit_answer()
        if taken is not None and self._on_answer_taken is not None:
            self._on_answer_taken(taken)
        self._set_state("thinking")
        return answer, metrics

    def _commit_answer(self) -> str:
        answer = self._answer_so_far()
        heard = self._heard
        if self._provisional is not None:
            self._taken = _Taken(self._provisional_span, self._provisional,
                                 self._current_question())
            heard = _union(heard, self._provisional_heard)
        self._provisional = self._provisional_span = None
        self._estimates = []
        self._pause_draft = None
        self._pieces, self._heard = [], None
        self._session.answer_in_progress("")
        if answer:
            self._current_question().answers.append(answer)
            at, until = heard if heard is not None else (None, None)
            self._session.add_turn("user", answer, at=at, until=until)
        return answer

    def _revise_answer(self, draft: str, final: str) -> None:
        """Put `final` where the last answer ended with the draft text `draft`."""
        if self._session.revise_answer(draft, final):
            for question in reversed(self.questions.values()):
                if question.answers and question.answers[-1].endswith(draft):
                    question.answers[-1] = question.answers[-1][: -len(draft)] + final
                    break

    def _current_question(self) -> QuestionLog:
        index = max(self.questions, default=0)
        return self.questions.setdefault(index, QuestionLog(index, ""))

    def _is_echo(self, text: str) -> bool:
        """Mostly the interviewer's own last words: its voice, heard back."""
        heard = _WORD.findall(text.lower())
        said = set(_WORD.findall(self._said_last.lower()))
        if len(heard) < 3 or not said:
            return False
        return sum(w in said for w in heard) / len(heard) >= 0.8

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._notify(StateEvent(state))


def _union(
    a: tuple[float, float] | None, b: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The smallest span holding both (None: unknown)."""
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])
