"""The dynamic example store: confirmed failures, found again for cases close enough to help.

A case is represented by text built from the fields the builder declared
(``@tether.agent(example_fields=("claim.description", "claim.type"))``), embedded into a
unit vector. ``ctx.examples(k)`` returns at most ``k`` examples whose cosine similarity to
the current case is at least the agent's ``example_threshold``, and nothing otherwise: a
marginal neighbour does harm. What each run was shown is recorded in ``run_examples``.

Search is brute force over an in-process NumPy matrix per (store, agent, embedder), grown
in place as the ``examples`` table grows (one indexed ``max(id)`` lookup per search says
whether it did), so the top 5 of 100,000 examples costs one matrix-vector product.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select

from tether.jsonable import to_json
from tether.review.embedders import Embedder, embed_one, numpy, resolve
from tether.review.records import Example, ReviewError
from tether.store import Store
from tether.store.schema_review import examples, run_examples

if TYPE_CHECKING:
    import numpy as np

    from tether.graph.agent import Agent

_TOLERANCE = 1e-6
"""Float32 rounding slack, so a neighbour planted exactly at the threshold is returned."""


@dataclass(frozen=True, slots=True)
class Spec:
    """An agent's example settings, resolved: what a case is, the bar, the embedder."""

    agent: str
    fields: Any
    threshold: float
    embedder: Embedder

    @classmethod
    def of(cls, agent: Agent | str) -> Spec:
        """The spec of an agent object, or the defaults for an agent known only by name."""
        if isinstance(agent, str):
            return cls(agent=agent, fields=None, threshold=0.85, embedder=resolve(None))
        return cls(
            agent=agent.name,
            fields=agent.example_fields,
            threshold=agent.example_threshold,
            embedder=resolve(agent.embedder),
        )


# -- what a case is ----------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _lookup(root: Any, path: str, agent: str, where: str) -> Any:
    value = root
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            at = ".".join(walked) or "the top level"
            keys = sorted(value) if isinstance(value, Mapping) else None
            has = f" (it has: {', '.join(map(str, keys))})" if keys else ""
            raise ReviewError(
                f"agent {agent!r}: example field {path!r} is missing from {where}: no "
                f"{part!r} at {at}{has}; fix example_fields or the input"
            )
        walked.append(part)
    if value is None:
        raise ReviewError(
            f"agent {agent!r}: example field {path!r} is empty (null) in {where}; "
            "a case needs a value there to be compared"
        )
    return value


def case_text(
    spec: Spec, input: Any, upstream: Mapping[str, Any] | None = None, *, where: str = "the input"
) -> str:
    """The text that represents a case: the declared fields' values, one per line.

    A path starting with ``upstream.`` reads an upstream trigger's output
    (``upstream.kyc_passed.risk``); every other path reads the task's input.

    Raises:
        ReviewError: a declared field is absent (or null), or the text is empty.
    """
    fields = spec.fields
    if fields is None:
        text = _text(input) if input is not None else ""
    elif callable(fields):
        text = fields(input)
        if not isinstance(text, str):
            raise ReviewError(
                f"agent {spec.agent!r}: example_fields function returned "
                f"{type(text).__name__}; it must return the case's text (str)"
            )
    else:
        parts = []
        for path in fields:
            if path.startswith("upstream."):
                parts.append(_text(_lookup(upstream or {}, path[9:], spec.agent,
                                           "the upstream outputs")))
            else:
                parts.append(_text(_lookup(input, path, spec.agent, where)))
        text = "\n".join(parts)
    if not text.strip():
        raise ReviewError(
            f"agent {spec.agent!r}: the case's text for similarity is empty ({where}); "
            "declare example_fields that hold the case's description"
        )
    return text


# -- writing examples --------------------------------------------------------------------


def example_values(
    spec: Spec,
    *,
    text: str,
    vector: np.ndarray,
    input: Any,
    corrected_output: Any,
    reason: str | None,
    run_id: int | None = None,
    review_id: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The ``examples`` row for a case (insert it with :func:`insert_example`)."""
    np = numpy()
    return {
        "agent": spec.agent,
        "run_id": run_id,
        "review_id": review_id,
        "case_text": text,
        "input": to_json(input, what="example input"),
        "corrected_output": to_json(corrected_output, what="corrected output"),
        "reason": reason,
        "vector": np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
        "dim": int(vector.shape[0]),
        "embedder": spec.embedder.name,
        "created_at": time.time() if now is None else now,
    }


def insert_example(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one example row in the caller's transaction; returns its id."""
    example_id: int = conn.execute(
        insert(examples).values(**values).returning(examples.c.id)
    ).scalar_one()
    return example_id


def add_example(
    store: Store,
    agent: Agent | str,
    *,
    input: Any,
    corrected_output: Any = None,
    reason: str | None = None,
    text: str | None = None,
) -> int:
    """Add an example by hand (a reviewed run adds one itself): the case's ``input``
    (its text from the agent's declared fields unless ``text`` is given), the correct
    output and why. Returns the example's id.

    Raises:
        ReviewError: a declared field is absent from ``input``.
    """
    spec = Spec.of(agent)
    case = text if text is not None else case_text(spec, input)
    vector = embed_one(spec.embedder, case)
    values = example_values(
        spec, text=case, vector=vector, input=input, corrected_output=corrected_output,
        reason=reason,
    )
    return store._transact(lambda conn: insert_example(conn, values))


# -- the search index --------------------------------------------------------------------


class _Index:
    """The vectors of one (agent, embedder) in one store, as a growable float32 matrix."""

    def __init__(self, dim: int) -> None:
        np = numpy()
        self.dim = dim
        self.matrix = np.empty((0, dim), dtype=np.float32)
        self.ids = np.empty(0, dtype=np.int64)
        self.n = 0
        self.max_id = 0
        self.lock = threading.Lock()

    def append(self, ids: Sequence[int], blobs: Sequence[bytes]) -> None:
        np = numpy()
        if not ids:
            return
        rows = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), self.dim)
        need = self.n + len(ids)
        if need > self.matrix.shape[0]:
            # Doubling keeps growth amortised O(1) per example.
            cap = max(need, 2 * self.matrix.shape[0], 64)
            matrix = np.empty((cap, self.dim), dtype=np.float32)
            matrix[: self.n] = self.matrix[: self.n]
            id_col = np.empty(cap, dtype=np.int64)
            id_col[: self.n] = self.ids[: self.n]
            self.matrix, self.ids = matrix, id_col
        self.matrix[self.n : need] = rows
        self.ids[self.n : need] = ids
        self.n = need
        self.max_id = max(self.max_id, int(max(ids)))

    def top(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` most similar ids with their cosine similarity, best first."""
        np = numpy()
        if self.n == 0 or k <= 0:
            return []
        sims = self.matrix[: self.n] @ query
        k = min(k, self.n)
        best = np.argpartition(-sims, k - 1)[:k] if k < self.n else np.arange(self.n)
        best = best[np.argsort(-sims[best], kind="stable")]
        return [(int(self.ids[i]), float(sims[i])) for i in best]


_indexes: weakref.WeakKeyDictionary[Store, dict[tuple[str, str], _Index]] = (
    weakref.WeakKeyDictionary()
)
_indexes_lock = threading.Lock()


def index_for(
    store: Store, agent: str, embedder: Embedder, conn: Connection | None = None
) -> _Index:
    """The agent's search matrix in this process, brought up to date with the store
    (on ``conn`` if given, so a search uses one connection for everything it reads)."""
    if conn is None:
        with store.engine.connect() as own:
            return index_for(store, agent, embedder, own)
    with _indexes_lock:
        per_store = _indexes.setdefault(store, {})
        index = per_store.get((agent, embedder.name))
        if index is None or index.dim != embedder.dim:
            index = per_store[(agent, embedder.name)] = _Index(embedder.dim)
    where = (examples.c.agent == agent, examples.c.embedder == embedder.name)
    with index.lock:
        # Examples are only ever added (ids grow), so the newest id says whether the
        # matrix is current: one lookup on the (agent, embedder, id) index, not a count.
        top = conn.execute(select(func.max(examples.c.id)).where(*where)).scalar()
        if (top or 0) == index.max_id:
            return index  # the common case: nothing new since the last search
        if (top or 0) < index.max_id:  # the table was emptied or restored: start again
            fresh = _Index(embedder.dim)
            index.matrix, index.ids, index.n, index.max_id = (
                fresh.matrix, fresh.ids, fresh.n, fresh.max_id
            )
        rows = conn.execute(
            select(examples.c.id, examples.c.vector, examples.c.dim)
            .where(*where, examples.c.id > index.max_id)
            .order_by(examples.c.id)
        ).all()
        for r in rows:
            if r.dim != embedder.dim:
                raise ReviewError(
                    f"example {r.id} of agent {agent!r} has {r.dim} dimensions but embedder "
                    f"{embedder.name!r} makes {embedder.dim}; re-embed the examples"
                )
        index.append([r.id for r in rows], [bytes(r.vector) for r in rows])
    return index


# -- retrieval ---------------------------------------------------------------------------


def nearest(
    store: Store, spec: Spec, text: str, k: int, *, threshold: float | None = None
) -> list[Example]:
    """At most ``k`` examples at or above the threshold (default: the spec's), best first;
    nothing is recorded."""
    if k <= 0:
        return []
    bar = spec.threshold if threshold is None else threshold
    query = embed_one(spec.embedder, text)
    with store.engine.connect() as conn:
        found = [
            (i, s)
            for i, s in index_for(store, spec.agent, spec.embedder, conn).top(query, k)
            if s >= bar - _TOLERANCE
        ]
        return load(store, found, conn)


def load(
    store: Store, found: Sequence[tuple[int, float]], conn: Connection | None = None
) -> list[Example]:
    """Examples by id, in the given order, each with its similarity."""
    if not found:
        return []
    if conn is None:
        with store.engine.connect() as own:
            return load(store, found, own)
    rows = {
        r.id: r
        for r in conn.execute(
            select(
                examples.c.id, examples.c.agent, examples.c.case_text, examples.c.input,
                examples.c.corrected_output, examples.c.reason, examples.c.run_id,
                examples.c.review_id, examples.c.created_at,
            ).where(examples.c.id.in_([i for i, _ in found]))
        )
    }
    return [
        Example(
            id=r.id, agent=r.agent, case=r.case_text, input=r.input,
            corrected_output=r.corrected_output, reason=r.reason, run_id=r.run_id,
            review_id=r.review_id, created_at=r.created_at, similarity=sim,
        )
        for i, sim in found
        if (r := rows.get(i)) is not None
    ]


def record_shown(store: Store, run_id: int, shown: Sequence[Example]) -> None:
    """Keep which examples a run was shown, with similarity and rank (1 = nearest)."""
    if not shown:
        return
    rows = [
        {"run_id": run_id, "example_id": e.id, "similarity": e.similarity, "rank": rank}
        for rank, e in enumerate(shown, start=1)
    ]
    # A second ctx.examples call in the same run shows the same examples: keep the first.
    store._transact(lambda conn: conn.execute(store._insert_ignore(run_examples), rows))


def for_run(store: Store, agent: Agent | str, run_id: int, input: Any,
            upstream: Mapping[str, Any] | None, k: int) -> list[Example]:
    """What ``ctx.examples(k)`` returns for a run, recorded in ``run_examples``."""
    spec = Spec.of(agent)
    text = case_text(spec, input, upstream, where=f"the input of run {run_id}")
    shown = nearest(store, spec, text, k)
    record_shown(store, run_id, shown)
    return shown


def shown_to(store: Store, run_id: int) -> list[Example]:
    """The examples a run was shown, nearest first."""
    with store.engine.connect() as conn:
        found = [
            (r.example_id, r.similarity)
            for r in conn.execute(
                select(run_examples.c.example_id, run_examples.c.similarity)
                .where(run_examples.c.run_id == run_id)
                .order_by(run_examples.c.rank)
            )
        ]
    return load(store, found)


# -- coverage ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many finished runs of an agent got at least one example."""

    agent: str
    runs: int
    covered: int
    examples: int
    """Examples the agent has in the store."""

    @property
    def share(self) -> float:
        """``covered / runs`` (0 with no runs)."""
        return self.covered / self.runs if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "runs": self.runs, "covered": self.covered,
            "share": self.share, "examples": self.examples,
        }


def coverage(store: Store, agent: str, *, since: float | None = None) -> Coverage:
    """The share of the agent's finished runs (succeeded or failed, every attempt; not
    evaluation runs) that were shown at least one example; ``since`` counts runs created
    from then on."""
    from tether.store.schema import runs, tasks

    where = [
        tasks.c.agent == agent,
        runs.c.status.in_(("succeeded", "failed")),
        runs.c.reason != "eval",  # experiments replay cases: production coverage only
    ]
    if since is not None:
        where.append(runs.c.created_at >= since)
    base = select(runs.c.id).join(tasks, tasks.c.id == runs.c.task_id).where(*where)
    with store.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        covered = conn.execute(
            select(func.count()).select_from(
                base.where(
                    select(run_examples.c.run_id)
                    .where(run_examples.c.run_id == runs.c.id)
                    .exists()
                ).subquery()
            )
        ).scalar_one()
        n_examples = conn.execute(
            select(func.count(examples.c.id)).where(examples.c.agent == agent)
        ).scalar_one()
    return Coverage(agent=agent, runs=total, covered=covered, examples=n_examples)
