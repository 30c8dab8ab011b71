"""Anomaly rules: episodes, debounce, record format."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engine.anomaly import AnomalyRules, AnomalySettings
from engine.detector import Detection

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=timezone.utc)


def person(score: float = 0.9) -> Detection:
    return Detection("person", score, (10, 10, 100, 200))


def phone(score: float = 0.4) -> Detection:
    return Detection("cell phone", score, (50, 50, 70, 90))


def run(rules: AnomalyRules, frames: list[list[Detection]]) -> list[tuple[int, str, int]]:
    out = []
    for i, detections in enumerate(frames):
        for anomaly in rules.update(detections, T0 + timedelta(seconds=i / 2)):
            out.append((i, anomaly.type, anomaly.count))
    return out


def test_single_person_makes_no_record():
    assert run(AnomalyRules(), [[person()]] * 20) == []


def test_single_frame_flicker_is_ignored():
    frames = [[person()]] * 3 + [[person(), person(0.5)]] + [[person()]] * 3
    frames += [[person()], [person(), phone()], [person()]]
    assert run(AnomalyRules(), frames) == []


def test_one_record_per_episode():
    two = [person(), person(0.8)]
    frames = [[person()]] * 2 + [two] * 6 + [[person()]] * 3 + [two] * 3
    assert run(AnomalyRules(), frames) == [(3, "multiple_persons", 2), (12, "multiple_persons", 2)]


def test_brief_gap_does_not_split_an_episode():
    two = [person(), person(0.8)]
    frames = [two] * 4 + [[person()]] + [two] * 4
    assert run(AnomalyRules(), frames) == [(1, "multiple_persons", 2)]


def test_devices_and_no_person():
    rules = AnomalyRules(AnomalySettings(onset_frames=2, no_person_onset_frames=3))
    frames = [[person(), phone()]] * 2 + [[]] * 4
    assert run(rules, frames) == [(1, "devices_detected", 1), (4, "no_person", 0)]


def test_record_format():
    rules = AnomalyRules(AnomalySettings(onset_frames=1))
    (anomaly,) = rules.update([person(0.951), phone(0.412)], T0)
    assert anomaly.to_record() == {
        "timestamp": "2026-11-24 10:00:00",
        "type": "devices_detected",
        "count": 1,
        "detections": ["person 0.95", "cell phone 0.41"],
    }


def test_device_labels_are_configurable():
    rules = AnomalyRules(AnomalySettings(device_labels=("book",), onset_frames=1))
    assert rules.update([person(), phone()], T0) == []
    book = Detection("book", 0.7, (0, 0, 5, 5))
    assert [a.type for a in rules.update([person(), book], T0)] == ["devices_detected"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        AnomalySettings(onset_frames=0)


def test_settled_only_between_onsets_and_ends():
    """The video change gate may skip the detector only while settled: a first
    sighting, or the first frames without an active episode's cause, still get
    their confirming detector run."""
    rules = AnomalyRules()
    states = []
    frames = [[person()], [person(), phone()], [person(), phone()], [person(), phone()],
              [person()], [person()], [person()], [person()]]
    for i, detections in enumerate(frames):
        rules.update(detections, T0 + timedelta(seconds=i / 2))
        states.append(rules.settled())
    # phone seen (onset pending), phone recorded, still, then three frames to clear it.
    assert states == [True, False, True, True, False, False, True, True]
