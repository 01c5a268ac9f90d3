"""Training data for the triage model: reviewed runs (latest review per run) as raw features.

Plus any extra labelled records (evaluation results): dicts with ``output`` and ``correct``
and optionally ``input``, ``key``, ``steps``, ``attempt``, ``latency``, or a pandas
DataFrame with those columns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, func, select

from tether.graph.agent import Agent
from tether.store import Store
from tether.store.schema import metadata, runs, steps, task_inputs, tasks
from tether.store.schema_review import reviews
from tether.triage.errors import TriageError
from tether.triage.features import RunView, raw_features

TRIAGE_STEP = "triage"
"""The name of the post-processing step the executor records; not counted as the agent's."""


@dataclass
class TrainingData:
    """Rows of raw features with their labels (1: the output was correct)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    run_ids: list[int | None] = field(default_factory=list)
    reviewed_at: list[float] = field(default_factory=list)
    max_review_id: int = 0

    def version(self) -> dict[str, Any]:
        """What the model was trained on: row count, newest review, a hash of the labels."""
        h = hashlib.sha256()
        for rid, y in zip(self.run_ids, self.labels, strict=True):
            h.update(f"{rid}:{y};".encode())
        return {
            "rows": len(self.labels),
            "reviewed_runs": sum(1 for r in self.run_ids if r is not None),
            "max_review_id": self.max_review_id,
            "hash": h.hexdigest()[:16],
        }


def latest_reviews(agent: str) -> Any:
    """A subquery: each reviewed run of ``agent`` with its latest review's id."""
    return (
        select(reviews.c.run_id, func.max(reviews.c.id).label("review_id"))
        .where(reviews.c.agent == agent)
        .group_by(reviews.c.run_id)
        .subquery("latest")
    )


def similarity_by_run(conn: Connection, run_ids: Any) -> dict[int, float]:
    """The best example similarity each run got, when the example store records it."""
    table = metadata.tables.get("run_examples")
    if table is None or "similarity" not in table.c or "run_id" not in table.c:
        return {}
    rows = conn.execute(
        select(table.c.run_id, func.max(table.c.similarity)).where(table.c.run_id.in_(run_ids))
        .group_by(table.c.run_id)
    )
    return {int(r[0]): float(r[1]) for r in rows}


def _input_at(inputs: list[tuple[float, Any]], when: float) -> Any:
    """The task's latest input received at or before ``when`` (the run saw that one)."""
    chosen = inputs[0][1] if inputs else None
    for received, data in inputs:
        if received <= when:
            chosen = data
        else:
            break
    return chosen


def reviewed_runs(store: Store, agent: Agent | None, name: str) -> TrainingData:
    """Every reviewed run of agent ``name``: its raw features and its latest verdict."""
    latest = latest_reviews(name)
    data = TrainingData()
    with store.engine.connect() as conn:
        q = (
            select(
                runs.c.id, runs.c.task_id, runs.c.output, runs.c.attempt, runs.c.created_at,
                runs.c.started_at, runs.c.finished_at, tasks.c.key, reviews.c.verdict,
                reviews.c.id.label("review_id"), reviews.c.created_at.label("reviewed_at"),
            )
            .select_from(latest)
            .join(reviews, reviews.c.id == latest.c.review_id)
            .join(runs, runs.c.id == latest.c.run_id)
            .join(tasks, tasks.c.id == runs.c.task_id)
            .order_by(runs.c.id)
        )
        found = conn.execute(q).all()
        step_counts: dict[int, int] = dict(
            conn.execute(
                select(steps.c.run_id, func.count())
                .select_from(latest)
                .join(steps, steps.c.run_id == latest.c.run_id)
                .where(steps.c.name != TRIAGE_STEP)
                .group_by(steps.c.run_id)
            ).all()
        )
        inputs: dict[int, list[tuple[float, Any]]] = {}
        for ti in conn.execute(
            select(task_inputs.c.task_id, task_inputs.c.received_at, task_inputs.c.data)
            .join(tasks, and_(tasks.c.id == task_inputs.c.task_id, tasks.c.agent == name))
            .order_by(task_inputs.c.task_id, task_inputs.c.seq)
        ):
            inputs.setdefault(ti.task_id, []).append((ti.received_at, ti.data))
        sims = similarity_by_run(conn, select(latest.c.run_id)) if found else {}
    for r in found:
        latency = (
            r.finished_at - r.started_at
            if r.finished_at is not None and r.started_at is not None else None
        )
        view = RunView(agent=name, key=r.key, attempt=r.attempt,
                       input=_input_at(inputs.get(r.task_id, []), r.created_at))
        data.rows.append(
            raw_features(agent, view, r.output, steps=int(step_counts.get(r.id, 0)),
                         attempt=r.attempt, latency=latency, similarity=sims.get(r.id))
        )
        data.labels.append(1 if r.verdict == "correct" else 0)
        data.run_ids.append(r.id)
        data.reviewed_at.append(r.reviewed_at)
        data.max_review_id = max(data.max_review_id, r.review_id)
    return data


def add_records(data: TrainingData, agent: Agent | None, name: str, records: Any) -> None:
    """Add extra labelled records (dicts, or a pandas DataFrame) to ``data``.

    Raises:
        TriageError: a record lacks ``output`` or ``correct``.
    """
    if hasattr(records, "to_dict"):  # a pandas DataFrame
        records = records.to_dict("records")
    for i, rec in enumerate(_iter(records)):
        if "output" not in rec or "correct" not in rec:
            raise TriageError(
                f"extra record {i}: it needs 'output' and 'correct' (true if the output was "
                f"right); it has {sorted(rec)}"
            )
        view = RunView(agent=name, key=str(rec.get("key", "")), input=rec.get("input"),
                       attempt=int(rec.get("attempt", 1)))
        data.rows.append(
            raw_features(agent, view, rec["output"], steps=int(rec.get("steps", 0)),
                         attempt=int(rec.get("attempt", 1)), latency=rec.get("latency"),
                         similarity=rec.get("example_similarity"))
        )
        data.labels.append(1 if _truthy(rec["correct"]) else 0)
        data.run_ids.append(None)
        data.reviewed_at.append(0.0)


def _iter(records: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    return records


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "correct")
    return bool(v)
