"""Experiments and their per-case results in the store (SQL of the evals package)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from tether.evals.loading import DatasetError
from tether.evals.models import Experiment, Result
from tether.store import Store
from tether.store.schema import runs, tasks
from tether.store.schema_evals import eval_datasets, eval_experiments, eval_results


class ExperimentError(DatasetError):
    """An experiment cannot be found, or cannot resume with the options given."""


def _experiment(row: Any) -> Experiment:
    return Experiment(
        id=row.id,
        name=row.name,
        agent=row.agent,
        dataset_id=row.dataset_id,
        settings=dict(row.settings or {}),
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def open_experiment(
    store: Store, *, name: str, dataset_id: int, agent: str, settings: dict[str, Any]
) -> tuple[Experiment, bool]:
    """The experiment called ``name``, created if new; (experiment, created).

    Resuming checks that the dataset version and agent are the same ones.
    """

    def body(conn: Connection) -> tuple[Experiment, bool]:
        row = conn.execute(select(eval_experiments).where(eval_experiments.c.name == name)).first()
        if row is not None:
            if row.dataset_id != dataset_id or row.agent != agent:
                raise ExperimentError(
                    f"experiment {name!r} exists with another dataset version or agent "
                    f"({row.agent} on dataset {row.dataset_id}); choose a new --name"
                )
            return _experiment(row), False
        new = conn.execute(
            insert(eval_experiments)
            .values(
                name=name,
                dataset_id=dataset_id,
                agent=agent,
                settings=settings,
                created_at=time.time(),
            )
            .returning(*eval_experiments.c)
        ).one()
        return _experiment(new), True

    return store._transact(body)


def get_experiment(store: Store, ref: str | int) -> Experiment:
    """An experiment by id or name.

    Raises:
        ExperimentError: no such experiment.
    """
    q = select(eval_experiments)
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        q = q.where(eval_experiments.c.id == int(ref))
    else:
        q = q.where(eval_experiments.c.name == ref)
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        raise ExperimentError(
            f"no experiment {ref!r}; list them with `tether eval experiments`, start one with "
            "`tether eval run DATASET --agent AGENT`"
        )
    return _experiment(row)


def list_experiments(store: Store, *, dataset_ids: Sequence[int] | None = None) -> list[Experiment]:
    """Experiments, newest first (only those on ``dataset_ids`` when given)."""
    q = select(eval_experiments).order_by(eval_experiments.c.id.desc())
    if dataset_ids is not None:
        q = q.where(eval_experiments.c.dataset_id.in_(list(dataset_ids)))
    with store.engine.connect() as conn:
        return [_experiment(r) for r in conn.execute(q)]


def experiment_rows(store: Store) -> list[dict[str, Any]]:
    """Experiments with their dataset and result counts, for listings."""
    from sqlalchemy import func

    counts = (
        select(eval_results.c.experiment_id, func.count().label("n"))
        .where(eval_results.c.kind == "first")
        .group_by(eval_results.c.experiment_id)
        .subquery()
    )
    q = (
        select(
            eval_experiments,
            eval_datasets.c.name.label("dataset"),
            eval_datasets.c.version,
            eval_datasets.c.cases,
            counts.c.n,
        )
        .join(eval_datasets, eval_datasets.c.id == eval_experiments.c.dataset_id)
        .outerjoin(counts, counts.c.experiment_id == eval_experiments.c.id)
        .order_by(eval_experiments.c.id.desc())
    )
    with store.engine.connect() as conn:
        return [
            {
                "id": r.id,
                "name": r.name,
                "agent": r.agent,
                "dataset": f"{r.dataset}@{r.version[:12]}",
                "cases": r.cases,
                "finished_cases": r.n or 0,
                "created_at": r.created_at,
                "finished_at": r.finished_at,
            }
            for r in conn.execute(q)
        ]


def finish_experiment(store: Store, experiment_id: int) -> None:
    """Mark the experiment finished (every case has a result)."""
    store._transact(
        lambda conn: conn.execute(
            update(eval_experiments)
            .where(eval_experiments.c.id == experiment_id)
            .values(finished_at=time.time())
        )
    )


def results(store: Store, experiment_id: int, *, kind: str = "first") -> list[Result]:
    """An experiment's results of one kind, in case order of recording."""
    q = (
        select(eval_results)
        .where(eval_results.c.experiment_id == experiment_id, eval_results.c.kind == kind)
        .order_by(eval_results.c.id)
    )
    with store.engine.connect() as conn:
        return [
            Result(
                case_key=r.case_key,
                status=r.status,
                decision=r.decision,
                output=r.output,
                error=r.error,
                cost=r.cost,
                latency=r.latency,
                decided_at=r.decided_at,
                run_id=r.run_id,
                task_id=r.task_id,
                kind=r.kind,
            )
            for r in conn.execute(q)
        ]


def done_keys(store: Store, experiment_id: int, kind: str) -> set[str]:
    """Case keys the experiment has a result for, of one kind."""
    with store.engine.connect() as conn:
        return set(
            conn.execute(
                select(eval_results.c.case_key).where(
                    eval_results.c.experiment_id == experiment_id, eval_results.c.kind == kind
                )
            ).scalars()
        )


def insert_results(conn: Connection, experiment_id: int, rows: Iterable[Result]) -> None:
    """Record finished cases (inside the transaction that records their runs)."""
    values = [
        {
            "experiment_id": experiment_id,
            "case_key": r.case_key,
            "kind": r.kind,
            "task_id": r.task_id,
            "run_id": r.run_id,
            "status": r.status,
            "decision": r.decision,
            "output": r.output,
            "error": r.error,
            "cost": r.cost,
            "latency": r.latency,
            "decided_at": r.decided_at,
        }
        for r in rows
    ]
    if values:
        conn.execute(insert(eval_results), values)


def unrecorded_final_runs(store: Store, agent: str, prefix: str, experiment_id: int) -> list[Any]:
    """Finished runs of the experiment's tasks with no result yet and nothing queued or
    running after them: cases finished by another process (a production worker that took a
    retry, or a runner that was killed after recording the run)."""
    later = runs.alias("later")
    recorded = select(eval_results.c.run_id).where(eval_results.c.experiment_id == experiment_id)
    q = (
        select(
            tasks.c.key,
            runs.c.id,
            runs.c.task_id,
            runs.c.status,
            runs.c.output,
            runs.c.failure_reason,
            runs.c.started_at,
            runs.c.finished_at,
            runs.c.reason,
        )
        .join(runs, runs.c.task_id == tasks.c.id)
        .where(
            tasks.c.agent == agent,
            tasks.c.key.startswith(prefix, autoescape=True),
            runs.c.status.in_(("succeeded", "failed")),
            runs.c.id.not_in(recorded),
            ~select(later.c.id)
            .where(and_(later.c.task_id == runs.c.task_id, later.c.id > runs.c.id))
            .exists(),
        )
    )
    with store.engine.connect() as conn:
        return list(conn.execute(q).all())
