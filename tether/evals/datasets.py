"""Datasets in the store: save a version (all or nothing), look one up, list them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select

from tether.evals.loading import DatasetError
from tether.evals.models import Case, Dataset, LabelObservation
from tether.store import Store
from tether.store.schema_evals import eval_cases, eval_datasets, eval_labels

_CHUNK = 2000


def save_dataset(store: Store, dataset: Dataset, *, now: float | None = None) -> Dataset:
    """Store a dataset version in one transaction and return it with its id.

    Idempotent: saving the same content under the same name again returns the version
    already stored. A failure stores nothing (the transaction rolls back whole).
    """
    now = time.time() if now is None else now

    def body(conn: Connection) -> Dataset:
        found = conn.execute(
            select(eval_datasets.c.id, eval_datasets.c.created_at).where(
                eval_datasets.c.name == dataset.name, eval_datasets.c.version == dataset.version
            )
        ).first()
        if found is not None:
            return _with(dataset, found.id, found.created_at)
        ds_id = conn.execute(
            insert(eval_datasets)
            .values(
                name=dataset.name,
                version=dataset.version,
                parent=dataset.parent,
                source=dataset.source,
                cases=len(dataset.cases),
                observations=dataset.observations,
                created_at=now,
            )
            .returning(eval_datasets.c.id)
        ).scalar_one()
        for start in range(0, len(dataset.cases), _CHUNK):
            chunk = dataset.cases[start : start + _CHUNK]
            ids = (
                conn.execute(
                    insert(eval_cases).returning(eval_cases.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "dataset_id": ds_id,
                            "key": c.key,
                            "input": c.input,
                            "decided_at": c.decided_at,
                        }
                        for c in chunk
                    ],
                )
                .scalars()
                .all()
            )
            labels = [
                {"case_id": case_id, "value": o.value, "observed_at": o.observed_at}
                for case_id, c in zip(ids, chunk, strict=True)
                for o in c.labels
            ]
            if labels:
                conn.execute(insert(eval_labels), labels)
        return _with(dataset, ds_id, now)

    return store._transact(body)


def _with(dataset: Dataset, ds_id: int, created_at: float) -> Dataset:
    return Dataset(
        name=dataset.name,
        cases=dataset.cases,
        version=dataset.version,
        id=ds_id,
        parent=dataset.parent,
        source=dataset.source,
        created_at=created_at,
    )


def _resolve(conn: Connection, ref: str | int) -> Any:
    cols = select(eval_datasets)
    if isinstance(ref, int):
        row = conn.execute(cols.where(eval_datasets.c.id == ref)).first()
    else:
        name, _, version = ref.partition("@")
        q = cols.where(eval_datasets.c.name == name)
        if version:
            q = q.where(eval_datasets.c.version.startswith(version, autoescape=True))
        row = conn.execute(q.order_by(eval_datasets.c.id.desc()).limit(1)).first()
    if row is None:
        raise DatasetError(
            f"no dataset {ref!r} in the store; load one with `tether eval load FILE --name NAME`"
        )
    return row


def get_dataset(store: Store, ref: str | int) -> Dataset:
    """A stored dataset version, with its cases and observations: by id, ``NAME`` (the
    newest version) or ``NAME@VERSION`` (a version prefix).

    Raises:
        DatasetError: no such dataset.
    """
    with store.engine.connect() as conn:
        ds = _resolve(conn, ref)
        case_rows = conn.execute(
            select(eval_cases.c.id, eval_cases.c.key, eval_cases.c.input, eval_cases.c.decided_at)
            .where(eval_cases.c.dataset_id == ds.id)
            .order_by(eval_cases.c.id)
        ).all()
        obs: dict[int, list[LabelObservation]] = {}
        for row in conn.execute(
            select(eval_labels.c.case_id, eval_labels.c.value, eval_labels.c.observed_at)
            .join(eval_cases, eval_cases.c.id == eval_labels.c.case_id)
            .where(eval_cases.c.dataset_id == ds.id)
            .order_by(eval_labels.c.case_id, eval_labels.c.observed_at, eval_labels.c.id)
        ):
            obs.setdefault(row.case_id, []).append(LabelObservation(row.value, row.observed_at))
    cases = tuple(
        Case(key=r.key, input=r.input, decided_at=r.decided_at, labels=tuple(obs.get(r.id, ())))
        for r in case_rows
    )
    return Dataset(
        name=ds.name,
        cases=cases,
        version=ds.version,
        id=ds.id,
        parent=ds.parent,
        source=ds.source,
        created_at=ds.created_at,
    )


def list_datasets(store: Store) -> list[dict[str, Any]]:
    """Every stored dataset version, newest first, as plain dicts."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(eval_datasets).order_by(eval_datasets.c.id.desc())).all()
    return [
        {
            "id": r.id,
            "name": r.name,
            "version": r.version,
            "ref": f"{r.name}@{r.version[:12]}",
            "parent": r.parent,
            "source": r.source,
            "cases": r.cases,
            "observations": r.observations,
            "created_at": r.created_at,
        }
        for r in rows
    ]


def dataset_names(store: Store, family: str) -> Sequence[int]:
    """Ids of every version of ``family`` and of subsets drawn from it."""
    with store.engine.connect() as conn:
        return (
            conn.execute(
                select(eval_datasets.c.id).where(
                    (eval_datasets.c.name == family) | (eval_datasets.c.parent == family)
                )
            )
            .scalars()
            .all()
        )


def count_datasets(store: Store) -> int:
    """How many dataset versions the store holds."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(eval_datasets)).scalar_one())
