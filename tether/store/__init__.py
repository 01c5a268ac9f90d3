"""The store: tasks, runs, steps and triggers in SQLite (default) or PostgreSQL."""

from tether.store.records import (
    FailureClass,
    Run,
    RunReason,
    RunStatus,
    Step,
    Task,
    TaskInput,
    TaskStatus,
    Trigger,
)
from tether.store.store import PostgresStore, SQLiteStore, Store
from tether.store.writes import (
    Claim,
    ClaimIds,
    Completion,
    Edge,
    Follow,
    Pending,
    StepWrite,
    Submission,
)

__all__ = [
    "Claim",
    "ClaimIds",
    "Completion",
    "Edge",
    "FailureClass",
    "Follow",
    "Pending",
    "PostgresStore",
    "Run",
    "RunReason",
    "RunStatus",
    "SQLiteStore",
    "Step",
    "StepWrite",
    "Store",
    "Submission",
    "Task",
    "TaskInput",
    "TaskStatus",
    "Trigger",
]
