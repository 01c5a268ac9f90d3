"""Tether: a harness for running AI agents in production.

Agents are plain functions decorated with :func:`agent`; they receive a :class:`Context`,
record :meth:`Context.step` s, and classify failures with :class:`Retryable` and
:class:`Terminal`. Tether records every run, links agents through trigger rows, retries
what the world broke, and keeps the history an auditor asks for.
"""

from tether.config import Settings, load_settings
from tether.errors import (
    AgentFailure,
    ConfigError,
    Conflict,
    DiscoveryError,
    InvalidKey,
    NotFound,
    OutputError,
    Retryable,
    StoreError,
    Terminal,
    TetherError,
)
from tether.graph import (
    Agent,
    Graph,
    TaskGraph,
    Upstream,
    Why,
    WhyNot,
    agent,
    discover,
    task_graph,
    why,
    why_not,
)
from tether.outcomes import Waiting
from tether.project import Project
from tether.runtime import Context, RetryPolicy, StepHandle, Worker, WorkerStats
from tether.store import Run, Step, Store, Task, TaskStatus, Trigger

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentFailure",
    "ConfigError",
    "Conflict",
    "Context",
    "DiscoveryError",
    "Graph",
    "InvalidKey",
    "NotFound",
    "OutputError",
    "Project",
    "RetryPolicy",
    "Retryable",
    "Run",
    "Settings",
    "Step",
    "StepHandle",
    "Store",
    "StoreError",
    "Task",
    "TaskGraph",
    "TaskStatus",
    "Terminal",
    "TetherError",
    "Trigger",
    "Upstream",
    "Waiting",
    "Why",
    "WhyNot",
    "Worker",
    "WorkerStats",
    "__version__",
    "agent",
    "discover",
    "load_settings",
    "task_graph",
    "why",
    "why_not",
]
