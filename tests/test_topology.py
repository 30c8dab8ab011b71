"""Many machines behind a standard load balancer, on one machine (issue 15).

Three nodes (`python server.py`, each `WORKERS=3 WORKER_INDEX=<i>`), one
PostgreSQL and HAProxy with the shipped `deploy/haproxy.cfg`, each in its
own network namespace joined by veth pairs and a bridge (`testing/topology.py`);
the candidates (real aiortc peers speaking a recorded sentence) in another.
Everything happens inside private namespaces (`unshare -n -m -p -f
--mount-proc`): no packet reaches the machine's network, no name appears in
its /run/netns, and every process dies with the run.

The driver (`tests/topology/driver.py`) runs the steps once and writes each
check; the tests below assert them in groups. Logs (each node's, HAProxy's,
PostgreSQL's) and the results stay in the run's work directory, printed on
failure.

Needs root, util-linux `unshare` and `setpriv`, iproute2 `ip`, `haproxy`
(Debian: `apt-get install -y haproxy`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

DRIVER_TIMEOUT_S = 200


def _missing() -> str | None:
    """Why the topology test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: the run builds network namespaces (unshare -n -m, ip netns)"
    for tool, package in (("unshare", "util-linux"), ("setpriv", "util-linux"),
                          ("ip", "iproute2"), ("haproxy", "haproxy")):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install -y {package}"
    probe = subprocess.run(["unshare", "-n", "-m", "-p", "-f", "--mount-proc", "true"],
                           check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create private namespaces here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def topology_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the driver once in private namespaces; its results, and where its logs are."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("topology")
    out = work / "results.json"
    command = ["unshare", "-n", "-m", "-p", "-f", "--mount-proc",
               sys.executable, "-m", "tests.topology.driver",
               "--work", str(work), "--out", str(out), "--timeout", str(DRIVER_TIMEOUT_S - 20)]
    proc = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=DRIVER_TIMEOUT_S)
    output = proc.stdout + proc.stderr
    (work / "driver.log").write_text(output)
    if not out.exists():
        pytest.fail(f"the driver wrote no results (exit {proc.returncode}):\n{output}")
    results: dict[str, Any] = json.loads(out.read_text())
    results["work"] = str(work)
    return results


def _failures(results: dict[str, Any], names: tuple[str, ...]) -> str:
    checks = results["checks"]
    lines = [f"run: {checks['run']['detail']}"] if "run" in checks else []
    lines += [f"{name}: never reached" for name in names if name not in checks]
    lines += [f"{name}: {checks[name]['detail']}" for name in names
              if name in checks and not checks[name]["ok"]]
    return "\n".join(lines) + (f"\n(logs in {Path(results['work'])})" if lines else "")


def _assert(results: dict[str, Any], *names: str) -> None:
    failures = _failures(results, names)
    assert not failures, failures


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_sessions_on_every_node_through_haproxy(topology_run: dict[str, Any]) -> None:
    """POST /sessions through HAProxy reaches every node; each session is joined
    through HAProxy by a real peer whose media goes to its node, heard, and ended."""
    _assert(topology_run, "isolated", "spread", "joined",
            *(f"transcript_n{i}" for i in range(3)))


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_management_calls_agree_on_every_node(topology_run: dict[str, Any]) -> None:
    """Row, info, review and the list: the same answer from every node directly
    and through HAProxy, for live and ended sessions."""
    _assert(topology_run, "live_anywhere", "rows_agree", "list_agrees")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_live_session_ends_through_any_node(topology_run: dict[str, Any]) -> None:
    """`POST /sessions/{id}/end` sent to a node that does not hold the session
    ends it on the node that does (forwarding through the node directory)."""
    _assert(topology_run, "end_anywhere")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_drained_node_finishes_and_gets_nothing_new(topology_run: dict[str, Any]) -> None:
    """`POST /admin/drain`: /healthz answers 503 draining, HAProxy's pool sends
    no new session there, and the interview live on it still finishes."""
    _assert(topology_run, "drain_transcript", "drain_healthz", "drain_no_new_sessions",
            "drain_live_finishes")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_killed_node_is_survived(topology_run: dict[str, Any]) -> None:
    """SIGKILL mid-interview: new sessions go to the survivors at once, the
    session stays readable through HAProxy, nothing saved is lost."""
    _assert(topology_run, "kill_transcript", "kill_new_to_survivors", "kill_session_readable",
            "saved_rows_intact")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_killed_nodes_interview_is_interrupted_within_60_s(
        topology_run: dict[str, Any]) -> None:
    """The killed node's live row becomes `interrupted` within 60 s, swept by a
    survivor that sees the node's heartbeat stop."""
    _assert(topology_run, "kill_interrupted")


@pytest.mark.timeout(DRIVER_TIMEOUT_S + 30)
def test_a_killed_nodes_interview_goes_on_on_a_survivor(topology_run: dict[str, Any]) -> None:
    """Its candidate rejoins through HAProxy (retrying while told to): a
    survivor takes the interview over from the last checkpoint, the earlier
    answer kept, and the next one is transcribed and saved there."""
    _assert(topology_run, "continue_first_answer", "continue_second_answer",
            "continue_on_survivor")
