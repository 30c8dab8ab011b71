"""A bounded LRU of synthesized sentences: anything said before is not synthesized again.

The interviewer repeats itself: acknowledgements ("Thank you."), nudges,
the closing, the greeting's fixed part and the template's questions are
the same text in every interview. `CachedSynthesizer` keeps the PCM of the
last `max_entries` sentences per process, keyed by (voice, text), and
counts `hits` and `misses`. `warm` fills it ahead of time: the media
runtime warms it with the structured engine's fixed phrases when it
starts. Audio spoken by a fallback voice (espeak-ng standing in for a
failed Piper worker) is not kept, so a hiccup does not make a phrase
robotic for the rest of the process's life.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol, runtime_checkable


from engine.arrays import Int16Array
from engine.ports import Synthesizer

__all__ = ["CachedSynthesizer"]


@runtime_checkable
class _SaysWhichVoice(Protocol):
    voice_name: str

    def speak(self, text: str) -> tuple[Int16Array, str]: ...


class CachedSynthesizer:
    """`Synthesizer` in front of another, serving repeated sentences from memory."""

    def __init__(self, inner: Synthesizer, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.inner = inner
        self.sample_rate: int = inner.sample_rate
        self._voice = str(getattr(inner, "voice_name", type(inner).__name__))
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], Int16Array] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.warmed = 0  # sentences synthesized ahead of time (`warm`)

    def synthesize(self, text: str) -> Int16Array:
        """The cached PCM of `text`, else the inner synthesizer's (then cached)."""
        key = (self._voice, text.strip())
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        pcm, voice = self._speak(text)
        pcm.setflags(write=False)  # shared by every call that hits it
        if voice == self._voice:
            with self._lock:
                self._keep(key, pcm)
        return pcm

    @property
    def max_entries(self) -> int:
        return self._max

    def warm(self, text: str) -> bool:
        """Have `text` in the cache, synthesizing it unless it is; whether it is now.

        Blocks like `synthesize`. Counted as `warmed`, not as a miss: no one
        waited for it. Fallback audio is not kept (False), as for `synthesize`.
        """
        key = (self._voice, text.strip())
        with self._lock:
            if key in self._entries:
                return True
        pcm, voice = self._speak(text)
        if voice != self._voice:
            return False
        pcm.setflags(write=False)
        with self._lock:
            if key not in self._entries:
                self.warmed += 1
                self._keep(key, pcm)
        return True

    def _keep(self, key: tuple[str, str], pcm: Int16Array) -> None:
        """Cache `pcm` as the newest entry, forgetting the least recently used
        past `max_entries` (called with the lock held)."""
        self._entries[key] = pcm
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def _speak(self, text: str) -> tuple[Int16Array, str]:
        if isinstance(self.inner, _SaysWhichVoice):
            return self.inner.speak(text)
        return self.inner.synthesize(text), self._voice

    def close(self) -> None:
        """Close the inner synthesizer if it holds resources (worker processes)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
