"""The tamper-evident history: every final record is chained; any edit or removal is found.

The tampering is done the way an attacker with database access would: plain SQL against
the tables, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

import tether
from tether import Context, Project, RetryPolicy, WorkerStats
from tether.store.verify import verify

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


@pytest.fixture
def project(store_url: str, make_project: MakeProject, run_idle: RunIdle) -> Project:
    @tether.agent(emits="a.done", retry=RetryPolicy(initial_delay=0.01, jitter=0))
    def a(ctx: Context) -> dict[str, Any]:
        with ctx.step("read document", input={"doc": ctx.key}) as s:
            s.output = {"pages": 3, "score": 0.25}
        with ctx.step("email broker", key=f"email:{ctx.key}") as s:
            s.output = {"sent": True}
        if ctx.attempt == 1:
            raise tether.Retryable("flaky")
        return {"ok": True, "amount": 1e20}

    @tether.agent(subscribes="a.done")
    def b(ctx: Context) -> dict[str, Any]:
        return {"saw": ctx.upstream["a.done"]["ok"]}

    p = make_project([a, b], database_url=store_url)
    p.submit("a", "k1", {"case": "k1", "when": 1.5})
    p.submit("a", "k2")
    run_idle(p)
    return p


def _sql(project: Project, statement: str, **params: Any) -> int:
    with project.store.engine.begin() as conn:
        return conn.execute(text(statement), params).rowcount


def test_an_untouched_store_verifies(project: Project) -> None:
    report = verify(project.store.engine)
    assert report.ok, report.problems
    # k1 has an input; each a-task has 2 runs of 2 steps each; each b-task 1 run.
    assert report.tasks == 4
    assert report.entries == 1 + 2 * (4 + 2) + 2


def test_editing_a_step_row_is_caught(project: Project) -> None:
    task = project.store.get_task("a/k1")
    run = project.store.runs_of(task.id)[-1]
    changed = _sql(
        project,
        "UPDATE steps SET status = 'failed' WHERE run_id = :run AND seq = 2",
        run=run.id,
    )
    assert changed == 1
    report = verify(project.store.engine)
    [problem] = report.problems
    assert (problem.task, problem.kind, problem.ref) == ("a/k1", "changed", f"step:{run.id}:2")


def test_editing_a_run_outcome_or_an_input_is_caught(project: Project) -> None:
    task = project.store.get_task("a/k2")
    first = project.store.runs_of(task.id)[0]
    _sql(project, "UPDATE runs SET failure_reason = 'all fine' WHERE id = :id", id=first.id)
    k1 = project.store.get_task("a/k1")
    _sql(project, "UPDATE task_inputs SET received_at = 0 WHERE task_id = :t", t=k1.id)
    problems = {p.task: p for p in verify(project.store.engine).problems}
    assert problems["a/k2"].ref == f"run:{first.id}" and problems["a/k2"].kind == "changed"
    assert problems["a/k1"].ref == f"input:{k1.id}:1"


def test_removing_a_record_or_a_ledger_entry_is_caught(project: Project) -> None:
    b = project.store.get_task("b/k1")
    [run] = project.store.runs_of(b.id)
    _sql(project, "DELETE FROM ledger WHERE task_id = :t AND seq = (SELECT max(seq) FROM "
         "ledger WHERE task_id = :t)", t=b.id)
    k2 = project.store.get_task("a/k2")
    _sql(project, "DELETE FROM steps WHERE run_id = :r AND seq = 1",
         r=project.store.runs_of(k2.id)[0].id)
    problems = {p.task: p for p in verify(project.store.engine).problems}
    assert problems["b/k1"].kind == "unrecorded" and problems["b/k1"].ref == f"run:{run.id}"
    assert problems["a/k2"].kind == "removed"


def test_rewriting_a_ledger_entry_to_match_is_caught(project: Project) -> None:
    # An attacker who edits a row and recomputes its digest still breaks the chain.
    from tether.store.ledger import digest

    task = project.store.get_task("a/k1")
    run = project.store.runs_of(task.id)[-1]
    _sql(project, "UPDATE runs SET output = :o WHERE id = :id", o='{"ok": false}', id=run.id)
    row = dict(project.store.get_run(run.id).to_dict())
    new_digest = digest("run", row)
    _sql(project, "UPDATE ledger SET digest = :d WHERE ref = :ref", d=new_digest,
         ref=f"run:{run.id}")
    [problem] = verify(project.store.engine).problems
    assert problem.kind == "ledger" and problem.task == "a/k1"
