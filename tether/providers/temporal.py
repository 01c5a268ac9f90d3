"""The Temporal provider: every run is driven by a Temporal workflow on a Temporal server.

``tether worker --provider temporal`` (or ``TETHER_PROVIDER=temporal``) connects to
``temporal_address`` / ``temporal_namespace`` and, in one process:

- runs a Temporal worker on ``task_queue`` with the workflow ``TetherRun``
  (:mod:`tether.providers.temporal_workflows`) and the activity ``execute_run``;
- runs the outbox :class:`~tether.providers.base.Dispatcher`, which reaps runs whose worker
  was lost and starts one ``TetherRun`` workflow per due queued run (submitted work,
  downstream runs that triggers queued, operator retries).

The store stays the source of truth. ``execute_run(run_id)`` claims the run by id with a
lease (a duplicate executes nothing), runs the agent on its own thread while it heartbeats
to both the store (lease renewal) and Temporal, and records the outcome, steps, trigger
edges and any retry in one transaction. What happens when, in short (the long form is
docs/deploy-temporal.md):

- **Retryable failure**: the store queues a retry run (attempt + 1) with the harness's
  backoff; the failed run's workflow starts the retry's workflow at once and that one
  sleeps on a durable Temporal timer until the retry is due. The retry is a new run from
  the top of the agent; keyed steps done earlier are not redone.
- **Worker lost mid-agent** (SIGKILL, power loss): the store lease expires, the reaper fails
  the run as retryable ("worker lost") and queues its retry; Temporal notices the missing
  heartbeats and retries the activity, which finds the run reaped and hands its retry to a
  new workflow, as above. The agent restarts from the top; keyed steps make that safe.
- **Worker lost before claiming, or store unreachable**: Temporal retries the activity and
  it executes the *same* run in place: nothing was decided, so no new run is needed.
- **Worker lost after recording**: the retried activity finds the outcome recorded and
  follows it; nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from tether.errors import ConfigError, TetherError
from tether.providers.base import Dispatcher, Listener, Provider, wait_until_idle
from tether.providers.temporal_workflows import (
    ACTIVITY,
    REUSE,
    WORKFLOW,
    RunJob,
    TetherRun,
    workflow_id,
)
from tether.runtime.single import Outcome, RunOne, count
from tether.runtime.worker import WorkerStats
from tether.store import Completion, Store
from tether.store.completes import INLINE_DISPATCH

if TYPE_CHECKING:
    from tether.project import Project

T = TypeVar("T")

__all__ = ["TemporalProvider", "connect"]


async def connect(address: str, namespace: str) -> Client:
    """A Temporal client, or a :class:`ConfigError` that says how to get a server."""
    try:
        return await Client.connect(address, namespace=namespace)
    except Exception as exc:
        raise ConfigError(
            f"cannot reach the Temporal server at {address} (namespace {namespace!r}): "
            f"{exc}. Start one (for trying it out: `tether temporal dev`) or set "
            "TETHER_TEMPORAL_ADDRESS"
        ) from exc


def retry_of(store: Store, run_id: int) -> tuple[int, float] | None:
    """The retry the store queued when run ``run_id`` failed, as (run id, due time).

    A failure queues at most one retry, in the transaction that records the failure (by
    its worker, the reaper or a release), and only when no run of the task is queued
    already. A task's runs execute one at a time, so the first run of the task created
    after ``run_id`` is its retry exactly when that run's reason is ``retry``; otherwise
    (a succeeded or terminal run, or new input queued first) there is none to follow.
    """
    run = store.runs_by_ids([run_id], with_steps=False).get(run_id)
    if run is None or run.status != "failed" or run.failure_class != "retryable":
        return None
    later = [r for r in store.runs_of(run.task_id, with_steps=False) if r.id > run_id]
    if not later or later[0].reason != "retry":
        return None
    return later[0].id, later[0].available_at


class _Runner(RunOne):
    """Executes runs by id; its reaper leaves the retries it queues to the workflows of
    the reaped runs.

    Every run claimed under this provider was claimed by the activity of a ``TetherRun``
    workflow, which Temporal retries until the store has decided the run; the retried
    activity finds the run reaped and the workflow starts its retry's workflow. Were the
    outbox to hand the retry over too, the two would race for the workflow id. It still
    does if the retry is queued ``redispatch_after`` seconds past due: the safety net for
    a workflow terminated by hand.
    """

    def reap(self, *, followed: bool = True) -> list[int]:
        return super().reap(followed=followed)


_RUNNER = SandboxedWorkflowRunner(
    # Importing the workflow module means importing the `tether` package first; without
    # passing it through, the sandbox would re-import the store, SQLAlchemy and the rest
    # for every workflow (and trip over its restrictions on the way). The workflow module
    # itself imports nothing of Tether and only temporalio inside the workflow.
    restrictions=SandboxRestrictions.default.with_passthrough_modules("tether")
)


class TemporalProvider(Provider):
    """Executes runs as Temporal workflows; the store decides, Temporal drives."""

    name: ClassVar[str] = "temporal"

    def __init__(self, project: Project) -> None:
        super().__init__(project)
        self.stats = WorkerStats()
        self._runner: RunOne | None = None
        self._dispatcher: Dispatcher | None = None
        self._on_complete: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._shutdown: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._inflight: set[int] = set()
        self._inflight_tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()

    # -- the Provider interface ----------------------------------------------------

    def run(
        self,
        *,
        until_idle: bool = False,
        concurrency: int | None = None,
        on_complete: Listener | None = None,
    ) -> WorkerStats:
        """Serve the task queue until :meth:`stop` (or, with ``until_idle``, until the store
        holds no queued or running run of this project's agents)."""
        settings = self.settings
        self.stats = WorkerStats()
        self._stopping.clear()
        self._on_complete = on_complete
        self._runner = _Runner(
            self.project.store,
            self.project.graph,
            lease_seconds=settings.lease_seconds,
            on_complete=self._recorded,
            # Downstream runs start their workflows right after the commit that queued
            # them, from the activity's thread; the outbox is the safety net.
            publish=self._publish,
        )
        outcome: dict[str, BaseException] = {}
        finished = threading.Event()

        def serve() -> None:
            try:
                asyncio.run(self._serve(until_idle, concurrency or settings.concurrency))
            except BaseException as exc:  # surfaced in the caller's thread below
                outcome["error"] = exc
            finally:
                finished.set()

        # The asyncio worker lives on its own thread and loop, so stop() and abort() work
        # from any thread, signal handlers included (they hop onto the loop threadsafely).
        thread = threading.Thread(target=serve, name="tether-temporal", daemon=True)
        thread.start()
        while not finished.wait(0.5):  # a timed wait keeps the main thread's signals live
            pass
        thread.join()
        self._runner.close()
        if "error" in outcome:
            raise outcome["error"]
        return self.stats

    def stop(self) -> None:
        """Stop dispatching and polling; activities in flight finish (up to one lease)."""
        self._stopping.set()
        loop, shutdown = self._loop, self._shutdown
        if loop is not None and shutdown is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(shutdown.set)

    def abort(self) -> None:
        """Stop now: runs in flight are released in the store (queued again, same attempt)
        and their activities cancelled; their agents' threads are abandoned."""
        runner = self._runner
        with self._lock:
            inflight = list(self._inflight)
        self._stopping.set()
        if self._dispatcher is not None:
            # Stopped before the release: its NOTIFY would otherwise wake this outbox,
            # which would hand the released runs back to this stopping worker.
            self._dispatcher.stop()
        if runner is not None and inflight:
            self.stats.released += len(
                runner.store.release(
                    runner.worker_id,
                    inflight,
                    reason=f"worker {runner.worker_id} stopped before the run finished",
                )
            )
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_activities)
        self.stop()

    def idle(self) -> bool:
        """True when nothing is queued or running in the store and no run of this process
        is still being counted."""
        with self._lock:
            if self._inflight:
                return False
        return super().idle()

    def deliver(self, runs: Sequence[tuple[int, str]]) -> None:
        """Start the workflows of ``runs`` now; one already started counts as delivered."""
        if not runs:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            self._on_loop(self._start_workflows(runs))
            return

        async def once() -> None:
            self._client = await connect(
                self.settings.temporal_address, self.settings.temporal_namespace
            )
            await self._start_workflows(runs)

        asyncio.run(once())

    # -- the asyncio side ----------------------------------------------------------

    async def _serve(self, until_idle: bool, concurrency: int) -> None:
        settings = self.settings
        assert self._runner is not None
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        if self._stopping.is_set():
            return
        self._client = await connect(settings.temporal_address, settings.temporal_namespace)
        worker = Worker(
            self._client,
            task_queue=settings.task_queue,
            workflows=[TetherRun],
            activities=[self._execute_run],
            max_concurrent_activities=concurrency,
            workflow_runner=_RUNNER,
            # Ctrl-C lets runs in flight finish, up to one lease, like the local worker.
            graceful_shutdown_timeout=timedelta(seconds=settings.lease_seconds),
            # A workflow's next task waits this long for the worker that ran its last one
            # (its cache) before any worker takes it. The default 10 s would add 10 s to
            # every recovery from a lost worker; a short lease asks for a fast recovery.
            sticky_queue_schedule_to_start_timeout=timedelta(
                seconds=min(10.0, max(1.0, settings.lease_seconds))
            ),
        )
        self._dispatcher = Dispatcher(
            self._runner, self._publish, poll=settings.poll_interval,
            outbox=f"temporal:{settings.task_queue}",
        )
        polling = asyncio.create_task(worker.run())
        self._dispatcher.start()
        monitor = None
        if until_idle:
            monitor = threading.Thread(
                target=self._stop_when_idle, name="tether-temporal-idle", daemon=True
            )
            monitor.start()
        if self._stopping.is_set():  # stop() came before the loop could hear it
            self._shutdown.set()
        stopped = asyncio.create_task(self._shutdown.wait())
        await asyncio.wait({polling, stopped}, return_when=asyncio.FIRST_COMPLETED)
        self._stopping.set()
        # The dispatcher thread may be waiting on this loop (publishing): join it off-loop.
        await asyncio.to_thread(self._dispatcher.stop)
        self.stats.reaped += self._dispatcher.reaped
        if not polling.done():
            await worker.shutdown()
        stopped.cancel()
        await polling  # re-raises a worker that failed on its own
        if monitor is not None:
            monitor.join(timeout=1)

    def _stop_when_idle(self) -> None:
        wait_until_idle(self, stop=self._stopping, poll=self.settings.poll_interval)
        self.stop()

    def _on_loop(self, coro: Any, timeout: float = 60) -> Any:
        """Run ``coro`` on the provider's loop from another thread and wait for it."""
        assert self._loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def _publish(self, runs: Sequence[tuple[int, str]]) -> None:
        """The dispatcher's hand-over (on its thread): one workflow per run."""
        if self._stopping.is_set():
            # Not started: dispatch_batch marked them, so the outbox hands them over again
            # after `redispatch_after` to whichever worker is then running.
            return
        self._on_loop(self._start_workflows(runs, eager=True))

    async def _start_workflows(
        self, runs: Sequence[tuple[int, str]], *, eager: bool = False
    ) -> None:
        assert self._client is not None
        client, queue = self._client, self.settings.task_queue
        lease = self.settings.lease_seconds

        async def start(run_id: int, agent: str) -> None:
            # Already started: delivered before, or its retry chain started it. Done.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await client.start_workflow(
                    WORKFLOW,
                    RunJob(run_id, lease, agent=agent),
                    id=workflow_id(run_id, queue),
                    task_queue=queue,
                    id_reuse_policy=REUSE,
                    # The first workflow task goes straight to this process's worker.
                    request_eager_start=eager,
                )

        results = await asyncio.gather(*(start(run_id, agent) for run_id, agent in runs),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _cancel_activities(self) -> None:
        for task in list(self._inflight_tasks):
            task.cancel()

    @activity.defn(name=ACTIVITY)
    async def _execute_run(self, run_id: int, agent: str = "") -> dict[str, Any]:
        """Execute run ``run_id`` (or follow what the store decided about it).

        The blocking work happens on a daemon thread (an aborted worker can exit while an
        agent is stuck); this coroutine heartbeats to Temporal every third of the lease
        meanwhile, as the run's own thread renews the store lease.
        """
        attempt = activity.info().attempt
        task = asyncio.current_task()
        if task is not None:
            self._inflight_tasks.add(task)
        try:
            return await self._in_thread(lambda: self._execute(run_id, agent, attempt))
        finally:
            if task is not None:
                self._inflight_tasks.discard(task)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(value: T | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)  # type: ignore[arg-type]

        def target() -> None:
            try:
                value: T | None = fn()
                error: BaseException | None = None
            except BaseException as exc:
                value, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: aborted
                loop.call_soon_threadsafe(settle, value, error)

        threading.Thread(target=target, name="tether-temporal-run", daemon=True).start()
        beat = max(0.05, self.settings.lease_seconds / 3)
        while True:
            finished, _ = await asyncio.wait({done}, timeout=beat)
            if finished:
                return done.result()
            activity.heartbeat()

    def _execute(self, run_id: int, agent: str, attempt: int) -> dict[str, Any]:
        """The activity's body, on its own thread. Returns the outcome as plain data with
        ``retry_run_id``/``retry_at`` when the workflow must start a retry's workflow;
        raises :class:`ApplicationError` to have Temporal retry the activity."""
        runner = self._runner
        assert runner is not None
        store = runner.store
        if agent and agent not in runner.graph.agents:
            # Another team's agent on this task queue: claiming it here would fail it as
            # unknown. Temporal retries the activity, which may land on a worker that has
            # it; each graph should have its own task queue (docs/deploy-temporal.md).
            raise ApplicationError(
                f"run {run_id} is for agent {agent!r}, which this worker does not have",
                type="AgentNotHere",
            )
        with self._lock:
            self._inflight.add(run_id)
        outcome: Outcome | None = None
        try:
            outcome = runner(run_id)
        except TetherError as exc:  # the store refused: Temporal retries the activity
            raise ApplicationError(f"run {run_id}: {exc}", type="StoreError") from exc
        finally:
            if outcome is None:
                with self._lock:
                    self._inflight.discard(run_id)
        result = asdict(outcome)
        if outcome.executed:
            self._count(outcome)
        # Counted before it leaves _inflight: idle() is not true while a recorded run is
        # yet to be counted (an --until-idle worker would stop and report it missing).
        with self._lock:
            self._inflight.discard(run_id)
        if outcome.executed:
            overflow = len(outcome.dispatched) >= INLINE_DISPATCH
            if outcome.recorded and outcome.succeeded and overflow and self._dispatcher:
                # Its triggers may have queued more downstream runs than are handed over
                # inline (a large fan-out): the outbox takes them now, not after its poll.
                self._dispatcher.wake()
            if not outcome.succeeded:
                # Recorded: the retry this failure queued. Not recorded: the lease was lost,
                # the reaper failed the run and queued the retry to follow instead.
                return self._with_retry(result, store, run_id)
            return result
        # Not claimable. On the first attempt that is a duplicate delivery or a run some
        # other delivery is executing: nothing to do. On a retried attempt an earlier
        # attempt of *this* workflow may have claimed it on a worker that was then lost.
        run = store.runs_by_ids([run_id], with_steps=False).get(run_id)
        if run is None:
            raise ApplicationError(
                f"no run {run_id} in the store (is this task queue shared by two stores?)",
                type="UnknownRun",
                non_retryable=True,
            )
        now = time.time()
        if run.status == "queued":
            # Not due yet, or another run of its task is in flight: try again later.
            wait = run.available_at - now
            raise ApplicationError(
                f"run {run_id} is not claimable yet",
                type="NotClaimable",
                next_retry_delay=timedelta(seconds=wait) if wait > 0 else None,
            )
        if attempt == 1:
            return result
        if run.status == "running":
            expires = run.lease_expires_at or now
            raise ApplicationError(
                f"run {run_id} is still running under {run.worker}; waiting for it to be "
                "recorded or for its lease to expire",
                type="StillRunning",
                next_retry_delay=timedelta(
                    seconds=max(0.1, expires - now + self.settings.poll_interval)
                ),
            )
        return self._with_retry(result, store, run_id)

    def _with_retry(self, result: dict[str, Any], store: Store, run_id: int) -> dict[str, Any]:
        found = retry_of(store, run_id)
        if found is not None:
            result["retry_run_id"], result["retry_at"] = found
        return result

    def _count(self, outcome: Outcome) -> None:
        with self._lock:
            count(self.stats, outcome)

    def _recorded(self, completion: Completion) -> None:
        if self._on_complete is not None:
            with self._lock:  # the listener (the CLI's printer) is not thread-safe
                self._on_complete(completion)
