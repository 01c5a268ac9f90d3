"""The review flow on SQLite and PostgreSQL: verdicts, immutability, the queue, rollout
sampling, the ledger, and refusals that write nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, update

import tether
from tether import Context, NotFound, Project, WorkerStats
from tether.errors import Conflict
from tether.review import (
    Review,
    ReviewError,
    enqueue,
    queue,
    queued,
    record_review,
    reviews_of,
    sampled,
)
from tether.store.schema import ledger
from tether.store.schema_review import examples, review_queue, reviews
from tether.store.verify import verify

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]


@tether.agent(example_fields=("claim.description", "claim.type"))
def assess(ctx: Context) -> dict[str, Any]:
    return {"decision": "approve", "amount": ctx.input["claim"]["amount"]}


@tether.agent(review_rate=1.0)
def sampled_all(ctx: Context) -> str:
    return "ok"


@tether.agent(review_rate=0.0)
def sampled_none(ctx: Context) -> str:
    return "ok"


CLAIM = {"claim": {"description": "water damage in the kitchen", "type": "home", "amount": 900}}


@pytest.fixture
def project(make_project: MakeProject, run_idle: RunIdle, store_url: str) -> Project:
    p = make_project([assess, sampled_all, sampled_none], database_url=store_url)
    p.submit("assess", "c1", CLAIM)
    run_idle(p)
    return p


def _count(project: Project, table: Any) -> int:
    with project.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _run_id(project: Project, ref: str = "assess/c1") -> int:
    return project.store.runs_of(project.store.get_task(ref).id)[-1].id


def test_a_correct_verdict_marks_the_queue_and_is_in_the_ledger(project: Project) -> None:
    store = project.store
    run_id = _run_id(project)
    assert enqueue(store, run_id, source="manual") is True
    assert [i.run_id for i in queue(store)] == [run_id]

    review = record_review(store, run_id, verdict="correct", reviewer="ana")

    assert isinstance(review, Review)
    assert (review.verdict, review.reason, review.reviewer, review.example_id) == (
        "correct", None, "ana", None)
    assert queue(store) == []  # reviewed runs leave the pending list
    item = queued(store, run_id)
    assert item is not None and item.reviewed_at == review.created_at
    assert [i.run_id for i in queue(store, include_reviewed=True)] == [run_id]
    assert _count(project, examples) == 0
    report = verify(store.engine)
    assert report.ok and report.entries == 3  # the input, the run's outcome, the review


def test_an_incorrect_verdict_becomes_an_example(project: Project) -> None:
    store = project.store
    run_id = _run_id(project)
    review = record_review(
        store, run_id, verdict="incorrect", reviewer="ana", reason="flood is excluded",
        corrected_output={"decision": "decline"}, agent=assess,
    )
    assert review.example_id is not None
    with store.engine.connect() as conn:
        row = conn.execute(select(examples).where(examples.c.id == review.example_id)).one()
    assert row.case_text == "water damage in the kitchen\nhome"
    assert row.input == CLAIM
    assert row.corrected_output == {"decision": "decline"}
    assert row.reason == "flood is excluded"
    assert (row.run_id, row.review_id, row.agent) == (run_id, review.id, "assess")
    assert row.dim == len(row.vector) // 4
    assert verify(store.engine).ok


def test_reviews_are_immutable_a_second_one_is_kept_beside_the_first(project: Project) -> None:
    store = project.store
    run_id = _run_id(project)
    enqueue(store, run_id, source="rollout")
    first = record_review(store, run_id, verdict="correct", reviewer="ana")
    second = record_review(store, run_id, verdict="partial", reviewer="ben",
                           reason="amount is right, decision is not", agent=assess)

    assert [(r.id, r.verdict, r.reviewer) for r in reviews_of(store, run_id)] == [
        (first.id, "correct", "ana"), (second.id, "partial", "ben")]
    assert reviews_of(store, run_id)[1].example_id == second.example_id is not None
    item = queued(store, run_id)
    assert item is not None and item.reviewed_at == first.created_at  # the first review's time
    assert verify(store.engine).ok


def test_editing_a_recorded_review_is_caught_by_verify(project: Project) -> None:
    store = project.store
    review = record_review(store, _run_id(project), verdict="correct", reviewer="ana")
    with store.engine.begin() as conn:
        conn.execute(update(reviews).where(reviews.c.id == review.id).values(verdict="incorrect"))
    problems = verify(store.engine).problems
    assert [(p.ref, p.kind) for p in problems] == [(f"review:{review.id}", "changed")]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"run_id": 10_000, "verdict": "correct"}, NotFound, "no run 10000"),
        ({"verdict": "wrong"}, ReviewError, "verdict 'wrong' is not one of correct, incorrect"),
        ({"verdict": "incorrect"}, ReviewError, "incorrect verdict needs a reason"),
        ({"verdict": "partial", "reason": "  "}, ReviewError, "partial verdict needs a reason"),
        ({"verdict": "correct", "reviewer": " "}, ReviewError, "needs a reviewer"),
    ],
)
def test_bad_reviews_are_refused_and_write_nothing(
    project: Project, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    store = project.store
    args: dict[str, Any] = {"run_id": _run_id(project), "reviewer": "ana", **kwargs}
    before = (_count(project, reviews), _count(project, examples), _count(project, ledger))
    with pytest.raises(error, match=message) as info:
        record_review(store, args.pop("run_id"), **args)
    assert "\n" not in str(info.value)
    assert (_count(project, reviews), _count(project, examples), _count(project, ledger)) == before


def test_an_absent_example_field_refuses_the_review(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    p = make_project([assess], database_url=store_url)
    p.submit("assess", "c2", {"claim": {"description": "hail", "amount": 5}})  # no "type"
    run_idle(p)
    run_id = _run_id(p, "assess/c2")
    before = _count(p, ledger)
    with pytest.raises(ReviewError, match=r"example field 'claim.type' is missing .*"
                       r"\(it has: amount, description\)"):
        record_review(p.store, run_id, verdict="incorrect", reason="hail", reviewer="ana",
                      agent=assess)
    assert (_count(p, reviews), _count(p, examples), _count(p, ledger)) == (0, 0, before)


def test_a_run_that_has_not_finished_cannot_be_reviewed(
    make_project: MakeProject, store_url: str
) -> None:
    p = make_project([assess], database_url=store_url)
    sub = p.submit("assess", "c3", CLAIM)
    with pytest.raises(Conflict, match="is queued; only a finished run can be reviewed"):
        record_review(p.store, sub.run_id, verdict="correct", reviewer="ana")


def test_enqueue_is_idempotent_and_checks_its_input(project: Project) -> None:
    store = project.store
    run_id = _run_id(project)
    assert enqueue(store, run_id, source="triage", score=0.42, held=True) is True
    assert enqueue(store, run_id, source="manual") is False
    item = queued(store, run_id)
    assert item is not None
    assert (item.source, item.score, item.held, item.task) == ("triage", 0.42, True, "assess/c1")
    assert _count(project, review_queue) == 1
    with pytest.raises(ReviewError, match="review source 'boss' is not one of triage"):
        enqueue(store, run_id, source="boss")
    with pytest.raises(NotFound, match="no run 999"):
        enqueue(store, 999, source="manual")


def test_rollout_queues_the_sampled_successful_runs(project: Project, run_idle: RunIdle) -> None:
    for i in range(5):
        project.submit("sampled_all", f"k{i}")
        project.submit("sampled_none", f"k{i}")
    run_idle(project)
    items = queue(project.store)
    assert sorted(i.task for i in items) == [f"sampled_all/k{i}" for i in range(5)]
    assert {i.source for i in items} == {"rollout"}
    assert queue(project.store, agent="sampled_none") == []


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    picks = [sampled(run_id, 0.05) for run_id in range(1, 20_001)]
    assert picks == [sampled(run_id, 0.05) for run_id in range(1, 20_001)]
    assert 0.04 < sum(picks) / len(picks) < 0.06
    assert not any(sampled(r, 0.0) for r in range(100))
    assert all(sampled(r, 1.0) for r in range(100))


def test_review_rate_out_of_range_is_a_discovery_error() -> None:
    with pytest.raises(tether.DiscoveryError, match="review_rate must be between 0 and 1"):
        tether.agent(review_rate=2)(lambda ctx: None)
