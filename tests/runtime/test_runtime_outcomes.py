"""Outcomes through a real worker: success, retries with backoff, terminal failures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import Context, Project, RetryPolicy, TaskStatus, WorkerStats
from tether.store import FailureClass, Run, RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, multiplier=2.0, jitter=0)


def runs(project: Project, ref: str) -> list[Run]:
    return project.store.runs_of(project.store.get_task(ref).id)


def test_success_records_output_and_steps_in_order_with_timings(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent
    def kyc(ctx: Context) -> dict[str, Any]:
        with ctx.step("read document", input={"doc": ctx.key}) as s:
            time.sleep(0.02)
            s.output = {"name": "Ada"}
        with ctx.step("check sanctions") as s:
            s.record(["clear"])
        with ctx.step("log"):
            pass
        return {"verdict": "clear", "name": "Ada"}

    project = make_project([kyc])
    sub = project.submit("kyc", "case-1")
    before = time.time()

    stats = run_idle(project)

    after = time.time()
    assert (stats.claimed, stats.succeeded, stats.failed) == (1, 1, 0)
    [run] = runs(project, "kyc/case-1")
    assert run.id == sub.run_id
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {"verdict": "clear", "name": "Ada"}
    assert run.worker is not None and run.lease_expires_at is None
    assert run.started_at is not None and run.finished_at is not None
    assert before <= run.started_at <= run.finished_at <= after
    assert [(s.seq, s.name, s.input, s.output, s.status, s.error) for s in run.steps] == [
        (1, "read document", {"doc": "case-1"}, {"name": "Ada"}, "succeeded", None),
        (2, "check sanctions", None, ["clear"], "succeeded", None),
        (3, "log", None, None, "succeeded", None),
    ]
    first, second, third = run.steps
    assert first.duration is not None and first.duration >= 0.02
    assert run.started_at <= first.started_at
    assert first.finished_at is not None and first.finished_at <= second.started_at
    assert third.finished_at is not None and third.finished_at <= run.finished_at
    assert project.store.get_task("kyc/case-1").status == TaskStatus.SUCCEEDED


def test_a_failing_step_is_recorded_failed_with_the_error(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(max_attempts=1)
    def kyc(ctx: Context) -> None:
        with ctx.step("fine"):
            pass
        with ctx.step("call registry", input={"id": 1}):
            raise tether.Terminal("registry says no such company")

    project = make_project([kyc])
    project.submit("kyc", "case-1")
    run_idle(project)

    [run] = runs(project, "kyc/case-1")
    assert [(s.name, s.status, s.error) for s in run.steps] == [
        ("fine", "succeeded", None),
        ("call registry", "failed", "Terminal: registry says no such company"),
    ]
    assert run.failure_reason == "registry says no such company"


def test_retryable_is_retried_until_max_attempts_then_fails_with_the_last_reason(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    seen: list[int] = []

    @tether.agent(retry=FAST)
    def kyc(ctx: Context) -> None:
        seen.append(ctx.attempt)
        raise tether.Retryable(f"registry busy (attempt {ctx.attempt})")

    project = make_project([kyc], database_url=store_url)
    project.submit("kyc", "case-1")

    stats = run_idle(project)

    assert seen == [1, 2, 3]
    assert (stats.failed, stats.retries_queued) == (3, 2)
    history = runs(project, "kyc/case-1")
    assert [(r.attempt, r.reason, r.status) for r in history] == [
        (1, "submitted", RunStatus.FAILED),
        (2, "retry", RunStatus.FAILED),
        (3, "retry", RunStatus.FAILED),
    ]
    assert all(r.failure_class == FailureClass.RETRYABLE for r in history)
    assert [r.failure_reason for r in history[:2]] == [
        "registry busy (attempt 1)",
        "registry busy (attempt 2)",
    ]
    assert history[2].failure_reason == "registry busy (attempt 3) (gave up after 3 attempts)"
    assert project.store.get_task("kyc/case-1").status == TaskStatus.FAILED


def test_a_retry_that_succeeds_ends_the_task_succeeded(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST, emits="kyc.cleared")
    def kyc(ctx: Context) -> dict[str, int]:
        if ctx.attempt < 2:
            raise tether.Retryable("try again")
        return {"attempt": ctx.attempt}

    @tether.agent(subscribes="kyc.cleared")
    def quote(ctx: Context) -> Any:
        return ctx.upstream["kyc.cleared"]

    project = make_project([kyc, quote])
    project.submit("kyc", "case-1")
    run_idle(project)

    assert [r.status for r in runs(project, "kyc/case-1")] == [
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    [quote_run] = runs(project, "quote/case-1")
    assert quote_run.output == {"attempt": 2}
    [edge] = project.store.all_triggers()
    assert edge.upstream_run_id == runs(project, "kyc/case-1")[1].id


def test_backoff_grows_by_the_policy(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.02, multiplier=2.0, jitter=0)

    @tether.agent(retry=policy)
    def kyc(ctx: Context) -> None:
        raise tether.Retryable("down")

    project = make_project([kyc], database_url=store_url)
    project.submit("kyc", "case-1")
    run_idle(project)

    history = runs(project, "kyc/case-1")
    assert len(history) == 4
    waits = []
    for failed, retry in itertools.pairwise(history):
        assert failed.finished_at is not None and retry.started_at is not None
        waits.append(retry.available_at - failed.finished_at)
        assert retry.started_at >= retry.available_at  # never run before its time
    assert waits == pytest.approx([0.02, 0.04, 0.08], abs=1e-6)


def test_backoff_with_jitter_stays_within_its_bounds(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0.02, multiplier=3.0, jitter=0.5)

    @tether.agent(retry=policy)
    def kyc(ctx: Context) -> None:
        raise tether.Retryable("down")

    project = make_project([kyc])
    for i in range(3):
        project.submit("kyc", f"case-{i}")
    run_idle(project)

    for i in range(3):
        first, second, _third = runs(project, f"kyc/case-{i}")
        assert first.finished_at is not None and second.finished_at is not None
        assert 0.01 <= second.available_at - first.finished_at <= 0.03
        assert 0.03 <= _third.available_at - second.finished_at <= 0.09


def test_terminal_failure_is_not_retried_and_stops_its_branch(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    calls: list[str] = []

    @tether.agent(retry=FAST, emits="kyc.cleared")
    def kyc(ctx: Context) -> None:
        calls.append(ctx.key)
        raise tether.Terminal("sanctions hit")

    @tether.agent(subscribes="kyc.cleared")
    def quote(ctx: Context) -> None:
        calls.append("quote")

    project = make_project([kyc, quote])
    project.submit("kyc", "case-1")
    stats = run_idle(project)

    assert calls == ["case-1"]
    assert stats.retries_queued == 0
    [run] = runs(project, "kyc/case-1")
    assert (run.status, run.failure_class, run.failure_reason) == (
        RunStatus.FAILED,
        FailureClass.TERMINAL,
        "sanctions hit",
    )
    assert project.store.all_triggers() == []
    assert project.store.list_tasks(agent="quote") == []


def test_an_unexpected_exception_is_terminal_with_its_type_and_message(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST)
    def kyc(ctx: Context) -> None:
        raise ValueError("amount must be positive")

    project = make_project([kyc])
    project.submit("kyc", "case-1")
    run_idle(project)

    [run] = runs(project, "kyc/case-1")
    assert run.failure_class == FailureClass.TERMINAL
    assert run.failure_reason == "ValueError: amount must be positive"


def test_retry_on_makes_a_custom_exception_retryable(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    class LockedByAnotherClerk(Exception):
        pass

    @tether.agent(retry=FAST, retry_on=[LockedByAnotherClerk])
    def kyc(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise LockedByAnotherClerk("case locked")
        return "done"

    project = make_project([kyc])
    project.submit("kyc", "case-1")
    run_idle(project)

    first, second = runs(project, "kyc/case-1")
    assert first.failure_class == FailureClass.RETRYABLE
    assert first.failure_reason == "LockedByAnotherClerk: case locked"
    assert (second.attempt, second.status, second.output) == (2, RunStatus.SUCCEEDED, "done")


def test_an_output_that_is_not_json_is_a_terminal_failure_naming_the_field(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST, emits="kyc.cleared")
    def kyc(ctx: Context) -> dict[str, Any]:
        with ctx.step("fine"):
            pass
        return {"verdict": "clear", "when": dt.datetime(2026, 1, 2)}

    @tether.agent(subscribes="kyc.cleared")
    def quote(ctx: Context) -> None:
        return None

    project = make_project([kyc, quote])
    project.submit("kyc", "case-1")
    run_idle(project)

    [run] = runs(project, "kyc/case-1")
    assert run.failure_class == FailureClass.TERMINAL
    assert run.failure_reason is not None
    assert "output.when" in run.failure_reason
    assert "datetime" in run.failure_reason
    assert run.output is None
    assert [s.name for s in run.steps] == ["fine"]  # what it did is still recorded
    assert project.store.list_tasks(agent="quote") == []


def test_pydantic_and_dataclass_outputs_are_stored_as_json(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    from pydantic import BaseModel

    class Quote(BaseModel):
        premium: float
        currency: str

    @dataclasses.dataclass
    class Decision:
        quote: Quote
        reasons: tuple[str, ...]

    @tether.agent
    def price(ctx: Context) -> Decision:
        return Decision(Quote(premium=12.5, currency="EUR"), ("low risk",))

    project = make_project([price])
    project.submit("price", "case-1")
    run_idle(project)

    [run] = runs(project, "price/case-1")
    assert run.output == {
        "quote": {"premium": 12.5, "currency": "EUR"},
        "reasons": ["low risk"],
    }


def test_a_step_output_that_is_not_json_fails_the_step_and_the_run(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST)
    def kyc(ctx: Context) -> str:
        with ctx.step("collect") as s:
            s.output = {"ids": {1, 2}}
        return "unreachable"

    project = make_project([kyc])
    project.submit("kyc", "case-1")
    run_idle(project)

    [run] = runs(project, "kyc/case-1")
    assert run.failure_class == FailureClass.TERMINAL
    assert run.failure_reason is not None and "step 'collect' output.ids" in run.failure_reason
    [step] = run.steps
    assert (step.status, step.error) == ("failed", "output cannot be stored as JSON")


def test_emitting_a_name_outside_may_emit_is_a_terminal_failure(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST, emits=lambda out: out["route"], may_emit=["auto"])
    def router(ctx: Context) -> dict[str, str]:
        return {"route": "manual"}

    @tether.agent(subscribes="auto")
    def auto(ctx: Context) -> None:
        return None

    project = make_project([router, auto])
    project.submit("router", "case-1")
    run_idle(project)

    [run] = runs(project, "router/case-1")
    assert run.status == RunStatus.FAILED
    assert run.failure_class == FailureClass.TERMINAL
    assert run.failure_reason is not None
    assert "emitted 'manual', which is not in its may_emit ['auto']" in run.failure_reason
    assert project.store.all_triggers() == []


def test_max_attempts_one_records_a_retryable_failure_without_a_retry(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(max_attempts=1)
    def kyc(ctx: Context) -> None:
        raise tether.Retryable("busy")

    project = make_project([kyc])
    project.submit("kyc", "case-1")
    run_idle(project)

    [run] = runs(project, "kyc/case-1")
    assert (run.failure_class, run.failure_reason) == (FailureClass.RETRYABLE, "busy")
    assert project.store.get_task("kyc/case-1").status == TaskStatus.FAILED
