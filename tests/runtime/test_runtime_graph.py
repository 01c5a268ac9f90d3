"""Agents handing work to each other through triggers, run by real workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import Agent, Context, Project, RetryPolicy, TaskStatus, WorkerStats
from tether.store import RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


def _team_agents(log: list[tuple[str, str]]) -> list[Agent]:
    """kyc and risk (roots) -> quote (a join of both) -> notify."""

    @tether.agent(emits="kyc.cleared")
    def kyc(ctx: Context) -> dict[str, Any]:
        log.append(("kyc", ctx.key))
        return {"customer": f"cust-{ctx.key}", "clear": True}

    @tether.agent(emits="risk.scored")
    def risk(ctx: Context) -> dict[str, Any]:
        log.append(("risk", ctx.key))
        return {"score": 3}

    @tether.agent(subscribes=["kyc.cleared", "risk.scored"], emits="quote.ready")
    def quote(ctx: Context) -> dict[str, Any]:
        log.append(("quote", ctx.key))
        return {
            "premium": 100 + ctx.upstream["risk.scored"]["score"],
            "upstream": dict(ctx.upstream),
            "from": dict(ctx.upstream_tasks),
            "reason": ctx.reason,
        }

    @tether.agent(subscribes="quote.ready")
    def notify(ctx: Context) -> str:
        log.append(("notify", ctx.key))
        return f"sent {ctx.upstream['quote.ready']['premium']}"

    return [kyc, risk, quote, notify]


def _check_join(project: Project, log: list[tuple[str, str]]) -> None:
    assert Counter(log) == Counter(
        {("kyc", "c1"): 1, ("risk", "c1"): 1, ("quote", "c1"): 1, ("notify", "c1"): 1}
    )
    assert log.index(("quote", "c1")) > max(log.index(("kyc", "c1")), log.index(("risk", "c1")))
    quote = project.store.get_task("quote/c1")
    [run] = project.store.runs_of(quote.id)
    assert (run.status, run.reason) == (RunStatus.SUCCEEDED, "trigger")
    assert run.output == {
        "premium": 103,
        "upstream": {
            "kyc.cleared": {"customer": "cust-c1", "clear": True},
            "risk.scored": {"score": 3},
        },
        "from": {"kyc.cleared": "kyc/c1", "risk.scored": "risk/c1"},
        "reason": "trigger",
    }
    assert sorted(t.name for t in project.store.triggers_in(quote.id)) == [
        "kyc.cleared",
        "risk.scored",
    ]
    [notify_run] = project.store.runs_of(project.store.get_task("notify/c1").id)
    assert notify_run.output == "sent 103"


def test_a_join_runs_once_both_triggers_fired(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    log: list[tuple[str, str]] = []
    project = make_project(_team_agents(log))
    project.submit("kyc", "c1")
    project.submit("risk", "c1")

    run_idle(project)

    _check_join(project, log)


def test_a_join_waits_while_one_trigger_is_missing(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    log: list[tuple[str, str]] = []
    project = make_project(_team_agents(log))
    project.submit("kyc", "c1")

    run_idle(project)

    assert log == [("kyc", "c1")]
    waiting = project.store.get_task("quote/c1")
    assert (waiting.status, waiting.runs) == (TaskStatus.PENDING, 0)
    assert project.store.list_tasks(agent="notify") == []

    # The other branch arrives later (days, in real life): the join completes then.
    project.submit("risk", "c1")
    run_idle(project)
    _check_join(project, log)


def test_a_join_on_postgresql(
    make_project: MakeProject, run_idle: RunIdle, pg_url: str
) -> None:
    log: list[tuple[str, str]] = []
    project = make_project(_team_agents(log), database_url=pg_url)
    project.submit("kyc", "c1")
    project.submit("risk", "c1")

    run_idle(project)

    _check_join(project, log)


def test_a_terminal_failure_on_one_branch_keeps_the_join_from_running(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    ran: list[str] = []

    @tether.agent(emits="kyc.cleared")
    def kyc(ctx: Context) -> None:
        raise tether.Terminal("sanctions hit")

    @tether.agent(emits="risk.scored")
    def risk(ctx: Context) -> int:
        return 3

    @tether.agent(subscribes=["kyc.cleared", "risk.scored"])
    def quote(ctx: Context) -> None:
        ran.append(ctx.key)

    project = make_project([kyc, risk, quote])
    project.submit("kyc", "c1")
    project.submit("risk", "c1")
    run_idle(project)

    assert ran == []
    quote_task = project.store.get_task("quote/c1")
    assert quote_task.status == TaskStatus.PENDING
    assert [t.name for t in project.store.triggers_in(quote_task.id)] == ["risk.scored"]


def test_conditional_emits_route_to_one_branch_or_none(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    ran: list[tuple[str, str]] = []

    @tether.agent(
        emits=lambda out: [] if out["score"] is None else ["approve"] if out["score"] < 5
        else ["refer"],
        may_emit=["approve", "refer"],
    )
    def triage(ctx: Context) -> dict[str, Any]:
        return {"score": ctx.input}

    @tether.agent(subscribes="approve")
    def approve(ctx: Context) -> None:
        ran.append(("approve", ctx.key))

    @tether.agent(subscribes="refer")
    def refer(ctx: Context) -> None:
        ran.append(("refer", ctx.key))

    project = make_project([triage, approve, refer])
    project.submit("triage", "low", 2)
    project.submit("triage", "high", 9)
    project.submit("triage", "none", None)
    run_idle(project)

    assert sorted(ran) == [("approve", "low"), ("refer", "high")]
    none_task = project.store.get_task("triage/none")
    assert none_task.status == TaskStatus.SUCCEEDED
    assert project.store.triggers_out(none_task.id) == []
    assert {t.ref for t in project.store.list_tasks(agent="approve")} == {"approve/low"}
    assert {t.ref for t in project.store.list_tasks(agent="refer")} == {"refer/high"}


def test_one_trigger_fans_out_to_every_subscriber(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="kyc.cleared")
    def kyc(ctx: Context) -> int:
        return 1

    @tether.agent(subscribes="kyc.cleared")
    def audit(ctx: Context) -> int:
        return 2

    @tether.agent(subscribes="kyc.cleared")
    def welcome(ctx: Context) -> int:
        return 3

    project = make_project([kyc, audit, welcome])
    project.submit("kyc", "c1")
    run_idle(project)

    outs = {t.ref: project.store.runs_of(t.id)[-1].output for t in project.store.list_tasks()}
    assert outs == {"kyc/c1": 1, "audit/c1": 2, "welcome/c1": 3}


def test_the_downstream_key_comes_from_the_key_function(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="policy.bound")
    def bind(ctx: Context) -> dict[str, str]:
        return {"customer": ctx.input["customer"]}

    @tether.agent(subscribes="policy.bound", key=lambda up: f"customer-{up.output['customer']}")
    def statement(ctx: Context) -> dict[str, Any]:
        return {"key": ctx.key, "from": dict(ctx.upstream_tasks)}

    project = make_project([bind, statement])
    project.submit("bind", "policy-1", {"customer": "ada"})
    project.submit("bind", "policy-2", {"customer": "ada"})
    project.submit("bind", "policy-3", {"customer": "bob"})
    run_idle(project)

    assert sorted(t.ref for t in project.store.list_tasks(agent="statement")) == [
        "statement/customer-ada",
        "statement/customer-bob",
    ]
    ada = project.store.get_task("statement/customer-ada")
    assert {t.upstream_ref for t in project.store.triggers_in(ada.id)} == {
        "bind/policy-1",
        "bind/policy-2",
    }
    bob_run = project.store.runs_of(project.store.get_task("statement/customer-bob").id)[-1]
    assert bob_run.output == {"key": "customer-bob", "from": {"policy.bound": "bind/policy-3"}}


def test_a_chain_of_three_agents_hands_each_output_down(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="one")
    def first(ctx: Context) -> list[int]:
        return [1]

    @tether.agent(subscribes="one", emits="two")
    def second(ctx: Context) -> list[int]:
        return [*ctx.upstream["one"], 2]

    @tether.agent(subscribes="two")
    def third(ctx: Context) -> list[int]:
        return [*ctx.upstream["two"], 3]

    project = make_project([first, second, third])
    for i in range(5):
        project.submit("first", f"k{i}")
    stats = run_idle(project)

    assert stats.succeeded == 15
    for i in range(5):
        assert project.store.runs_of(project.store.get_task(f"third/k{i}").id)[-1].output == [
            1,
            2,
            3,
        ]
    assert len(project.store.all_triggers()) == 10


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_never_run_the_same_run_twice(
    make_project: MakeProject, request: pytest.FixtureRequest, backend: str
) -> None:
    url: str = request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url")
    executed: list[int] = []
    lock = threading.Lock()

    @tether.agent(emits="done")
    def work(ctx: Context) -> int:
        with ctx.step("do it"):
            time.sleep(0.01)
        with lock:
            executed.append(ctx.run_id)
        return ctx.run_id

    @tether.agent(subscribes="done")
    def after(ctx: Context) -> int:
        with lock:
            executed.append(ctx.run_id)
        return ctx.run_id

    # Two projects on one database: two stores, two workers, as two processes would be.
    one = make_project([work, after], database_url=url)
    two = make_project([work, after], database_url=url)
    for i in range(40):
        one.submit("work", f"k{i}")
    workers = [
        p.worker(concurrency=4, poll_interval=0.01, lease_seconds=10) for p in (one, two)
    ]
    stats: list[WorkerStats] = []
    threads = [
        threading.Thread(target=lambda w=w: stats.append(w.run(until_idle=True)))
        for w in workers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert len(stats) == 2
    assert all(s.claimed > 0 for s in stats)  # both took part
    counts = Counter(executed)
    assert [run_id for run_id, n in counts.items() if n > 1] == []
    assert len(executed) == 80
    assert sum(s.succeeded for s in stats) == 80
    assert sum(s.discarded for s in stats) == 0
    tasks = one.store.list_tasks(limit=200)
    assert len(tasks) == 80
    assert {t.status for t in tasks} == {TaskStatus.SUCCEEDED}
    assert all(t.runs == 1 for t in tasks)
