"""The Celery provider: runs are delivered as Celery tasks over Redis or RabbitMQ.

``tether worker --provider celery`` (or ``TETHER_PROVIDER=celery``) connects to
``broker_url`` and, in one process:

- runs an embedded Celery worker (thread pool, ``concurrency`` threads) consuming the queue
  ``task_queue``, whose one task, ``tether.execute_run(run_id)``, executes a run by id;
- runs the outbox :class:`~tether.providers.base.Dispatcher`, which reaps runs whose worker
  was lost and publishes one ``tether.execute_run`` message per due queued run (submitted
  work, downstream runs that triggers queued, retries once their backoff is over, operator
  retries).

The store stays the source of truth; Celery only carries run ids. ``execute_run`` claims the
run by id with a lease (a duplicate message executes nothing), runs the agent while a
heartbeat renews the lease, and records the outcome, steps, trigger edges and any retry in
one transaction. The run a record's triggers queue for a new task is claimed for this
worker in that same transaction and executed next on the same thread
(:meth:`~tether.runtime.single.RunOne.follow`), so a chain takes one message, not one per
hop; the other downstream runs are published right after the commit. What happens when
(the long form is docs/deploy-celery.md):

- **Retryable failure**: the store queues a retry run (attempt + 1) due after the harness's
  backoff; the dispatcher publishes it when it is due. Celery's own retry is never used.
- **Message delivered twice** (late acknowledgement redelivers after a lost connection, the
  Redis visibility timeout, a re-publish): the second delivery finds the run claimed or
  finished and does nothing.
- **Worker lost mid-run** (SIGKILL, power loss): the broker redelivers the unacknowledged
  message (harmless, as above); the run's lease expires, any worker's reaper fails it as
  retryable ("worker lost") and queues its retry, which is published like any other.
- **Worker lost mid-chain**: the run it was executing (one it followed from the run the
  message named) holds a lease like any claimed run; it is reaped and retried as above.
- **Message lost** (a Redis restart without persistence, a purged queue, a worker killed
  holding prefetched messages on Redis): the run is still queued in the store, and the
  dispatcher publishes it again after ``redispatch_after`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from celery import Celery
from celery.app.trace import reset_worker_optimizations, setup_worker_optimizations
from celery.worker import state as worker_state
from kombu.asynchronous import set_event_loop

from tether.errors import ConfigError, TetherError
from tether.providers.base import Dispatcher, Listener, Provider, wait_until_idle
from tether.runtime.single import Outcome, RunOne, count
from tether.runtime.worker import DaemonPool, WorkerStats
from tether.store import Completion
from tether.store.completes import INLINE_DISPATCH

if TYPE_CHECKING:
    from tether.project import Project

__all__ = ["TASK_NAME", "CeleryProvider", "make_app"]

TASK_NAME = "tether.execute_run"
"""The one Celery task: ``execute_run(run_id, agent=None)``."""

MAX_BACKLOG = 64
"""Ready messages in the queue above which the dispatcher stops publishing (at least four
per pool thread; see :class:`_BrokerDispatcher`). Messages that workers hold do not count,
so this only needs to cover the time a dispatcher takes to refill the queue."""

BACKLOG_RECHECK = 0.02
"""Seconds a dispatcher that found the queue full waits before asking the broker again
(a full queue of at least ``MAX_BACKLOG`` messages takes longer than this to drain)."""

log = logging.getLogger(__name__)

# Celery's worker signals a shutdown through process-wide flags (celery.worker.state) and
# shares one event loop per process (kombu.asynchronous), so a process embeds one worker
# at a time; more workers means more `tether worker` processes.
_EMBEDDED = threading.Lock()


def make_app(broker_url: str, queue: str) -> Celery:
    """A Celery app for Tether: late acknowledgement, one prefetched message per thread,
    JSON messages, no result backend (the store holds every result)."""
    app = Celery("tether", broker=broker_url, set_as_current=False, fixups=[])
    app.conf.update(
        # Acknowledge a message only once the run was recorded: a worker lost before that
        # leaves the message to be redelivered (harmless: runs are claimed by id).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per pool thread: a worker does not hoard runs another could take.
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # The dispatcher is the only producer and the store has the state: neither
        # remote control nor task events are needed (and each costs broker traffic).
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
    )
    return app


def _safe_url(url: str) -> str:
    """The URL fit for messages: its password, if any, masked."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class _BrokerDispatcher(Dispatcher):
    """The outbox relay, with back-pressure and a slower reaper.

    Back-pressure: at most ``max_backlog`` messages wait in the queue; further due runs
    stay in the store (queued, not yet handed over) until the workers catch up. Without it
    a backlog larger than the workers drain in ``redispatch_after`` seconds would be
    published again and again (each still-queued run looks lost), filling the broker with
    duplicates that each cost an empty claim. The queue's depth is asked of the broker
    only when this dispatcher's own count says the queue may be full, so a busy worker
    does not pay a broker round trip per pass.

    While it holds runs back it passes again every :data:`BACKLOG_RECHECK` seconds, not
    after its poll: nothing else wakes it when the workers drain the queue (submissions
    do, but a burst's end, retries and runs triggered by other runs do not), and a poll
    apart it would hand over at most ``max_backlog`` runs per poll whatever the workers
    could take.

    The reaper runs every ``reap_every`` seconds rather than on every pass: a pass follows
    every completed run under load, and a lost run waits a whole lease anyway.
    """

    def __init__(self, *args: Any, backlog: Callable[[], int], max_backlog: int,
                 reap_every: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.reap_every = reap_every
        self._queued = max_backlog  # unknown at start: ask the broker on the first pass
        self._next_reap = 0.0
        self._next_backlog = 0.0
        self.holding = False
        """Whether the last pass held due runs back (or may have) for want of room."""

    def pause(self) -> float:
        """:data:`BACKLOG_RECHECK` while holding runs back, else the poll."""
        return BACKLOG_RECHECK if self.holding else self.poll

    def tick(self) -> int:
        """One pass: reap when due, then publish what is due while the queue has room."""
        self.holding = False
        if not self._lead():
            return 0
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + self.reap_every
            self.reaped += len(self.runner.reap())
        if self._queued >= self.max_backlog:
            if now < self._next_backlog:
                self.holding = True
                return 0  # full a moment ago
            self._queued = self.backlog()
            if self._queued >= self.max_backlog:
                self._next_backlog = now + BACKLOG_RECHECK
                self.holding = True
                return 0
        room = self.max_backlog - self._queued
        due = self.runner.store.dispatch_batch(
            limit=min(self.batch, room),
            redispatch_after=self.redispatch_after,
            agents=frozenset(self.runner.graph.agents),
        )
        if due:
            self.publish(due)
            self.dispatched += len(due)
            self._queued += len(due)
        # The queue's room, not the batch, bounded this pass: more may be due.
        self.holding = len(due) == room < self.batch
        return len(due)


class CeleryProvider(Provider):
    """Executes runs as Celery tasks; the store decides, Celery delivers."""

    name: ClassVar[str] = "celery"

    def __init__(self, project: Project) -> None:
        super().__init__(project)
        self.stats = WorkerStats()
        self.redispatch_after = max(self.settings.lease_seconds, 10.0)
        """Seconds after which a published run still queued is published again."""
        self._app: Celery | None = None
        self._runner: RunOne | None = None
        self._runners: DaemonPool | None = None
        self._dispatcher: Dispatcher | None = None
        self._worker: Any = None
        self._on_complete: Listener | None = None
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._inflight: set[int] = set()
        self._lock = threading.Lock()

    # -- the Celery app ------------------------------------------------------------

    @property
    def app(self) -> Celery:
        """This provider's Celery app, with the ``tether.execute_run`` task registered."""
        if self._app is None:
            app = make_app(self.settings.broker_url, self.settings.task_queue)

            # A closure rather than a module-level task, and not shared (Celery's default
            # adds a task to every app of the process): it belongs to this app only, so
            # providers of different projects or queues in one process never mix.
            @app.task(name=TASK_NAME, ignore_result=True, shared=False)
            def execute_run(run_id: int, agent: str | None = None) -> None:
                self._execute(run_id, agent)

            self._app = app
        return self._app

    def check_broker(self) -> None:
        """Connect to the broker once.

        Raises:
            ConfigError: the broker is unreachable; the message says how to start one.
        """
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0)
        except Exception as exc:
            raise ConfigError(
                f"cannot reach the Celery broker at {_safe_url(self.settings.broker_url)} "
                f"({str(exc).rstrip('.')}). Start it (Redis: `redis-server`; RabbitMQ: "
                "`rabbitmq-server`) or set TETHER_BROKER_URL"
            ) from None

    def backlog(self) -> int:
        """Messages ready in the queue (not counting those workers hold unacknowledged)."""
        app = self.app
        # Declared as Celery's worker declares it (same arguments), so this works before
        # the first worker starts and never conflicts with its declaration.
        queue = app.amqp.queues[self.settings.task_queue]
        with app.pool.acquire(block=True) as conn:
            declared = queue.bind(conn.default_channel).queue_declare()
        return int(declared.message_count)

    def _publish(self, runs: Sequence[tuple[int, str]]) -> None:
        """One message per run, on one producer connection; on Redis, several runs' messages
        go in one pipelined round trip (kombu's publish batch: a third of the CPU per
        message of one publish each)."""
        app, queue = self.app, self.settings.task_queue
        with app.producer_or_acquire() as producer, producer.batch():
            for n, (run_id, agent) in enumerate(runs):
                app.send_task(
                    TASK_NAME,
                    args=(run_id,),
                    kwargs={"agent": agent},  # for the broker's and Flower's displays
                    queue=queue,
                    producer=producer,
                    ignore_result=True,
                    # What the broker's and Flower's displays show, given rather than left
                    # to Celery's saferepr: a fifth of a message's CPU (105 against 135 µs
                    # per message, in batches of 13).
                    argsrepr=f"({run_id},)",
                    kwargsrepr=f"{{'agent': {agent!r}}}",
                    # The queue is declared (if kombu has not yet on this connection) by
                    # the batch's first message; for the others kombu would only copy the
                    # queue to find it declared: a sixth of a message's CPU (measured in
                    # batches of ten, 0.59 against 0.50 ms per message).
                    declare=None if n == 0 else [],
                )

    # -- the Provider interface ----------------------------------------------------

    def idle(self) -> bool:
        """True when nothing is queued or running in the store and no run of this process
        is still being counted."""
        with self._lock:
            if self._inflight:
                return False
        return super().idle()

    def deliver(self, runs: Sequence[tuple[int, str]]) -> None:
        """Publish ``runs`` now, even if published before (duplicates execute nothing)."""
        if not runs:
            return
        # Broker connections are not closed afterwards: kombu pools them per broker URL for
        # the whole process (every app with this URL shares them), and closing a pool
        # would break the next app's publishing.
        self._publish(runs)

    def run(
        self,
        *,
        until_idle: bool = False,
        concurrency: int | None = None,
        on_complete: Listener | None = None,
    ) -> WorkerStats:
        """Serve the queue until :meth:`stop` (or, with ``until_idle``, until the store
        holds no queued or running run of this project's agents).

        Raises:
            ConfigError: the broker is unreachable, or this process already runs a
                Celery worker.
        """
        if not _EMBEDDED.acquire(blocking=False):
            raise ConfigError(
                "this process already runs a Celery worker; start another "
                "`tether worker --provider celery` process instead"
            )
        try:
            return self._run(until_idle, concurrency or self.settings.concurrency, on_complete)
        finally:
            _EMBEDDED.release()

    def stop(self) -> None:
        """Stop consuming; runs in flight finish and are recorded (however long they take:
        a second signal calls :meth:`abort`)."""
        self._stopping.set()
        if self._runner is not None:
            worker_state.should_stop = 0  # the worker's loop checks this (exit code 0)
            self._wake_loop()

    def abort(self) -> None:
        """Stop now: runs in flight are released in the store (queued again at the same
        attempt) and their agents' threads abandoned."""
        # The runs in flight, read before _aborting is set: their tasks return (and leave
        # _inflight) as soon as they see it.
        runner = self._runner
        with self._lock:
            inflight = list(self._inflight)
        if runner is not None:  # and the runs their chains have claimed since
            inflight = sorted({*inflight, *runner.held()})
        self._aborting.set()
        self._stopping.set()
        if self._dispatcher is not None:
            # Stopped before the release: its NOTIFY would otherwise wake this outbox,
            # which would publish the released runs to this stopping worker.
            self._dispatcher.stop()
        if runner is None:
            return
        if inflight:
            self.stats.released += len(
                runner.store.release(
                    runner.worker_id,
                    inflight,
                    reason=f"worker {runner.worker_id} stopped before the run finished",
                )
            )
        worker_state.should_terminate = 0
        self._wake_loop()

    # -- serving -------------------------------------------------------------------

    def _run(self, until_idle: bool, concurrency: int, on_complete: Listener | None) -> WorkerStats:
        settings = self.settings
        self.stats = WorkerStats()
        self._on_complete = on_complete
        self._aborting.clear()
        self.check_broker()
        app = self.app
        runner = RunOne(
            self.project.store,
            self.project.graph,
            lease_seconds=settings.lease_seconds,
            on_complete=self._recorded,
            # Downstream runs are published right after the commit that queued them (and
            # marked dispatched in it); the outbox re-publishes any this misses.
            publish=self._publish,
        )
        dispatcher = _BrokerDispatcher(
            runner,
            self._publish,
            poll=settings.poll_interval,
            redispatch_after=self.redispatch_after,
            backlog=self.backlog,
            max_backlog=max(MAX_BACKLOG, 4 * concurrency),
            reap_every=max(settings.poll_interval, min(1.0, settings.lease_seconds / 4)),
            outbox=f"celery:{settings.task_queue}",
        )
        # Fresh process-wide state for this worker: a previous embedded worker's stop flags
        # and event loop must not stop or serve this one.
        worker_state.should_stop = None
        worker_state.should_terminate = None
        set_event_loop(None)
        hostname = f"tether-{os.getpid()}@{socket.gethostname()}"
        # What `celery worker` does first: the pool threads look tasks up through the
        # process's default app, so this app must be it while the worker runs.
        setup_worker_optimizations(app, hostname)
        try:
            worker = app.WorkController(
                hostname=hostname,
                pool="threads",
                concurrency=concurrency,
                queues=[settings.task_queue],
                loglevel="WARNING",
                # Neither is needed (no remote control, no events) and mingle waits a
                # second for other workers' replies at start-up.
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
            )
        except BaseException:
            reset_worker_optimizations(app)
            raise
        self._runner, self._dispatcher, self._worker = runner, dispatcher, worker
        # At most one chain per pool thread at a time, so one daemon thread each suffices.
        self._runners = runners = DaemonPool(concurrency, "tether-run")
        failure: dict[str, BaseException] = {}

        def serve() -> None:
            try:
                worker.start()
            except BaseException as exc:  # surfaced in the caller's thread below
                failure["error"] = exc

        # The worker lives on its own thread so that the calling thread (the CLI's main
        # thread) stays free to run signal handlers: Ctrl-C calls stop() or abort().
        thread = threading.Thread(target=serve, name="tether-celery", daemon=True)
        monitor = None
        try:
            if not self._stopping.is_set():
                dispatcher.start()
                thread.start()
                if until_idle:
                    monitor = threading.Thread(
                        target=self._stop_when_idle, name="tether-celery-idle", daemon=True
                    )
                    monitor.start()
                while thread.is_alive():
                    thread.join(0.25)  # a timed wait keeps the main thread's signals live
        finally:
            dispatcher.stop()
            self.stats.reaped += dispatcher.reaped
            self._stopping.set()
            if monitor is not None:
                monitor.join(timeout=1)
            worker_state.should_stop = None
            worker_state.should_terminate = None
            self._runner = self._worker = self._runners = None
            # Those still running an agent (an abort abandoned them) end with the process.
            runners.shutdown(wait=False)
            if not self._aborting.is_set():
                runner.close()  # an aborted agent may still be using the shared loop
            reset_worker_optimizations(app)
            self._stopping.clear()
        if "error" in failure:
            raise failure["error"]
        if worker.exitcode not in (None, 0):
            raise TetherError(
                f"the Celery worker stopped with exit code {worker.exitcode}; "
                "its log lines above say why"
            )
        return self.stats

    def _wake_loop(self) -> None:
        """Wake the worker's event loop so it sees a stop flag now rather than after its
        poll timeout (up to ten seconds when only far timers are scheduled)."""
        hub = getattr(self._worker, "hub", None)
        if hub is not None:
            with contextlib.suppress(Exception):  # closed already: nothing to wake
                hub.call_soon(_noop)

    def _serving(self) -> bool:
        """True until the worker is asked to stop: until then a recorded run's chain goes
        on on its thread."""
        return not self._stopping.is_set()

    def _stop_when_idle(self) -> None:
        wait_until_idle(self, stop=self._stopping, poll=self.settings.poll_interval)
        self.stop()

    def _execute(self, run_id: int, agent: str | None = None) -> None:
        """The task's body, on a pool thread. The chain runs on one of this worker's
        daemon threads (:class:`~tether.runtime.worker.DaemonPool`, as many as Celery's
        pool has threads) so that an aborted worker can exit while an agent is stuck
        (Celery's pool threads are joined at interpreter exit); this thread waits for it
        or for :meth:`abort`. A pool rather than a thread per message: starting a thread
        for each chain cost about a twentieth of a run's CPU."""
        runner, runners = self._runner, self._runners
        if runner is None or runners is None or self._aborting.is_set():
            # Not serving: the run stays queued and is published again later.
            return
        if agent is not None and agent not in runner.graph:
            # Claiming it would fail the run for want of its code. Left queued, it is
            # published again for a worker that has the agent.
            log.warning(
                "run %s is for agent %r, which this worker does not have: is the queue %r "
                "shared by projects with different agents? Give each its own task_queue",
                run_id, agent, self.settings.task_queue,
            )
            return
        result: dict[str, Any] = {}
        done = threading.Event()
        with self._lock:
            self._inflight.add(run_id)

        def target() -> None:
            try:
                # The chain this run starts, hop by hop on this thread while the worker
                # serves (RunOne.follow): each outcome is counted as it is recorded.
                for outcome in runner.follow(run_id, go_on=self._serving):
                    self._count(outcome)
            except BaseException as exc:
                result["error"] = exc
            finally:
                done.set()

        try:
            runners.submit(target)
            while not done.wait(0.5):
                if self._aborting.is_set():
                    return  # released in the store by abort(); the agent is abandoned
                if self._runners is not runners:
                    # The worker has stopped serving and its pool is shut down (a chain
                    # handed over after that would never start): the run is still queued,
                    # or claimed with a lease that expires without its heartbeat.
                    return
            if "error" in result:
                # The store refused (it is unreachable, say). Nothing is lost: a run never
                # claimed is still queued and published again after `redispatch_after`; a
                # claimed one is reaped when its lease expires. Never Celery's retry.
                log.error("run %s: %s", run_id, result["error"])
        finally:
            # Counted before it leaves _inflight: idle() is not true while a recorded run
            # is yet to be counted (an --until-idle worker would stop and miss it).
            with self._lock:
                self._inflight.discard(run_id)

    def _count(self, outcome: Outcome) -> None:
        if not outcome.executed:
            return  # a duplicate delivery, or a run already finished: nothing done
        with self._lock:
            count(self.stats, outcome)
        dispatcher = self._dispatcher
        overflow = len(outcome.dispatched) >= INLINE_DISPATCH
        if outcome.recorded and outcome.succeeded and overflow and dispatcher is not None:
            # Its triggers may have queued more downstream runs than are published inline
            # (a large fan-out): the outbox takes them now rather than after its poll.
            dispatcher.wake()

    def _recorded(self, completion: Completion) -> None:
        if self._on_complete is not None:
            with self._lock:  # the listener (the CLI's printer) is not thread-safe
                self._on_complete(completion)


def _noop() -> None:
    return None

