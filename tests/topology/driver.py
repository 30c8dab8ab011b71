"""Three servers behind HAProxy on one PostgreSQL, each in its own network namespace.

`tests/test_topology.py` runs this module as root in private namespaces:

    unshare -n -m -p -f --mount-proc .venv/bin/python -m tests.topology.driver \\
        --work DIR --out FILE

It builds the network with `testing.topology` (db, lb, n0-n2, and this
process's own namespace as the candidates'), starts PostgreSQL, the nodes
and HAProxy with `deploy/haproxy.cfg`, and then, through HAProxy's one
address: creates, joins (real aiortc peers speaking a recorded sentence) and
ends a session on every node; makes every management call on every node
directly and through HAProxy; drains node 1; kills node 2 with SIGKILL. What
it checked goes to `--out` as JSON (`tests/checks.py`); the test asserts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from testing import Candidate, SpeechTrack, transcript_of, wer
from testing.topology import Topology
from tests.checks import Checks, guarded, poll, run_checks
from tests.conftest import CLIP

API_KEY = "topology-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NODES = 3
DRAINED, KILLED = 1, 2
INTERRUPTED_WITHIN_S = 60.0
HAPROXY_NOTICES_S = 4.0  # two failed checks a second apart, and some slack
# Settings every node shares beyond its own (Topology.node_env): a quick
# checkpoint so a killed node's last row is recent; no interviewer voice and
# no recording, to leave the machine's two cores to transcription.
NODE_SETTINGS = {"CHECKPOINT_S": "1", "INTERVIEWER": "0", "RECORDING": "0"}


def node_of(session_id: str) -> int:
    """The node that minted `session_id`: its last byte (routing.py)."""
    return uuid.UUID(session_id).bytes[-1] % NODES


class Run:
    def __init__(self, topo: Topology, http: aiohttp.ClientSession, checks: Checks) -> None:
        self.topo, self.http, self.checks = topo, http, checks
        self.lb = topo.lb_url
        self.ended: list[str] = []  # sessions ended in step one, one per node
        self.candidates: list[Candidate[Any, Any]] = []

    # -- HTTP --------------------------------------------------------------------

    async def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        async with self.http.request(method, url, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    async def create(self, role: str = "Backend engineer") -> dict[str, str]:
        status, body = await self.call("POST", f"{self.lb}/sessions", json={"job_role": role})
        assert status == 201, f"POST /sessions through HAProxy: {status} {body}"
        return dict(body)

    async def create_on(self, node: int, tries: int = 20) -> dict[str, str]:
        """Sessions through HAProxy until one lands on `node`."""
        for _ in range(tries):
            session = await self.create()
            if node_of(session["session_id"]) == node:
                return session
        raise AssertionError(f"{tries} sessions through HAProxy, none on node {node}")

    async def join(self, session: dict[str, str]) -> Candidate[Any, Any]:
        """A real aiortc peer, offering through HAProxy, speaking the clip."""
        candidate = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
        self.candidates.append(candidate)
        await candidate.connect(self.http, f"{self.lb}/sessions/{session['session_id']}/offer",
                                headers={"Authorization": f"Bearer {session['token']}"})
        return candidate

    async def heard(self, name: str, candidate: Candidate[Any, Any]) -> None:
        events = await candidate.wait_for("transcript", timeout=60)
        text = " ".join(e["text"] for e in events if e.get("final"))
        error = wer(transcript_of(CLIP), text)
        self.checks.record(name, error <= 0.3, f"WER {error:.2f}: {text!r}")

    # -- the steps -----------------------------------------------------------------

    async def main(self) -> None:
        routes = self.topo.routes()
        leaks = {name: table for name, table in routes.items() if "default" in table}
        self.checks.record("isolated", not leaks,
                           f"no default route in any namespace; parts {sorted(routes)}"
                           if not leaks else f"default routes: {leaks}")
        await self.topo.start_database()
        self.checks.mark("database_up")
        env = [{**self.topo.node_env(i, API_KEY), **NODE_SETTINGS} for i in range(NODES)]
        # Node 0 first: it applies the schema, which two nodes at once would race on.
        await self.topo.start_node(0, env[0])
        await asyncio.gather(*(self.topo.start_node(i, env[i]) for i in range(1, NODES)))
        await self.topo.start_haproxy()
        self.checks.mark("nodes_up")
        await asyncio.sleep(HAPROXY_NOTICES_S)  # its first health checks
        if not await guarded(self.checks, "every_node", self.every_node()):
            return
        await guarded(self.checks, "rows_agree", self.rows_agree())
        await guarded(self.checks, "list_agrees", self.list_agrees())
        survivor = await guarded(self.checks, "drain", self.drain())
        if survivor is not None:
            await guarded(self.checks, "kill", self.kill(survivor))

    async def every_node(self) -> bool:
        """One session per node through HAProxy: joined, heard, its calls made anywhere, ended."""
        sessions: dict[int, dict[str, str]] = {}
        for attempt in range(1, 31):
            session = await self.create()
            sessions.setdefault(node_of(session["session_id"]), session)
            if len(sessions) == NODES:
                break
        self.checks.record("spread", len(sessions) == NODES,
                           f"{attempt} POST /sessions through HAProxy reached nodes {sorted(sessions)}")
        if len(sessions) < NODES:
            return False
        candidates = await asyncio.gather(*(self.join(sessions[i]) for i in range(NODES)))
        self.checks.mark("joined")
        self.checks.record("joined", True, f"{NODES} peers connected to their nodes through HAProxy")
        await asyncio.gather(*(guarded(self.checks, f"transcript_n{i}", self.heard(
            f"transcript_n{i}", candidates[i])) for i in range(NODES)))
        await asyncio.sleep(2)  # a checkpoint (CHECKPOINT_S=1) with the answer in it
        await guarded(self.checks, "live_anywhere", self.live_anywhere(sessions))
        await guarded(self.checks, "end_anywhere", self.end_anywhere(sessions))
        for candidate in candidates:
            await candidate.close()
        self.ended = [sessions[i]["session_id"] for i in range(NODES)]
        return True

    async def live_anywhere(self, sessions: dict[int, dict[str, str]]) -> None:
        """A live session's row, info and review, asked of every node directly and of HAProxy,
        match its owner's answer (the others answer from the database or forward)."""
        problems, asked = [], 0
        for owner, session in sessions.items():
            sid = session["session_id"]
            for path in (f"/sessions/{sid}", f"/sessions/{sid}/info", f"/sessions/{sid}/review"):
                _, expected = await self.call("GET", self.topo.node_url(owner) + path)
                for where in self._everywhere():
                    asked += 1
                    status, body = await self.call("GET", where + path)
                    if status != 200 or _essence(body) != _essence(expected):
                        problems.append(f"{where}{path}: {status} {_diff(body, expected)}")
        self.checks.record("live_anywhere", not problems,
                           f"{asked} answers agree with the owners'" if not problems
                           else "; ".join(problems[:4]))

    async def end_anywhere(self, sessions: dict[int, dict[str, str]]) -> None:
        """`POST /end` sent to the node after the owner: the owner's interview ends."""
        problems = []
        for owner, session in sessions.items():
            sid, other = session["session_id"], (owner + 1) % NODES
            status, body = await self.call("POST", f"{self.topo.node_url(other)}/sessions/{sid}/end")
            if status != 200:
                problems.append(f"n{owner}'s session ended on n{other}: {status} {body}")
                status, body = await self.call("POST", f"{self.lb}/sessions/{sid}/end")
                if status != 200:
                    problems.append(f"and through HAProxy: {status} {body}")
        rows = {sid: await self.row(sid) for sid in (s["session_id"] for s in sessions.values())}
        not_done = {sid: row and row["status"] for sid, row in rows.items()
                    if not row or row["status"] != "completed"}
        if not_done:
            problems.append(f"rows not completed: {not_done}")
        self.checks.record("end_anywhere", not problems,
                           f"each node's session ended by a call to another node; rows completed"
                           if not problems else "; ".join(problems)
                           + " (needs forwarding to the owner: the node directory)")

    async def rows_agree(self) -> None:
        """An ended session's row, info and review: one answer, whoever is asked."""
        problems, asked = [], 0
        for sid in self.ended:
            for path in (f"/sessions/{sid}", f"/sessions/{sid}/info", f"/sessions/{sid}/review"):
                answers = {}
                for where in [self.lb, *self._everywhere()]:
                    asked += 1
                    answers[where] = await self.call("GET", where + path)
                first = answers[self.lb]
                problems += [f"{where}{path}: {a[0]} {_diff(a[1], first[1])}"
                             for where, a in answers.items() if a != first or a[0] != 200]
        said = []
        for sid in self.ended:
            history = (await self.row(sid) or {}).get("session_information", {}).get(
                "conversation_history", [])
            said.append(any(t.get("role") == "user" for t in history))
        if not all(said):
            problems.append(f"user turns saved per session: {said}")
        self.checks.record("rows_agree", not problems,
                           f"{asked} answers identical; every row has the candidate's answer"
                           if not problems else "; ".join(problems[:4]))

    async def list_agrees(self) -> None:
        """`GET /sessions` lists the same sessions, with the same status, everywhere."""
        lists = {}
        for where in [self.lb, *self._everywhere()]:
            status, body = await self.call("GET", f"{where}/sessions?limit=200")
            lists[where] = status, {s["session_id"]: s["status"] for s in body["sessions"]
                                    if s["session_id"] in self.ended} if status == 200 else body
        first = lists[self.lb]
        ok = all(v == first for v in lists.values()) and len(first[1]) == NODES
        self.checks.record("list_agrees", ok, f"every node and HAProxy list {first[1]}" if ok
                           else f"lists differ: {lists}")

    async def drain(self) -> int:
        """Drain node 1 with an interview live on it: it finishes, nothing new arrives."""
        session = await self.create_on(DRAINED)
        candidate = await self.join(session)
        await guarded(self.checks, "drain_transcript", self.heard("drain_transcript", candidate))
        node = self.topo.node_url(DRAINED)
        status, body = await self.call("POST", f"{node}/admin/drain")
        async with self.http.get(f"{node}/healthz") as resp:
            health = resp.status, (await resp.json() if resp.content_type == "application/json"
                                   else await resp.text())
        draining = health[0] == 503 and isinstance(health[1], dict) \
            and health[1].get("status") == "draining"
        self.checks.record("drain_healthz", status in (200, 202) and draining,
                           f"POST /admin/drain: {status} {body}; /healthz: {health[0]} {health[1]}")
        await asyncio.sleep(HAPROXY_NOTICES_S)
        landed = [node_of((await self.create())["session_id"]) for _ in range(6)]
        self.checks.record("drain_no_new_sessions", DRAINED not in landed,
                           f"6 new sessions through HAProxy went to nodes {landed}")
        still = candidate.pc.connectionState
        status, body = await self.call("POST", f"{self.lb}/sessions/{session['session_id']}/end")
        row = await self.row(session["session_id"]) or {}
        history = row.get("session_information", {}).get("conversation_history", [])
        self.checks.record(
            "drain_live_finishes",
            still == "connected" and status == 200 and row.get("status") == "completed"
            and any(t.get("role") == "user" for t in history),
            f"peer {still} after the drain; end through HAProxy {status}; row {row.get('status')} "
            f"with {len(history)} turns")
        await candidate.close()
        return next(i for i in range(NODES) if i not in (DRAINED, KILLED))

    async def kill(self, survivor: int) -> None:
        """SIGKILL node 2 mid-interview: its row becomes interrupted, new sessions go
        elsewhere, nothing saved is lost."""
        session = await self.create_on(KILLED)
        sid = session["session_id"]
        candidate = await self.join(session)
        await guarded(self.checks, "kill_transcript", self.heard("kill_transcript", candidate))
        # A second interview there, whose candidate will rejoin after the kill.
        going_on = await self.create_on(KILLED)
        rejoiner = await self.join(going_on)
        await guarded(self.checks, "continue_first_answer",
                      self.heard("continue_first_answer", rejoiner))
        saved = await poll(lambda: self._answer_saved(sid), 15)
        await poll(lambda: self._answer_saved(going_on["session_id"]), 15)
        before = await self.snapshot()
        await self.topo.kill_node(KILLED)
        killed_at = time.monotonic()
        self.checks.mark("killed")
        await rejoiner.close()
        continuing = asyncio.create_task(self.continues(going_on, before, killed_at),
                                         name="continue-killed")
        reading = asyncio.create_task(self._readable(sid, killed_at), name="read-killed")
        landed = [node_of((await self.create())["session_id"]) for _ in range(4)]
        # Not to the dead node, nor to the drained one (once draining works).
        drained = self.checks.checks.get("drain_healthz", {}).get("ok", False)
        refused = {KILLED, DRAINED} if drained else {KILLED}
        self.checks.record("kill_new_to_survivors", not refused & set(landed),
                           f"4 new sessions right after the kill went to nodes {landed} "
                           f"(never to {sorted(refused)})")
        await guarded(self.checks, "kill_session_readable", reading)
        await guarded(self.checks, "continue_on_survivor", continuing)

        async def interrupted() -> bool:
            row = (await self.snapshot()).get(sid)
            return row is not None and row[0] == "interrupted"

        done = await poll(interrupted, INTERRUPTED_WITHIN_S + 5, every_s=1)
        took = time.monotonic() - killed_at
        self.checks.record("kill_interrupted", bool(done) and took <= INTERRUPTED_WITHIN_S + 2,
                           f"row interrupted {took:.0f} s after the SIGKILL" if done else
                           f"row still {(await self.snapshot()).get(sid, ('missing',))[0]} "
                           f"{took:.0f} s after the SIGKILL (needs the periodic failover sweep)")
        after = await self.snapshot()
        lost = [s for s, (state, info) in before.items()
                if s not in (sid, going_on["session_id"]) and after.get(s) != (state, info)]
        kept = after.get(sid, ("", {}))[1].get("conversation_history") == \
            before[sid][1].get("conversation_history")
        self.checks.record("saved_rows_intact", bool(saved) and not lost and kept,
                           f"{len(before)} rows compared; changed: {lost}; the killed interview's "
                           f"answer saved before the kill: {bool(saved)}, kept: {kept}")
        await candidate.close()

    async def continues(self, session: dict[str, str], before: dict[str, Any],
                        killed_at: float) -> None:
        """The candidate of a killed node's interview rejoins through HAProxy (as
        the browser client does, retrying while told to): a survivor takes the
        interview over from its last checkpoint, and it goes on there."""
        sid = session["session_id"]
        token = {"Authorization": f"Bearer {session['token']}"}
        refusals: list[str] = []
        while True:
            candidate: Candidate[Any, Any] = Candidate(SpeechTrack(CLIP.with_suffix(".wav")), None)
            try:
                await candidate.connect(self.http, f"{self.lb}/sessions/{sid}/offer",
                                        headers=token)
                break
            except Exception as exc:  # noqa: BLE001 - 503 until the node counts as dead
                await candidate.close()
                refusals.append(str(exc)[:60])
                if time.monotonic() - killed_at > INTERRUPTED_WITHIN_S:
                    raise AssertionError(f"not continued: {refusals}") from None
                await asyncio.sleep(1)
        took = time.monotonic() - killed_at
        try:
            await self.heard("continue_second_answer", candidate)
            row = await poll(lambda: self._held_elsewhere(sid), 15)
            info = row[1] if row else {}
            earlier = before[sid][1].get("conversation_history", [])
            history = info.get("conversation_history", [])
            status, _ = await self.call("POST", f"{self.lb}/sessions/{sid}/end")
            final = await poll(lambda: self._completed(sid), 20)
        finally:
            await candidate.close()
        users = [t for t in (final[1] if final else {}).get("conversation_history", [])
                 if t.get("role") == "user"]
        ok = bool(row) and history[:len(earlier)] == earlier and status == 200 \
            and bool(final) and len(users) >= 2
        self.checks.record(
            "continue_on_survivor", ok,
            f"rejoined through HAProxy {took:.1f} s after the SIGKILL ({len(refusals)} "
            f"refusals first); continued on {info.get('server_instance')} from "
            f"{info.get('continued_from')}; earlier turns kept: "
            f"{history[:len(earlier)] == earlier}; ended {status}; {len(users)} answers saved")

    async def _held_elsewhere(self, sid: str) -> tuple[str, dict[str, Any]] | None:
        row = (await self.snapshot()).get(sid)
        return row if row is not None and row[0] == "in_progress" and row[1].get(
            "continued_from") else None

    async def _completed(self, sid: str) -> tuple[str, dict[str, Any]] | None:
        row = (await self.snapshot()).get(sid)
        return row if row is not None and row[0] == "completed" and not row[1].get(
            "closing") else None

    async def _readable(self, sid: str, killed_at: float) -> None:
        """The killed node's session through HAProxy, as a client would read it:
        until its node is known dead the survivors may only say "try again"
        (502/503 with Retry-After); then they answer from the database."""
        answers: list[str] = []
        while time.monotonic() - killed_at < INTERRUPTED_WITHIN_S:
            async with self.http.get(f"{self.lb}/sessions/{sid}", headers=AUTH) as resp:
                retry = resp.headers.get("Retry-After")
                answers.append(f"{resp.status}" + (f" (Retry-After {retry})" if retry else ""))
                if resp.status == 200 or resp.status not in (502, 503) or retry is None:
                    break
            await asyncio.sleep(float(retry))
        took = time.monotonic() - killed_at
        ok = answers[-1] == "200"
        self.checks.record("kill_session_readable", ok,
                           f"GET through HAProxy from the SIGKILL on: {answers}, the last "
                           f"{took:.0f} s after it")

    # -- helpers -------------------------------------------------------------------

    def _everywhere(self) -> list[str]:
        """Every live node's own address (bypassing HAProxy)."""
        return [self.topo.node_url(i) for i, s in self.topo.servers.items()
                if s.exit_code() is None]

    async def row(self, sid: str) -> dict[str, Any] | None:
        status, body = await self.call("GET", f"{self.lb}/sessions/{sid}")
        return dict(body) if status == 200 else None

    async def snapshot(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every row in the database: (status, session_information)."""
        conn = await asyncpg.connect(self.topo.dsn)
        try:
            rows = await conn.fetch(
                "SELECT session_id, status, session_information FROM interview_sessions")
        finally:
            await conn.close()
        return {str(r["session_id"]): (r["status"], _json(r["session_information"]))
                for r in rows}

    async def _answer_saved(self, sid: str) -> bool:
        row = (await self.snapshot()).get(sid)
        history = row[1].get("conversation_history", []) if row else []
        return any(t.get("role") == "user" for t in history)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


# Fields of a live row that differ by who serves it and when: the checkpoint's
# time; and the review's media token, minted anew (with its expiry) per request.
_VOLATILE = ("checkpoint_at", "server_instance", "server_run", "media_token")


def _essence(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    body = {k: v for k, v in body.items() if k not in _VOLATILE}
    info = body.get("session_information")
    if isinstance(info, str):
        info = json.loads(info)
    if isinstance(info, dict):
        body["session_information"] = {k: v for k, v in info.items() if k not in _VOLATILE}
    return body


def _diff(got: Any, expected: Any) -> str:
    if not isinstance(got, dict) or not isinstance(expected, dict):
        return f"{str(got)[:120]!r} instead of {str(expected)[:120]!r}"
    keys = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    return f"differs in {keys}" if keys else "same"


async def run(args: argparse.Namespace) -> None:
    async def body(checks: Checks) -> None:
        async with Topology(args.work, nodes=NODES) as topo, aiohttp.ClientSession() as http:
            run = Run(topo, http, checks)
            try:
                await run.main()
            finally:
                for candidate in run.candidates:
                    with contextlib.suppress(Exception):
                        await candidate.close()

    await run_checks(args.out, args.timeout, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a fresh scratch directory")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    parser.add_argument("--timeout", type=float, default=200)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
