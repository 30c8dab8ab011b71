"""What each scripted candidate does, and what the server should make of it.

A scenario is plain data: which photo the camera shows (and whether it
changes), whether the candidate answers, how it leaves, whether it drops and
rejoins. Its timeline is fixed relative to the candidate's connection (times
are fractions of the active duration), and so is what the server should
produce: the anomaly types, transcripts, and one completed row.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIXED_ORDER", "SCENARIOS", "Scenario", "scenario_for"]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    camera: str = "one_person"  # a video role from the media manifest
    switch_to: str | None = None  # the camera shows this photo from `switch_at`...
    switch_at: float = 0.4  # ... as a fraction of the active duration
    answers: bool = True  # answer each question with a speech clip
    leave: str = "end"  # "end": send {"type": "end"}; "close": close the tab
    drop_at: float | None = None  # close the peer at this fraction and rejoin
    expected_anomalies: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.leave not in ("end", "close"):
            raise ValueError(f"leave must be 'end' or 'close', got {self.leave!r}")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("answers", "answers every question with recorded speech; one person on camera"),
        Scenario(
            "second_person",
            "answers; a second person joins the picture 40% of the way in",
            switch_to="two_persons",
            expected_anomalies=frozenset({"multiple_persons"}),
        ),
        Scenario(
            "phone",
            "answers with a phone in view the whole time",
            camera="phone",
            expected_anomalies=frozenset({"devices_detected"}),
        ),
        Scenario("silent", "on camera but never speaks", answers=False),
        Scenario("tab_close", "answers, then closes the tab without ending", leave="close"),
        Scenario(
            "drop_rejoin",
            "answers; the connection drops halfway and the candidate rejoins at once",
            drop_at=0.5,
        ),
    )
}

# `mixed` deals the scenarios out round-robin in this order, so small runs
# still cover the most telling ones.
MIXED_ORDER = ("answers", "second_person", "drop_rejoin", "phone", "tab_close", "silent")


def scenario_for(name: str, index: int) -> Scenario:
    """The scenario of candidate `index` in a run of scenario `name`."""
    if name == "mixed":
        return SCENARIOS[MIXED_ORDER[index % len(MIXED_ORDER)]]
    return SCENARIOS[name]
