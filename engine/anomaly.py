"""Proctoring rules over detections: one record per episode, no flicker.

`AnomalyRules.update()` takes the detections of one sampled frame and returns
the anomalies that *start* on it. An anomaly starts when its condition held on
`onset_frames` consecutive sampled frames (so a single-frame flicker never
makes a record) and ends after `clear_frames` consecutive frames without it;
only then can the same type start a new episode.

The counts are per *sample*, not per detector run: when the video change gate
skips the detector on an unchanged frame, the previous frame's detections are
fed again. The gate only skips while `settled()` holds, so an onset or an end
is always confirmed by a real detector run, as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config import DEFAULT_DEVICE_LABELS
from engine.detector import Detection

__all__ = [
    "Anomaly",
    "AnomalyRules",
    "AnomalySettings",
    "MULTIPLE_PERSONS",
    "DEVICES_DETECTED",
    "NO_PERSON",
]

MULTIPLE_PERSONS = "multiple_persons"
DEVICES_DETECTED = "devices_detected"
NO_PERSON = "no_person"


@dataclass(frozen=True)
class AnomalySettings:
    device_labels: tuple[str, ...] = DEFAULT_DEVICE_LABELS
    onset_frames: int = 2
    clear_frames: int = 3
    # An episode of no_person is worth reporting only once it lasts a while.
    no_person_onset_frames: int = 4

    def __post_init__(self) -> None:
        if min(self.onset_frames, self.clear_frames, self.no_person_onset_frames) < 1:
            raise ValueError("onset and clear frame counts must be at least 1")


@dataclass(frozen=True)
class Anomaly:
    """One episode, in the session record's format (plus the frame's boxes)."""

    type: str
    count: int
    detections: tuple[Detection, ...]
    at: datetime
    # When the episode's first frame was seen (the caller's monotonic clock):
    # its onset, a confirming frame or more before `at`.
    onset_at: float | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "timestamp": self.at.strftime("%Y-%m-%d %H:%M:%S"),
            "type": self.type,
            "count": self.count,
            "detections": [d.describe() for d in self.detections],
        }


@dataclass
class _Episode:
    streak: int = 0
    clear: int = 0
    active: bool = False
    first_seen: float | None = None  # the streak's first frame


@dataclass
class AnomalyRules:
    settings: AnomalySettings = field(default_factory=AnomalySettings)
    _episodes: dict[str, _Episode] = field(default_factory=dict)

    def update(
        self, detections: Sequence[Detection], at: datetime, seen_at: float | None = None
    ) -> list[Anomaly]:
        """Feed one sampled frame (seen at `seen_at`, monotonic); return the
        anomalies that start on it."""
        persons = tuple(d for d in detections if d.label == "person")
        devices = tuple(d for d in detections if d.label in self.settings.device_labels)
        held = {
            MULTIPLE_PERSONS: (len(persons), persons) if len(persons) > 1 else None,
            DEVICES_DETECTED: (len(devices), persons + devices) if devices else None,
            NO_PERSON: (0, tuple(detections)) if not persons else None,
        }
        started = []
        for kind, evidence in held.items():
            if self._step(kind, evidence is not None, seen_at) and evidence is not None:
                count, shown = evidence
                onset = self._episodes[kind].first_seen
                started.append(Anomaly(kind, count, shown, at, onset))
        return started

    def _step(self, kind: str, holds: bool, seen_at: float | None) -> bool:
        """Advance one type's episode; True when an episode starts now."""
        episode = self._episodes.setdefault(kind, _Episode())
        if not holds:
            episode.streak = 0
            if episode.active:
                episode.clear += 1
                if episode.clear >= self.settings.clear_frames:
                    episode.active = False
            return False
        if episode.streak == 0:
            episode.first_seen = seen_at
        episode.streak += 1
        episode.clear = 0
        if episode.active or episode.streak < self._onset(kind):
            return False
        episode.active = True
        return True

    def _onset(self, kind: str) -> int:
        if kind == NO_PERSON:
            return self.settings.no_person_onset_frames
        return self.settings.onset_frames

    def settled(self) -> bool:
        """No episode is about to start or end: feeding the last detections
        again cannot record anything. False while an onset or a clear is being
        counted (a first sighting still needs its confirming frame)."""
        return all(
            (e.active and e.clear == 0) or (not e.active and e.streak == 0)
            for e in self._episodes.values()
        )

    def active(self) -> Iterable[str]:
        return (kind for kind, e in self._episodes.items() if e.active)
