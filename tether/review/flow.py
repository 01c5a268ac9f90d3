"""The review flow: queue outputs for a person, record verdicts, turn failures into examples.

A review is immutable: a second review of the same run is another row beside the first.
Recording one writes, in one transaction, the review, its entry in the task's hash-chain
ledger (so ``tether verify`` catches an edited verdict), the queue row's ``reviewed_at``
(first review only) and, for ``incorrect`` / ``partial``, an example for the example store.
Everything is validated before the transaction, so a refused review writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from tether.errors import Conflict, NotFound
from tether.jsonable import to_json
from tether.review import examples as ex
from tether.review.embedders import embed_one
from tether.review.records import SOURCES, VERDICTS, QueueItem, Review, ReviewError
from tether.store import Store
from tether.store.schema import runs, task_inputs, tasks
from tether.store.schema_review import review_queue, reviews

if TYPE_CHECKING:
    from tether.graph.agent import Agent
    from tether.graph.registry import Graph
    from tether.store.writes import Claim

log = logging.getLogger(__name__)


# -- queueing ----------------------------------------------------------------------------


def enqueue(
    store: Store,
    run_id: int,
    *,
    source: str,
    score: float | None = None,
    held: bool = False,
    now: float | None = None,
) -> bool:
    """Queue a run's output for human review. Idempotent per run: queueing a run twice
    keeps the first entry. Returns True when this call queued it.

    Args:
        source: ``triage`` (the production bar routed it), ``rollout`` (sampled) or
            ``manual``.
        score: the triage model's estimate that the output is correct.
        held: the run's triggers wait for the review (the production bar's triage).

    Raises:
        ReviewError: an unknown source.
        NotFound: no such run.
    """
    if source not in SOURCES:
        raise ReviewError(
            f"review source {source!r} is not one of {', '.join(SOURCES)}"
        )
    when = time.time() if now is None else now

    def body(conn: Connection) -> bool:
        return _enqueue(conn, store, run_id, source=source, score=score, held=held, now=when)

    return store._transact(body)


def _enqueue(
    conn: Connection, store: Store, run_id: int, *, source: str, score: float | None,
    held: bool, now: float,
) -> bool:
    """:func:`enqueue` inside the caller's transaction (e.g. triage's completion)."""
    row = conn.execute(
        select(runs.c.task_id, tasks.c.agent)
        .join(tasks, tasks.c.id == runs.c.task_id)
        .where(runs.c.id == run_id)
    ).first()
    if row is None:
        raise NotFound(f"no run {run_id}; `tether show AGENT/KEY` lists a task's runs")
    added = conn.execute(
        store._insert_ignore(review_queue)
        .values(
            run_id=run_id, task_id=row.task_id, agent=row.agent, source=source,
            score=score, held=1 if held else 0, created_at=now,
        )
        .returning(review_queue.c.id)
    ).first()
    return added is not None


def sampled(run_id: int, rate: float) -> bool:
    """Whether rollout review samples this run: a hash of the run id against the rate, so
    the choice is the same on every worker and every re-delivery."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = int.from_bytes(hashlib.sha256(f"tether-rollout:{run_id}".encode()).digest()[:8], "big")
    return h / 2**64 < rate


def rollout(store: Store, agent: Agent, claim: Claim) -> None:
    """Called by the executor when a run succeeded: queue it if the agent's ``review_rate``
    samples it. Evaluation runs are never sampled. Never fails the run (a queueing error
    is logged)."""
    if claim.reason == "eval" or not sampled(claim.run_id, agent.review_rate):
        return
    try:
        enqueue(store, claim.run_id, source="rollout")
    except Exception:  # the run's outcome matters more than its review sample
        log.exception("could not queue run %s for rollout review", claim.run_id)


# -- reviewing ---------------------------------------------------------------------------


def _input_of(conn: Connection, task_id: int, as_of: float) -> Any:
    """The task's latest input received by ``as_of`` (when the run started)."""
    return conn.execute(
        select(task_inputs.c.data)
        .where(task_inputs.c.task_id == task_id, task_inputs.c.received_at <= as_of)
        .order_by(task_inputs.c.seq.desc())
        .limit(1)
    ).scalar()


def record_review(
    store: Store,
    run_id: int,
    *,
    verdict: str,
    reviewer: str,
    reason: str | None = None,
    corrected_output: Any = None,
    agent: Agent | None = None,
    graph: Graph | None = None,
    now: float | None = None,
) -> Review:
    """Record a person's verdict on a run's output.

    ``incorrect`` and ``partial`` verdicts need a reason and become an example: the run's
    input, the corrected output and the reason. ``agent`` (the run's agent object) says
    which input fields represent the case; without it the whole input does.

    A run the production bar held for review (``review_queue.held``) is released in the
    same transaction (:func:`tether.triage.hold.release_held`): ``correct`` lets its
    triggers fire with its output, a corrected output fires them with the correction, and
    ``incorrect`` without one ends the task failed. Releasing needs the project's ``graph``.

    Raises:
        NotFound: no such run.
        ReviewError: a verdict outside correct/incorrect/partial, a missing reason or
            reviewer, or an example field the agent declares is absent from the input.
        Conflict: the run has not finished.
    """
    if verdict not in VERDICTS:
        raise ReviewError(
            f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}; e.g. --verdict incorrect"
        )
    reason = reason.strip() if reason is not None else None
    if verdict != "correct" and not reason:
        raise ReviewError(
            f"a {verdict} verdict needs a reason: say what was wrong (--reason '...')"
        )
    if not reviewer or not reviewer.strip():
        raise ReviewError("a review needs a reviewer: who is reviewing (--reviewer NAME)")
    corrected = to_json(corrected_output, what="corrected output")
    with store.engine.connect() as conn:
        run = conn.execute(
            select(runs.c.id, runs.c.task_id, runs.c.status, runs.c.created_at,
                   runs.c.started_at, tasks.c.agent, tasks.c.key)
            .join(tasks, tasks.c.id == runs.c.task_id)
            .where(runs.c.id == run_id)
        ).first()
        if run is None:
            raise NotFound(f"no run {run_id}; `tether review list` shows the runs to review")
        if run.status not in ("succeeded", "failed"):
            raise Conflict(f"run {run_id} is {run.status}; only a finished run can be reviewed")
        case_input = _input_of(conn, run.task_id, run.started_at or run.created_at)
        held = bool(conn.execute(
            select(review_queue.c.held).where(review_queue.c.run_id == run_id)
        ).scalar())
    if held and graph is None:
        raise ReviewError(
            f"run {run_id} is held for review by the production bar; recording its review "
            "releases it, which needs the project's agents: pass graph=project.graph "
            "(`tether review record` does)"
        )
    if agent is not None and agent.name != run.agent:
        raise ReviewError(f"run {run_id} is a run of {run.agent!r}, not of {agent.name!r}")
    when = time.time() if now is None else now
    example: dict[str, Any] | None = None
    if verdict != "correct":
        # Everything that can refuse the example happens before the transaction.
        spec = ex.Spec.of(agent if agent is not None else run.agent)
        upstream = {n: out for n, (_ref, out) in store.upstream_outputs(run.task_id).items()}
        text = ex.case_text(spec, case_input, upstream,
                            where=f"the input of {run.agent}/{run.key}")
        vector = embed_one(spec.embedder, text)
        example = ex.example_values(
            spec, text=text, vector=vector, input=case_input, corrected_output=corrected,
            reason=reason, run_id=run_id, now=when,
        )
    values = {
        "run_id": run_id, "task_id": run.task_id, "agent": run.agent, "verdict": verdict,
        "reason": reason, "corrected_output": corrected, "reviewer": reviewer.strip(),
        "created_at": when,
    }

    def body(conn: Connection) -> Review:
        review_id = conn.execute(
            reviews.insert().values(**values).returning(reviews.c.id)
        ).scalar_one()
        store._append(conn, run.task_id, [("review", {"id": review_id, **values})], when)
        conn.execute(
            update(review_queue)
            .where(review_queue.c.run_id == run_id, review_queue.c.reviewed_at.is_(None))
            .values(reviewed_at=when)
        )
        example_id = None
        if example is not None:
            example_id = ex.insert_example(conn, {**example, "review_id": review_id})
        if held:
            assert graph is not None
            from tether.triage.hold import release_in

            # Idempotent: a second review of a released run finds the first release.
            release_in(conn, store, graph, run_id, verdict=verdict, corrected=corrected,
                       reviewer=values["reviewer"], reason=reason, now=when)
        return Review(id=review_id, example_id=example_id, **values)

    return store._transact(body)


# -- reading -----------------------------------------------------------------------------


def queue(
    store: Store, *, agent: str | None = None, include_reviewed: bool = False,
    limit: int = 1000,
) -> list[QueueItem]:
    """Runs queued for review, oldest first: those not reviewed yet, or all of them.

    A run still executing is not listed (rollout queues it just before its success is
    recorded)."""
    q = (
        select(review_queue, tasks.c.key, runs.c.status, runs.c.output)
        .join(tasks, tasks.c.id == review_queue.c.task_id)
        .join(runs, runs.c.id == review_queue.c.run_id)
        .where(runs.c.status.not_in(("queued", "running")))
        .order_by(review_queue.c.created_at, review_queue.c.id)
        .limit(limit)
    )
    if agent is not None:
        q = q.where(review_queue.c.agent == agent)
    if not include_reviewed:
        q = q.where(review_queue.c.reviewed_at.is_(None))
    with store.engine.connect() as conn:
        return [_item(r) for r in conn.execute(q)]


def _item(r: Any) -> QueueItem:
    return QueueItem(
        id=r.id, run_id=r.run_id, task_id=r.task_id, agent=r.agent, key=r.key,
        source=r.source, score=r.score, held=bool(r.held), created_at=r.created_at,
        reviewed_at=r.reviewed_at, run_status=r.status, output=r.output,
    )


def queued(store: Store, run_id: int) -> QueueItem | None:
    """The run's queue entry, if it was queued."""
    with store.engine.connect() as conn:
        r = conn.execute(
            select(review_queue, tasks.c.key, runs.c.status, runs.c.output)
            .join(tasks, tasks.c.id == review_queue.c.task_id)
            .join(runs, runs.c.id == review_queue.c.run_id)
            .where(review_queue.c.run_id == run_id)
        ).first()
    return None if r is None else _item(r)


def reviews_of(store: Store, run_id: int) -> list[Review]:
    """Every review of a run, oldest first (the example each created, if any)."""
    from tether.store.schema_review import examples

    with store.engine.connect() as conn:
        rows = conn.execute(
            select(reviews, examples.c.id.label("example_id"))
            .outerjoin(examples, examples.c.review_id == reviews.c.id)
            .where(reviews.c.run_id == run_id)
            .order_by(reviews.c.id)
        ).all()
    return [
        Review(
            id=r.id, run_id=r.run_id, task_id=r.task_id, agent=r.agent, verdict=r.verdict,
            reason=r.reason, corrected_output=r.corrected_output, reviewer=r.reviewer,
            created_at=r.created_at, example_id=r.example_id,
        )
        for r in rows
    ]
