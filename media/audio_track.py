"""Remote audio → 16 kHz mono → streaming VAD → faster-whisper transcripts.

Three tasks per track, each owning one step:
- the pump only awaits `track.recv()` and puts the frame in a bounded queue
  (O(1); a full queue drops the frame and counts it);
- the VAD worker resamples and runs Silero VAD on batches of frames in the
  VAD executor, and puts finished speech pieces in a bounded queue;
- the ASR worker transcribes those pieces one by one in the ASR executor;
  when that is the process's `AsrScheduler`, each piece is queued in this
  session's lane there, so sessions are served fairly (round-robin,
  shortest piece first) instead of first come, first served.

Long answers are committed in pieces by the VAD (`SpeechCut`), so the wait
from the candidate's last voiced frame to the final transcript does not grow
with the answer's length.

Speculative transcription: when the candidate has been silent for the VAD's
post-roll (`SpeechPaused`, 0.2 s), the utterance so far is transcribed at
once by the draft transcriber (the same Whisper, its encoder sized to the
audio: tens of milliseconds) and reported as a provisional transcript, so the
end of the turn can be judged on its text long before the VAD's end silence
commits the piece. If the candidate goes on, that work is cancelled (or its
result dropped). If not, the committed piece, which has the same audio, is
transcribed as usual, or takes the speculative result when the draft
transcriber is the transcriber itself (ASR_ENCODER=fit).

With a `TurnProbe`, the VAD worker also finds when the end-of-turn model is
due to be asked in each pause; the model answers in the turn executor, and
each answer still about the pause the listener is in is reported
(`on_turn_estimate`).

The VAD sees frames in batches (up to 0.5 s; more when its thread is
behind), so a pause, speech and a pause can fall inside one batch. The
listener is still told of that speech (`on_voice(True)`, then `False`), and
only the pause the stream ends the batch in is drafted and asked about.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.ports import Transcriber, TranscriptResult
from engine.turns import TurnAsk, TurnEstimate, TurnProbe
from engine.vad import (
    SpeechEnded,
    SpeechPaused,
    SpeechSegment,
    SpeechStarted,
    VadEvent,
    VadState,
    VoiceActivityDetector,
    to_float32,
)
from media.asr_scheduler import AsrBacklogFull, AsrScheduler
from media.queues import QueueLoad, StampedQueue

__all__ = ["AudioStats", "AudioTranscriber", "Transcript"]

log = logging.getLogger(__name__)

_BATCH_FRAMES = 25  # at most 0.5 s of 20 ms frames per trip to the VAD executor
# Arrival times kept to date a piece's last voiced frame when the piece is
# committed: with 20 ms frames, 41 s, beyond any piece (max_segment_ms) plus
# its end silence. Entries older than the last committed piece are pruned.
_MAX_ARRIVALS = 2048


@dataclass(frozen=True)
class Transcript:
    """A final transcript of one committed piece of speech."""

    text: str
    start: float  # stream seconds
    end: float
    utterance_done: bool  # the candidate stopped speaking after this piece (or the turn was taken)
    latency_s: float  # last voiced frame's arrival → this transcript
    asr_s: float = 0.0  # Whisper time for this piece (0: silence, not transcribed)
    asr_decoding: str | None = None  # how Whisper decoded it ("pad30", "fit+3s/..."), if said
    # Of an utterance the candidate may still go on with (`SpeechPaused`);
    # the committed transcript of the same audio follows unless they do.
    provisional: bool = False
    speculative: bool = False  # a committed piece that took the speculative result
    # When the piece's first and last voiced audio arrived (loop time): where
    # it sits on the interview's clock.
    heard_at: float | None = None
    heard_until: float | None = None


_Piece = tuple[SpeechSegment, float, "asyncio.Task[TranscriptResult] | None"]


@dataclass
class _Speculation:
    start: float
    end: float
    voiced_arrival: float
    heard_at: float
    task: asyncio.Task[TranscriptResult]


@dataclass(frozen=True)
class _Found:
    """What one VAD batch found (`AudioTranscriber._detect_speech`)."""

    events: list[VadEvent]
    frame_ends: list[float]  # the stream time after each frame
    voiced: bool  # the voice is on at the batch's end
    spoke: bool  # ... or was at some point of it
    paused: bool  # at the batch's end, in the pause its last `SpeechPaused` reported
    asks: list[TurnAsk]


@dataclass
class AudioStats:
    frames_in: int = 0
    frames_dropped: int = 0
    pieces: int = 0
    pieces_dropped: int = 0
    asr_seconds: float = 0.0
    speculations: int = 0  # speculative transcriptions started
    speculations_used: int = 0  # ... that a committed piece took
    turn_asks: int = 0  # end-of-turn model calls


class AudioTranscriber:
    def __init__(
        self,
        track: MediaStreamTrack,
        *,
        vad: VoiceActivityDetector,
        transcriber: Transcriber,
        vad_executor: Executor,
        asr_executor: Executor,
        on_transcript: Callable[[Transcript], None],
        name: str,
        on_frame: Callable[[av.AudioFrame], None] | None = None,
        on_voice: Callable[[bool], None] | None = None,
        turn_probe: TurnProbe | None = None,
        on_turn_estimate: Callable[[TurnEstimate], None] | None = None,
        turn_executor: Executor | None = None,
        draft_transcriber: Transcriber | None = None,
        max_frames: int = 250,
        max_pieces: int = 16,
    ) -> None:
        self._track = track
        self._vad = vad
        self._transcriber = transcriber
        self._draft = draft_transcriber or transcriber
        self._vad_executor = vad_executor
        self._asr_executor = asr_executor
        self._on_transcript = on_transcript
        self._name = name
        self._on_frame = on_frame
        self._on_voice = on_voice
        self._turn_probe = turn_probe
        self._on_turn_estimate = on_turn_estimate
        # The end-of-turn model's calls: apart from the VAD (default: the VAD's own).
        self._turn_executor = turn_executor or vad_executor
        self._asks: set[asyncio.Future[TurnEstimate]] = set()  # asked, not answered yet
        self._voice_epoch = 0  # times the voice came on (`on_voice(True)`)
        self._speculation: _Speculation | None = None
        self._speculating: set[asyncio.Task[TranscriptResult]] = set()  # all still running
        self._voiced = False
        self._end_paused_at: float | None = None  # end_utterance(): for the VAD worker
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        self._frames: StampedQueue[tuple[av.AudioFrame, float] | None] = StampedQueue(max_frames)
        # Each piece travels with the loop time its last voiced frame arrived
        # and the speculative transcription of its audio, if one ran.
        self._pieces: StampedQueue[_Piece | None] = StampedQueue(max_pieces)
        # (stream seconds at the end of a frame, loop time that frame arrived)
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=_MAX_ARRIVALS)
        self.stats = AudioStats()
        self._pump_task = asyncio.create_task(self._pump(), name=f"{name}-audio-pump")
        self._workers = [
            asyncio.create_task(self._vad_worker(), name=f"{name}-audio-vad"),
            asyncio.create_task(self._asr_worker(), name=f"{name}-audio-asr"),
        ]

    def end_utterance(self, end: float) -> None:
        """The listener took the turn on the paused utterance ending at `end`.

        Commit it now instead of after the VAD's end silence, so its final
        transcript (the speculative one, when the draft transcriber is the
        transcriber) follows at once. Done on the VAD worker's next batch,
        before its frames: what they hold came after the turn was taken and
        starts a new utterance (the listener is speaking by then). Nothing
        happens if the VAD has seen the candidate go on already.
        """
        self._end_paused_at = end

    def queue_loads(self) -> dict[str, QueueLoad]:
        """Decoded frames waiting for the VAD, speech pieces waiting for Whisper."""
        return {"audio_frames": self._frames.load(), "speech_pieces": self._pieces.load()}

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop receiving, transcribe what was already heard (bounded), stop.

        Safe to call again. If the caller is cancelled meanwhile, the tasks
        are cancelled and awaited before the CancelledError propagates.
        A task's own error is raised here.
        """
        tasks: list[asyncio.Task[object]] = [self._pump_task, *self._workers]
        self._pump_task.cancel()
        try:
            await asyncio.wait([self._pump_task])
            self._put_end_marker()
            await asyncio.wait(self._workers, timeout=drain_timeout_s)
        finally:
            self._speculation = None
            tasks += self._speculating  # cancelled work leaves no task behind
            for ask in list(self._asks):
                ask.cancel()  # an answer for a call that is over: nobody to tell
            for task in tasks:
                task.cancel()
            # gather, not `await task` under suppress(CancelledError): that
            # would also swallow a cancellation of close() itself.
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = cast(av.AudioFrame, await self._track.recv())  # decoded: a frame
            except MediaStreamError:
                self._put_end_marker()
                return
            self.stats.frames_in += 1
            if self._on_frame is not None:
                self._on_frame(frame)
            try:
                self._frames.put_nowait((frame, loop.time()))
            except asyncio.QueueFull:
                self.stats.frames_dropped += 1

    def _put_end_marker(self) -> None:
        while True:
            try:
                self._frames.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._frames.get_nowait()
                self.stats.frames_dropped += 1

    async def _vad_worker(self) -> None:
        loop = asyncio.get_running_loop()
        ended = False
        while not ended:
            batch = [await self._frames.get()]
            while len(batch) < _BATCH_FRAMES and not self._frames.empty():
                batch.append(self._frames.get_nowait())
            ended = batch[-1] is None
            frames = [item[0] for item in batch if item is not None]
            end_paused_at, self._end_paused_at = self._end_paused_at, None
            found = await loop.run_in_executor(
                self._vad_executor, self._detect_speech, frames, ended, end_paused_at
            )
            voiced = found.voiced
            self._arrivals.extend(zip(found.frame_ends, (item[1] for item in batch if item)))
            if found.spoke and not voiced and not self._voiced:
                # The candidate went on and paused again inside this batch:
                # the listener hears that speech too, so that nothing of the
                # pause before it (the model's answers about it; its draft is
                # dropped below) is taken as being about the pause now.
                self._voice_epoch += 1
                if self._on_voice is not None:
                    self._on_voice(True)
                    self._on_voice(False)
            if voiced != self._voiced:
                self._voiced = voiced
                if voiced:
                    self._voice_epoch += 1  # what the listener sees as a new utterance
                if self._on_voice is not None:
                    self._on_voice(voiced)
            # Only turn-taking needs text this early (a draft), and only of a
            # pause that is still on, or whose piece this batch commits.
            drafting = not ended and not voiced and self._turn_probe is not None
            paused: SpeechPaused | None = None
            for event in found.events:
                if isinstance(event, SpeechPaused):
                    paused = event
                elif isinstance(event, SpeechSegment):
                    if (drafting and paused is not None
                            and (paused.start, paused.end) == (event.start, event.end)):
                        self._speculate(paused)  # its piece takes it at once
                    paused = None
                    self._queue_piece(event, self._arrival_of(event), self._take_speculation(event))
            if drafting and paused is not None and found.paused:
                self._speculate(paused)
            elif not found.paused:
                self._drop_speculation()  # the candidate went on, or the piece is committed
            if self._turn_probe is not None:
                # Only the pause the stream is in now: an earlier one in this
                # batch (the candidate went on within it, unseen by `on_voice`)
                # or a batch ending in speech has nothing to ask about.
                pause = self._turn_probe.pause
                for ask in found.asks if not voiced else ():
                    if ask.pause == pause:
                        self._ask(self._turn_probe, ask)
        await self._pieces.put(None)

    def _detect_speech(
        self, frames: list[av.AudioFrame], flush: bool, end_paused_at: float | None = None
    ) -> _Found:
        """Worker thread: resample to 16 kHz mono, run the VAD (and the turn probe).

        The questions for the end-of-turn model that fell due are asked in
        the turn executor (`_ask`).
        `end_paused_at`: first end the utterance paused there (`end_utterance`).
        """
        events: list[VadEvent] = []
        frame_ends: list[float] = []
        asks: list[TurnAsk] = []
        vad = self._vad
        spoke = False
        if end_paused_at is not None:
            taken = vad.end_paused(end_paused_at)
            if taken and self._turn_probe is not None:
                self._turn_probe.hold()  # the turn is over: its pause needs no more asks
            events += taken
        for frame in frames:
            for out in self._resampler.resample(frame):
                pcm = to_float32(cast(npt.NDArray[np.int16], out.to_ndarray().reshape(-1)))
                new = vad.feed(pcm)
                events += new
                spoke = spoke or vad.state is VadState.SPEAKING
                if self._turn_probe is not None:
                    started = next((e.at for e in new if isinstance(e, SpeechStarted)), None)
                    asks += self._turn_probe.feed(
                        pcm, last_voiced_at=vad.last_voiced_at, speech_started_at=started,
                        speaking=vad.state in (VadState.SPEAKING, VadState.STARTING),
                    )
            frame_ends.append(vad.stream_time)
        if flush:
            events += vad.flush()
        return _Found(events, frame_ends, vad.state is VadState.SPEAKING, spoke, vad.paused, asks)

    def _queue_piece(
        self, piece: SpeechSegment, voiced_arrival: float,
        speculative: asyncio.Task[TranscriptResult] | None,
    ) -> None:
        try:
            self._pieces.put_nowait((piece, voiced_arrival, speculative))
        except asyncio.QueueFull:
            if speculative is not None:
                speculative.cancel()
            self.stats.pieces_dropped += 1
            log.warning("transcription is behind: dropped %.1fs of speech", piece.end - piece.start)

    async def _asr_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while (item := await self._pieces.get()) is not None:
            piece, voiced_arrival, speculative = item
            result: TranscriptResult | None = None
            if piece.last_voiced_at > piece.start:  # a piece with no voiced window is silence
                try:
                    if speculative is not None:
                        result = await speculative
                        self.stats.speculations_used += 1
                    else:
                        result = await self._transcribe(piece.audio)
                except AsrBacklogFull:
                    self.stats.pieces_dropped += 1
                    log.warning("transcription is behind: dropped %.1fs of speech",
                                piece.end - piece.start)
                    continue
                self.stats.pieces += 1
                self.stats.asr_seconds += result.elapsed_s
            transcript = Transcript(
                text="" if result is None else result.text.strip(),
                start=piece.start,
                end=piece.end,
                utterance_done=isinstance(piece, SpeechEnded),
                latency_s=loop.time() - voiced_arrival,
                asr_s=0.0 if result is None else result.elapsed_s,
                asr_decoding=None if result is None else result.decoding,
                speculative=speculative is not None,
                heard_at=voiced_arrival - (piece.last_voiced_at - piece.start),
                heard_until=voiced_arrival,
            )
            self._on_transcript(transcript)

    async def _transcribe(
        self, audio: np.ndarray, transcriber: Transcriber | None = None, *, urgent: bool = False
    ) -> TranscriptResult:
        transcriber = transcriber or self._transcriber
        executor = self._asr_executor
        if isinstance(executor, AsrScheduler):
            future = executor.submit_transcription(self._name, transcriber, audio, urgent=urgent)
            return await asyncio.wrap_future(future)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, transcriber.transcribe, audio)

    # -- the end-of-turn model ------------------------------------------------------

    def _ask(self, probe: TurnProbe, ask: TurnAsk) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._turn_executor, probe.answer, ask)
        self._asks.add(future)
        epoch = self._voice_epoch
        future.add_done_callback(lambda done: self._answered(epoch, done))

    def _answered(self, epoch: int, future: asyncio.Future[TurnEstimate]) -> None:
        """Report an answer, unless the candidate spoke since it was asked.

        The listener counts pauses by `on_voice` (and clears its answers on
        `on_voice(True)`), so an answer after an `on_voice(True)` is about an
        earlier pause. The probe also counts the pause and speech that fall
        inside one VAD batch, which `on_voice` never shows: an answer about a
        pause the probe has left is not reported either. One executor thread
        keeps each session's answers in order.
        """
        self._asks.discard(future)
        if future.cancelled():
            return
        if (error := future.exception()) is not None:
            log.error("%s: the end-of-turn model failed: %r", self._name, error)
            return
        self.stats.turn_asks += 1
        estimate = future.result()
        current = self._turn_probe is None or estimate.pause == self._turn_probe.pause
        if self._on_turn_estimate is not None and epoch == self._voice_epoch and current:
            self._on_turn_estimate(estimate)

    # -- speculative transcription ---------------------------------------------------

    def _speculate(self, pause: SpeechPaused) -> None:
        self._drop_speculation()
        task = asyncio.create_task(self._transcribe(pause.audio, self._draft, urgent=True),
                                   name=f"{self._name}-audio-speculate")
        self._speculating.add(task)
        task.add_done_callback(self._speculating.discard)
        arrival = self._arrival_near(pause.last_voiced_at)
        heard_at = arrival - (pause.last_voiced_at - pause.start)
        speculation = _Speculation(pause.start, pause.end, arrival, heard_at, task)
        self._speculation = speculation
        self.stats.speculations += 1
        task.add_done_callback(lambda _: self._report_speculation(speculation))

    def _report_speculation(self, speculation: _Speculation) -> None:
        task = speculation.task
        if task.cancelled() or task.exception() is not None:  # (retrieved: never logged)
            return
        if self._speculation is not speculation:
            return
        result = task.result()
        loop = asyncio.get_running_loop()
        self._on_transcript(Transcript(
            text=result.text.strip(), start=speculation.start, end=speculation.end,
            utterance_done=False, latency_s=loop.time() - speculation.voiced_arrival,
            asr_s=result.elapsed_s, asr_decoding=result.decoding, provisional=True,
            heard_at=speculation.heard_at, heard_until=speculation.voiced_arrival,
        ))

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.task.cancel()
            self._speculation = None

    def _take_speculation(self, piece: SpeechSegment) -> asyncio.Task[TranscriptResult] | None:
        """The speculative transcription of exactly this piece's audio, if one runs."""
        speculation, self._speculation = self._speculation, None
        if speculation is None:
            return None
        same_audio = (speculation.start, speculation.end) == (piece.start, piece.end)
        if same_audio and self._draft is self._transcriber and not (
            speculation.task.done() and (speculation.task.cancelled()
                                         or speculation.task.exception() is not None)):
            return speculation.task
        speculation.task.cancel()
        return None

    def _arrival_near(self, stream_time: float) -> float:
        """When the frame holding `stream_time` arrived (loop time), without pruning."""
        if not self._arrivals:
            return asyncio.get_running_loop().time()
        ends = [end for end, _ in self._arrivals]
        return self._arrivals[min(bisect.bisect_left(ends, stream_time), len(ends) - 1)][1]

    def _arrival_of(self, piece: SpeechSegment) -> float:
        """When the frame holding the piece's last voiced sample arrived (loop time).

        Called when the piece is committed, while that frame is still among
        the recent arrivals; looking it up later, when transcription is far
        behind, would find it already forgotten.
        """
        arrived = self._arrival_near(piece.last_voiced_at)
        # Later pieces start at or after this one's end: older frames are done with.
        while len(self._arrivals) > 1 and self._arrivals[0][0] < piece.end:
            self._arrivals.popleft()
        return arrived
