"""The local worker: leases lost and recovered, stopping cleanly, what it reports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import tether
from tether import Context, Project, RetryPolicy, TaskStatus, Worker, WorkerStats
from tether.graph import build
from tether.store import Completion, FailureClass, RunStatus

MakeProject = Callable[..., Project]
RunIdle = Callable[..., WorkerStats]

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)


def _in_thread(worker: Worker, **options: object) -> tuple[threading.Thread, list[WorkerStats]]:
    out: list[WorkerStats] = []
    thread = threading.Thread(target=lambda: out.append(worker.run(**options)))  # type: ignore[arg-type]
    thread.start()
    return thread, out


def test_an_idle_store_ends_until_idle_at_once(make_project: MakeProject) -> None:
    @tether.agent
    def quote(ctx: Context) -> None:
        return None

    project = make_project([quote])
    started = time.monotonic()

    stats = project.run_until_idle(poll_interval=0.01)

    assert time.monotonic() - started < 2
    assert (stats.claimed, stats.succeeded, stats.failed) == (0, 0, 0)


def test_a_run_whose_worker_died_is_retried_after_its_lease_expires(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    calls: list[int] = []

    @tether.agent(retry=FAST, emits="quoted")
    def quote(ctx: Context) -> int:
        calls.append(ctx.attempt)
        with ctx.step("price"):
            pass
        return ctx.attempt

    @tether.agent(subscribes="quoted")
    def notify(ctx: Context) -> int:
        return int(ctx.upstream["quoted"])

    project = make_project([quote, notify], database_url=store_url)
    project.submit("quote", "c1")
    # A worker process claims the run with a short lease and is killed (it never renews).
    [claim] = project.store.claim("killed-worker", limit=1, lease_seconds=0.1)

    stats = run_idle(project)

    assert stats.reaped == 1
    assert calls == [2]
    lost, retry = project.store.runs_of(claim.task_id)
    assert (lost.status, lost.failure_class) == (RunStatus.FAILED, FailureClass.RETRYABLE)
    assert lost.failure_reason is not None
    assert lost.failure_reason.startswith("worker lost: killed-worker")
    assert (retry.attempt, retry.reason, retry.status, retry.output) == (
        2,
        "retry",
        RunStatus.SUCCEEDED,
        2,
    )
    [notify_run] = project.store.runs_of(project.store.get_task("notify/c1").id)
    assert notify_run.output == 2


def test_a_lost_run_with_no_attempts_left_fails_the_task(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    calls: list[int] = []

    @tether.agent(max_attempts=1)
    def quote(ctx: Context) -> None:
        calls.append(ctx.attempt)

    project = make_project([quote])
    project.submit("quote", "c1")
    project.store.claim("killed-worker", limit=1, lease_seconds=0.05)

    stats = run_idle(project)

    assert stats.reaped == 1
    assert calls == []
    [lost] = project.store.runs_of(project.store.get_task("quote/c1").id)
    assert lost.status == RunStatus.FAILED
    assert project.store.get_task("quote/c1").status == TaskStatus.FAILED


def test_a_completion_after_the_lease_was_lost_is_discarded(
    make_project: MakeProject, run_idle: RunIdle, store_url: str
) -> None:
    calls: list[int] = []
    holder: list[Project] = []

    @tether.agent(retry=FAST, emits="quoted")
    def quote(ctx: Context) -> int:
        calls.append(ctx.attempt)
        with ctx.step("price"):
            pass
        if ctx.attempt == 1:
            # Meanwhile another worker decides this one is lost (e.g. after a long GC
            # pause) and reaps the run: this run's result must not be recorded.
            store = holder[0].store
            assert store.reap(lambda a, n: time.time(), now=time.time() + 3600) == [ctx.run_id]
        return ctx.attempt

    @tether.agent(subscribes="quoted")
    def notify(ctx: Context) -> object:
        return ctx.upstream["quoted"]

    project = make_project([quote, notify], database_url=store_url)
    holder.append(project)
    project.submit("quote", "c1")

    stats = run_idle(project)

    assert calls == [1, 2]
    assert stats.discarded == 1
    lost, retry = project.store.runs_of(project.store.get_task("quote/c1").id)
    assert (lost.status, lost.output, lost.steps) == (RunStatus.FAILED, None, ())
    assert (retry.status, retry.output) == (RunStatus.SUCCEEDED, 2)
    [edge] = project.store.all_triggers()
    assert edge.upstream_run_id == retry.id
    [notify_run] = project.store.runs_of(project.store.get_task("notify/c1").id)
    assert notify_run.output == 2


def test_a_run_longer_than_its_lease_keeps_it_and_flushes_its_steps(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    """The heartbeat renews the lease (the worker's own reaper must not take the run) and
    writes finished steps while the run is still going."""
    seen_mid_run: list[list[str]] = []
    holder: list[Project] = []

    @tether.agent(retry=FAST)
    def slow(ctx: Context) -> str:
        with ctx.step("first"):
            pass
        time.sleep(3.2)  # over two leases long
        run = holder[0].store.get_run(ctx.run_id)
        seen_mid_run.append([s.name for s in run.steps])
        with ctx.step("second"):
            pass
        return "done"

    project = make_project([slow])
    holder.append(project)
    project.submit("slow", "c1")

    # Renewed every lease/3 (0.5 s): a heartbeat may stall up to 1 s on a loaded machine
    # before the lease lapses (0.3 s leases failed there once, 0.6 s leases once in CI
    # with four test processes on two cores).
    stats = run_idle(project, lease_seconds=1.5)

    assert (stats.reaped, stats.discarded, stats.succeeded) == (0, 0, 1)
    assert seen_mid_run == [["first"]]
    [run] = project.store.runs_of(project.store.get_task("slow/c1").id)
    assert (run.attempt, run.status, run.output) == (1, RunStatus.SUCCEEDED, "done")
    assert [(s.seq, s.name) for s in run.steps] == [(1, "first"), (2, "second")]


def test_stop_lets_a_run_in_flight_finish(make_project: MakeProject) -> None:
    started = threading.Event()
    proceed = threading.Event()

    @tether.agent
    def slow(ctx: Context) -> str:
        started.set()
        assert proceed.wait(10)
        return "finished"

    project = make_project([slow])
    project.submit("slow", "c1")
    worker = project.worker(poll_interval=0.01, lease_seconds=10)
    thread, out = _in_thread(worker)
    assert started.wait(10)

    worker.stop()
    time.sleep(0.05)
    assert thread.is_alive()  # waiting for the run, not abandoning it
    proceed.set()
    thread.join(10)

    assert not thread.is_alive()
    [stats] = out
    assert (stats.succeeded, stats.released) == (1, 0)
    [run] = project.store.runs_of(project.store.get_task("slow/c1").id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "finished")


def test_abort_releases_a_run_in_flight_to_be_retried(
    make_project: MakeProject, run_idle: RunIdle
) -> None:
    started = threading.Event()
    proceed = threading.Event()
    calls: list[tuple[int, str]] = []

    @tether.agent
    def slow(ctx: Context) -> str:
        calls.append((ctx.attempt, ctx.reason))
        if len(calls) == 1:
            started.set()
            proceed.wait(10)
        return "done"

    project = make_project([slow])
    project.submit("slow", "c1")
    worker = project.worker(poll_interval=0.01, lease_seconds=10)
    thread, out = _in_thread(worker)
    assert started.wait(10)

    worker.abort()
    thread.join(10)

    try:
        assert not thread.is_alive()
        [stats] = out
        assert stats.released == 1
        released, queued = project.store.runs_of(project.store.get_task("slow/c1").id)
        assert (released.status, released.failure_class) == (
            RunStatus.FAILED,
            FailureClass.RETRYABLE,
        )
        assert released.failure_reason is not None
        assert "stopped before the run finished" in released.failure_reason
        assert (queued.status, queued.attempt, queued.reason) == (RunStatus.QUEUED, 1, "retry")
    finally:
        proceed.set()

    run_idle(project)

    assert calls == [(1, "submitted"), (1, "retry")]
    final = project.store.runs_of(project.store.get_task("slow/c1").id)[-1]
    assert (final.status, final.output) == (RunStatus.SUCCEEDED, "done")


def test_on_complete_and_stats_report_what_was_recorded(make_project: MakeProject) -> None:
    @tether.agent(retry=FAST)
    def flaky(ctx: Context) -> int:
        if ctx.attempt == 1:
            raise tether.Retryable("once")
        return ctx.attempt

    @tether.agent
    def broken(ctx: Context) -> None:
        raise tether.Terminal("no")

    project = make_project([flaky, broken])
    project.submit("flaky", "a")
    project.submit("broken", "b")
    seen: list[Completion] = []

    stats = project.run_until_idle(poll_interval=0.01, on_complete=seen.append)

    assert (stats.claimed, stats.succeeded, stats.failed, stats.retries_queued) == (3, 1, 2, 1)
    assert sorted((c.succeeded, c.attempt, c.failure_reason) for c in seen) == [
        (False, 1, "no"),
        (False, 1, "once"),
        (True, 2, None),
    ]


def test_a_worker_leaves_other_teams_agents_runs_alone(make_project: MakeProject) -> None:
    """Two teams share a store: each worker runs only its own graph's agents."""

    @tether.agent
    def quote(ctx: Context) -> str:
        return "quoted"

    project = make_project([quote])
    project.submit("quote", "c1")
    project.store.submit("other_teams_agent", "c1")

    stats = Worker(project.store, build([quote]), poll_interval=0.01).run(until_idle=True)

    assert (stats.claimed, stats.succeeded) == (1, 1)
    [theirs] = project.store.runs_of(project.store.get_task("other_teams_agent/c1").id)
    assert (theirs.status, theirs.worker) == (RunStatus.QUEUED, None)
    assert project.store.get_task("quote/c1").status == TaskStatus.SUCCEEDED


def test_concurrency_runs_agents_at_the_same_time(make_project: MakeProject) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    @tether.agent
    def slow(ctx: Context) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1

    project = make_project([slow])
    for i in range(8):
        project.submit("slow", f"k{i}")

    started = time.monotonic()
    stats = project.run_until_idle(concurrency=4, poll_interval=0.01)

    assert stats.succeeded == 8
    assert peak == 4
    assert time.monotonic() - started < 0.05 * 8  # not one at a time


def test_worker_rejects_zero_concurrency(make_project: MakeProject) -> None:
    @tether.agent
    def quote(ctx: Context) -> None:
        return None

    project = make_project([quote])
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        project.worker(concurrency=0)
