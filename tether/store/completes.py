"""Recording finished runs: outcome, steps, trigger edges and retries in one transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from tether.store import statements as sql
from tether.store.schema import steps, triggers
from tether.store.submits import Submits
from tether.store.writes import Claim, ClaimIds, Completion, Edge, Follow, StepWrite

INLINE_DISPATCH = 64
"""At most this many runs that one transaction's triggers queue are handed over inline
(:meth:`Completes._complete` with ``dispatched``); beyond that the outbox's back-pressure
decides when a large fan-out reaches the engine."""


EdgeJob = tuple[Completion, Edge, "list[tuple[int, str]] | None", "Follow | None"]
"""An edge to record: the completion, the edge, where to list its run for the engine
(None: not handed over inline) and the follow that claims it if its task is new (None:
not claimed; a run not claimed is handed over as the list says)."""


def _plan_edges(
    completions: Sequence[Completion],
    dispatched: dict[int, list[tuple[int, str]]] | None,
    follow: Follow | None,
) -> tuple[list[EdgeJob], list[int]]:
    """Every edge of ``completions``, in order, with its hand-over decided up front (so
    the one-statement edges of a batch can be sent together with the statement that ends
    the batch's runs), and the index of each edge's completion: at most
    :data:`INLINE_DISPATCH` runs per completion are handed over inline, and the first
    edge of each wanted completion to an agent this worker has is the one its worker
    follows (if that task turns out to exist already, the completion follows nothing)."""
    jobs: list[EdgeJob] = []
    owners: list[int] = []  # the index in ``completions`` of each job's completion
    for n, c in enumerate(completions):
        out = None if dispatched is None else dispatched.setdefault(c.run_id, [])
        claimed = False
        for i, edge in enumerate(c.edges):
            # A join is never followed: its run is queued by whichever trigger fires last.
            claim = (follow is not None and not claimed and edge.requires == (edge.name,)
                     and follow.takes(c.run_id, edge.agent))
            claimed = claimed or claim
            inline = out if out is not None and i < INLINE_DISPATCH else None
            jobs.append((c, edge, inline, follow if claim else None))
            owners.append(n)
    return jobs, owners


class Completes(Submits):
    """Recording outcomes, steps and trigger edges; following a chain on its worker."""

    def insert_steps(self, task_id: int, run_id: int, rows: Sequence[StepWrite]) -> None:
        """Write steps now: a keyed step's start, or finished steps a heartbeat flushes."""
        if not rows:
            return
        now = time.time()

        def body(conn: Connection) -> None:
            finished = self._write_steps(conn, [(run_id, s) for s in rows])
            self._append(conn, task_id, [("step", r) for r in finished], now)

        self._transact(body)

    def _write_steps(
        self, conn: Connection, rows: Sequence[tuple[int, StepWrite]]
    ) -> list[dict[str, Any]]:
        """Insert new steps and finish keyed ones; returns the finished steps' records."""
        new = [sql.step_values(run_id, s) for run_id, s in rows if not s.inserted]
        done = [sql.step_values(run_id, s) for run_id, s in rows if s.inserted]
        if new:
            conn.execute(insert(steps), new)
        if done:
            conn.execute(
                update(steps)
                .where(steps.c.run_id == bindparam("b_run_id"), steps.c.seq == bindparam("b_seq"))
                .values(
                    output=bindparam("output"),
                    status=bindparam("status"),
                    error=bindparam("error"),
                    finished_at=bindparam("finished_at"),
                ),
                [{**d, "b_run_id": d["run_id"], "b_seq": d["seq"]} for d in done],
            )
        # A keyed step's start is provisional; it enters the ledger when it finishes.
        return [r for r in (*new, *done) if r["status"] != "running"]

    def complete(self, completions: Sequence[Completion]) -> list[int]:
        """Record finished runs (group commit): outcome, steps, trigger edges, retries.

        A run's success and its trigger edges are written in the same transaction, so a
        crash can never leave one without the other. A completion from a worker that no
        longer holds the run (its lease expired and it was reaped) is discarded whole.
        Returns the ids of the runs recorded.
        """
        if not completions:
            return []
        return self._transact(lambda conn: self._complete(conn, completions, last=True))

    def _complete(
        self,
        conn: Connection,
        completions: Sequence[Completion],
        dispatched: dict[int, list[tuple[int, str]]] | None = None,
        *,
        follow: Follow | None = None,
        claims: ClaimIds | None = None,
        last: bool = False,
    ) -> list[int]:
        """Record ``completions``. With ``dispatched`` (engine providers), the runs their
        triggers queue are marked dispatched in the same insert and listed there, as
        ``(run id, agent)`` under the completion's run id, for the caller to hand to its
        engine right after the commit; the outbox re-dispatches any it then fails to hand
        over. With ``follow``, the first run each wanted completion's triggers queue for a
        new task is inserted claimed by ``follow.worker`` instead (see
        :class:`~tether.store.writes.Follow`). With ``claims``, those runs are claimed in
        the same transaction (see :class:`~tether.store.writes.ClaimIds`). ``last``: the
        caller writes nothing more in this transaction and commits it on return (the
        dialect may send the COMMIT with the last statement)."""
        accepted: list[int] = []
        step_rows: list[tuple[int, StepWrite]] = []
        finals: list[tuple[Completion, dict[str, Any]]] = []
        jobs, owners = _plan_edges(completions, dispatched, follow)
        finished_runs, recorded, tips = self._finish_with_edges(
            conn, completions, jobs, sorted({c.task_id for c in completions}), claims
        )
        if claims is not None and not claims.done:
            claims.claimed = self._claim_ids(
                conn, claims.run_ids, worker=claims.worker, lease_seconds=claims.lease_seconds
            )
            claims.done = True
        kept: set[int] = set()
        for n, c in enumerate(completions):
            final = finished_runs.pop(c.run_id, None)
            if final is None:
                # The lease was lost (this worker no longer owns the run), or the same
                # completion came twice in this batch and the first one recorded it.
                continue
            kept.add(n)
            accepted.append(c.run_id)
            step_rows.extend((c.run_id, s) for s in c.steps)
            finals.append((c, final))
            if c.retry_at is not None:
                self._enqueue(
                    conn,
                    c.task_id,
                    reason="retry",
                    now=c.finished_at,
                    attempt=c.attempt + 1,
                    available_at=c.retry_at,
                )
        for job, owner, done in zip(jobs, owners, recorded, strict=True):
            if owner in kept and not done:
                self._record_edge(conn, *job)
        finished: dict[int, list[dict[str, Any]]] = {}
        for r in self._write_steps(conn, step_rows):
            finished.setdefault(r["run_id"], []).append(r)
        self._append_many(
            conn,
            [
                (c.task_id, [*(("step", r) for r in finished.get(c.run_id, [])), ("run", rec)],
                 c.finished_at)
                for c, rec in finals
            ],
            tips=tips,
            last=last,
        )
        return accepted

    def _finish_runs(
        self, conn: Connection, completions: Sequence[Completion]
    ) -> dict[int, dict[str, Any]]:
        """End the runs ``completions`` report on, each only if its worker still holds it;
        returns the ended runs' final records (what the ledger hashes) by run id."""
        finished: dict[int, dict[str, Any]] = {}
        for c in completions:
            if c.run_id in finished:
                continue  # the same completion twice in one batch: recorded once
            final = conn.execute(sql.FINISH_RUN, sql.finish_values(c)).first()
            if final is not None:
                finished[c.run_id] = dict(final._mapping)
        return finished

    def _record_edge(
        self,
        conn: Connection,
        c: Completion,
        edge: Edge,
        dispatched: list[tuple[int, str]] | None = None,
        follow: Follow | None = None,
    ) -> None:
        """Record ``edge`` the general way (any task, joins): the downstream task, the
        trigger, and the downstream run once every trigger it needs has fired — queued
        and listed in ``dispatched`` when given, or claimed for ``follow.worker`` when
        ``follow`` is given and this transaction created the task."""
        downstream, created = self._upsert_task(conn, edge.agent, edge.key, c.finished_at)
        added = conn.execute(
            self._new_trigger,
            {
                "name": edge.name,
                "upstream_task_id": c.task_id,
                "upstream_run_id": c.run_id,
                "downstream_task_id": downstream,
                "created_at": c.finished_at,
            },
        ).first()
        if added is None:
            return
        if edge.requires != (edge.name,):  # a join: queue it once all its triggers fired
            fired = set(
                conn.execute(
                    select(triggers.c.name)
                    .where(
                        triggers.c.downstream_task_id == downstream,
                        triggers.c.name.in_(edge.requires),
                    )
                    .distinct()
                ).scalars()
            )
            if not fired >= set(edge.requires):
                return
        if created and follow is not None:
            follow.claims[c.run_id] = self._insert_claimed(conn, downstream, edge, c, follow)
            return
        run_id = self._enqueue(
            conn, downstream, reason="trigger", now=c.finished_at,
            dispatched_at=None if dispatched is None else c.finished_at, fresh=created,
        )
        if run_id is not None and dispatched is not None:
            dispatched.append((run_id, edge.agent))

    def _finish_with_edges(
        self, conn: Connection, completions: Sequence[Completion], jobs: Sequence[EdgeJob],
        task_ids: Sequence[int], claims: ClaimIds | None = None,
    ) -> tuple[dict[int, dict[str, Any]], list[bool], dict[int, tuple[int, str]] | None]:
        """End the completions' runs (:meth:`_finish_runs`) and, where the dialect has a
        fast way, record the jobs' edges to new tasks, read the chain tips of ``task_ids``
        (locked) and make ``claims`` on the way. Returns the ended runs' records by run id,
        which jobs were recorded (the rest, of kept completions, take
        :meth:`_record_edge`), and the tips (None: :meth:`_append_many` reads them). The
        base store has no fast way: :meth:`_complete` makes the claims after."""
        return self._finish_runs(conn, completions), [False] * len(jobs), None

    def _insert_claimed(
        self, conn: Connection, task_id: int, edge: Edge, c: Completion, follow: Follow
    ) -> Claim:
        """The first run of a task this transaction created, inserted already claimed by
        ``follow.worker``: the task has no other run, so nothing else can be running, and
        no operator can have cancelled it yet."""
        now = time.time()
        lease = now + follow.lease_seconds
        run_id = conn.execute(
            sql.NEW_RUN,
            {
                "task_id": task_id, "attempt": 1, "reason": "trigger", "note": None,
                "status": "running", "worker": follow.worker, "created_at": c.finished_at,
                "available_at": c.finished_at, "dispatched_at": c.finished_at,
                "started_at": now, "lease_expires_at": lease,
            },
        ).scalar_one()
        return Claim(run_id=run_id, task_id=task_id, agent=edge.agent, key=edge.key,
                     attempt=1, reason="trigger", note=None, lease_expires_at=lease)
