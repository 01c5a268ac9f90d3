"""The triage model's features: what the harness knows about a run, plus the builder's own.

The same code computes them from a stored run (training) and inside a live run (scoring),
so the model never sees a feature computed two ways. Every run yields a flat dict of raw
values; a :class:`FeatureSpec` (learnt from the training rows and saved with the model)
turns raw dicts into the model's matrix: numbers as they are, strings as category codes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.graph.agent import Agent
from tether.triage.errors import TriageError

MAX_CATEGORIES = 50
"""A string field with more distinct values than this is free text or an id: not a feature."""


@dataclass(frozen=True, slots=True)
class RunView:
    """What a declared ``features`` function sees of a stored run: the same names a live
    :class:`tether.Context` has (``agent``, ``key``, ``input``, ``attempt``)."""

    agent: str
    key: str
    input: Any
    attempt: int


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """Top-level fields of an output or input: numbers, booleans, short strings, lengths."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _scalar(f"{prefix}.{k}", v, out)
    else:
        _scalar(prefix, value, out)


def _scalar(name: str, v: Any, out: dict[str, Any]) -> None:
    if isinstance(v, (bool, int, float)):
        out[name] = float(v)
    elif isinstance(v, str):
        out[name] = v
    elif isinstance(v, (list, tuple, Mapping)):
        out[f"{name}.len"] = float(len(v))


def raw_features(
    agent: Agent | None,
    view: Any,
    output: Any,
    *,
    steps: int,
    attempt: int,
    latency: float | None,
    similarity: float | None = None,
) -> dict[str, Any]:
    """One run's raw features (``view`` is a :class:`RunView` or the live Context)."""
    out: dict[str, Any] = {
        "harness.steps": float(steps),
        "harness.retries": float(max(attempt - 1, 0)),
        "harness.latency": float(latency) if latency is not None else math.nan,
    }
    if similarity is not None:
        out["harness.example_similarity"] = float(similarity)
    _flatten("out", output, out)
    try:
        data = view.input
    except Exception:  # a view with no input at all
        data = None
    _flatten("in", data, out)
    declared = agent.features if agent is not None else None
    if declared is None:
        return out
    if callable(declared):
        try:
            extra = declared(view, output)
        except Exception as exc:
            name = agent.name if agent is not None else "?"
            raise TriageError(
                f"agent {name!r}: its features function raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(extra, Mapping):
            raise TriageError(
                f"agent {agent.name!r}: its features function returned "  # type: ignore[union-attr]
                f"{type(extra).__name__}; it must return a dict of name -> number or str"
            )
        for k, v in extra.items():
            _scalar(f"feat.{k}", v, out)
    else:
        for field in declared:
            value = _field(output, field)
            if value is None:
                value = _field(data, field)
            _scalar(f"feat.{field}", value, out)
    return out


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else None


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The model's columns in order; a category column keeps its vocabulary."""

    columns: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]

    @staticmethod
    def learn(rows: Sequence[Mapping[str, Any]]) -> FeatureSpec:
        """Columns from training rows: every numeric field, and every string field with at
        most :data:`MAX_CATEGORIES` values (the most frequent first)."""
        kinds: dict[str, set[str]] = {}
        counts: dict[str, Counter[str]] = {}
        for row in rows:
            for k, v in row.items():
                kind = "str" if isinstance(v, str) else "num"
                kinds.setdefault(k, set()).add(kind)
                if kind == "str":
                    counts.setdefault(k, Counter())[v] += 1
        columns: list[str] = []
        categories: dict[str, tuple[str, ...]] = {}
        for name in sorted(kinds):
            if kinds[name] == {"num"}:
                columns.append(name)
            elif kinds[name] == {"str"} and len(counts[name]) <= MAX_CATEGORIES:
                columns.append(name)
                categories[name] = tuple(v for v, _ in counts[name].most_common())
        return FeatureSpec(tuple(columns), categories)

    def to_json(self) -> list[dict[str, Any]]:
        """The form saved with the model."""
        return [
            {"name": c, "kind": "category", "categories": list(self.categories[c])}
            if c in self.categories else {"name": c, "kind": "number"}
            for c in self.columns
        ]

    @staticmethod
    def from_json(data: Iterable[Mapping[str, Any]]) -> FeatureSpec:
        """Back from :meth:`to_json`."""
        items = list(data)
        return FeatureSpec(
            tuple(d["name"] for d in items),
            {d["name"]: tuple(d["categories"]) for d in items if d["kind"] == "category"},
        )

    @property
    def categorical_indices(self) -> list[int]:
        """Positions of the category columns (LightGBM's ``categorical_feature``)."""
        return [i for i, c in enumerate(self.columns) if c in self.categories]

    def vector(self, row: Mapping[str, Any]) -> list[float]:
        """One row in column order; missing or unknown values are NaN."""
        codes = self._codes
        out: list[float] = []
        for c in self.columns:
            v = row.get(c)
            if c in codes:
                code = codes[c].get(v) if isinstance(v, str) else None
                out.append(math.nan if code is None else float(code))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(float(v))
            else:
                out.append(math.nan)
        return out

    @property
    def _codes(self) -> dict[str, dict[str, int]]:
        cached = _CODES.get(id(self))
        if cached is None or cached[0] is not self:
            cached = (self, {c: {v: i for i, v in enumerate(vs)}
                             for c, vs in self.categories.items()})
            _CODES[id(self)] = cached
        return cached[1]


_CODES: dict[int, tuple[FeatureSpec, dict[str, dict[str, int]]]] = {}
