"""The Celery provider on real brokers (Redis and RabbitMQ) and real stores.

In-process tests drive :class:`tether.providers.celery.CeleryProvider` through
``get_provider``; process tests run ``python -m tether worker --provider celery`` in a project
folder and kill or interrupt it. Every test uses its own queue (deleted afterwards), so
messages of other tests, or left over from earlier sessions, are never seen. A broker that
is not running fails the test with the command that starts it; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

import tether
from tests.conftest import assert_edges_recorded_once
from tests.process.helpers import env_for, spawn, wait_for
from tests.process.helpers import tether as run_tether
from tests.services import RABBIT_URL, REDIS_URL, require
from tether import Context, Project, WorkerStats
from tether.errors import ConfigError
from tether.providers import get_provider
from tether.providers.celery import (
    BACKLOG_RECHECK,
    TASK_NAME,
    CeleryProvider,
    _BrokerDispatcher,
)

BROKERS = {"redis": (REDIS_URL, 6379), "rabbitmq": (RABBIT_URL, 5672)}
MakeProject = Callable[..., Project]
FAST = {"poll_interval": 0.02, "lease_seconds": 5.0, "concurrency": 4}


@pytest.fixture
def queue() -> str:
    # This session's pid in the name: sessions never share (or delete) each other's.
    return f"tether-test-{os.getpid()}-{secrets.token_hex(4)}"


def _broker(name: str, queue: str) -> Iterator[str]:
    url, port = BROKERS[name]
    require(name, port)
    yield url
    # Tidy up: the queue and any message left in it. Declared first, as Celery declares
    # it, because Redis only deletes what the channel knows it bound.
    with Connection(url) as conn:
        bound = Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel)
        bound.declare()
        bound.delete()
    if name == "redis":
        # Messages a killed worker held: kombu would restore them into the queue later.
        from tests.conformance.conftest import _forget_unacked

        _forget_unacked(url, queue)


@pytest.fixture(params=list(BROKERS))
def broker(request: pytest.FixtureRequest, queue: str) -> Iterator[str]:
    """Each broker in turn."""
    yield from _broker(request.param, queue)


@pytest.fixture
def redis(queue: str) -> Iterator[str]:
    yield from _broker("redis", queue)


def drain(project: Project, *, timeout: float = 30, provider: Any = None,
          **overrides: Any) -> WorkerStats:
    """The Celery provider on ``project`` (or ``provider``) until idle, failing the test if
    it hangs."""
    provider = provider or get_provider(project, "celery")
    for name, value in overrides.items():
        setattr(provider, name, value)
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
        pytest.fail(f"the Celery provider did not drain within {timeout} s")
    if "error" in result:
        raise result["error"]
    stats: WorkerStats = result["stats"]
    return stats


def chain_agents(log: list[tuple[str, str, int]]) -> list[tether.Agent]:
    """fetch (fails once, retryable) -> score -> decide (a join of fetch and score)."""
    backoff = tether.RetryPolicy(max_attempts=3, initial_delay=0.2, multiplier=2, jitter=0)

    @tether.agent(emits="fetched", retry=backoff)
    def fetch(ctx: Context) -> dict[str, Any]:
        log.append(("fetch", ctx.key, ctx.run_id))
        if ctx.attempt == 1:
            raise tether.Retryable("the registry answered 503")
        return {"doc": f"doc-{ctx.key}"}

    @tether.agent(subscribes="fetched", emits="scored")
    def score(ctx: Context) -> dict[str, Any]:
        log.append(("score", ctx.key, ctx.run_id))
        return {"score": len(ctx.upstream["fetched"]["doc"])}

    @tether.agent(subscribes=["fetched", "scored"])
    def decide(ctx: Context) -> dict[str, Any]:
        log.append(("decide", ctx.key, ctx.run_id))
        return {"approve": ctx.upstream["scored"]["score"] > 3}

    return [fetch, score, decide]


# -- in process ------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_chain_with_retries_and_a_join(
    store: str, broker: str, queue: str, make_project: MakeProject,
    request: pytest.FixtureRequest,
) -> None:
    database_url = request.getfixturevalue("pg_url") if store == "postgresql" else None
    log: list[tuple[str, str, int]] = []
    project = make_project(chain_agents(log), database_url=database_url, broker_url=broker,
                           task_queue=queue, **FAST)
    keys = ["k1", "k2", "k3"]
    for key in keys:
        project.submit("fetch", key)

    stats = drain(project)

    assert Counter((agent, key) for agent, key, _ in log) == Counter(
        {("fetch", k): 2 for k in keys} | {("score", k): 1 for k in keys}
        | {("decide", k): 1 for k in keys}
    )
    assert len({run_id for _, _, run_id in log}) == len(log)  # no run executed twice
    s = project.store
    for key in keys:
        first, second = s.runs_of(s.get_task(f"fetch/{key}").id)
        assert (first.status, first.failure_class, second.status) == (
            "failed", "retryable", "succeeded"
        )
        # The harness's backoff (0.2 s, no jitter), not Celery's: the retry is a new run,
        # due then, and published only once due.
        assert (second.attempt, second.reason) == (2, "retry")
        assert first.finished_at is not None
        assert second.available_at - first.finished_at == pytest.approx(0.2, abs=0.01)
        assert second.started_at is not None and second.started_at >= second.available_at
        [decided] = s.runs_of(s.get_task(f"decide/{key}").id)
        assert decided.output == {"approve": True}
        assert len(s.triggers_in(s.get_task(f"decide/{key}").id)) == 2
    assert_edges_recorded_once(project.store)
    assert (stats.claimed, stats.succeeded, stats.failed, stats.retries_queued) == (12, 9, 3, 3)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_chain_takes_one_message_and_runs_on_the_thread_that_took_it(
    store: str, redis: str, queue: str, make_project: MakeProject,
    request: pytest.FixtureRequest,
) -> None:
    threads: dict[tuple[str, str], int] = {}

    def hop(name: str, **kw: Any) -> tether.Agent:
        def body(ctx: Context) -> str:
            threads[(name, ctx.key)] = threading.get_ident()
            return name
        body.__name__ = name
        return tether.agent(**kw)(body)

    agents = [hop("a", emits="a.done"), hop("b", subscribes="a.done", emits="b.done"),
              hop("c", subscribes="b.done")]
    database_url = request.getfixturevalue("pg_url") if store == "postgresql" else None
    project = make_project(agents, database_url=database_url, broker_url=redis,
                           task_queue=queue, **FAST)
    roots = {project.submit("a", f"k{i}").run_id for i in range(6)}
    provider = get_provider(project, "celery")
    published: list[int] = []
    publish = provider._publish

    def spy(runs: Any) -> None:  # the provider's own publishing, counted on the way
        published.extend(run_id for run_id, _ in runs)
        publish(runs)

    provider._publish = spy  # type: ignore[method-assign]
    stats = drain(project, provider=provider)

    assert (stats.claimed, stats.succeeded) == (18, 18)
    assert sorted(published) == sorted(roots)  # b and c were never published
    s = project.store
    for i in range(6):
        key = f"k{i}"
        assert threads[("a", key)] == threads[("b", key)] == threads[("c", key)]
        [a], [b], [c] = (s.runs_of(s.get_task(f"{agent}/{key}").id) for agent in "abc")
        assert a.worker == b.worker == c.worker
        assert a.finished_at is not None and b.started_at is not None
        assert b.started_at >= a.finished_at and b.reason == "trigger"
    assert_edges_recorded_once(project.store)


def test_a_message_delivered_twice_executes_the_run_once(
    redis: str, queue: str, make_project: MakeProject, pg_url: str
) -> None:
    ran: list[int] = []

    @tether.agent(emits="done")
    def once(ctx: Context) -> int:
        ran.append(ctx.run_id)
        time.sleep(0.05)  # both copies arrive while the first is still running
        return 1

    @tether.agent(subscribes="done")
    def after(ctx: Context) -> None:
        ran.append(ctx.run_id)

    project = make_project([once, after], database_url=pg_url, broker_url=redis,
                           task_queue=queue, **FAST)
    runs = [(project.submit("once", f"d{i}").run_id, "once") for i in range(3)]
    queued = [(run_id, agent) for run_id, agent in runs if run_id is not None]
    provider = get_provider(project, "celery")
    provider.deliver(queued)  # published by hand, twice, before any worker runs
    provider.deliver(queued)

    stats = drain(project)
    provider.deliver(queued)  # and again once the runs are finished
    again = drain(project)

    assert Counter(ran) == Counter({run_id: 1 for run_id in ran})  # each run once
    assert len(ran) == 6
    assert (stats.claimed, stats.succeeded) == (6, 6)
    assert again.claimed == 0
    assert len(project.store.all_triggers()) == 3
    assert_edges_recorded_once(project.store)


def test_retries_follow_the_harness_backoff_until_attempts_are_spent(
    redis: str, queue: str, make_project: MakeProject, pg_url: str
) -> None:
    policy = tether.RetryPolicy(max_attempts=3, initial_delay=0.3, multiplier=2, jitter=0)

    @tether.agent(retry=policy)
    def flaky(ctx: Context) -> None:
        raise tether.Retryable(f"still down (attempt {ctx.attempt})")

    project = make_project([flaky], database_url=pg_url, broker_url=redis, task_queue=queue,
                           **FAST)
    project.submit("flaky", "f1")

    stats = drain(project)

    runs = project.store.runs_of(project.store.get_task("flaky/f1").id)
    assert [(r.attempt, r.reason, r.status) for r in runs] == [
        (1, "submitted", "failed"), (2, "retry", "failed"), (3, "retry", "failed")
    ]
    ended = [run.finished_at or 0.0 for run in runs]
    assert runs[1].available_at - ended[0] == pytest.approx(0.3, abs=0.01)
    assert runs[2].available_at - ended[1] == pytest.approx(0.6, abs=0.01)
    for run in runs[1:]:
        assert run.started_at is not None and run.started_at >= run.available_at
    assert "gave up after 3 attempts" in (runs[2].failure_reason or "")
    assert project.store.get_task("flaky/f1").status == "failed"
    assert (stats.failed, stats.retries_queued) == (3, 2)


def test_a_run_whose_message_was_lost_is_published_again(
    redis: str, queue: str, make_project: MakeProject, pg_url: str
) -> None:
    ran: list[int] = []

    @tether.agent
    def solo(ctx: Context) -> None:
        ran.append(ctx.run_id)

    project = make_project([solo], database_url=pg_url, broker_url=redis, task_queue=queue,
                           **FAST)
    run_id = project.submit("solo", "lost").run_id
    # A dispatcher marked the run as handed over and its message never arrived (a Redis
    # restart without persistence, a purged queue).
    assert project.store.dispatch_batch(limit=10, redispatch_after=60) == [(run_id, "solo")]

    began = time.monotonic()
    stats = drain(project, redispatch_after=0.5)

    assert ran == [run_id]
    assert stats.succeeded == 1
    assert time.monotonic() - began < 10


def test_a_batch_published_to_a_queue_no_one_declared_yet_reaches_it(
    broker: str, queue: str, make_project: MakeProject
) -> None:
    # Only a batch's first message declares the queue (for the others kombu's declaration
    # cache would answer); without it RabbitMQ refuses the exchange and Redis drops the
    # messages for want of a bound queue.
    project = make_project([], broker_url=broker, task_queue=queue)
    provider = get_provider(project, "celery")
    assert isinstance(provider, CeleryProvider)
    provider.deliver([(n, "solo") for n in range(1, 6)])
    deadline = time.monotonic() + 5
    while (ready := provider.backlog()) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # RabbitMQ counts a moment late
    assert ready == 5


def test_a_message_names_its_run_as_celery_would_display_it(
    broker: str, queue: str, make_project: MakeProject
) -> None:
    # The provider writes the displays' argsrepr/kwargsrepr itself (Celery's saferepr
    # costs a fifth of a message): they must read as Celery's own would.
    from celery.utils.saferepr import saferepr

    project = make_project([], broker_url=broker, task_queue=queue)
    get_provider(project, "celery").deliver([(7, "summarise_claim")])
    with Connection(broker) as conn, conn.SimpleQueue(
        Queue(queue, Exchange(queue), routing_key=queue)
    ) as simple:
        message = simple.get(timeout=5)
        message.ack()
    headers = message.headers
    assert headers["task"] == TASK_NAME
    assert headers["argsrepr"] == saferepr((7,))
    assert headers["kwargsrepr"] == saferepr({"agent": "summarise_claim"})
    args, kwargs, _embed = message.decode()
    assert (args, kwargs) == ([7], {"agent": "summarise_claim"})


def test_an_unreachable_broker_says_how_to_start_one(
    make_project: MakeProject, queue: str
) -> None:
    project = make_project([], broker_url="redis://127.0.0.1:1/0", task_queue=queue)
    with pytest.raises(ConfigError, match=r"cannot reach the Celery broker.*redis-server"):
        get_provider(project, "celery").run(until_idle=True)


def _solo_runs(make_project: MakeProject, queue: str, keys: list[str]) -> Project:
    """A project of one no-op agent with a queued run for each key."""

    @tether.agent
    def solo(ctx: Context) -> None:
        return None

    project = make_project([solo], task_queue=queue)
    for key in keys:
        project.submit("solo", key)
    return project


def _dispatcher(project: Project, published: list[tuple[int, str]], **options: Any
                ) -> _BrokerDispatcher:
    """The Celery outbox of ``project``, publishing into ``published``."""
    from tether.runtime.single import RunOne

    return _BrokerDispatcher(RunOne(project.store, project.graph), published.extend, **options)


def test_a_task_does_not_wait_for_a_chain_its_stopped_worker_never_started(
    make_project: MakeProject, queue: str
) -> None:
    # A message whose task body hands its chain to the worker's thread pool after the
    # pool was shut down (the worker stopping): the chain never starts, and the body must
    # not wait for it forever (Celery's pool threads are joined at exit: the process
    # would hang). The run stays queued for the outbox to hand over again.
    from tether.runtime.single import RunOne
    from tether.runtime.worker import DaemonPool

    project = _solo_runs(make_project, queue, ["k"])
    [run] = project.store.runs_of(project.store.get_task("solo/k").id)
    provider = get_provider(project, "celery")
    assert isinstance(provider, CeleryProvider)
    pool = DaemonPool(1, "tether-run")
    pool.shutdown(wait=False)
    provider._runner, provider._runners = RunOne(project.store, project.graph), pool
    body = threading.Thread(target=provider._execute, args=(run.id, "solo"), daemon=True)
    body.start()
    time.sleep(0.3)
    assert body.is_alive()  # waiting for its chain, as while a chain runs
    provider._runners = None  # what the worker does as it stops
    body.join(timeout=3)
    assert not body.is_alive()
    assert project.store.get_run(run.id).status == "queued"


def test_the_dispatcher_holds_runs_back_while_the_queue_is_full(
    make_project: MakeProject, queue: str
) -> None:
    project = _solo_runs(make_project, queue, [f"b{i}" for i in range(5)])
    published: list[tuple[int, str]] = []
    provider = get_provider(project, "celery")
    assert isinstance(provider, CeleryProvider)

    depth = {"n": 300}
    asked: list[int] = []

    def backlog() -> int:
        asked.append(depth["n"])
        return depth["n"]

    dispatcher = _dispatcher(project, published, backlog=backlog, max_backlog=256,
                             reap_every=1.0)
    assert dispatcher.tick() == 0 and published == []  # full: the runs stay in the store
    depth["n"] = 253  # room for three
    # Found full a moment ago: a wake-up right after (a burst of submissions wakes it once
    # per submission) does not ask the broker again.
    assert dispatcher.tick() == 0 and len(asked) == 1
    time.sleep(BACKLOG_RECHECK)
    assert dispatcher.tick() == 3 and len(published) == 3 and len(asked) == 2
    depth["n"] = 256
    assert dispatcher.tick() == 0  # its own count says full; the broker agrees
    assert len(asked) == 3
    time.sleep(BACKLOG_RECHECK)
    depth["n"] = 0
    assert dispatcher.tick() == 2 and len(published) == 5


def test_the_dispatcher_comes_back_soon_while_it_holds_runs_back(
    make_project: MakeProject, queue: str
) -> None:
    # Nothing wakes the dispatcher when workers drain the queue, so while it holds runs
    # back it must pass again after BACKLOG_RECHECK rather than after its poll: a poll
    # apart it handed over at most max_backlog runs per poll (64 per 0.2 s capped four
    # bench processes at ~1,000 runs/s whatever they could take).
    project = _solo_runs(make_project, queue, [f"b{i}" for i in range(12)])
    published: list[tuple[int, str]] = []
    depth = {"n": 10}
    dispatcher = _dispatcher(project, published, poll=30.0, backlog=lambda: depth["n"],
                             max_backlog=10, reap_every=30.0)
    assert dispatcher.pause() == 30.0
    assert dispatcher.tick() == 0 and dispatcher.pause() == BACKLOG_RECHECK  # full
    depth["n"] = 6
    time.sleep(BACKLOG_RECHECK)
    # Room for four, and four taken: more may be due.
    assert dispatcher.tick() == 4 and dispatcher.pause() == BACKLOG_RECHECK
    depth["n"] = 0
    assert dispatcher.tick() == 8 and dispatcher.pause() == 30.0  # all due were taken

    # And on its thread: twelve more runs through a queue of four, which the workers empty
    # at once, go out well within one poll.
    for i in range(12):
        project.submit("solo", f"c{i}")
    published.clear()
    running = _dispatcher(project, published, poll=30.0, backlog=lambda: 0, max_backlog=4,
                          reap_every=30.0)
    running.start()
    try:
        deadline = time.monotonic() + 5
        while len(published) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        running.stop()
    assert len(published) == 12


# -- worker processes ------------------------------------------------------------------

AGENTS = textwrap.dedent(
    """
    import os
    import time

    import tether

    LOG = os.environ["TEST_LOG"]


    def _log(ctx, what):
        with open(LOG, "a") as fh:
            fh.write(f"{what} {ctx.run_id} {ctx.key} {ctx.attempt} {os.getpid()}\\n")


    @tether.agent(emits="work.done", retry=tether.RetryPolicy(initial_delay=0.05, jitter=0))
    def work(ctx):
        with ctx.step("call the slow service", key=f"call-{ctx.key}"):
            _log(ctx, "start")  # inside the block: the keyed step is recorded as started
            if ctx.attempt == 1:
                time.sleep(float(os.environ.get("FIRST_ATTEMPT_SLEEP", "0")))
        _log(ctx, "end")
        return {"pid": os.getpid()}


    @tether.agent(subscribes="work.done")
    def after(ctx):
        _log(ctx, "after")
        return {"saw": ctx.upstream["work.done"]["pid"]}
    """
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "work.py").write_text(AGENTS)
    return tmp_path


def lines(folder: Path) -> list[list[str]]:
    path = folder / "log.txt"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def celery_env(folder: Path, broker: str, queue: str, database_url: str, **extra: str
               ) -> dict[str, str]:
    return env_for(
        folder, TETHER_PROVIDER="celery", TETHER_BROKER_URL=broker, TETHER_TASK_QUEUE=queue,
        TETHER_DATABASE_URL=database_url, TETHER_POLL_INTERVAL="0.02",
        TEST_LOG=str(folder / "log.txt"), **extra,
    )


def test_a_sigkilled_worker_loses_nothing_and_runs_nothing_twice(
    folder: Path, broker: str, queue: str, pg_url: str
) -> None:
    env = celery_env(folder, broker, queue, pg_url, FIRST_ATTEMPT_SLEEP="60")
    run_tether(folder, "submit", "work", "case-1", env=env)
    victim = spawn(folder, "worker", "--provider", "celery", "--lease", "1", env=env)
    try:
        wait_for(lambda: any(r[0] == "start" for r in lines(folder)), what="the run to start")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    # The broker redelivers the unacknowledged message (RabbitMQ at once, Redis after its
    # visibility timeout): the run is still claimed by the dead worker, so that copy does
    # nothing. Once the lease expires the rescuer reaps the run and executes its retry.
    rescuer = run_tether(folder, "worker", "--provider", "celery", "--until-idle",
                         "--lease", "1", "--json", env=env, timeout=60)
    stats = json.loads(rescuer.stdout)
    assert (stats["provider"], stats["reaped"], stats["succeeded"]) == ("celery", 1, 2)

    with Project.load(folder, database_url=pg_url) as project:
        s = project.store
        task = s.get_task("work/case-1")
        first, second = s.runs_of(task.id)
        assert first.status == "failed" and "worker lost" in (first.failure_reason or "")
        assert [(st.key, st.status) for st in first.steps] == [("call-case-1", "running")]
        assert (second.status, second.attempt, second.reason) == ("succeeded", 2, "retry")
        assert len(s.triggers_out(task.id)) == 1
        [after] = s.runs_of(s.get_task("after/case-1").id)
        assert after.status == "succeeded"
        assert_edges_recorded_once(project.store)
    assert [r[0] for r in lines(folder)] == ["start", "start", "end", "after"]
    assert len({r[1] for r in lines(folder)}) == 3  # three runs, each executed once


def test_two_worker_processes_share_the_work_and_run_each_run_once(
    folder: Path, redis: str, queue: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Work that one worker alone needs 5 s for (40 runs of 0.5 s on 4 threads), so the
    # second has started long before it could be done: at 0.1 s a run, a fast first
    # worker finished everything while the second was still importing on a loaded machine.
    env = celery_env(folder, redis, queue, pg_url, FIRST_ATTEMPT_SLEEP="0.5")
    monkeypatch.setenv("TEST_LOG", env["TEST_LOG"])  # submitting here imports the agents
    n = 40
    with Project.load(folder, database_url=pg_url) as project:
        for i in range(n):
            project.submit("work", f"case-{i}")
    workers = [
        spawn(folder, "worker", "--until-idle", "-c", "4", "--json", env=env) for _ in range(2)
    ]
    outs = [w.communicate(timeout=60) for w in workers]
    for w, (_out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
    stats = [json.loads(out) for out, _ in outs]
    assert sum(s["succeeded"] for s in stats) == 2 * n
    assert all(s["succeeded"] > 0 for s in stats), "both workers should have taken work"
    log = lines(folder)
    starts = [r[1] for r in log if r[0] == "start"]
    afters = [r[1] for r in log if r[0] == "after"]
    assert len(starts) == len(set(starts)) == n
    assert len(afters) == len(set(afters)) == n
    with Project.load(folder, database_url=pg_url) as project:
        assert len(project.store.all_triggers()) == n
        assert_edges_recorded_once(project.store)


def test_ctrl_c_finishes_the_run_and_a_second_releases_it(
    folder: Path, redis: str, queue: str, pg_url: str
) -> None:
    env = celery_env(folder, redis, queue, pg_url, FIRST_ATTEMPT_SLEEP="1.0")
    run_tether(folder, "submit", "work", "case-1", env=env)
    w = spawn(folder, "worker", env=env)
    wait_for(lambda: any(r[0] == "start" for r in lines(folder)), what="the run to start")
    w.send_signal(signal.SIGINT)
    _out, err = w.communicate(timeout=30)
    assert w.returncode == 0, err
    assert "stopping" in err and "Traceback" not in err
    with Project.load(folder, database_url=pg_url) as project:
        s = project.store
        assert [r.status for r in s.runs_of(s.get_task("work/case-1").id)] == ["succeeded"]
        # A stopping worker follows no chain: the downstream run waits, queued, for the
        # next worker instead of keeping this one from exiting.
        assert [r.status for r in s.runs_of(s.get_task("after/case-1").id)] == ["queued"]
        assert not any(r[0] == "after" for r in lines(folder))

    # A second Ctrl-C does not wait for the agent: the run is released, same attempt.
    (folder / "log.txt").unlink()
    env["FIRST_ATTEMPT_SLEEP"] = "30"
    run_tether(folder, "submit", "work", "case-2", env=env)
    w = spawn(folder, "worker", env=env)
    wait_for(lambda: any(r[0] == "start" for r in lines(folder)), what="the run to start")
    w.send_signal(signal.SIGINT)
    time.sleep(0.3)
    w.send_signal(signal.SIGINT)
    began = time.monotonic()
    _out, err = w.communicate(timeout=30)
    assert time.monotonic() - began < 10, "a second Ctrl-C must not wait for the agent"
    assert w.returncode == 0, err
    assert "Traceback" not in err
    with Project.load(folder, database_url=pg_url) as project:
        s = project.store
        first, second = s.runs_of(s.get_task("work/case-2").id)
        assert "stopped before the run finished" in (first.failure_reason or "")
        assert (second.status, second.attempt) == ("queued", 1)
