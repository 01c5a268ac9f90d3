"""The demo's insurance graph on every provider while its workers are SIGKILLed, again and
again, at random moments.

Whatever run is killed when, every task must end succeeded or failed for good, no trigger
edge may be recorded twice, and the one side effect that must happen once per case —
issuing a quote at the policy system — must happen once. The demo service answers slowly
(after each call took effect), so kills land inside runs, and it holds the answer to a
quote until the test has killed the worker that asked for it, so one kill lands inside
that call whatever the machine's load; the quote agent reconciles a call whose outcome it
never heard of (``ctx.once(..., reconcile=...)``).
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter

from sqlalchemy import select

from tests.conformance.conftest import Backend, assert_edges_exactly_once
from tests.process.helpers import spawn
from tether.demo import agents as demo_agents
from tether.demo.service import DemoService, application, case_id
from tether.store import Store, TaskStatus
from tether.store.schema import runs, tasks

CASES = 10
KILLS = 6
WORKERS = 2
LEASE = 3.0
"""Short, so killed runs are reaped within the test; long enough that a live worker's
heartbeat (every third of it) never misses under a loaded test machine."""


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _holder(store: Store, workers: list[subprocess.Popen[str]]
            ) -> subprocess.Popen[str] | None:
    """A worker process executing a run now (waits for one); None once all work is done."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with store.engine.connect() as conn:
            rows = conn.execute(select(runs.c.status, runs.c.worker).where(
                runs.c.status.in_(("queued", "running")))).all()
        if not rows:
            return None
        # Worker ids are host:pid:random.
        running = {int(w.split(":")[1]) for status, w in rows if status == "running" and w}
        held = [w for w in workers if w.pid in running and w.poll() is None]
        if held:
            return held[0]
        time.sleep(0.01)
    raise AssertionError("no worker took a run within 60 s")


def _kill_inside_a_quote(store: Store, service: DemoService,
                         workers: list[subprocess.Popen[str]]) -> str:
    """Wait for a quote to be issued, kill the worker whose run issued it before the
    answer reaches it (the service holds the answer), and return its case."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for case in service.quotes_issued:
            with store.engine.connect() as conn:
                holder = conn.execute(
                    select(runs.c.worker).join(tasks, tasks.c.id == runs.c.task_id).where(
                        tasks.c.agent == "quote", tasks.c.key == case,
                        runs.c.status == "running")
                ).scalar()
            pid = int(holder.split(":")[1]) if holder else None
            victim = next((w for w in workers if w.pid == pid), None)
            if victim is not None:
                _kill(victim)
                workers.remove(victim)
                return case
        time.sleep(0.005)
    raise AssertionError("no quote was issued within 90 s")


def test_the_demo_graph_survives_workers_killed_mid_run(backend: Backend) -> None:
    b = backend
    (b.project_dir / "tether.toml").write_text('agent_modules = ["tether.demo.agents"]\n')
    rng = random.Random(4)  # the same kill schedule every time; the timing varies anyway
    with DemoService(latency=0.15) as service:
        with b.project() as p:
            for n in range(1, CASES + 1):
                for root in demo_agents.ROOTS:
                    p.submit(root.name, case_id(n), application(n))
        env = b.env(TETHER_DEMO_URL=service.url, TETHER_LEASE_SECONDS=str(LEASE))
        workers = [spawn(b.project_dir, "worker", env=env) for _ in range(WORKERS)]
        try:
            with b.project() as p:
                # First inside the side effect: the quote is issued, the worker still
                # waits for the answer when it dies (held until then).
                with service.holding_quotes():
                    target = _kill_inside_a_quote(p.store, service, workers)
                workers.append(spawn(b.project_dir, "worker", env=env))
                for _ in range(KILLS - 1):
                    victim = _holder(p.store, workers)
                    if victim is None:
                        break  # nothing left to interrupt
                    time.sleep(rng.uniform(0.0, 0.2))  # somewhere inside the run
                    _kill(victim)
                    workers.remove(victim)
                    workers.append(spawn(b.project_dir, "worker", env=env))
        finally:
            for w in workers:
                _kill(w)
        # What the killed workers left is reaped (lease expired) and retried here.
        demo_agents.use_service(service.url)
        try:
            b.drain(timeout=120, lease_seconds=LEASE)
        finally:
            demo_agents.use_service(None)
        issued = service.quotes_issued

    with b.project() as p:
        store = p.store
        tasks = store.list_tasks(limit=1000)
        assert {t.agent for t in tasks} == {"kyc", "risk", "pricing", "quote"}
        by_key = {(t.agent, t.key): t for t in tasks}
        lost = 0
        for t in tasks:
            runs = store.runs_of(t.id)
            lost += sum("worker lost" in (r.failure_reason or "") for r in runs)
            # Ended: succeeded, or failed with no retry left. A quote may wait for ever
            # (pending, never run) when an upstream of its case failed for good.
            if t.status is TaskStatus.PENDING:
                assert t.agent == "quote" and not runs, t
                upstream = [by_key.get((a, t.key)) for a in ("kyc", "risk", "pricing")]
                assert any(u is not None and u.status is TaskStatus.FAILED for u in upstream)
                continue
            assert t.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED), (t, runs)
            assert all(r.status in ("succeeded", "failed") for r in runs), runs
            assert sum(r.status == "succeeded" for r in runs) <= 1, runs
            if t.agent == "quote":
                # The keyed step completed in at most one run; the others skipped it or
                # were killed inside it (and the next run reconciled).
                done = Counter(s.status for r in runs for s in r.steps
                               if s.key == f"issue-quote:{t.key}")
                assert done["succeeded"] <= 1, done
                if t.status is TaskStatus.SUCCEEDED:
                    final = next(r for r in runs if r.status == "succeeded")
                    assert final.output is not None
                    assert final.output["quote_id"] == f"Q-{t.key.removeprefix('case-')}"
                    assert issued.get(t.key) == 1, (t.key, issued)
        # The kills landed inside runs (else this test proves nothing about them), one of
        # them inside the quote's call: its next run found the quote and did not issue
        # another (issued once, below).
        assert lost >= 2
        first, *_, last = store.runs_of(by_key[("quote", target)].id)
        assert "worker lost" in (first.failure_reason or "")
        assert [(s.key, s.status) for s in first.steps][-1] == (f"issue-quote:{target}",
                                                                 "running")
        assert last.status == "succeeded" and issued.get(target) == 1
        # The side effect: never twice for a case, and only for cases that got a quote.
        assert all(count == 1 for count in issued.values()), issued
        quoted = {t.key for t in tasks if t.agent == "quote" and t.status is TaskStatus.SUCCEEDED}
        assert set(issued) == quoted
        # The sanctioned applicant (case-002) never gets a quote; most others do.
        assert "case-002" not in quoted
        assert len(quoted) >= CASES // 2, quoted
    assert_edges_exactly_once(b)
