"""``tether examples calibrate``: which relevance threshold helps, measured on a dataset.

For each labelled case the agent runs in-process, without examples and with the examples
each threshold would let through, and its output's ``decision`` is compared with the
case's label (exact match). Per threshold this gives coverage (share of cases shown at
least one example) and accuracy with injection against accuracy without. The
recommendation is the lowest threshold reaching the best accuracy with injection: below it,
adding marginal neighbours stops helping (or starts to hurt). If no threshold beats no
injection, the recommendation is to inject nothing.

Self-contained on purpose: the agent's function is called with a context that serves the
case's input and the chosen examples and writes nothing to the store, so a calibration
leaves no runs behind. Each distinct set of examples is run once per case (thresholds that
let the same examples through share the run), so the agent is assumed deterministic for a
given input and examples. Examples whose input equals the case's are left out (the case
would otherwise be shown its own answer).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError
from tether.jsonable import canonical
from tether.outcomes import Waiting
from tether.review.embedders import embed_one
from tether.review.examples import Spec, case_text, index_for, load
from tether.review.records import Example
from tether.runtime.context import Context, StepRecorder
from tether.store import Store, TaskInput
from tether.store.writes import Claim

if TYPE_CHECKING:
    from tether.graph.agent import Agent

DEFAULT_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 .. 0.95


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled case of the dataset."""

    key: str
    input: Any
    label: Any


@dataclass(frozen=True, slots=True)
class Point:
    """The measurements at one threshold."""

    threshold: float
    coverage: float
    covered: int
    accuracy_with: float
    accuracy_without: float
    covered_accuracy_with: float | None
    covered_accuracy_without: float | None

    @property
    def gain(self) -> float:
        """Accuracy with injection minus without, over all cases."""
        return self.accuracy_with - self.accuracy_without


@dataclass(frozen=True)
class Calibration:
    """Every threshold's point and the recommended threshold (None: inject nothing)."""

    agent: str
    cases: int
    k: int
    points: tuple[Point, ...]
    recommended: float | None
    current: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "cases": self.cases, "k": self.k,
            "current_threshold": self.current, "recommended_threshold": self.recommended,
            "points": [
                {"threshold": p.threshold, "coverage": p.coverage, "covered": p.covered,
                 "accuracy_with": p.accuracy_with, "accuracy_without": p.accuracy_without,
                 "gain": p.gain, "covered_accuracy_with": p.covered_accuracy_with,
                 "covered_accuracy_without": p.covered_accuracy_without}
                for p in self.points
            ],
            "notes": list(self.notes),
        }


def read_dataset(path: Path) -> list[Case]:
    """Cases from an evaluation dataset (``tether eval``'s JSONL, CSV or Parquet, each case
    scored against its latest label) or, as a shorthand, a JSON list or JSON-lines file of
    ``{"input": ..., "label": ...}`` with an optional ``key``.

    Raises:
        ConfigError: the file is missing, not JSON, or a case lacks input or label.
        DatasetError: an evaluation dataset with a bad row (file, line and field).
    """
    if path.suffix.lower() in (".csv", ".parquet", ".pq") or _has_label_history(path):
        from tether.evals.loading import read_dataset as read_eval_dataset

        cases = []
        for case in read_eval_dataset(path).cases:
            latest = case.latest
            if latest is not None:  # an unlabelled case cannot be scored
                cases.append(Case(key=case.key, input=case.input, label=latest.value))
        if not cases:
            raise ConfigError(f"--dataset {path}: no labelled cases in it")
        return cases
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--dataset {path}: cannot read it: {exc.strerror}") from exc
    try:
        stripped = text.lstrip()
        raw = json.loads(text) if stripped.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--dataset {path}: not JSON or JSON lines ({exc.msg} at line {exc.lineno}); "
            'each case is {"input": ..., "label": ...}'
        ) from exc
    cases = []
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or "input" not in item or "label" not in item:
            raise ConfigError(
                f"--dataset {path}: case {i} needs an input and a label, e.g. "
                '{"input": {...}, "label": {"decision": "decline"}}'
            )
        cases.append(Case(key=str(item.get("key", i)), input=item["input"], label=item["label"]))
    if not cases:
        raise ConfigError(f"--dataset {path}: no cases in it")
    return cases


def _has_label_history(path: Path) -> bool:
    """Whether a JSON-lines file is in the evaluation's form (``labels``: observations)."""
    try:
        with path.open() as f:
            first = next((line for line in f if line.strip()), "")
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(row, dict) and "labels" in row


def decision(value: Any) -> Any:
    """What is compared: the ``decision`` field of a dict, else the value itself."""
    return value.get("decision") if isinstance(value, dict) else value


class _NullRecorder(StepRecorder):
    """Steps of a calibration run are kept in memory only: it writes nothing."""

    def started(self, step: Any) -> None:
        return None

    def flush(self) -> None:
        self.drain()


class _CaseContext(Context):
    """A context for one dataset case: its input, the given examples, no store writes."""

    def __init__(self, store: Store, agent: Agent, case: Case, shown: list[Example]) -> None:
        claim = Claim(run_id=0, task_id=0, agent=agent.name, key=case.key, attempt=1,
                      reason="eval", note=None, lease_expires_at=0.0)
        super().__init__(claim, store=store, recorder=_NullRecorder(store, 0, 0), agent=agent)
        # Fill the lazily loaded views so nothing is read from the store.
        self.__dict__["inputs"] = [TaskInput(seq=1, data=case.input, received_at=time.time())]
        self.__dict__["_upstream"] = {}
        self.__dict__["history"] = []
        self._shown = shown

    def examples(self, k: int = 3) -> list[Any]:
        return self._shown[:k]


def _run(store: Store, agent: Agent, case: Case, shown: list[Example]) -> Any:
    try:
        result = agent.fn(_CaseContext(store, agent, case, shown))
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        if isinstance(result, Waiting):
            result = result.output
        return decision(result)
    except Exception:  # a failed run decides nothing: it counts as wrong
        return _FAILED


_FAILED = object()


def calibrate(
    store: Store,
    agent: Agent,
    cases: Sequence[Case],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    k: int = 3,
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Coverage and accuracy with vs without examples at each threshold (see module doc)."""
    spec = Spec.of(agent)
    levels = sorted(set(thresholds))
    index = index_for(store, spec.agent, spec.embedder)
    without: list[bool] = []
    with_at: dict[float, list[bool]] = {t: [] for t in levels}
    covered_at: dict[float, list[bool]] = {t: [] for t in levels}
    for case in cases:
        label = decision(case.label)
        query = embed_one(spec.embedder, case_text(spec, case.input, where=f"case {case.key}"))
        # Ask for a few more than k: the case's own example (if any) is dropped below.
        found = load(store, index.top(query, k + 5))
        own = canonical(case.input)
        neighbours = [e for e in found if canonical(e.input) != own][:k]
        outcomes: dict[tuple[int, ...], bool] = {}

        def right(shown: list[Example], case: Case = case, label: Any = label,
                  outcomes: dict[tuple[int, ...], bool] = outcomes) -> bool:
            ids = tuple(e.id for e in shown)
            if ids not in outcomes:
                outcomes[ids] = _run(store, agent, case, shown) == label
            return outcomes[ids]

        without.append(right([]))
        for t in levels:
            shown = [e for e in neighbours if (e.similarity or 0.0) >= t - 1e-6]
            with_at[t].append(right(shown))
            covered_at[t].append(bool(shown))
        if progress is not None:
            progress(1)
    n = len(cases)
    base = sum(without) / n if n else 0.0
    points = []
    for t in levels:
        cov = covered_at[t]
        idx = [i for i, c in enumerate(cov) if c]
        points.append(Point(
            threshold=t, coverage=len(idx) / n if n else 0.0, covered=len(idx),
            accuracy_with=sum(with_at[t]) / n if n else 0.0, accuracy_without=base,
            covered_accuracy_with=(sum(with_at[t][i] for i in idx) / len(idx)) if idx else None,
            covered_accuracy_without=(sum(without[i] for i in idx) / len(idx)) if idx else None,
        ))
    best = max((p.gain for p in points), default=0.0)
    notes = []
    if best <= 1e-12:
        recommended = None
        notes.append("no threshold made injection help on this dataset: inject nothing "
                     "(keep the threshold above every neighbour's similarity)")
    else:
        recommended = min(p.threshold for p in points if p.gain >= best - 1e-12)
    if index.n == 0:
        notes.append(f"agent {agent.name!r} has no examples yet: review some runs first")
    return Calibration(agent=agent.name, cases=n, k=k, points=tuple(points),
                       recommended=recommended, current=agent.example_threshold,
                       notes=tuple(notes))
