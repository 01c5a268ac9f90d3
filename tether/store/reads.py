"""Every read the CLI, the API and agents' contexts make, as named methods."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.engine import Row

from tether.errors import NotFound
from tether.store.records import (
    FailureClass,
    OperatorAction,
    Run,
    RunStatus,
    Step,
    Task,
    TaskInput,
    TaskStatus,
    Trigger,
    derive_task_status,
)
from tether.store.schema import operator_actions, runs, steps, task_inputs, tasks, triggers

LATEST_RUN = runs.alias("latest_run")


def task_query(where: Any = None) -> Any:
    """Tasks with what their status is derived from: the latest run (found per task by a
    correlated, indexed lookup, so the query's cost does not grow with the store) and the
    number of runs."""
    latest_id = (
        select(func.max(runs.c.id))
        .where(runs.c.task_id == tasks.c.id)
        .correlate(tasks)
        .scalar_subquery()
    )
    n_runs = (
        select(func.count())
        .select_from(runs)
        .where(runs.c.task_id == tasks.c.id)
        .correlate(tasks)
        .scalar_subquery()
    )
    q = select(
        tasks,
        LATEST_RUN.c.status.label("run_status"),
        LATEST_RUN.c.attempt.label("run_attempt"),
        LATEST_RUN.c.waiting_for.label("run_waiting_for"),
        n_runs.label("n_runs"),
    ).select_from(tasks.outerjoin(LATEST_RUN, LATEST_RUN.c.id == latest_id))
    return q if where is None else q.where(where)


def _task_status_filter(status: TaskStatus) -> Any:
    lr = LATEST_RUN.c
    live = tasks.c.cancelled_at.is_(None)
    conditions = {
        TaskStatus.CANCELLED: tasks.c.cancelled_at.is_not(None),
        TaskStatus.PENDING: lr.id.is_(None),
        TaskStatus.QUEUED: and_(lr.status == "queued", lr.attempt <= 1),
        TaskStatus.RETRYING: and_(lr.status == "queued", lr.attempt > 1),
        TaskStatus.WAITING: and_(lr.status == "succeeded", lr.waiting_for.is_not(None)),
        TaskStatus.SUCCEEDED: and_(lr.status == "succeeded", lr.waiting_for.is_(None)),
    }
    cond = conditions.get(status, lr.status == status.value)
    return cond if status is TaskStatus.CANCELLED else and_(live, cond)


def _run(row: Row[Any], step_rows: Sequence[Step] = ()) -> Run:
    return Run(
        id=row.id,
        task_id=row.task_id,
        attempt=row.attempt,
        reason=row.reason,
        note=row.note,
        status=RunStatus(row.status),
        failure_class=FailureClass(row.failure_class) if row.failure_class else None,
        failure_reason=row.failure_reason,
        output=row.output,
        waiting_for=row.waiting_for,
        created_at=row.created_at,
        available_at=row.available_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        worker=row.worker,
        lease_expires_at=row.lease_expires_at,
        steps=tuple(step_rows),
    )


def _step(row: Row[Any]) -> Step:
    return Step(
        id=row.id,
        run_id=row.run_id,
        seq=row.seq,
        name=row.name,
        key=row.key,
        input=row.input,
        output=row.output,
        status=row.status,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


class StoreReads:
    """Read queries; mixed into :class:`tether.store.Store`."""

    engine: Engine

    # -- tasks ---------------------------------------------------------------------

    def list_tasks(
        self,
        *,
        agent: str | None = None,
        status: TaskStatus | str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks, newest first, optionally of one agent and one (derived) status."""
        q = task_query().order_by(tasks.c.id.desc()).limit(limit)
        if agent is not None:
            q = q.where(tasks.c.agent == agent)
        if status is not None:
            q = q.where(_task_status_filter(TaskStatus(status)))
        with self.engine.connect() as conn:
            return [self._task(row) for row in conn.execute(q)]

    @staticmethod
    def _task(row: Row[Any]) -> Task:
        return Task(
            id=row.id,
            agent=row.agent,
            key=row.key,
            status=derive_task_status(
                row.run_status,
                row.run_attempt,
                waiting_for=row._mapping.get("run_waiting_for"),
                cancelled=row._mapping.get("cancelled_at") is not None,
            ),
            created_at=row.created_at,
            runs=row.n_runs or 0,
        )

    def get_task(self, ref: str | int) -> Task:
        """A task by id, or by ``AGENT/KEY`` (the key may itself contain ``/``).

        Raises:
            NotFound: no such task.
        """
        text = str(ref)
        if isinstance(ref, int) or text.isdigit():
            q = task_query(tasks.c.id == int(text))
        elif "/" in text:
            agent, key = text.split("/", 1)
            q = task_query(and_(tasks.c.agent == agent, tasks.c.key == key))
        else:
            raise NotFound(f"{text!r} is not a task: give a task id or AGENT/KEY")
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise NotFound(f"no task {text!r}; `tether tasks` lists the tasks there are")
        return self._task(row)

    def inputs(self, task_id: int) -> list[TaskInput]:
        """Every input the task received, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(task_inputs.c.seq, task_inputs.c.data, task_inputs.c.received_at)
                .where(task_inputs.c.task_id == task_id)
                .order_by(task_inputs.c.seq)
            )
            return [TaskInput(seq=r.seq, data=r.data, received_at=r.received_at) for r in rows]

    # -- runs and steps ------------------------------------------------------------

    def runs_of(
        self, task_id: int, *, before_run: int | None = None, with_steps: bool = True
    ) -> list[Run]:
        """A task's runs, oldest first, each with its steps in order."""
        q = select(runs).where(runs.c.task_id == task_id).order_by(runs.c.id)
        if before_run is not None:
            q = q.where(runs.c.id < before_run)
        with self.engine.connect() as conn:
            run_rows = conn.execute(q).all()
            by_run: dict[int, list[Step]] = {r.id: [] for r in run_rows}
            if with_steps and run_rows:
                for s in conn.execute(
                    select(steps)
                    .where(steps.c.run_id.in_(list(by_run)))
                    .order_by(steps.c.run_id, steps.c.seq)
                ):
                    by_run[s.run_id].append(_step(s))
        return [_run(r, by_run[r.id]) for r in run_rows]

    def get_run(self, run_id: int) -> Run:
        """One run with its steps. Raises NotFound."""
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise NotFound(f"no run {run_id}")
            step_rows = [
                _step(s)
                for s in conn.execute(
                    select(steps).where(steps.c.run_id == run_id).order_by(steps.c.seq)
                )
            ]
        return _run(row, step_rows)

    # -- triggers ------------------------------------------------------------------

    def _triggers(self, where: Any, *, limit: int | None = None) -> list[Trigger]:
        up = tasks.alias("up")
        down = tasks.alias("down")
        q = (
            select(
                triggers,
                (up.c.agent + "/" + up.c.key).label("up_ref"),
                (down.c.agent + "/" + down.c.key).label("down_ref"),
            )
            .join(up, up.c.id == triggers.c.upstream_task_id)
            .join(down, down.c.id == triggers.c.downstream_task_id)
            .where(where)
            .order_by(triggers.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                Trigger(
                    id=r.id,
                    name=r.name,
                    upstream_task_id=r.upstream_task_id,
                    upstream_run_id=r.upstream_run_id,
                    downstream_task_id=r.downstream_task_id,
                    created_at=r.created_at,
                    upstream_ref=r.up_ref,
                    downstream_ref=r.down_ref,
                )
                for r in conn.execute(q)
            ]

    def triggers_in(self, task_id: int) -> list[Trigger]:
        """Edges into a task: the triggers that fired for it."""
        return self._triggers(triggers.c.downstream_task_id == task_id)

    def triggers_out(self, task_id: int) -> list[Trigger]:
        """Edges out of a task: the triggers its successful runs emitted."""
        return self._triggers(triggers.c.upstream_task_id == task_id)

    def all_triggers(self) -> list[Trigger]:
        """Every recorded edge, oldest first."""
        return self._triggers(triggers.c.id.is_not(None))

    def upstream_outputs(self, task_id: int) -> dict[str, tuple[str, Any]]:
        """For each trigger that fired into the task, the latest firing's upstream
        ``(AGENT/KEY, output of the run that emitted it)``."""
        up = tasks.alias("up")
        q = (
            select(
                triggers.c.name,
                (up.c.agent + "/" + up.c.key).label("up_ref"),
                runs.c.output,
            )
            .join(runs, runs.c.id == triggers.c.upstream_run_id)
            .join(up, up.c.id == triggers.c.upstream_task_id)
            .where(triggers.c.downstream_task_id == task_id)
            .order_by(triggers.c.id)
        )
        with self.engine.connect() as conn:
            # Later rows overwrite earlier: the newest firing of each name wins.
            return {r.name: (r.up_ref, r.output) for r in conn.execute(q)}

    def actions(self, task_id: int) -> list[OperatorAction]:
        """The operator actions on a task (retries with notes, cancellations), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(operator_actions)
                .where(operator_actions.c.task_id == task_id)
                .order_by(operator_actions.c.id)
            )
            return [OperatorAction(**dict(r._mapping)) for r in rows]

    # -- provenance ------------------------------------------------------------------
    # Reads for `why`, `why-not` and `graph --task`: each a bounded number of indexed
    # queries, however deep the graph or large the store.

    def find_task(self, agent: str, key: str) -> Task | None:
        """The task (agent, key), or None if it was never created."""
        with self.engine.connect() as conn:
            row = conn.execute(
                task_query(and_(tasks.c.agent == agent, tasks.c.key == key))
            ).first()
        return None if row is None else self._task(row)

    def tasks_by_ids(self, ids: Iterable[int]) -> dict[int, Task]:
        """Tasks by id, with their derived status (ids that do not exist are left out)."""
        found: dict[int, Task] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(ids))):
                for row in conn.execute(task_query(tasks.c.id.in_(chunk))):
                    found[row.id] = self._task(row)
        return found

    def runs_by_ids(self, ids: Iterable[int], *, with_steps: bool = True) -> dict[int, Run]:
        """Runs by id, each with its steps in order (ids that do not exist are left out)."""
        wanted = sorted(set(ids))
        found: dict[int, Run] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted):
                run_rows = conn.execute(select(runs).where(runs.c.id.in_(chunk))).all()
                by_run: dict[int, list[Step]] = {r.id: [] for r in run_rows}
                if with_steps and run_rows:
                    for s in conn.execute(
                        select(steps)
                        .where(steps.c.run_id.in_(list(by_run)))
                        .order_by(steps.c.run_id, steps.c.seq)
                    ):
                        by_run[s.run_id].append(_step(s))
                found.update({r.id: _run(r, by_run[r.id]) for r in run_rows})
        return found

    def last_run(
        self, task_id: int, *, status: RunStatus | str | None = None, with_steps: bool = True
    ) -> Run | None:
        """A task's latest run (of one status, when given), with its steps; None if none."""
        q = select(runs.c.id).where(runs.c.task_id == task_id)
        if status is not None:
            q = q.where(runs.c.status == str(status))
        with self.engine.connect() as conn:
            run_id = conn.execute(q.order_by(runs.c.id.desc()).limit(1)).scalar()
        if run_id is None:
            return None
        return self.runs_by_ids([run_id], with_steps=with_steps).get(run_id)

    def upstream_edges(self, task_id: int, *, limit: int = 10_000) -> list[Trigger]:
        """Every recorded edge upstream of a task, transitively (oldest first, at most
        ``limit``): the trigger rows into it, into their upstream tasks, and so on."""
        return self._edge_closure(task_id, upstream=True, limit=limit)

    def downstream_edges(self, task_id: int, *, limit: int = 10_000) -> list[Trigger]:
        """Every recorded edge downstream of a task, transitively (oldest first, at most
        ``limit``)."""
        return self._edge_closure(task_id, upstream=False, limit=limit)

    def _edge_closure(self, task_id: int, *, upstream: bool, limit: int) -> list[Trigger]:
        def ends(t: Any) -> tuple[Any, Any]:
            if upstream:
                return t.c.downstream_task_id, t.c.upstream_task_id
            return t.c.upstream_task_id, t.c.downstream_task_id

        near, far = ends(triggers)
        # UNION (not UNION ALL) drops rows seen before, so the walk ends even on a cycle.
        closure = (
            select(triggers.c.id, far.label("next"))
            .where(near == task_id)
            .cte("closure", recursive=True)
        )
        step = triggers.alias("step")
        step_near, step_far = ends(step)
        closure = closure.union(
            select(step.c.id, step_far).join(closure, step_near == closure.c.next)
        )
        return self._triggers(triggers.c.id.in_(select(closure.c.id)), limit=limit)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[list[int]]:
    """Ids in slices small enough for one ``IN (...)`` on any database."""
    for i in range(0, len(ids), size):
        yield list(ids[i : i + size])
