"""What the review flow and the example store return: plain frozen records."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tether.errors import TetherError

VERDICTS = ("correct", "incorrect", "partial")
"""A reviewer's verdict on a run's output."""

SOURCES = ("triage", "rollout", "manual")
"""Why a run was queued for review."""


class ReviewError(TetherError):
    """A review, queue entry or example was refused (bad verdict, missing reason, absent
    example field); nothing was written."""


@dataclass(frozen=True, slots=True)
class Review:
    """One person's verdict on one run. Immutable: a second review is another record."""

    id: int
    run_id: int
    task_id: int
    agent: str
    verdict: str
    reason: str | None
    corrected_output: Any
    reviewer: str
    created_at: float
    example_id: int | None = None
    """The example this review created (incorrect or partial verdicts)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A run waiting for (or having had) review."""

    id: int
    run_id: int
    task_id: int
    agent: str
    key: str
    source: str
    score: float | None
    held: bool
    created_at: float
    reviewed_at: float | None
    run_status: str = ""
    output: Any = None

    @property
    def task(self) -> str:
        """``AGENT/KEY``."""
        return f"{self.agent}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": self.task}


@dataclass(frozen=True, slots=True)
class Example:
    """A confirmed failure kept to show the agent on similar cases."""

    id: int
    agent: str
    case: str
    """The text that represented the case for similarity."""
    input: Any
    corrected_output: Any
    reason: str | None
    run_id: int | None
    review_id: int | None
    created_at: float
    similarity: float | None = None
    """Cosine similarity to the current case (set by ``ctx.examples``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
