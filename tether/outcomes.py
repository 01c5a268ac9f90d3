"""What an agent can return besides a plain output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Waiting:
    """Return ``tether.Waiting(output, reason=...)`` when the run did its part but the task is
    not finished: it waits for new information (a broker's reply). The run succeeds, the
    task's status is ``waiting``, and no trigger is emitted until a later run finishes the
    task; new input (``tether submit`` again) starts that run.
    """

    output: Any = None
    """What the run produced so far (stored as the run's output)."""
    reason: str = "waiting for new information"
    """What the task waits for, shown by ``tether show`` and ``tether why-not``."""
