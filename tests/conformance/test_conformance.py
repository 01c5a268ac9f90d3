"""The harness's contract, proven on every provider x store combination.

Retries with the harness's backoff, terminal failure stopping its branch, joins, idempotent
steps, operator retry, a worker SIGKILLed mid-run, duplicate delivery, and trigger edges
recorded exactly once. The agents log every execution to a file beside the project, so
the tests count executions independently of what the store says.
"""

from __future__ import annotations

import json
import signal
import textwrap
import time
from collections import Counter

import pytest

from tests.conformance.conftest import Backend, assert_edges_exactly_once
from tests.process.helpers import spawn, wait_for

AGENTS = textwrap.dedent(
    '''
    import time
    from pathlib import Path

    import tether

    LOG = Path(__file__).resolve().parent.parent / "executions.log"
    BACKOFF = tether.RetryPolicy(max_attempts=3, initial_delay=0.2, multiplier=2, jitter=0)


    def log(ctx, what):
        with LOG.open("a") as fh:
            fh.write(f"{what} {ctx.agent} {ctx.key} {ctx.run_id} {ctx.attempt}\\n")


    @tether.agent(emits="flaky.done", retry=BACKOFF)
    def flaky(ctx):
        log(ctx, "run")
        with ctx.step("side effect", key=f"effect:{ctx.key}") as step:
            if not step.done:
                log(ctx, "effect")
                step.output = {"at": ctx.attempt}
        if ctx.attempt < (ctx.input or {}).get("succeed_on", 1):
            raise tether.Retryable("the service is not ready yet")
        return {"attempt": ctx.attempt}


    @tether.agent(emits="solid.done")
    def solid(ctx):
        log(ctx, "run")
        return {"value": 10}


    @tether.agent(subscribes=["flaky.done", "solid.done"])
    def join(ctx):
        log(ctx, "run")
        return {"sum": ctx.upstream["flaky.done"]["attempt"] + ctx.upstream["solid.done"]["value"]}


    @tether.agent(emits="doomed.done")
    def doomed(ctx):
        log(ctx, "run")
        raise tether.Terminal("the application is incomplete")


    @tether.agent(subscribes="doomed.done")
    def after_doomed(ctx):
        log(ctx, "run")
        return {}


    @tether.agent
    def needs_note(ctx):
        log(ctx, "run")
        if not ctx.note:
            raise tether.Terminal("needs an operator's judgement")
        return {"note": ctx.note}


    @tether.agent(emits="slow.done", retry=tether.RetryPolicy(initial_delay=0.1, jitter=0))
    def slow(ctx):
        with ctx.step("call the slow service", key=f"slow:{ctx.key}"):
            log(ctx, "slow-start")
            if ctx.attempt == 1:
                time.sleep(float((ctx.input or {}).get("sleep", 0)))
        log(ctx, "run")
        return {"attempt": ctx.attempt}


    @tether.agent(subscribes="slow.done")
    def after_slow(ctx):
        log(ctx, "run")
        return {}
    '''
)


@pytest.fixture
def backend_project(backend: Backend) -> Backend:
    (backend.project_dir / "agents").mkdir(exist_ok=True)
    (backend.project_dir / "agents" / "conformance.py").write_text(AGENTS)
    return backend


def executions(b: Backend) -> list[tuple[str, str, str, int, int]]:
    path = b.project_dir / "executions.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        what, agent, key, run_id, attempt = line.split()
        rows.append((what, agent, key, int(run_id), int(attempt)))
    return rows


def test_retries_joins_and_idempotent_steps(backend_project: Backend) -> None:
    b = backend_project
    with b.project() as p:
        p.submit("flaky", "k1", {"succeed_on": 3})
        p.submit("solid", "k1")
    b.drain()
    with b.project() as p:
        store = p.store
        flaky = store.get_task("flaky/k1")
        runs = store.runs_of(flaky.id)
        assert [(r.attempt, r.reason, r.status) for r in runs] == [
            (1, "submitted", "failed"), (2, "retry", "failed"), (3, "retry", "succeeded")
        ]
        # The harness's backoff (0.2 s, then 0.4 s), whatever engine ran the runs.
        assert runs[1].available_at - runs[0].finished_at == pytest.approx(0.2, abs=0.01)
        assert runs[2].available_at - runs[1].finished_at == pytest.approx(0.4, abs=0.01)
        assert runs[1].started_at is not None and runs[1].started_at >= runs[1].available_at
        join = store.get_task("join/k1")
        assert [r.output for r in store.runs_of(join.id)] == [{"sum": 13}]
        assert len(store.triggers_in(join.id)) == 2
    log = executions(b)
    assert [e for e in log if e[0] == "effect"] == [("effect", "flaky", "k1", runs[0].id, 1)]
    assert Counter((e[1], e[3]) for e in log if e[0] == "run") == Counter(
        {("flaky", r.id): 1 for r in runs}
        | {("solid", x[3]): 1 for x in log if x[1] == "solid"}
        | {("join", x[3]): 1 for x in log if x[1] == "join"}
    )
    assert_edges_exactly_once(b)


def test_a_terminal_failure_stops_its_branch(backend_project: Backend) -> None:
    b = backend_project
    with b.project() as p:
        p.submit("doomed", "d1")
    b.drain()
    with b.project() as p:
        [run] = p.store.runs_of(p.store.get_task("doomed/d1").id)
        assert (run.status, run.failure_class, run.failure_reason) == (
            "failed", "terminal", "the application is incomplete"
        )
        assert p.store.list_tasks(agent="after_doomed") == []
    assert [e[1] for e in executions(b)] == ["doomed"]


def test_an_operator_retry_carries_its_note(backend_project: Backend) -> None:
    b = backend_project
    with b.project() as p:
        p.submit("needs_note", "n1")
    b.drain()
    with b.project() as p:
        p.store.retry_task("needs_note/n1", note="approved by underwriting", actor="ops")
    b.drain()
    with b.project() as p:
        runs = p.store.runs_of(p.store.get_task("needs_note/n1").id)
        assert [(r.reason, r.status) for r in runs] == [
            ("submitted", "failed"), ("operator", "succeeded")
        ]
        assert runs[-1].output == {"note": "approved by underwriting"}


def test_duplicate_delivery_executes_a_run_once(backend_project: Backend) -> None:
    b = backend_project
    with b.project() as p:
        run_ids = [p.submit("solid", f"s{i}").run_id for i in range(3)]
    queued = [(run_id, "solid") for run_id in run_ids if run_id is not None]
    b.deliver(queued)
    b.deliver(queued)
    b.drain()
    b.deliver(queued)  # and again after they finished
    b.drain()
    runs = Counter(e[3] for e in executions(b) if e[1] == "solid")
    assert runs == Counter({run_id: 1 for run_id, _ in queued})


def test_two_workers_execute_every_run_once_with_edges_once(backend_project: Backend) -> None:
    b = backend_project
    n = 12
    with b.project() as p:
        for i in range(n):
            p.submit("flaky", f"c{i}")
            p.submit("solid", f"c{i}")
    env = b.env()
    workers = [spawn(b.project_dir, "worker", "--until-idle", "--json", env=env)
               for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        json.loads(out)
    runs = Counter((e[1], e[3]) for e in executions(b) if e[0] == "run")
    assert all(count == 1 for count in runs.values()), runs
    assert Counter(agent for agent, _ in runs) == Counter({"flaky": n, "solid": n, "join": n})
    with b.project() as p:
        assert len(p.store.all_triggers()) == 2 * n
    assert_edges_exactly_once(b)


def test_a_sigkilled_worker_loses_nothing(backend_project: Backend) -> None:
    b = backend_project
    with b.project() as p:
        p.submit("slow", "w1", {"sleep": 60})
    env = b.env(TETHER_LEASE_SECONDS="1")
    victim = spawn(b.project_dir, "worker", env=env)
    try:
        wait_for(lambda: any(e[0] == "slow-start" for e in executions(b)), timeout=60,
                 what="the slow run to start")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    began = time.monotonic()
    b.drain(lease_seconds=1.0)
    assert time.monotonic() - began < 60
    with b.project() as p:
        slow = p.store.get_task("slow/w1")
        first, second = p.store.runs_of(slow.id)
        assert first.status == "failed" and "worker lost" in (first.failure_reason or "")
        assert (second.status, second.attempt) == ("succeeded", 2)
        assert [(s.key, s.status) for s in first.steps] == [("slow:w1", "running")]
        after = p.store.get_task("after_slow/w1")
        assert [r.status for r in p.store.runs_of(after.id)] == ["succeeded"]
        assert len(p.store.triggers_out(slow.id)) == 1
    log = executions(b)
    assert [e[0] for e in log if e[1] == "slow"] == ["slow-start", "slow-start", "run"]
    assert_edges_exactly_once(b)
