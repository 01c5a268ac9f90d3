"""The triage step inside real worker runs: held runs emit nothing until reviewed, and a
release fires the triggers exactly once, keeping the ledger verifiable (SQLite and PG)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

import tether
from tether import Context, Project, TaskStatus, WorkerStats
from tether.errors import Conflict
from tether.graph.provenance import why
from tether.review import ReviewError, queue, record_review, reviews_of
from tether.store.schema import triggers
from tether.store.schema_review import review_queue
from tether.store.verify import verify
from tether.triage import audit_entries, set_bar
from tether.triage.hold import release_held
from tether.triage.synthetic import seed_reviewed
from tether.triage.train import train

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

seen_by_bind: dict[str, Any] = {}


@tether.agent(emits="quoted")
def quote(ctx: Context) -> dict[str, Any]:
    """Echo the case's prepared output (the test plants easy and hard cases)."""
    with ctx.step("price"):
        pass
    return dict(ctx.input)


@tether.agent(subscribes="quoted")
def bind(ctx: Context) -> dict[str, Any]:
    seen_by_bind[ctx.key] = ctx.upstream["quoted"]
    return {"bound": True}


EASY = {"confidence": 0.99, "kind": "auto", "amount": 300}
HARD = {"confidence": 0.05, "kind": "life", "amount": 300}


@pytest.fixture
def project(make_project: MakeProject, store_url: str) -> Project:
    p = make_project([quote, bind], database_url=store_url)
    seed_reviewed(p.store, "quote", 3000, seed=1)
    set_bar(p.store, "quote", target=0.9, confidence=0.9, by="maria", rollout_rate=0.0)
    model = train(p.store, p.graph, "quote")
    assert model.threshold is not None
    return p


def _triage_step(project: Project, ref: str) -> Any:
    run = project.store.runs_of(project.store.get_task(ref).id)[0]
    [step] = [s for s in run.steps if s.name == "triage"]
    return run, step


def _edges(project: Project) -> int:
    with project.store.engine.connect() as conn:
        return len(conn.execute(select(triggers.c.id)).all())


def test_easy_runs_complete_hard_runs_are_held_until_reviewed(
    project: Project, run_idle: RunIdle
) -> None:
    seen_by_bind.clear()
    project.submit("quote", "easy", EASY)
    project.submit("quote", "hard", HARD)
    run_idle(project)

    easy_run, easy_step = _triage_step(project, "quote/easy")
    assert easy_step.output["decision"] == "automated"
    assert [s.name for s in easy_run.steps] == ["price", "triage"]
    assert project.store.get_task("quote/easy").status is TaskStatus.SUCCEEDED
    assert project.store.get_task("bind/easy").status is TaskStatus.SUCCEEDED

    hard_run, hard_step = _triage_step(project, "quote/hard")
    assert hard_step.output["decision"] == "held for review"
    assert hard_step.output["score"] < hard_step.output["threshold"]
    assert hard_run.waiting_for == "review"
    assert project.store.get_task("quote/hard").status is TaskStatus.WAITING
    assert "hard" not in seen_by_bind and _edges(project) == 1
    with project.store.engine.connect() as conn:
        [q] = conn.execute(select(review_queue).where(review_queue.c.run_id == hard_run.id))
    assert (q.source, q.held) == ("triage", 1)

    release = release_held(project.store, project.graph, hard_run.id, verdict="correct",
                           reviewer="ana")
    assert (release.emitted, release.failed, release.already) == (1, False, False)
    again = release_held(project.store, project.graph, hard_run.id, verdict="correct",
                         reviewer="bo")
    assert again.already and again.run_id == release.run_id
    assert _edges(project) == 2  # exactly once
    [audit] = [a for a in audit_entries(project.store) if a.action == "triage.release"]
    assert audit.actor == "ana" and audit.detail["held_run"] == hard_run.id

    run_idle(project)
    assert seen_by_bind["hard"] == HARD
    assert project.store.get_task("quote/hard").status is TaskStatus.SUCCEEDED
    chain = why(project.store, "bind/hard").to_dict()["chain"]
    upstream_run = chain["triggered_by"][0]["upstream"]["run"]
    assert upstream_run["reason"] == "review" and "review by ana: correct" in upstream_run["note"]
    assert verify(project.store.engine).ok


def test_corrected_output_flows_downstream_and_rejection_fails_the_task(
    project: Project, run_idle: RunIdle
) -> None:
    seen_by_bind.clear()
    project.submit("quote", "fixme", HARD)
    project.submit("quote", "reject", {**HARD, "amount": 999})
    run_idle(project)
    fix_run, _ = _triage_step(project, "quote/fixme")
    rej_run, _ = _triage_step(project, "quote/reject")
    assert _edges(project) == 0

    corrected = {**HARD, "amount": 1234}
    r1 = release_held(project.store, project.graph, fix_run.id, verdict="partial",
                      corrected_output=corrected, reviewer="ana", reason="wrong amount")
    r2 = release_held(project.store, project.graph, rej_run.id, verdict="incorrect",
                      reviewer="ana", reason="not insurable")
    assert (r1.emitted, r1.failed) == (1, False)
    assert (r2.emitted, r2.failed) == (0, True)
    run_idle(project)
    assert seen_by_bind == {"fixme": corrected}
    rejected = project.store.get_task("quote/reject")
    assert rejected.status is TaskStatus.FAILED
    latest = project.store.runs_of(rejected.id)[-1]
    assert latest.failure_class == "terminal" and "rejected in review" in latest.failure_reason
    assert _edges(project) == 1
    with pytest.raises(Conflict, match="not held for review"):
        release_held(project.store, project.graph, r1.run_id, verdict="correct",
                     reviewer="ana")
    assert verify(project.store.engine).ok


def test_a_raised_bar_sends_every_run_to_review_until_retrained(
    project: Project, run_idle: RunIdle
) -> None:
    set_bar(project.store, "quote", target=0.97, confidence=0.9, by="omar")
    project.submit("quote", "easy", EASY)
    run_idle(project)
    run, step = _triage_step(project, "quote/easy")
    assert step.output["decision"] == "held for review" and run.waiting_for == "review"
    assert _edges(project) == 0


def test_concurrent_releases_fire_the_triggers_once(
    project: Project, run_idle: RunIdle
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    project.submit("quote", "hard", HARD)
    run_idle(project)
    held, _ = _triage_step(project, "quote/hard")

    def release(who: str) -> Any:
        return release_held(project.store, project.graph, held.id, verdict="correct",
                            reviewer=who)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(release, ["a", "b", "c", "d"]))
    assert sum(not r.already for r in results) == 1
    assert len({r.run_id for r in results}) == 1
    assert _edges(project) == 1
    assert verify(project.store.engine).ok


def test_a_review_releases_the_held_run_in_its_own_transaction(
    project: Project, run_idle: RunIdle
) -> None:
    """`record_review` on a held run: without the graph it refuses and writes nothing; with
    it, the review and the release commit together (a correction flows downstream), and a
    second review of the same run releases nothing more."""
    seen_by_bind.clear()
    project.submit("quote", "hard", HARD)
    run_idle(project)
    held, _ = _triage_step(project, "quote/hard")
    assert held.waiting_for == "review" and _edges(project) == 0

    with pytest.raises(ReviewError, match="held for review by the production bar"):
        record_review(project.store, held.id, verdict="correct", reviewer="ana")
    assert reviews_of(project.store, held.id) == []

    fixed = {**HARD, "amount": 250}
    record_review(project.store, held.id, verdict="incorrect", reason="amount is capped",
                  corrected_output=fixed, reviewer="ana", graph=project.graph)
    assert _edges(project) == 1
    run_idle(project)
    assert seen_by_bind == {"hard": fixed}
    [item] = [q for q in queue(project.store, include_reviewed=True) if q.run_id == held.id]
    assert item.held and item.reviewed_at is not None

    record_review(project.store, held.id, verdict="correct", reviewer="ben",
                  graph=project.graph)
    assert _edges(project) == 1 and len(reviews_of(project.store, held.id)) == 2
    assert verify(project.store.engine).ok
