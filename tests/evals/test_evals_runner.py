"""Experiments run through the harness: namespace, no triggers, resumable, concurrency."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

import tether
from tether import Store
from tether.evals import save_dataset
from tether.evals.experiments import results
from tether.evals.models import Case, Dataset, LabelObservation
from tether.evals.runner import ExperimentRunner, run_experiment, start, task_key
from tether.graph.registry import build
from tether.store.schema import runs, tasks, triggers


def dataset(n: int, name: str = "cases") -> Dataset:
    return Dataset(
        name=name,
        cases=tuple(
            Case(f"k{i}", {"n": i}, 1000.0, (LabelObservation(i % 2 == 0, 1000.0),))
            for i in range(n)
        ),
    )


def test_every_case_runs_as_an_eval_task_and_emits_no_trigger(store: Store) -> None:
    calls: list[str] = []

    @tether.agent(emits="scored")
    def scorer(ctx: tether.Context) -> dict[str, Any]:
        calls.append(ctx.key)
        with ctx.step("look", input=ctx.input):
            pass
        return {"decision": ctx.input["n"] % 2 == 0, "cost": 0.5}

    @tether.agent(subscribes="scored")
    def notify(ctx: tether.Context) -> None:
        raise AssertionError("an experiment must never start production work downstream")

    graph = build([scorer, notify])
    ds = save_dataset(store, dataset(5))
    stats = run_experiment(store, graph, ds, "scorer", name="exp1", concurrency=3)

    assert (stats.ran, stats.succeeded, stats.failed) == (5, 5, 0)
    got = {r.case_key: r for r in results(store, stats.experiment.id)}
    assert set(got) == {f"k{i}" for i in range(5)}
    assert got["k2"].decision is True and got["k3"].decision is False
    assert got["k1"].cost == 0.5 and got["k1"].latency is not None and got["k1"].error is None
    assert sorted(calls) == sorted(task_key(stats.experiment.id, f"k{i}") for i in range(5))
    with store.engine.connect() as conn:
        assert conn.execute(select(triggers)).all() == []
        assert set(conn.execute(select(tasks.c.agent)).scalars()) == {"scorer"}
        assert set(conn.execute(select(runs.c.reason)).scalars()) == {"eval"}
    task = store.get_task(f"scorer/{task_key(stats.experiment.id, 'k1')}")
    (run,) = store.runs_of(task.id)
    assert [s.name for s in run.steps] == ["look"]
    assert store.inputs(task.id)[0].data == {"n": 1}


def test_decision_field_function_and_missing_field(store: Store) -> None:
    @tether.agent(decision="verdict")
    def by_field(ctx: tether.Context) -> dict[str, Any]:
        return {"verdict": "yes"}

    @tether.agent(decision=lambda out: out["a"]["b"])
    def by_function(ctx: tether.Context) -> dict[str, Any]:
        return {"a": {"b": 7}}

    @tether.agent
    def missing(ctx: tether.Context) -> dict[str, Any]:
        return {"answer": 1}

    @tether.agent
    def plain(ctx: tether.Context) -> str:
        return "fraud"

    graph = build([by_field, by_function, missing, plain])
    ds = save_dataset(store, dataset(1))
    found = {}
    for name in ("by_field", "by_function", "missing", "plain"):
        stats = run_experiment(store, graph, ds, name, name=name)
        (found[name],) = results(store, stats.experiment.id)
    assert found["by_field"].decision == "yes"
    assert found["by_function"].decision == 7
    assert found["plain"].decision == "fraud"
    assert found["missing"].decision is None
    assert "no 'decision' field" in (found["missing"].error or "")


def test_retryable_failures_follow_the_agents_retry_policy(store: Store) -> None:
    seen: dict[str, int] = {}

    @tether.agent(max_attempts=3, retry=tether.RetryPolicy(initial_delay=0.01, jitter=0.0))
    def flaky(ctx: tether.Context) -> dict[str, Any]:
        seen[ctx.key] = seen.get(ctx.key, 0) + 1
        if ctx.input["n"] == 0:
            raise tether.Terminal("bad case")
        if ctx.attempt < 3:
            raise tether.Retryable("503")
        return {"decision": True}

    ds = save_dataset(store, dataset(3))
    stats = run_experiment(store, build([flaky]), ds, "flaky", name="e")
    got = {r.case_key: r for r in results(store, stats.experiment.id)}
    assert got["k1"].decision is True and got["k1"].error is None
    assert got["k0"].status == "failed" and "bad case" in (got["k0"].error or "")
    assert stats.retries == 4
    assert sorted(seen.values()) == [1, 3, 3]


def test_interrupted_experiment_resumes_without_redoing_finished_cases(store: Store) -> None:
    calls: list[str] = []
    stop = threading.Event()

    @tether.agent
    def agent(ctx: tether.Context) -> dict[str, Any]:
        calls.append(ctx.key)
        time.sleep(0.01)
        return {"decision": True}

    graph = build([agent])
    ds = save_dataset(store, dataset(40))

    def progress(done: int, total: int) -> None:
        if done >= 10:
            stop.set()

    first = run_experiment(
        store, graph, ds, "agent", name="e", concurrency=4, progress=progress, stop=stop
    )
    assert first.interrupted and 10 <= first.ran < 40
    second = run_experiment(store, graph, ds, "agent", name="e", concurrency=4)
    assert not second.interrupted
    assert second.already_done == first.ran and second.ran == 40 - first.ran
    assert len(calls) == 40 == len(set(calls))
    assert len(results(store, first.experiment.id)) == 40


def test_a_killed_runners_cases_are_recovered(store: Store) -> None:
    @tether.agent(max_attempts=3)
    def agent(ctx: tether.Context) -> dict[str, Any]:
        return {"decision": ctx.attempt}

    graph = build([agent])
    ds = save_dataset(store, dataset(4))
    exp, _ = start(store, graph, ds, "agent", name="e")
    dead = ExperimentRunner(store, graph, exp, ds, lease_seconds=0.01)
    # The dead runner created and claimed two cases, then vanished.
    store._transact(lambda conn: dead._create(conn, ["k0", "k1"], "first"))
    time.sleep(0.05)

    stats = run_experiment(store, graph, ds, "agent", name="e")
    got = {r.case_key: r.decision for r in results(store, exp.id)}
    assert got == {"k0": 2, "k1": 2, "k2": 1, "k3": 1}
    assert stats.ran == 4


def test_async_agents_run_concurrently(store: Store) -> None:
    @tether.agent
    async def slow(ctx: tether.Context) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return {"decision": True}

    ds = save_dataset(store, dataset(100))
    began = time.perf_counter()
    stats = run_experiment(store, build([slow]), ds, "slow", name="e", concurrency=100)
    elapsed = time.perf_counter() - began
    assert stats.succeeded == 100
    assert elapsed < 2.0, f"100 x 0.2 s at concurrency 100 took {elapsed:.2f} s"


def test_resuming_with_another_agent_is_refused(store: Store) -> None:
    @tether.agent
    def a(ctx: tether.Context) -> int:
        return 1

    @tether.agent
    def b(ctx: tether.Context) -> int:
        return 1

    graph = build([a, b])
    ds = save_dataset(store, dataset(1))
    run_experiment(store, graph, ds, "a", name="e")
    with pytest.raises(tether.TetherError, match="choose a new --name"):
        run_experiment(store, graph, ds, "b", name="e")


def test_a_production_worker_running_an_eval_task_records_no_trigger(store: Store) -> None:
    """A queued retry of an experiment's task may be taken by a production worker."""

    @tether.agent(emits="scored")
    def scorer(ctx: tether.Context) -> dict[str, Any]:
        return {"decision": True}

    @tether.agent(subscribes="scored")
    def notify(ctx: tether.Context) -> None:
        return None

    graph = build([scorer, notify])
    store.submit("scorer", "eval:9:case", {"n": 1})
    store.submit("scorer", "prod-case", {"n": 1})
    tether.Worker(store, graph, poll_interval=0.01).run(until_idle=True)
    with store.engine.connect() as conn:
        edges = conn.execute(select(triggers.c.upstream_task_id)).scalars().all()
    assert edges == [store.get_task("scorer/prod-case").id]
