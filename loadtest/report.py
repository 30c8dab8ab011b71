"""What a load test leaves in `--out`: result.json, summary.md and PNG plots.

The plots need matplotlib, an optional dependency: without it (or with
`--no-plots`) the JSON and Markdown are still written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["summary_markdown", "write_plots", "write_result"]


def write_result(out: Path, document: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "result.json"
    path.write_text(json.dumps(document, indent=2, default=str, allow_nan=False) + "\n")
    return path


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{100 * ratio:.2f}%"


def _pair(stat: dict[str, Any]) -> str:
    text = f"{_fmt(stat['p50'])} / {_fmt(stat['p95'])}"
    return text + (f" ({stat['missing']} none)" if stat.get("missing") else "")


_HEADER = ("| sessions | connect p95 s | transcript p50/p95 s | turn p50/p95 s | WER live/stored "
           "| anomalies found/expected (unexpected) | rows completed/expected | video analysed "
           "| server CPU mean/max % | server RSS max MB | client CPU/peer % | SLO |")


def _row(run: dict[str, Any]) -> str:
    w, a, r, f = run["wer"], run["anomalies"], run["rows"], run["frames"]
    cpu, rss = run["server"]["cpu_pct"], run["server"]["rss_mb"]
    return (f"| {run['sessions']} | {_fmt(run['connect_s']['p95'])} | {_pair(run['transcript_latency_s'])} "
            f"| {_pair(run['turn_latency_s'])} | {_fmt(w['live_mean'])} / {_fmt(w['stored_mean'])} "
            f"| {a['detected']}/{a['expected']} ({a['unexpected']}) | {r['completed']}/{r['expected']} "
            f"| {_percent(f.get('analysed_ratio')) if f['available'] else 'n/a'} "
            f"| {_fmt(cpu['mean'], digits=0)} / {_fmt(cpu['max'], digits=0)} | {_fmt(rss['max'], digits=0)} "
            f"| {_fmt(run['client']['cpu_per_peer_pct'])} | {'pass' if run['slo']['passed'] else 'FAIL'} |")


def summary_markdown(document: dict[str, Any]) -> str:
    settings, runs = document["settings"], document["runs"]
    server = document["server"]
    env = " ".join(f"{k}={v}" for k, v in server.get("env", {}).items()
                   if k not in ("DATA_DIR", "PORT", "PYTHONUNBUFFERED"))
    lines = [f"# Load test {document['started_at']}", "",
             f"- server: {server['url']} ({server['mode']}{'; ' + env if env else ''})",
             (f"- scenario: {settings['scenario']}; ramp {settings['ramp_s']:g} s; "
              f"duration {settings['duration_s']:g} s per candidate; "
              f"{', '.join(str(r['client']['workers']) for r in runs)} client worker process(es)"),
             (f"- warm-up, offer to greeting heard (models loading): "
              f"{_fmt(document['server'].get('warmup_s'))} s"),
             "", _HEADER, _separator(),
             *(_row(run) for run in runs), "", *_node_table(runs), _TURN_NOTE, "",
             *_server_table(runs)]
    final = runs[-1] if runs else None
    if document.get("capacity") is not None:
        cap = document["capacity"]
        lines += [f"**Capacity: {cap['sessions_held']} concurrent session(s) held every SLO**"
                  + (f"; {cap['broke_at']} broke it." if cap.get("broke_at") else "."), ""]
        final = next((r for r in runs if not r["slo"]["passed"]), final)
    if final is not None:
        lines += _slo_table(final) + _notes(final)
    return "\n".join(lines) + "\n"


_NODE_HEADER = ("| sessions | node | index | held | completed | WER live/stored | turn p50/p95 s "
                "| anomalies found/expected (unexpected) | refused (503) | CPU mean/max % "
                "| RSS max MB |")


def _node_table(runs: list[dict[str, Any]]) -> list[str]:
    """Per node, every step: the sessions it held (its `X-Node`) and what became of them."""
    if not any(run.get("nodes") for run in runs):
        return []
    lines = ["Per node (the node that answered each candidate, `X-Node`):", "", _NODE_HEADER,
             "|" + "---|" * (_NODE_HEADER.count("|") - 1)]
    for run in runs:
        for node in run.get("nodes", []):
            w, a, cpu = node["wer"], node["anomalies"], node["cpu_pct"]
            lines.append(
                f"| {run['sessions']} | {node['node_id']} | {_fmt(node['node_index'])} "
                f"| {node['sessions']} | {node['completed']}/{node['sessions']} "
                f"| {_fmt(w['live_mean'])} / {_fmt(w['stored_mean'])} | {_pair(node['turn_latency_s'])} "
                f"| {a['detected']}/{a['expected']} ({a['unexpected']}) | {node['refusals']} "
                f"| {_fmt(cpu['mean'], digits=0)} / {_fmt(cpu['max'], digits=0)} "
                f"| {_fmt(node['rss_mb_max'], digits=0)} |")
    return lines + [""]


_SERVER_COLUMNS = (
    ("interview_asr_seconds", "ASR"),
    ("interview_detect_seconds", "detect"),
    ("interview_tts_seconds", "TTS"),
    ("interview_llm_first_sentence_seconds", "first sentence"),
    ("interview_transcript_latency_seconds", "transcript latency"),
    ("interview_turn_latency_seconds", "turn latency"),
)


def _server_table(runs: list[dict[str, Any]]) -> list[str]:
    """The server's own view (/metrics), p50/p95 seconds per step."""
    if not any(run["server_histograms"] for run in runs):
        return []
    header = ("| sessions | " + " | ".join(f"{title} p50/p95 s" for _, title in _SERVER_COLUMNS)
              + " | audio frames dropped | speech pieces dropped | longest wait seen in a queue (1 s samples) |")
    lines = ["Server side, from /metrics:", "", header, "|---" * (len(_SERVER_COLUMNS) + 4) + "|"]
    for run in runs:
        h, f = run["server_histograms"], run["frames"]
        cells = [f"{_fmt(h[name]['p50'])} / {_fmt(h[name]['p95'])}" if name in h else "–"
                 for name, _ in _SERVER_COLUMNS]
        dropped = f.get("dropped", {}).get("audio")
        lines.append(f"| {run['sessions']} | " + " | ".join(cells)
                     + f" | {_fmt(dropped, digits=0)} | {_fmt(f.get('speech_pieces_dropped'), digits=0)} "
                     + f"| {_longest_wait(run['server'].get('queues', {}))} |")
    return lines + [""] + _cpu_table(runs)


def _cpu_table(runs: list[dict[str, Any]]) -> list[str]:
    """CPU per session by stage, % of one core (interview_cpu_seconds_total)."""
    stages = sorted({stage for run in runs for stage in run["frames"].get("cpu_by_stage_s", {})})
    if not stages:
        return []
    lines = ["CPU per session by stage, % of one core (interview_cpu_seconds_total over the step):",
             "", "| sessions | " + " | ".join(stages) + " | all |", "|---" * (len(stages) + 2) + "|"]
    for run in runs:
        cpu = run["frames"].get("cpu_by_stage_s", {})
        per = max(run["sessions"] * run["wall_s"], 1e-9)
        cells = [_fmt(100 * cpu[stage] / per, digits=1) if stage in cpu else "–" for stage in stages]
        lines.append(f"| {run['sessions']} | " + " | ".join(cells)
                     + f" | {_fmt(100 * sum(cpu.values()) / per, digits=1)} |")
    return lines + [""]


def _longest_wait(queues: dict[str, dict[str, float]]) -> str:
    """The queue whose oldest item waited longest during the run (the slowest stage).

    Sampled once a second, so a lower bound; waits shorter than that are mostly missed.
    """
    if not queues:
        return "–"
    name, peak = max(queues.items(), key=lambda item: item[1]["oldest_s_max"])
    if peak["oldest_s_max"] <= 0:
        return "none seen"
    return f"{peak['oldest_s_max']:.2f} s ({name}, up to {peak['depth_max']:.0f} waiting)"


_TURN_NOTE = (
    "Turn latency is the candidate's last voiced packet sent → the interviewer's voice heard. "
    "It includes the silence the server waits before it judges the answer over (with the "
    "default TURN_DETECTION=smart-turn: 0.2 s and the draft transcript when the end-of-turn "
    "model and the text agree, else up to TURN_CEILING_S, 3 s; the row's "
    "`turn_decisions` say which); result.json has it per clip (`turn_latency_by_clip_s`).")


def _separator() -> str:
    return "|" + "---|" * (_HEADER.count("|") - 1)


def _slo_table(run: dict[str, Any]) -> list[str]:
    lines = [f"SLO checks at {run['sessions']} session(s):", "",
             "| check | target | measured | verdict | note |", "|---|---|---|---|---|"]
    for c in run["slo"]["checks"]:
        lines.append(f"| {c['name']} | {c['target']} | {_fmt(c['value'], digits=4)} "
                     f"| {'ok' if c['ok'] else 'BROKEN'} | {c['note']} |")
    return lines + [""]


def _notes(run: dict[str, Any]) -> list[str]:
    notes = []
    if run["client"]["overloaded"]:
        notes.append(f"- the clients fell behind ({100 * run['client']['late_packets']:.1f}% of packets "
                     f"sent over 40 ms late, up to {run['client']['max_send_lag_s']} s): use more "
                     "workers or another machine; latencies include client delay")
    if not run["frames"]["available"]:
        notes.append("- the server has no /metrics: frame counters and server histograms not measured")
    notes += [f"- error: {e}" for e in run["errors"][:10]]
    return notes + ([""] if notes else [])


# -- plots ------------------------------------------------------------------------


def write_plots(out: Path, runs: list[dict[str, Any]], slo_turn_s: float) -> list[Path]:
    """latency.png and server.png; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = [_latency_plot(plt, out / "latency.png", runs, slo_turn_s),
             _server_plot(plt, out / "server.png", runs)]
    plt.close("all")
    return paths


_LATENCIES = (("connect_s", "connect"), ("transcript_latency_s", "last voiced → transcript"),
              ("turn_latency_s", "last voiced → interviewer voice"))


def _latency_plot(plt: Any, path: Path, runs: list[dict[str, Any]], slo_turn_s: float) -> Path:
    fig, axes = plt.subplots(1, len(_LATENCIES), figsize=(13, 4), sharey=False)
    labels = [str(r["sessions"]) for r in runs]
    x = range(len(runs))
    for ax, (key, title) in zip(axes, _LATENCIES):
        for offset, q in ((-0.2, "p50"), (0.2, "p95")):
            values = [_num(r[key][q]) for r in runs]
            ax.bar([i + offset for i in x], values, width=0.4, label=q)
        if key == "turn_latency_s":
            ax.axhline(slo_turn_s, color="red", linestyle="--", linewidth=1, label="SLO p95")
        ax.set_xticks(list(x), labels)
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("Latency percentiles by session count (missing bars: no reply)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _server_plot(plt: Any, path: Path, runs: list[dict[str, Any]]) -> Path:
    fig, (cpu_ax, rss_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for run in runs:
        samples = run["server"]["samples"]
        t = [s["t"] for s in samples]
        label = f"{run['sessions']} session(s)"
        cpu_ax.plot(t, [_num(s["cpu_pct"]) for s in samples], label=label)
        rss_ax.plot(t, [_num(s["rss_mb"]) for s in samples], label=label)
    cpu_ax.set_ylabel("server CPU, % of one core")
    rss_ax.set_ylabel("server RSS, MB")
    rss_ax.set_xlabel("seconds since the step started")
    cpu_ax.legend(fontsize=8)
    cpu_ax.set_title("Server CPU and memory over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
