"""What an agent sees in its context: inputs, history, keyed steps, upstream; async agents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import tether
from tether import (
    Context,
    DiscoveryError,
    InvalidKey,
    Project,
    RetryPolicy,
    TaskStatus,
    WorkerStats,
)
from tether.store import RunStatus, StepWrite

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


def test_ctx_identity_and_inputs(make_project: MakeProject, run_idle: RunIdle) -> None:
    seen: list[dict[str, Any]] = []

    @tether.agent
    def quote(ctx: Context) -> None:
        seen.append(
            {
                "agent": ctx.agent,
                "key": ctx.key,
                "attempt": ctx.attempt,
                "reason": ctx.reason,
                "note": ctx.note,
                "input": ctx.input,
                "inputs": [(i.seq, i.data) for i in ctx.inputs],
                "task_id": ctx.task_id,
                "run_id": ctx.run_id,
            }
        )

    project = make_project([quote])
    first = project.submit("quote", "case/1", {"amount": 10})
    run_idle(project)
    second = project.submit("quote", "case/1", {"amount": 10, "broker": "agreed"})
    run_idle(project)

    assert second.task_id == first.task_id
    assert seen == [
        {
            "agent": "quote",
            "key": "case/1",
            "attempt": 1,
            "reason": "submitted",
            "note": None,
            "input": {"amount": 10},
            "inputs": [(1, {"amount": 10})],
            "task_id": first.task_id,
            "run_id": first.run_id,
        },
        {
            "agent": "quote",
            "key": "case/1",
            "attempt": 1,
            "reason": "submitted",
            "note": None,
            "input": {"amount": 10, "broker": "agreed"},
            "inputs": [(1, {"amount": 10}), (2, {"amount": 10, "broker": "agreed"})],
            "task_id": first.task_id,
            "run_id": second.run_id,
        },
    ]


def test_a_task_without_input_has_none(make_project: MakeProject, run_idle: RunIdle) -> None:
    @tether.agent
    def quote(ctx: Context) -> dict[str, Any]:
        return {"input": ctx.input, "inputs": len(ctx.inputs), "upstream": dict(ctx.upstream)}

    project = make_project([quote])
    project.submit("quote", "c1")
    run_idle(project)

    [run] = project.store.runs_of(project.store.get_task("quote/c1").id)
    assert run.output == {"input": None, "inputs": 0, "upstream": {}}


def test_an_operator_note_reaches_the_agent(make_project: MakeProject, run_idle: RunIdle) -> None:
    @tether.agent
    def quote(ctx: Context) -> dict[str, Any]:
        return {"reason": ctx.reason, "note": ctx.note}

    project = make_project([quote])
    project.store.submit("quote", "c1", reason="operator", note="broker confirmed by phone")
    run_idle(project)

    [run] = project.store.runs_of(project.store.get_task("quote/c1").id)
    assert run.output == {"reason": "operator", "note": "broker confirmed by phone"}


def test_a_retry_sees_every_earlier_run_with_its_steps(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    @tether.agent(retry=FAST)
    def quote(ctx: Context) -> Any:
        with ctx.step("call insurer", input={"attempt": ctx.attempt}) as s:
            s.output = {"ref": f"r{ctx.attempt}"}
        if ctx.attempt < 3:
            raise tether.Retryable(f"insurer timeout {ctx.attempt}")
        return [
            {
                "attempt": r.attempt,
                "status": r.status,
                "reason": r.failure_reason,
                "steps": [(s.name, s.input, s.output, s.status) for s in r.steps],
            }
            for r in ctx.history
        ]

    project = make_project([quote])
    project.submit("quote", "c1")
    run_idle(project)

    final = project.store.runs_of(project.store.get_task("quote/c1").id)[-1]
    assert final.status == RunStatus.SUCCEEDED
    assert final.output == [
        {
            "attempt": 1,
            "status": "failed",
            "reason": "insurer timeout 1",
            "steps": [["call insurer", {"attempt": 1}, {"ref": "r1"}, "succeeded"]],
        },
        {
            "attempt": 2,
            "status": "failed",
            "reason": "insurer timeout 2",
            "steps": [["call insurer", {"attempt": 2}, {"ref": "r2"}, "succeeded"]],
        },
    ]


def test_a_keyed_step_done_before_is_not_redone(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    emails_sent: list[str] = []
    handles: list[tuple[int, bool, bool, Any]] = []

    @tether.agent(retry=FAST)
    def notify(ctx: Context) -> Any:
        with ctx.step("email broker", key=f"email:{ctx.key}") as step:
            handles.append((ctx.attempt, step.done, step.unknown, step.previous_output))
            if step.done:
                step.output = step.previous_output
            else:
                emails_sent.append(ctx.key)
                step.output = {"message_id": "m-1"}
        if ctx.attempt == 1:
            raise tether.Retryable("mail server hiccup after sending")
        return step.output

    project = make_project([notify], database_url=store_url)
    project.submit("notify", "c1")
    run_idle(project)

    assert emails_sent == ["c1"]
    assert handles == [(1, False, False, None), (2, True, False, {"message_id": "m-1"})]
    first, second = project.store.runs_of(project.store.get_task("notify/c1").id)
    assert [(s.key, s.status, s.output) for s in first.steps] == [
        ("email:c1", "succeeded", {"message_id": "m-1"})
    ]
    assert second.output == {"message_id": "m-1"}


def test_a_keyed_step_started_by_a_lost_run_is_unknown(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    handles: list[tuple[int, bool, bool]] = []

    @tether.agent(retry=FAST)
    def charge(ctx: Context) -> str:
        with ctx.step("charge card", key="charge:c1") as step:
            handles.append((ctx.attempt, step.done, step.unknown))
            step.output = "reconciled" if step.unknown else "charged"
        return str(step.output)

    project = make_project([charge], database_url=store_url)
    store = project.store
    project.submit("charge", "c1")
    # A worker claims the run, records the keyed step as started, and dies.
    [claim] = store.claim("dead-worker", limit=1, lease_seconds=0.05)
    store.insert_steps(
        claim.task_id,
        claim.run_id,
        [
            StepWrite(
                seq=1,
                name="charge card",
                key="charge:c1",
                input=None,
                output=None,
                status="running",
                error=None,
                started_at=time.time(),
                finished_at=None,
            )
        ],
    )
    time.sleep(0.06)

    stats = run_idle(project)

    assert stats.reaped == 1
    assert handles == [(2, False, True)]
    lost, retry = store.runs_of(claim.task_id)
    assert lost.status == RunStatus.FAILED
    assert lost.failure_reason is not None and "worker lost" in lost.failure_reason
    assert "dead-worker" in lost.failure_reason
    assert [(s.key, s.status) for s in lost.steps] == [("charge:c1", "running")]
    assert (retry.attempt, retry.reason, retry.output) == (2, "retry", "reconciled")


def test_a_keyed_step_is_written_before_its_block_runs(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    seen_in_store: list[list[tuple[str | None, str]]] = []
    holder: list[Project] = []

    @tether.agent
    def charge(ctx: Context) -> None:
        with ctx.step("charge card", key="charge:1"):
            run = holder[0].store.get_run(ctx.run_id)
            seen_in_store.append([(s.key, s.status) for s in run.steps])

    project = make_project([charge])
    holder.append(project)
    project.submit("charge", "c1")
    run_idle(project)

    assert seen_in_store == [[("charge:1", "running")]]
    [run] = project.store.runs_of(project.store.get_task("charge/c1").id)
    assert [(s.key, s.status) for s in run.steps] == [("charge:1", "succeeded")]


def test_async_agents_run_and_record_steps(make_project: MakeProject, run_idle: RunIdle) -> None:
    @tether.agent(emits="fetched", retry=FAST)
    async def fetch(ctx: Context) -> dict[str, Any]:
        async with ctx.step("wait for registry") as s:
            await asyncio.sleep(0.01)
            s.output = {"slept": True}
        if ctx.attempt == 1:
            raise tether.Retryable("registry slow")
        return {"key": ctx.key, "attempt": ctx.attempt}

    @tether.agent(subscribes="fetched")
    async def use(ctx: Context) -> Any:
        await asyncio.sleep(0)
        return ctx.upstream["fetched"]

    project = make_project([fetch, use])
    for i in range(4):
        project.submit("fetch", f"k{i}")
    stats = run_idle(project)

    assert stats.succeeded == 8
    for i in range(4):
        first, second = project.store.runs_of(project.store.get_task(f"fetch/k{i}").id)
        assert first.failure_reason == "registry slow"
        assert [s.output for s in second.steps] == [{"slept": True}]
        [use_run] = project.store.runs_of(project.store.get_task(f"use/k{i}").id)
        assert use_run.output == {"key": f"k{i}", "attempt": 2}


def test_project_submit_is_idempotent(make_project: MakeProject, run_idle: RunIdle) -> None:
    calls: list[str] = []

    @tether.agent
    def quote(ctx: Context) -> None:
        calls.append(ctx.key)

    project = make_project([quote])
    first = project.submit("quote", "c1", {"v": 1})
    again = project.submit("quote", "c1", {"v": 1})
    run_idle(project)
    after = project.submit("quote", "c1", {"v": 1})
    run_idle(project)

    assert first.created and first.run_id is not None
    assert not again.created and again.run_id is None
    assert after.run_id is None
    assert calls == ["c1"]
    assert project.store.get_task("quote/c1").status == TaskStatus.SUCCEEDED


def test_submitting_to_an_unknown_agent_is_a_discovery_error(make_project: MakeProject) -> None:
    @tether.agent
    def quote(ctx: Context) -> None:
        return None

    project = make_project([quote])

    with pytest.raises(DiscoveryError, match=r"no agent named 'qoute'.*agents: quote"):
        project.submit("qoute", "c1")
    with pytest.raises(ValueError, match="non-empty string"):
        project.submit("quote", "")
    with pytest.raises(InvalidKey, match=r"'eval:1:c1'.*reserved for evaluation"):
        project.submit("quote", "eval:1:c1")
    assert project.store.list_tasks() == []


def test_a_project_discovers_its_agents_folder(
    make_project: MakeProject, run_idle: RunIdle, tmp_path: Any
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "greet.py").write_text(
        "import tether\n\n"
        "@tether.agent(emits='greeted')\n"
        "def greet(ctx):\n"
        "    with ctx.step('say hello'):\n"
        "        pass\n"
        "    return {'hello': ctx.key}\n\n"
        "@tether.agent(subscribes='greeted')\n"
        "def reply(ctx):\n"
        "    return ctx.upstream['greeted']\n"
    )
    project = make_project()

    project.submit("greet", "world")
    run_idle(project)

    assert (tmp_path / ".tether" / "tether.db").is_file()
    [run] = project.store.runs_of(project.store.get_task("reply/world").id)
    assert run.output == {"hello": "world"}
