"""Holding a run for review, sampling automated runs for rollout review, and releasing a
held run once a reviewer has confirmed, corrected or rejected it.

A held run succeeded with ``waiting_for="review"``: no trigger edges were recorded. Its
release is recorded as a new run of the same task (reason ``review``, a note naming the
reviewer and verdict) whose outcome carries the reviewed output and, in the same
transaction, its trigger edges; ``triage_releases`` allows one release per held run, so the
triggers fire exactly once however often a release is attempted. The new run enters the
task's hash chain like any other, so ``tether verify`` still holds and ``tether why``
shows the review on the path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from tether.errors import Conflict, NotFound
from tether.graph.registry import Graph
from tether.jsonable import to_json
from tether.store import Completion, Store
from tether.store.schema import runs, tasks
from tether.store.schema_review import review_queue
from tether.store.schema_triage import triage_releases
from tether.store.statements import RUN_FIELDS
from tether.triage.bars import record_audit
from tether.triage.errors import TriageError

WAITING_FOR = "review"
"""What a held run's task waits for."""

VERDICTS = ("correct", "incorrect", "partial")


@dataclass(frozen=True, slots=True)
class Release:
    """What releasing a held run did."""

    held_run_id: int
    run_id: int
    """The run recording the review's outcome (the upstream run of the emitted triggers)."""
    verdict: str
    emitted: int
    """How many trigger edges were recorded."""
    failed: bool
    """True when the task ended failed (rejected in review, no correction)."""
    already: bool = False
    """True when the run had been released before: nothing was done now."""


def release_held(
    store: Store,
    graph: Graph,
    run_id: int,
    *,
    verdict: str,
    corrected_output: Any = None,
    reviewer: str,
    reason: str | None = None,
    now: float | None = None,
) -> Release:
    """Release a run the triage held for review, after a review.

    ``correct``: the run's triggers fire with its output. ``partial``/``incorrect`` with a
    corrected output: they fire with the corrected output. ``incorrect`` (or ``partial``)
    without one: the task ends failed (terminal, "rejected in review"), nothing fires.
    Exactly once: a second release of the same run returns the first (``already``).

    Raises:
        NotFound: no run ``run_id``.
        Conflict: the run is not held for review.
        TriageError: an unknown verdict, or the agent is not in ``graph``.
    """
    if verdict not in VERDICTS:
        raise TriageError(
            f"release of run {run_id}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}"
        )
    when = time.time() if now is None else now
    corrected = None if corrected_output is None else to_json(
        corrected_output, what="corrected output")
    return store._transact(
        lambda conn: release_in(conn, store, graph, run_id, verdict=verdict,
                                corrected=corrected, reviewer=reviewer, reason=reason, now=when)
    )


def release_in(
    conn: Connection,
    store: Store,
    graph: Graph,
    run_id: int,
    *,
    verdict: str,
    corrected: Any,
    reviewer: str,
    reason: str | None,
    now: float,
) -> Release:
    """:func:`release_held` inside the caller's transaction (the review flow records the
    review and releases the run in one transaction, so a crash cannot leave a reviewed
    run held). ``corrected`` is already JSON-ready."""
    held = conn.execute(
        select(runs.c.id, runs.c.task_id, runs.c.status, runs.c.waiting_for,
               runs.c.output, runs.c.attempt, tasks.c.agent, tasks.c.key)
        .join(tasks, tasks.c.id == runs.c.task_id).where(runs.c.id == run_id)
    ).first()
    if held is None:
        raise NotFound(f"no run {run_id}; list held runs with `tether review`")
    store._lock_task(conn, held.task_id)  # one release decides at a time
    done = conn.execute(
        select(triage_releases).where(triage_releases.c.held_run_id == run_id)
    ).first()
    if done is not None:
        return Release(run_id, done.run_id, done.verdict, done.emitted,
                       failed=False, already=True)
    if held.status != "succeeded" or held.waiting_for != WAITING_FOR:
        raise Conflict(
            f"run {run_id} of {held.agent}/{held.key} is not held for review "
            f"(status {held.status}, waiting for {held.waiting_for or 'nothing'})"
        )
    agent = graph.agents.get(held.agent)
    if agent is None:
        raise TriageError(
            f"release of run {run_id}: no agent named {held.agent!r} in this project"
        )
    accept = verdict == "correct" or corrected is not None
    output = (corrected if corrected is not None else held.output) if accept else None
    note = f"review by {reviewer}: {verdict}" + (f" ({reason})" if reason else "")
    if corrected is not None:
        note += "; corrected output"
    record = conn.execute(
        insert(runs).values(
            task_id=held.task_id, attempt=held.attempt, reason="review", note=note,
            status="succeeded" if accept else "failed",
            failure_class=None if accept else "terminal",
            failure_reason=None if accept else f"rejected in review by {reviewer}"
            + (f": {reason}" if reason else ""),
            output=output, created_at=now, available_at=now, started_at=now,
            finished_at=now, worker=f"review:{reviewer}",
        ).returning(*RUN_FIELDS)
    ).one()
    new_id = int(record.id)
    emitted = 0
    if accept:
        from tether.runtime.execute import edges_for

        c = Completion(run_id=new_id, task_id=held.task_id, worker=f"review:{reviewer}",
                       attempt=held.attempt, succeeded=True, finished_at=now,
                       output=output)
        for edge in edges_for(graph, agent, held.key, output):
            store._record_edge(conn, c, edge)
            emitted += 1
    store._append(conn, held.task_id, [("run", dict(record._mapping))], now)
    conn.execute(insert(triage_releases).values(
        held_run_id=run_id, run_id=new_id, verdict=verdict, reviewer=reviewer,
        emitted=emitted, created_at=now,
    ))
    record_audit(conn, actor=reviewer, action="triage.release",
                 subject=f"agent:{held.agent}", at=now,
                 detail={"held_run": run_id, "run": new_id, "verdict": verdict,
                         "corrected": corrected is not None, "emitted": emitted})
    conn.execute(
        update(review_queue)
        .where(review_queue.c.run_id == run_id, review_queue.c.reviewed_at.is_(None))
        .values(reviewed_at=now)
    )
    return Release(run_id, new_id, verdict, emitted, failed=not accept)
