"""Running agents: the context they receive, retry rules, and the local worker."""

from tether.retry import Failure, RetryPolicy, classify
from tether.runtime.context import Context, StepHandle
from tether.runtime.execute import Executor
from tether.runtime.worker import Worker, WorkerStats

__all__ = [
    "Context",
    "Executor",
    "Failure",
    "RetryPolicy",
    "StepHandle",
    "Worker",
    "WorkerStats",
    "classify",
]
