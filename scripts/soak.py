"""Soak test: one long-lived server, back-to-back load-test rounds, RSS watched.

Starts `server.py` once (embedded PostgreSQL, loopback ICE), then runs
`python -m loadtest --server URL` rounds of `--round-s` seconds with
`--sessions` candidates until `--minutes` have passed, sampling the server's
RSS and CPU every `--sample-s` seconds. Prints the RSS growth after the
warm-up and the rows lost over all rounds, and writes `soak.json` and
`soak.png` (RSS and CPU over time) to `--out`.

    .venv/bin/python scripts/soak.py --minutes 30 --sessions 2 --out artifacts/soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from testing import start_server

REPO = Path(__file__).resolve().parents[1]


def sample(pid: int, every_s: float, stop: threading.Event, out: list[dict[str, float]]) -> None:
    """RSS (MB, server and its children) and CPU % of the server process tree."""
    root = psutil.Process(pid)
    t0 = time.monotonic()
    root.cpu_percent()
    while not stop.wait(every_s):
        try:
            procs = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs if p.name() != "postgres")
            out.append({"t": time.monotonic() - t0, "rss_mb": rss / 2**20,
                        "cpu_pct": root.cpu_percent()})
        except psutil.Error:
            return


def run_rounds(url: str, args: argparse.Namespace, out: Path) -> list[dict[str, object]]:
    rounds = []
    deadline = time.monotonic() + args.minutes * 60
    n = 0
    while time.monotonic() + args.round_s < deadline:
        n += 1
        round_dir = out / f"round-{n:03d}"
        cmd = [sys.executable, "-m", "loadtest", "--server", url, "--sessions",
               str(args.sessions), "--duration", str(args.round_s), "--ramp", "4",
               "--scenario", args.scenario, "--no-plots", "--no-warmup", "--out", str(round_dir),
               "--slo-p95-turn-latency", "1000"]
        code = subprocess.call(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run = json.loads((round_dir / "result.json").read_text())["runs"][0]
            rows = run["rows"]
        except (OSError, KeyError, IndexError, ValueError):
            rows = {"expected": args.sessions, "found": 0, "lost": args.sessions}
        rounds.append({"round": n, "exit": code, "rows": rows})
        print(f"round {n}: exit {code}, rows {rows.get('found')}/{rows.get('expected')} "
              f"lost {rows.get('lost')}", flush=True)
    return rounds


def growth(samples: list[dict[str, float]], warmup_s: float) -> tuple[float, float, float]:
    """(RSS mean in the first 5 min after warm-up, in the last 5 min, growth %)."""
    after = [s for s in samples if s["t"] >= warmup_s]
    first = [s["rss_mb"] for s in after if s["t"] < warmup_s + 300] or [0.0]
    end = after[-1]["t"] if after else 0.0
    last = [s["rss_mb"] for s in after if s["t"] > end - 300] or [0.0]
    a, b = statistics.mean(first), statistics.mean(last)
    return a, b, (b - a) / a * 100 if a else 0.0


def plot(samples: list[dict[str, float]], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(t, [s["rss_mb"] for s in samples])
    top.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    top.set_ylabel("server RSS (MB)")
    top.legend()
    bottom.plot(t, [s["cpu_pct"] for s in samples], color="tab:orange")
    bottom.set_ylabel("server CPU (% of a core)")
    bottom.set_xlabel("minutes")
    fig.suptitle("Soak: back-to-back load-test rounds against one server")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def soak(args: argparse.Namespace, extra: dict[str, str]
               ) -> tuple[list[dict[str, object]], list[dict[str, float]]]:
    """One server for every round, sampled throughout; (rounds, samples)."""
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as data_dir:
        env = {"DATA_DIR": data_dir, "ICE_LOOPBACK_ONLY": "1", **extra}
        async with start_server(env, log_path=args.out / "server.log", stop_timeout_s=120) as server:
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(server.pid, args.sample_s, stop, samples))
            sampler.start()
            try:
                rounds = await asyncio.to_thread(run_rounds, server.url, args, args.out)
            finally:
                stop.set()
                await asyncio.to_thread(sampler.join)
    return rounds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--round-s", type=float, default=120)
    parser.add_argument("--scenario", default="mixed")
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--warmup-s", type=float, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "soak")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = dict(item.split("=", 1) for item in args.server_env)
    rounds, samples = asyncio.run(soak(args, extra))
    first, last, pct = growth(samples, args.warmup_s)
    lost = sum(int(r["rows"].get("lost", 0)) for r in rounds)  # type: ignore[union-attr]
    expected = sum(int(r["rows"].get("expected", 0)) for r in rounds)  # type: ignore[union-attr]
    result = {"minutes": args.minutes, "sessions": args.sessions, "rounds": rounds,
              "rss_mb_first_5min_after_warmup": round(first, 1),
              "rss_mb_last_5min": round(last, 1), "rss_growth_pct": round(pct, 2),
              "rows_expected": expected, "rows_lost": lost, "samples": samples}
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    plot(samples, args.warmup_s, args.out / "soak.png")
    print(f"{len(rounds)} rounds of {args.sessions} sessions over {args.minutes:g} min; "
          f"rows lost {lost}/{expected}; RSS after warm-up {first:.0f} MB -> last 5 min "
          f"{last:.0f} MB ({pct:+.1f} %)")


if __name__ == "__main__":
    main()
