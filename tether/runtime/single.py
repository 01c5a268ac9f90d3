"""Executing one run by id: what a Celery task or a Temporal activity does with a run id.

The store stays the source of truth on every provider: the run is claimed by id with a
lease (so a duplicate delivery executes nothing), the lease is renewed while the agent
runs, and the outcome, steps, trigger edges and retry are recorded in one transaction —
the same :class:`tether.store.Completion` path the local worker uses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tether.graph.registry import Graph
from tether.runtime.execute import Executor
from tether.runtime.worker import WorkerStats, default_worker_id
from tether.store import Completion, Store


@dataclass(frozen=True, slots=True)
class Outcome:
    """What executing a run by id did, in plain data an engine can carry."""

    run_id: int
    executed: bool
    """False when the run was not claimable (a duplicate, not yet due, or finished)."""
    succeeded: bool = False
    recorded: bool = False
    """False when the lease was lost mid-run and the completion was discarded."""
    failure_class: str | None = None
    failure_reason: str | None = None
    retry_at: float | None = None
    """When the retry the store queued becomes due (None: no retry queued)."""


def count(stats: WorkerStats, outcome: Outcome) -> None:
    """Add one executed run's outcome to a provider's counts (not thread-safe: hold a lock)."""
    stats.claimed += 1
    if not outcome.recorded:
        stats.discarded += 1
    elif outcome.succeeded:
        stats.succeeded += 1
    else:
        stats.failed += 1
        if outcome.retry_at is not None:
            stats.retries_queued += 1


class RunOne:
    """Executes single runs by id against one store and graph; thread-safe."""

    def __init__(
        self,
        store: Store,
        graph: Graph,
        *,
        lease_seconds: float = 30.0,
        worker_id: str | None = None,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> None:
        self.store = store
        self.graph = graph
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        self.on_complete = on_complete
        """Called (on the executing thread) with every completion the store recorded."""
        self._executor = Executor(store, graph)

    def __call__(self, run_id: int) -> Outcome:
        """Claim run ``run_id``, execute it, record it. Never raises for agent errors."""
        claim = self.store.claim_run(
            run_id, worker=self.worker_id, lease_seconds=self.lease_seconds
        )
        if claim is None:
            return Outcome(run_id=run_id, executed=False)
        recorder = self._executor.recorder(claim)
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.lease_seconds / 3):
                try:
                    self.store.renew(self.worker_id, [run_id], lease_seconds=self.lease_seconds)
                    recorder.flush()
                except Exception:  # keep beating; the completion surfaces a broken store
                    continue

        beat = threading.Thread(target=heartbeat, name=f"tether-beat-{run_id}", daemon=True)
        beat.start()
        try:
            completion: Completion = self._executor.run(claim, recorder, worker=self.worker_id)
        finally:
            done.set()
            beat.join(timeout=5)
        recorded = run_id in self.store.complete([completion])
        if recorded and self.on_complete is not None:
            self.on_complete(completion)
        return Outcome(
            run_id=run_id,
            executed=True,
            succeeded=completion.succeeded,
            recorded=recorded,
            failure_class=completion.failure_class,
            failure_reason=completion.failure_reason,
            retry_at=completion.retry_at,
        )

    def reap(self, *, followed: bool = False) -> list[int]:
        """Fail runs whose worker was lost (lease expired) and queue their retries
        (``followed``: see :meth:`tether.store.Store.reap`)."""
        return self.store.reap(
            self._executor.retry_at, agents=frozenset(self.graph.agents), followed=followed
        )

    def close(self) -> None:
        """Stop the shared event loop of coroutine agents, if one was started."""
        self._executor.close()
