"""Plain data of evaluation: cases, label observations, datasets, experiment results."""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LabelObservation:
    """A reference label's value as it was observed at a time (seconds since the epoch)."""

    value: Any
    observed_at: float


@dataclass(frozen=True, slots=True)
class Case:
    """One case of a dataset: a key, the agent's input, when the original decision was made
    (if known), and its label observations, oldest first."""

    key: str
    input: Any
    decided_at: float | None = None
    labels: tuple[LabelObservation, ...] = ()

    def label_at(self, when: float) -> LabelObservation | None:
        """The label as it was known at ``when``: the latest observation at or before it
        (None when nothing had been observed yet)."""
        times = [o.observed_at for o in self.labels]
        i = bisect.bisect_right(times, when)
        return self.labels[i - 1] if i else None

    @property
    def latest(self) -> LabelObservation | None:
        """The most recent label observation."""
        return self.labels[-1] if self.labels else None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_version(cases: tuple[Case, ...]) -> str:
    """A dataset version: the sha256 of its cases and observations in canonical form, so the
    same content loaded twice is the same version and any change is a new one."""
    h = hashlib.sha256()
    for c in sorted(cases, key=lambda c: c.key):
        h.update(
            _canonical(
                [c.key, c.input, c.decided_at, [[o.value, o.observed_at] for o in c.labels]]
            ).encode()
        )
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A named, versioned set of cases. ``version`` is the content hash."""

    name: str
    cases: tuple[Case, ...]
    version: str = ""
    id: int | None = None
    parent: str | None = None
    source: str | None = None
    created_at: float | None = None
    _by_key: dict[str, Case] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", content_version(self.cases))
        self._by_key.update({c.key: c for c in self.cases})

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, key: str) -> Case:
        """The case with this key (KeyError if none)."""
        return self._by_key[key]

    @property
    def observations(self) -> int:
        """How many label observations the dataset holds."""
        return sum(len(c.labels) for c in self.cases)

    @property
    def ref(self) -> str:
        """``NAME@VERSION12``: how commands and reports name this version."""
        return f"{self.name}@{self.version[:12]}"


@dataclass(frozen=True, slots=True)
class Result:
    """What an experiment recorded for one case."""

    case_key: str
    status: str
    """succeeded | failed"""
    decision: Any
    output: Any
    error: str | None
    cost: float | None
    latency: float | None
    decided_at: float
    """When the experiment's run decided (its finish time)."""
    run_id: int
    task_id: int
    kind: str = "first"


@dataclass(frozen=True, slots=True)
class Experiment:
    """An experiment: one agent run over one dataset version."""

    id: int
    name: str
    agent: str
    dataset_id: int
    settings: dict[str, Any]
    created_at: float
    finished_at: float | None
