"""The local worker: claims queued runs with a lease, executes them on threads, and commits
their outcomes in groups.

Threads and what each owns:

- the *pump* (the thread that calls :meth:`Worker.run`) owns the store's write path: in one
  transaction it records every run that finished since its last pass and claims as many
  queued runs as there are free slots. One synced commit serves a whole batch, which is
  how full durability stays fast (group commit).
- *executors* (a pool of ``concurrency`` threads) run agents and hand back completions.
- the *heartbeat* renews the leases of runs in flight and flushes their buffered steps.

A worker that dies (SIGKILL, power loss) stops renewing; once its leases expire, any
worker's reaper fails those runs as retryable ("worker lost") and queues their retries.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.graph.registry import Graph
from tether.runtime.context import StepRecorder
from tether.runtime.execute import Executor
from tether.store import Completion, Store
from tether.store.writes import Claim

_BATCH = 256


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker process, readable in ``tether show``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerStats:
    """What a worker did, for progress displays and benchmarks."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retries_queued: int = 0
    discarded: int = 0
    """Completions dropped because the run's lease had been lost (it was reaped)."""
    reaped: int = 0
    released: int = 0
    started_at: float = field(default_factory=time.time)


Listener = Callable[[Completion], None]


class DaemonPool:
    """A fixed pool of daemon threads that run the agents (the local worker's, and the
    Celery provider's beside Celery's own pool). Unlike ``ThreadPoolExecutor``, whose
    threads the interpreter joins at exit, an aborted worker's process can exit while an
    agent is still blocked: its run has been released in the store already."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            fn(*args)

    def submit(self, fn: Callable[..., None], *args: object) -> None:
        self._jobs.put((fn, args))

    def shutdown(self, *, wait: bool) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for t in self._threads:
                t.join()


class Worker:
    """Executes the runs queued in a store for the agents of a graph.

    Args:
        store: where runs are queued and recorded.
        graph: the agents this worker can run.
        concurrency: runs executed at once (threads).
        lease_seconds: a claimed run's lease; renewed every third of it while running.
        poll_interval: how long an idle worker waits before looking again.
        worker_id: a unique name (default ``host:pid:random``).
        on_complete: called (on the pump thread) for every recorded completion.
    """

    def __init__(
        self,
        store: Store,
        graph: Graph,
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.2,
        worker_id: str | None = None,
        on_complete: Listener | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.store = store
        self.graph = graph
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.id = worker_id or default_worker_id()
        self.on_complete = on_complete
        self.stats = WorkerStats()
        self._executor = Executor(store, graph)
        # Only this graph's agents: work queued for other teams' agents is theirs to run.
        self._agents = frozenset(graph.agents)
        self._done: queue.Queue[Completion] = queue.Queue()
        self._inflight: dict[int, StepRecorder] = {}
        self._inflight_lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._wake = threading.Event()

    # -- control -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; runs in flight finish (or are released by :meth:`abort`)."""
        self._stop.set()
        self._wake.set()

    def abort(self) -> None:
        """Stop now: runs still in flight are released to be retried elsewhere."""
        self._abort.set()
        self.stop()

    @property
    def inflight(self) -> int:
        """Runs claimed and not yet recorded."""
        with self._inflight_lock:
            return len(self._inflight)

    # -- the pump ------------------------------------------------------------------

    def run(self, *, until_idle: bool = False, grace: float | None = None) -> WorkerStats:
        """Execute runs until stopped (or, with ``until_idle``, until no run is queued or
        running anywhere in the store). After a stop, waits up to ``grace`` seconds
        (default: the lease) for runs in flight, then releases what is left."""
        grace = self.lease_seconds if grace is None else grace
        pool = DaemonPool(self.concurrency, "tether-run")
        heartbeat = threading.Thread(target=self._heartbeat, name="tether-heartbeat", daemon=True)
        heartbeat.start()
        next_reap = 0.0
        stop_deadline: float | None = None
        try:
            while True:
                completions = self._drain()
                stopping = self._stop.is_set()
                # Runs drained here are done: their slots are free for this same commit.
                free = 0 if stopping else self.concurrency - self.inflight + len(completions)
                claims: list[Claim] = []
                if completions or free > 0:
                    accepted, claims = self.store.exchange(
                        completions,
                        worker=self.id,
                        limit=free,
                        lease_seconds=self.lease_seconds,
                        agents=self._agents,
                    )
                    self._recorded(completions, set(accepted))
                    for claim in claims:
                        self._dispatch(pool, claim)
                if stopping:
                    stop_deadline = stop_deadline or time.time() + grace
                    if self.inflight == 0 and self._done.empty():
                        break
                    if self._abort.is_set() or time.time() >= stop_deadline:
                        self._release_all()
                        break
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                if claims or completions:
                    continue  # busy: go round again at once
                now = time.time()
                if now >= next_reap:
                    self._reap()
                    next_reap = now + min(self.poll_interval * 5, self.lease_seconds / 2)
                if until_idle and self.inflight == 0 and self._idle():
                    break
                self._wake.wait(self._sleep_for(until_idle))
                self._wake.clear()
        finally:
            self._stop.set()
            pool.shutdown(wait=not self._abort.is_set())
            leftovers = self._drain()
            if leftovers:
                accepted, _ = self.store.exchange(
                    leftovers, worker=self.id, limit=0, lease_seconds=self.lease_seconds
                )
                self._recorded(leftovers, set(accepted))
            heartbeat.join(timeout=1)
            self._executor.close()
        return self.stats

    def _idle(self) -> bool:
        pending = self.store.pending(agents=self._agents)
        if pending.queued == 0 and pending.running == 0:
            return True
        if pending.expired:
            self._reap()
        return False

    def _reap(self) -> None:
        self.stats.reaped += len(self.store.reap(self._executor.retry_at, agents=self._agents))

    def _sleep_for(self, until_idle: bool) -> float:
        if not until_idle or self.inflight:
            return self.poll_interval  # a finishing run sets the wake event anyway
        nxt = self.store.pending(agents=self._agents).next_at
        if nxt is None:
            return self.poll_interval
        return max(0.001, min(self.poll_interval, nxt - time.time()))

    def _drain(self) -> list[Completion]:
        out: list[Completion] = []
        while len(out) < _BATCH:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        return out

    def _recorded(self, completions: list[Completion], accepted: set[int]) -> None:
        for c in completions:
            with self._inflight_lock:
                self._inflight.pop(c.run_id, None)
            if c.run_id not in accepted:
                self.stats.discarded += 1
                continue
            if c.succeeded:
                self.stats.succeeded += 1
            else:
                self.stats.failed += 1
                if c.retry_at is not None:
                    self.stats.retries_queued += 1
            if self.on_complete is not None:
                self.on_complete(c)

    # -- executing -----------------------------------------------------------------

    def _dispatch(self, pool: DaemonPool, claim: Claim) -> None:
        recorder = self._executor.recorder(claim)
        with self._inflight_lock:
            self._inflight[claim.run_id] = recorder
        self.stats.claimed += 1
        pool.submit(self._execute, claim, recorder)

    def _execute(self, claim: Claim, recorder: StepRecorder) -> None:
        try:
            completion = self._executor.run(claim, recorder, worker=self.id)
        except BaseException as exc:  # a bug of ours: record it rather than lose the run
            from tether.retry import classify

            failure = classify(exc)
            completion = Completion(
                run_id=claim.run_id,
                task_id=claim.task_id,
                worker=self.id,
                attempt=claim.attempt,
                succeeded=False,
                finished_at=time.time(),
                failure_class=failure.cls.value,
                failure_reason=f"harness error: {failure.reason}",
                steps=tuple(recorder.drain()),
            )
        self._done.put(completion)
        self._wake.set()

    # -- leases --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            with self._inflight_lock:
                inflight = dict(self._inflight)
            if not inflight:
                continue
            try:
                self.store.renew(self.id, inflight, lease_seconds=self.lease_seconds)
                for recorder in inflight.values():
                    recorder.flush()
            except Exception:  # the pump will surface a broken store; keep beating
                continue

    def _release_all(self) -> None:
        with self._inflight_lock:
            ids = list(self._inflight)
            self._inflight.clear()
        if ids:
            self.stats.released += len(
                self.store.release(
                    self.id, ids, reason=f"worker {self.id} stopped before the run finished"
                )
            )
