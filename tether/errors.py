"""Tether's exception tree.

Every error Tether raises derives from :class:`TetherError`, so a caller can catch the whole
family at one boundary. Two exceptions are for agents, not for callers: an agent raises
:class:`Retryable` or :class:`Terminal` to classify its own failure.

    TetherError
    ├── ConfigError          bad tether.toml / TETHER_* value
    ├── DiscoveryError       the agent graph is invalid (cycle, unknown trigger, duplicate name)
    ├── StoreError           the database refused or is unreachable
    │   ├── NotFound         no task or run with that identifier
    │   └── Conflict         the operation does not apply in the task's state
    ├── OutputError          an agent's output (or a step's) cannot be stored as JSON
    ├── InvalidKey           a task key that is empty or reserved (also a ValueError)
    └── AgentFailure         raised by agents to classify a failure
        ├── Retryable        the world failed; try again later
        └── Terminal         retrying cannot help
"""

from __future__ import annotations


class TetherError(Exception):
    """Base class of every error raised by Tether."""


class ConfigError(TetherError):
    """A configuration value (``tether.toml`` or ``TETHER_*``) is invalid."""


class DiscoveryError(TetherError):
    """The agents found by discovery do not form a valid graph."""


class StoreError(TetherError):
    """The store could not complete an operation."""


class NotFound(StoreError):
    """No task or run matches the identifier given."""


class Conflict(StoreError):
    """The operation does not apply to the task in its current state."""


class InvalidKey(TetherError, ValueError):
    """A task key Tether cannot accept: empty, or in a namespace Tether reserves."""


class OutputError(TetherError):
    """A value an agent returned or recorded cannot be stored as JSON."""


class AgentFailure(TetherError):
    """Raised by an agent to assert that its run failed, with a reason.

    Use one of the two subclasses; they decide whether the harness retries.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retryable(AgentFailure):
    """The run failed for a reason that may pass (a 503, a lock, a slow broker): retry it.

    The harness enqueues a new run after exponential backoff until the agent's
    ``max_attempts`` is reached; then the task fails terminally with this reason.
    """


class Terminal(AgentFailure):
    """The run failed and retrying cannot help (bad input, a sanctions hit).

    No trigger is emitted, so downstream agents do not run.
    """
