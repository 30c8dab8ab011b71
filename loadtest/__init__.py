"""Load generator for the interview media server.

`python -m loadtest --spawn-server --sessions 4 --duration 60` runs simulated
candidates as real aiortc peers (pre-encoded Opus and VP8, so they are cheap)
over worker processes, checks what the server produced against what each
scripted candidate did, and writes result.json, summary.md and plots.
See `loadtest/cli.py` for every option.
"""

from loadtest.analysis import Slo, analyse
from loadtest.cli import LoadTestConfig, main
from loadtest.scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "LoadTestConfig", "Scenario", "Slo", "analyse", "main"]
