"""The Temporal workflow that drives one run: ``TetherRun``.

This module is loaded inside Temporal's workflow sandbox, so it imports nothing of Tether
(no store, no agents, no SQLAlchemy) and does nothing non-deterministic: time comes from
``workflow.now()``, waiting from durable timers, and the one activity is called by name.

One workflow per run, with the id :func:`workflow_id` (run id and task queue), so
Temporal itself rejects a second workflow for the same run while the first is open or
after it completed — that is duplicate-delivery protection on top of the store's
claim-by-id. The workflow:

1. sleeps on a durable timer until the run is due (``not_before``: a retry's backoff);
2. executes the activity ``execute_run(run_id)``, which claims the run in the store,
   runs the agent and records the outcome. Temporal retries the *activity* (not the run)
   when a worker is lost or the store is briefly unreachable; the retried activity
   executes the same run in place if it was never claimed, and otherwise follows what the
   store recorded (see :mod:`tether.providers.temporal`);
3. when the store queued a retry run (a retryable failure, or a lost worker's run failed
   by the reaper), starts the retry's own ``TetherRun`` as an abandoned child at once, so
   its backoff is a Temporal timer in the child's history and the outbox finds its
   workflow id already taken when the retry comes due.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

WORKFLOW = "TetherRun"
"""The workflow type name."""

ACTIVITY = "execute_run"
"""The activity type name: ``execute_run(run_id, agent) -> dict``."""

REUSE = WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
"""A run's workflow id may be used again only if its workflow failed or was terminated
(then the outbox may start it again); a completed one means the run was handled."""


def workflow_id(run_id: int, task_queue: str) -> str:
    """The id of the workflow that drives run ``run_id``.

    The task queue is part of it because run ids are unique per store, not per Temporal
    namespace: two deployments (or two test databases) on one server use two queues.
    """
    return f"tether-run-{run_id}@{task_queue}"


def heartbeat_timeout(lease_seconds: float) -> timedelta:
    """A bit over the store's lease: Temporal declares an activity lost about when the
    store's reaper does, so the retried activity usually finds the run already reaped."""
    return timedelta(seconds=lease_seconds + max(1.0, lease_seconds * 0.2))


@dataclass
class RunJob:
    """The workflow's argument."""

    run_id: int
    lease_seconds: float
    """The store lease of the worker that dispatched the run; sets the heartbeat timeout."""
    not_before: float | None = None
    """Epoch seconds when the run becomes due (a retry's backoff), slept on a timer."""
    agent: str = ""
    """The run's agent: a worker without it leaves the run to one that has it."""


@workflow.defn(name=WORKFLOW)
class TetherRun:
    """Drives one run: a durable wait until it is due, the activity that executes it, and
    the workflow of its retry, if the store queued one."""

    @workflow.run
    async def run(self, job: RunJob) -> dict[str, Any]:
        """Returns the activity's outcome (plain data: see ``TemporalProvider``)."""
        if job.not_before is not None:
            delay = job.not_before - workflow.now().timestamp()
            if delay > 0:
                # The backoff of a retry: a durable timer. A worker that dies while it
                # ticks loses nothing; the server fires it and any worker continues.
                await workflow.sleep(delay)
        outcome: dict[str, Any] = await workflow.execute_activity(
            ACTIVITY,
            args=[job.run_id, job.agent],
            result_type=dict,
            heartbeat_timeout=heartbeat_timeout(job.lease_seconds),
            # Liveness comes from heartbeats; this only bounds one attempt. An attempt that
            # outlives it is retried, and the retry waits for the store's record.
            start_to_close_timeout=timedelta(days=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=200),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=10),
                maximum_attempts=0,  # retry until the store has decided the run
                non_retryable_error_types=["UnknownRun"],
            ),
        )
        retry = outcome.get("retry_run_id")
        if retry is not None:
            # Already started: the outbox got there first (a zero backoff), and that
            # workflow drives the retry.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await workflow.start_child_workflow(
                    WORKFLOW,
                    RunJob(int(retry), job.lease_seconds, outcome.get("retry_at"), job.agent),
                    id=workflow_id(int(retry), workflow.info().task_queue),
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    id_reuse_policy=REUSE,
                )
        return outcome
