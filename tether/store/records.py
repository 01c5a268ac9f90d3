"""Immutable records read from the store: what callers, the CLI and agents see."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # an operator cancelled the task before this run started


class TaskStatus(StrEnum):
    """A task's status, derived from its latest run."""

    PENDING = "pending"  # no run yet: a join still waits for some of its triggers
    QUEUED = "queued"
    RETRYING = "retrying"  # a retry is queued after a retryable failure
    RUNNING = "running"
    WAITING = "waiting"  # the last run succeeded; the task waits for new information
    SUCCEEDED = "succeeded"  # done
    FAILED = "failed"
    CANCELLED = "cancelled"  # an operator stopped further runs


class FailureClass(StrEnum):
    """How a failed run was classified."""

    RETRYABLE = "retryable"
    TERMINAL = "terminal"


class RunReason(StrEnum):
    """Why a run started."""

    SUBMITTED = "submitted"
    TRIGGER = "trigger"
    RETRY = "retry"
    OPERATOR = "operator"
    EVAL = "eval"


def derive_task_status(
    run_status: str | None,
    attempt: int | None,
    *,
    waiting_for: str | None = None,
    cancelled: bool = False,
) -> TaskStatus:
    """A task's status from its latest run (status, attempt, what it waits for) and
    whether an operator cancelled it."""
    if cancelled:
        return TaskStatus.CANCELLED
    if run_status is None:
        return TaskStatus.PENDING
    if run_status == RunStatus.QUEUED:
        return TaskStatus.RETRYING if (attempt or 1) > 1 else TaskStatus.QUEUED
    if run_status == RunStatus.SUCCEEDED and waiting_for:
        return TaskStatus.WAITING
    return TaskStatus(run_status)


@dataclass(frozen=True, slots=True)
class Record:
    """Base of the records: ``to_dict`` gives the JSON form the CLI prints."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TaskInput(Record):
    """One piece of information a task received, in order."""

    seq: int
    data: Any
    received_at: float


@dataclass(frozen=True, slots=True)
class Task(Record):
    """One business outcome, identified by (agent, key)."""

    id: int
    agent: str
    key: str
    status: TaskStatus
    created_at: float
    runs: int = 0

    @property
    def ref(self) -> str:
        """``AGENT/KEY``: how the CLI names a task."""
        return f"{self.agent}/{self.key}"


@dataclass(frozen=True, slots=True)
class Step(Record):
    """A recorded action an agent took during a run."""

    id: int
    run_id: int
    seq: int
    name: str
    key: str | None
    input: Any
    output: Any
    status: str
    error: str | None
    started_at: float
    finished_at: float | None

    @property
    def duration(self) -> float | None:
        """Seconds the step took, if it finished."""
        return None if self.finished_at is None else self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class Run(Record):
    """One invocation of an agent for a task."""

    id: int
    task_id: int
    attempt: int
    reason: str
    note: str | None
    status: RunStatus
    failure_class: FailureClass | None
    failure_reason: str | None
    output: Any
    waiting_for: str | None
    created_at: float
    available_at: float
    started_at: float | None
    finished_at: float | None
    worker: str | None
    lease_expires_at: float | None
    steps: tuple[Step, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Trigger(Record):
    """An edge of the decision graph: upstream task --name--> downstream task."""

    id: int
    name: str
    upstream_task_id: int
    upstream_run_id: int
    downstream_task_id: int
    created_at: float
    upstream_ref: str = ""
    downstream_ref: str = ""


@dataclass(frozen=True, slots=True)
class OperatorAction(Record):
    """A human override, kept with who did it and when."""

    id: int
    task_id: int
    action: str
    actor: str
    note: str | None
    run_id: int | None
    created_at: float
