"""Reconciliation: keyed steps done / unknown / skipped, ctx.once, long-lived waiting tasks,
and operator retries with a note — each through a real worker on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import Context, Project, RetryPolicy, TaskStatus, WorkerStats
from tether.store import StepWrite

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


def test_a_completed_keyed_step_is_not_redone_on_retry(
    store_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    sent: list[str] = []

    @tether.agent(retry=FAST)
    def notify(ctx: Context) -> dict[str, Any]:
        with ctx.step("email broker", key=f"email:{ctx.key}") as step:
            if not step.done:
                sent.append(ctx.key)
                step.output = {"message_id": f"m-{ctx.attempt}"}
        if ctx.attempt == 1:
            raise tether.Retryable("mail server slow to confirm")
        return {"message": step.output}

    project = make_project([notify], database_url=store_url)
    project.submit("notify", "c1")
    run_idle(project)

    assert sent == ["c1"]  # the email went out once, though the agent ran twice
    first, second = project.store.runs_of(project.store.get_task("notify/c1").id)
    assert [(s.status, s.output) for s in first.steps] == [
        ("succeeded", {"message_id": "m-1"})
    ]
    # The retry records the step as skipped, carrying the output recorded the first time.
    assert [(s.status, s.output) for s in second.steps] == [
        ("skipped", {"message_id": "m-1"})
    ]
    assert second.output == {"message": {"message_id": "m-1"}}


def test_once_calls_fn_at_most_once_and_returns_the_recorded_output(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    calls: list[int] = []

    @tether.agent(retry=FAST)
    def pay(ctx: Context) -> dict[str, Any]:
        receipt = ctx.once("charge", lambda: calls.append(ctx.attempt) or {"receipt": 7})
        again = ctx.once("charge", lambda: calls.append(-1) or {"receipt": -1})
        if ctx.attempt < 3:
            raise tether.Retryable("ledger busy")
        return {"receipt": receipt, "again": again}

    project = make_project([pay])
    project.submit("pay", "p1")
    run_idle(project)
    assert calls == [1]
    last = project.store.runs_of(project.store.get_task("pay/p1").id)[-1]
    assert last.output == {"receipt": {"receipt": 7}, "again": {"receipt": 7}}


def test_a_step_started_by_a_killed_run_is_unknown_and_reconciled(
    store_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    seen: dict[str, Any] = {}
    mailbox = {"sent": ["to broker: quote for c1"]}  # the world: the email did go out

    @tether.agent(retry=FAST)
    def email(ctx: Context) -> dict[str, Any]:
        def reconcile() -> dict[str, Any] | None:
            seen["reconciled"] = True
            return {"found": mailbox["sent"][0]} if mailbox["sent"] else None

        def send() -> dict[str, Any]:
            seen["sent_again"] = True
            return {"sent": True}

        with ctx.step("probe", key="email:c1") as probe:
            seen["unknown"], seen["done"] = probe.unknown, probe.done
            probe.output = "probe"  # recorded: this run completed the key
        return {"result": ctx.once("email:other", send, reconcile=reconcile)}

    project = make_project([email], database_url=store_url)
    store = project.store
    project.submit("email", "c1")
    # A worker claims the run, durably starts two keyed steps, and dies.
    [claim] = store.claim("dead-worker", limit=1, lease_seconds=0.05)
    for seq, key in ((1, "email:c1"), (2, "email:other")):
        store.insert_steps(
            claim.task_id,
            claim.run_id,
            [StepWrite(seq=seq, name=key, key=key, input=None, output=None, status="running",
                       error=None, started_at=1.0, finished_at=None)],
        )
    # The live worker's own lease is long enough that a loaded machine cannot make it lose
    # the retry too (then a third run would find the key done by the second).
    run_idle(project, lease_seconds=1.0)

    assert seen == {"unknown": True, "done": False, "reconciled": True}
    runs = store.runs_of(claim.task_id)
    assert "worker lost" in (runs[0].failure_reason or "")
    assert runs[-1].output == {"result": {"found": "to broker: quote for c1"}}


def test_a_waiting_success_emits_nothing_until_new_input_finishes_the_task(
    store_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="quote.ready")
    def quote(ctx: Context) -> Any:
        replies = [i.data for i in ctx.inputs if i.data.get("from") == "broker"]
        if not replies:
            with ctx.step("email broker", key="ask"):
                pass
            return tether.Waiting({"asked": True}, reason="broker's reply")
        return {"premium": replies[-1]["premium"], "runs_before": len(ctx.history)}

    @tether.agent(subscribes="quote.ready")
    def bind(ctx: Context) -> dict[str, Any]:
        return {"bound": ctx.upstream["quote.ready"]["premium"]}

    project = make_project([quote, bind], database_url=store_url)
    store = project.store
    project.submit("quote", "q1", {"from": "client", "case": "q1"})
    run_idle(project)
    task = store.get_task("quote/q1")
    assert task.status == TaskStatus.WAITING
    [run] = store.runs_of(task.id)
    assert (run.status, run.waiting_for, run.output) == ("succeeded", "broker's reply",
                                                          {"asked": True})
    assert store.triggers_out(task.id) == []
    assert [t.ref for t in store.list_tasks(status=TaskStatus.WAITING)] == ["quote/q1"]

    # Three weeks later, the broker replies: new input on the same task starts a new run.
    sub = project.submit("quote", "q1", {"from": "broker", "premium": 812})
    assert (sub.created, sub.run_id is not None) == (False, True)
    run_idle(project)
    task = store.get_task("quote/q1")
    assert task.status == TaskStatus.SUCCEEDED
    assert [i.seq for i in store.inputs(task.id)] == [1, 2]
    assert store.runs_of(task.id)[-1].output == {"premium": 812, "runs_before": 1}
    assert store.runs_of(store.get_task("bind/q1").id)[-1].output == {"bound": 812}


def test_an_operator_retry_carries_its_note_and_is_audited(
    store_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    notes: list[str | None] = []

    @tether.agent
    def assess(ctx: Context) -> dict[str, Any]:
        notes.append(ctx.note)
        if ctx.reason != "operator":
            raise tether.Terminal("policy number not found")
        return {"used_note": ctx.note}

    project = make_project([assess], database_url=store_url)
    store = project.store
    project.submit("assess", "a1")
    run_idle(project)
    assert store.get_task("assess/a1").status == TaskStatus.FAILED

    action, run_id = store.retry_task("assess/a1", note="policy is P-77 (typo)", actor="ops.kim")
    run_idle(project)
    assert notes == [None, "policy is P-77 (typo)"]
    task = store.get_task("assess/a1")
    assert task.status == TaskStatus.SUCCEEDED
    last = store.runs_of(task.id)[-1]
    assert (last.id, last.reason, last.note, last.attempt) == (
        run_id, "operator", "policy is P-77 (typo)", 1
    )
    [recorded] = store.actions(task.id)
    assert (recorded.action, recorded.actor, recorded.run_id) == ("retry", "ops.kim", run_id)
    assert recorded == action

    with pytest.raises(tether.Conflict, match="succeeded"):
        store.retry_task("assess/a1", note=None, actor="ops.kim")


def test_cancel_stops_further_runs_until_an_operator_retries(
    store_url: str, make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(emits="x.done")
    def x(ctx: Context) -> dict[str, Any]:
        return {}

    @tether.agent(subscribes="x.done")
    def y(ctx: Context) -> dict[str, Any]:
        return {"ran": True}

    project = make_project([x, y], database_url=store_url)
    store = project.store
    project.submit("y", "k")  # queued directly, never run
    store.cancel_task("y/k", note="duplicate case", actor="ops")
    project.submit("x", "k")
    run_idle(project)
    y_task = store.get_task("y/k")
    assert y_task.status == TaskStatus.CANCELLED
    assert [r.status for r in store.runs_of(y_task.id)] == ["cancelled"]
    assert len(store.triggers_in(y_task.id)) == 1  # the edge is a fact; the run is not started
    with pytest.raises(tether.Conflict, match="cancelled already"):
        store.cancel_task("y/k", note=None, actor="ops")

    store.retry_task("y/k", note="not a duplicate after all", actor="lead")
    run_idle(project)
    assert store.get_task("y/k").status == TaskStatus.SUCCEEDED
    assert [a.action for a in store.actions(y_task.id)] == ["cancel", "retry"]
