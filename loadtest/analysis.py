"""From what a step gathered to the numbers in `result.json`, and the SLO verdict.

Percentiles are nearest-rank over every expected event: an answer that got no
reply within the settle time counts as an infinitely late reply (so a p95
over it is "none"), not as a missing sample that would flatter the rest.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from loadtest.candidate import CandidateResult
from loadtest.monitor import HistogramSummary, MetricsSnapshot, ServerSample
from loadtest.nodes import NodeInfo
from loadtest.runner import StepData
from loadtest.scenarios import SCENARIOS
from testing import wer

__all__ = ["NO_NODE", "Slo", "analyse", "by_node", "stats"]

SERVER_HISTOGRAMS = (
    "interview_asr_seconds",
    "interview_detect_seconds",
    "interview_tts_seconds",
    "interview_llm_first_sentence_seconds",
    "interview_turn_latency_seconds",
    "interview_transcript_latency_seconds",
    "interview_turn_model_seconds",
    "interview_turn_silence_seconds",
    "interview_reply_seconds",
)
# Clients that send more than this share of packets late (> 40 ms) are
# themselves overloaded, and their latencies include their own delay.
CLIENT_LATE_WARN = 0.01
# The group of candidates that no node answered (the create failed or was refused).
NO_NODE = "(none)"


@dataclass(frozen=True)
class Slo:
    p95_turn_latency_s: float = 1.5
    min_analysed: float = 0.95
    max_lost_rows: int = 0


def stats(values: list[float | None], *, missing_is_late: bool = False) -> dict[str, Any]:
    """n, missing, mean, p50, p95, max; with `missing_is_late`, a None ranks last."""
    present = sorted(v for v in values if v is not None)
    ranked = present + ([math.inf] * (len(values) - len(present)) if missing_is_late else [])
    def pct(q: float) -> float | None:
        if not ranked:
            return None
        value = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
        return None if math.isinf(value) else round(value, 4)
    return {
        "n": len(values),
        "missing": len(values) - len(present),
        "mean": round(sum(present) / len(present), 4) if present else None,
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": pct(1.0),
    }


def analyse(data: StepData, slo: Slo) -> dict[str, Any]:
    candidates = data.candidates
    s = data.settings
    answers = [a for c in candidates for a in c.answers]
    result: dict[str, Any] = {
        "sessions": s.sessions,
        "scenario": s.scenario,
        "scenarios": dict(Counter(c.scenario for c in candidates)),
        "ramp_s": s.ramp_s,
        "duration_s": s.duration_s,
        "wall_s": round(data.wall_s, 2),
        "errors": [f"candidate {c.index} ({c.scenario}): {c.error}" for c in candidates if c.error]
        + data.errors + [f"worker {w.worker}: unhandled error in its event loop: {e}"
                         for w in data.workers for e in w.loop_errors],
        "connect_s": stats([c.connect_s for c in candidates], missing_is_late=True),
        "rejoin_connect_s": stats([c.rejoin_connect_s for c in candidates
                                   if SCENARIOS[c.scenario].drop_at is not None]),
        "transcript_latency_s": stats([a.transcript_latency_s for a in answers],
                                      missing_is_late=True),
        "turn_latency_s": stats([a.turn_latency_s for a in answers], missing_is_late=True),
        # Short answers get a longer end-of-turn wait by design: see it per clip.
        "turn_latency_by_clip_s": {
            clip: stats([a.turn_latency_s for a in answers if a.clip == clip], missing_is_late=True)
            for clip in sorted({a.clip for a in answers})},
        "wer": _wer(candidates, data.rows),
        "anomalies": _anomalies(candidates, data.rows),
        "rows": _rows(data),
        "interview": _interview(candidates),
        "frames": _frames(data, candidates),
        "server_histograms": _histograms(data),
        "server": _server(data.samples),
        "nodes": by_node(candidates, data.rows, data.nodes, data.node_samples, data.samples),
        "client": _client(data),
        "candidates": [asdict(c) for c in candidates],
    }
    result["slo"] = _slo(result, candidates, slo)
    return result


def by_node(candidates: list[CandidateResult], rows: dict[str, dict[str, Any] | None],
            nodes: list[NodeInfo], node_samples: dict[str, list[ServerSample]],
            samples: list[ServerSample]) -> list[dict[str, Any]]:
    """One entry per node: the sessions it held and what became of them, the
    503s it answered, its CPU and RSS. The listed nodes first (index order),
    then any only seen in `X-Node`, then the candidates no node answered.
    With a single node the run's own samples are its CPU and RSS."""
    listed = {n.node_id: n for n in nodes}
    groups: dict[str, list[CandidateResult]] = {}
    for c in candidates:
        groups.setdefault(_holder(c, nodes) or NO_NODE, []).append(c)
    refusals = Counter(c.refused_by for c in candidates if c.refused_by)
    seen = [*listed, *sorted({*groups, *refusals} - set(listed) - {NO_NODE})]
    single = len(seen) == 1
    entries = []
    for node_id in seen + ([NO_NODE] if NO_NODE in groups else []):
        info = listed.get(node_id)
        own = node_samples.get(node_id) or (samples if single and node_id != NO_NODE else [])
        server = _server(own) if own else None
        entries.append({
            "node_id": node_id,
            "node_index": info.node_index if info else None,
            "url": info.url if info else None,
            **_node_sessions(groups.get(node_id, []), rows, info, len(nodes)),
            "refusals": refusals.get(node_id, 0),
            "cpu_pct": server["cpu_pct"] if server else {"mean": None, "max": None},
            "rss_mb_max": server["rss_mb"]["max"] if server else None,
        })
    return entries


def _holder(c: CandidateResult, nodes: list[NodeInfo]) -> str | None:
    """The node that holds `c`'s session: its `X-Node`; else, from the id, the
    node whose index minted it (the id's last byte mod the node count: routing.py)."""
    if c.node is not None or c.session_id is None or not nodes:
        return c.node
    index = uuid.UUID(c.session_id).bytes[-1] % len(nodes)
    return next((n.node_id for n in nodes if n.node_index == index), None)


def _node_sessions(group: list[CandidateResult], rows: dict[str, dict[str, Any] | None],
                   info: NodeInfo | None, node_count: int) -> dict[str, Any]:
    answers = [a for c in group for a in c.answers]
    ids = [c.session_id for c in group if c.session_id]
    w, a = _wer(group, rows), _anomalies(group, rows)
    minted_elsewhere = sum(
        1 for sid in ids if info is not None and info.node_index is not None
        and uuid.UUID(sid).bytes[-1] % node_count != info.node_index)
    return {
        "sessions": len(group),
        "scenarios": dict(Counter(c.scenario for c in group)),
        "completed": sum(1 for sid in ids if (rows.get(sid) or {}).get("status") == "completed"),
        "errors": sum(1 for c in group if c.error),
        "wer": {"live_mean": w["live_mean"], "stored_mean": w["stored_mean"]},
        "turn_latency_s": stats([x.turn_latency_s for x in answers], missing_is_late=True),
        "anomalies": {k: a[k] for k in ("expected", "detected", "missed", "unexpected")},
        # Routing: an offer answered by another node, an id another node's index minted.
        "offers_elsewhere": sum(1 for c in group for n in c.offer_nodes if n != c.node),
        "minted_elsewhere": minted_elsewhere,
    }


def _wer(candidates: list[CandidateResult], rows: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Per answer (live transcripts) and per session (the stored user turns)."""
    live = [a.wer for c in candidates for a in c.answers if a.wer is not None and a.transcript]
    stored = []
    for c in candidates:
        row = rows.get(c.session_id or "")
        if not c.answers or row is None:
            continue
        said = " ".join(a.reference for a in c.answers)
        heard = " ".join(t["content"] for t in _history(row) if t.get("role") == "user")
        stored.append(wer(said, heard))
    return {
        "answers": len([a for c in candidates for a in c.answers]),
        "answers_without_transcript": sum(1 for c in candidates for a in c.answers
                                          if not a.transcript),
        "live_mean": round(sum(live) / len(live), 4) if live else None,
        "live_max": round(max(live), 4) if live else None,
        "stored_mean": round(sum(stored) / len(stored), 4) if stored else None,
    }


def _history(row: dict[str, Any]) -> list[dict[str, Any]]:
    info = row.get("session_information") or {}
    return list(info.get("conversation_history") or [])


def _stored_anomalies(row: dict[str, Any] | None) -> set[str]:
    info = (row or {}).get("session_information") or {}
    return {str(a.get("type")) for a in info.get("anomalies_detected") or []}


def _anomalies(candidates: list[CandidateResult],
               rows: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    expected = detected = missed = unexpected = mismatched = 0
    by_type: Counter[str] = Counter()
    for c in candidates:
        want = set(SCENARIOS[c.scenario].expected_anomalies)
        stored = _stored_anomalies(rows.get(c.session_id or ""))
        expected += len(want)
        detected += len(want & stored)
        missed += len(want - stored)
        unexpected += len(stored - want)
        mismatched += set(c.anomalies_channel) != stored
        by_type.update(stored)
    return {"expected": expected, "detected": detected, "missed": missed,
            "unexpected": unexpected, "channel_vs_row_mismatch": mismatched,
            "stored_by_type": dict(by_type)}


def _rows(data: StepData) -> dict[str, Any]:
    ids = sorted(data.rows)
    found = [sid for sid in ids if data.rows[sid] is not None]
    completed = [sid for sid in found if (data.rows[sid] or {}).get("status") == "completed"]
    return {
        "expected": len(ids),
        "found": len(found),
        "completed": len(completed),
        "lost": len(ids) - len(completed),
        "not_completed": {sid: (data.rows[sid] or {}).get("status") for sid in ids
                          if sid not in completed},
        "with_report": sum(1 for sid in found if (data.rows[sid] or {}).get("Interview_report")),
    }


def _interview(candidates: list[CandidateResult]) -> dict[str, Any]:
    rejoiners = [c for c in candidates if SCENARIOS[c.scenario].drop_at is not None]
    silent = [c for c in candidates if not SCENARIOS[c.scenario].answers]
    return {
        "interviewer_lines": sum(c.interviewer_lines for c in candidates),
        "rejoins": len(rejoiners),
        "welcomed_back": sum(1 for c in rejoiners if c.welcome_back),
        "rejoin_409_retries": sum(c.rejoin_busy_retries for c in rejoiners),
        "silent_sessions": len(silent),
        "transcripts_from_silence": sum(c.transcripts_unprompted for c in silent),
        "nudges": sum(c.nudges for c in candidates),
        "interviews_finished": sum(1 for c in candidates if c.interview_ended),
    }


def _frames(data: StepData, candidates: list[CandidateResult]) -> dict[str, Any]:
    sent = {
        "audio_packets_sent": sum(c.audio_packets_sent for c in candidates),
        "video_packets_sent": sum(c.video_packets_sent for c in candidates),
        "interviewer_frames_heard": sum(c.interviewer_frames for c in candidates),
    }
    after, before = data.metrics_after, data.metrics_before
    if not data.metrics_available or after is None:
        return {"available": False, **sent}
    def delta(name: str, **labels: str) -> float:
        return (after.value(name, **labels) or 0.0) - ((before.value(name, **labels) if before else 0.0) or 0.0)
    analysed = delta("interview_video_samples_total", result="analysed")
    dropped = delta("interview_video_samples_total", result="dropped")
    return {
        "available": True,
        **sent,
        "received": {k: delta("interview_frames_received_total", kind=k) for k in ("audio", "video")},
        "dropped": {k: delta("interview_frames_dropped_total", kind=k) for k in ("audio", "video")},
        "video_samples": {"analysed": analysed, "dropped": dropped},
        "analysed_ratio": round(analysed / (analysed + dropped), 4) if analysed + dropped else None,
        "speech_pieces_dropped": delta("interview_speech_pieces_dropped_total"),
        "db_write_failures": delta("interview_db_write_failures_total"),
        "outbox_rows": after.value("interview_outbox_rows"),
        "cpu_by_stage_s": _cpu_by_stage(after, before),
    }


def _cpu_by_stage(after: MetricsSnapshot, before: MetricsSnapshot | None) -> dict[str, float]:
    """CPU seconds each server stage spent during the step (interview_cpu_seconds_total)."""
    now = after.by_label("interview_cpu_seconds_total", "stage")
    then = before.by_label("interview_cpu_seconds_total", "stage") if before else {}
    return {stage: round(v - then.get(stage, 0.0), 3) for stage, v in sorted(now.items())}


def _histograms(data: StepData) -> dict[str, Any]:
    after = data.metrics_after
    if not data.metrics_available or after is None:
        return {}
    return {name: asdict(HistogramSummary.between(data.metrics_before, after, name))
            for name in SERVER_HISTOGRAMS}


def _server(samples: list[ServerSample]) -> dict[str, Any]:
    def series(name: str) -> list[float]:
        return [v for s in samples if (v := getattr(s, name)) is not None]
    cpu, rss, db_cpu, db_rss = (series(n) for n in ("cpu_pct", "rss_mb", "db_cpu_pct", "db_rss_mb"))
    return {
        "cpu_pct": {"mean": _mean(cpu), "max": _max(cpu)},
        "rss_mb": {"start": round(rss[0], 1) if rss else None, "max": _max(rss),
                   "end": round(rss[-1], 1) if rss else None},
        "db_cpu_pct": {"mean": _mean(db_cpu), "max": _max(db_cpu)},
        "db_rss_mb": {"max": _max(db_rss)},
        "live_sessions_max": max((s.live_sessions or 0 for s in samples), default=0),
        "queues": _queues(samples),
        "samples": [asdict(s) for s in samples],
    }


def _queues(samples: list[ServerSample]) -> dict[str, dict[str, float]]:
    """Per queue, the most items ever seen waiting and the oldest one's greatest age."""
    peaks: dict[str, dict[str, float]] = {}
    for s in samples:
        for name, depth in s.queue_depth.items():
            peak = peaks.setdefault(name, {"depth_max": 0.0, "oldest_s_max": 0.0})
            peak["depth_max"] = max(peak["depth_max"], depth)
            peak["oldest_s_max"] = max(peak["oldest_s_max"], round(s.queue_oldest_s.get(name, 0.0), 3))
    return peaks


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _max(values: list[float]) -> float | None:
    return round(max(values), 1) if values else None


def _client(data: StepData) -> dict[str, Any]:
    cpu = sum(w.cpu_s for w in data.workers)
    peer_s = sum(w.peer_s for w in data.workers)
    lag = max((c.max_send_lag_s for c in data.candidates), default=0.0)
    sent = sum(c.audio_packets_sent + c.video_packets_sent for c in data.candidates)
    late = sum(c.packets_sent_late for c in data.candidates) / sent if sent else 0.0
    return {
        "workers": len(data.workers),
        "cpu_s": round(cpu, 2),
        "peer_s": round(peer_s, 1),
        "cpu_per_peer_pct": round(100 * cpu / peer_s, 2) if peer_s else None,
        "max_send_lag_s": round(lag, 3),
        "late_packets": round(late, 5),
        "overloaded": late > CLIENT_LATE_WARN,
        "per_worker": [{"worker": w.worker, "candidates": len(w.candidates),
                        "cpu_s": round(w.cpu_s, 2), "wall_s": round(w.wall_s, 1),
                        "peer_s": round(w.peer_s, 1), "max_rss_mb": round(w.max_rss_mb, 1),
                        "cpu_per_peer_pct": None if w.cpu_per_peer_pct is None
                        else round(w.cpu_per_peer_pct, 2)} for w in data.workers],
    }


def _slo(result: dict[str, Any], candidates: list[CandidateResult], slo: Slo) -> dict[str, Any]:
    checks = [
        _turn_check(result, candidates, slo),
        _analysed_check(result, slo),
        _check("lost rows", f"<= {slo.max_lost_rows}", result["rows"]["lost"],
               result["rows"]["lost"] <= slo.max_lost_rows),
        _check("client errors", "== 0", len(result["errors"]), not result["errors"]),
    ]
    return {"checks": checks, "passed": all(c["ok"] for c in checks)}


def _check(name: str, target: str, value: Any, ok: bool, note: str = "") -> dict[str, Any]:
    return {"name": name, "target": target, "value": value, "ok": ok, "note": note}


def _turn_check(result: dict[str, Any], candidates: list[CandidateResult], slo: Slo) -> dict[str, Any]:
    turn = result["turn_latency_s"]
    target = f"<= {slo.p95_turn_latency_s:g} s"
    answering = any(SCENARIOS[c.scenario].answers for c in candidates)
    if turn["n"] == 0:
        note = "no answer was given: the interviewer never listened" if answering else "no answers"
        return _check("p95 turn latency", target, None, not answering, note)
    p95 = turn["p95"]
    note = f"{turn['missing']} of {turn['n']} answers got no reply" if turn["missing"] else ""
    return _check("p95 turn latency", target, p95, p95 is not None and p95 <= slo.p95_turn_latency_s,
                  note)


def _analysed_check(result: dict[str, Any], slo: Slo) -> dict[str, Any]:
    target = f">= {slo.min_analysed:g}"
    frames = result["frames"]
    if not frames["available"]:
        return _check("video samples analysed", target, None, True,
                      "not measured: the server has no /metrics")
    ratio = frames["analysed_ratio"]
    return _check("video samples analysed", target, ratio, ratio is not None and ratio >= slo.min_analysed)

