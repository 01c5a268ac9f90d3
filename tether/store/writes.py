"""Plain data the runtime hands to the store to write: claims, steps, completions, edges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Claim:
    """A run a worker has claimed, with what it needs to start executing it."""

    run_id: int
    task_id: int
    agent: str
    key: str
    attempt: int
    reason: str
    note: str | None
    lease_expires_at: float


@dataclass(frozen=True, slots=True)
class StepWrite:
    """A step to insert (or, when ``inserted``, to finish) in the store."""

    seq: int
    name: str
    key: str | None
    input: Any
    output: Any
    status: str
    error: str | None
    started_at: float
    finished_at: float | None
    inserted: bool = False
    """True when the step was already written as running (a keyed step); then it is updated."""


@dataclass(frozen=True, slots=True)
class Edge:
    """A trigger to record: the finished run's task --name--> (agent, key)."""

    name: str
    agent: str
    key: str
    requires: tuple[str, ...]
    """Every trigger the downstream agent subscribes to: it runs once all have fired."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one run, written with its steps, edges and retry in one transaction."""

    run_id: int
    task_id: int
    worker: str
    attempt: int
    succeeded: bool
    finished_at: float
    output: Any = None
    waiting_for: str | None = None
    """A success that leaves the task waiting for new information says for what."""
    failure_class: str | None = None
    failure_reason: str | None = None
    steps: tuple[StepWrite, ...] = ()
    edges: tuple[Edge, ...] = ()
    retry_at: float | None = None
    """When set (a retryable failure under ``max_attempts``), a retry run is queued for then."""


@dataclass(slots=True)
class Follow:
    """Asks :meth:`Store._complete` to claim, for the worker that recorded a completion, the
    first run its triggers queue for a task they created, in the same transaction.

    The worker then executes that run next on the same thread: a chain runs hop to hop
    without a broker round trip or a claim transaction per hop (the Celery provider). Only
    a run of a task the transaction created is taken this way: such a task has no other
    run, so "one run at a time per task" holds without a check.
    """

    worker: str
    lease_seconds: float
    agents: frozenset[str]
    """Only runs of these agents (the ones this worker has) are claimed."""
    wanted: set[int] = field(default_factory=set)
    """Run ids of the completions whose first downstream run should be claimed."""
    claims: dict[int, Claim] = field(default_factory=dict)
    """Filled in: upstream run id -> the downstream run claimed for this worker."""

    def takes(self, run_id: int, agent: str) -> bool:
        """Whether completion ``run_id`` may still have a run of ``agent`` claimed (if the
        edge's task turns out to be new)."""
        return run_id in self.wanted and run_id not in self.claims and agent in self.agents


@dataclass(slots=True)
class ClaimIds:
    """Asks :meth:`Store._complete` to also claim runs by id for ``worker``, in the same
    transaction (an engine provider's group commit: the claims of runs just delivered
    and the records of runs just finished). On PostgreSQL the claim travels in the same
    round trip as the statement that ends the finished runs."""

    run_ids: list[int]
    worker: str
    lease_seconds: float
    claimed: dict[int, Claim] = field(default_factory=dict)
    """Filled in: run id -> its claim, for the runs that were claimable."""
    done: bool = False
    """Set once the claim statement ran (by whichever step of the transaction ran it)."""


@dataclass(frozen=True, slots=True)
class Submission:
    """What ``submit`` did: the task, and the run it queued (None when nothing new arrived)."""

    task_id: int
    run_id: int | None
    created: bool


@dataclass(frozen=True, slots=True)
class Pending:
    """How much work a store still holds, for ``worker --until-idle``."""

    queued: int
    running: int
    next_at: float | None = None
    """When the earliest queued run becomes available."""
    expired: int = field(default=0)
    """Running runs whose lease has expired (their worker is presumed lost)."""
