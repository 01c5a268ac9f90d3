"""Every read the CLI, the API and agents' contexts make, as named methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.engine import Row

from tether.errors import NotFound
from tether.store.records import (
    FailureClass,
    Run,
    RunStatus,
    Step,
    Task,
    TaskInput,
    TaskStatus,
    Trigger,
    derive_task_status,
)
from tether.store.schema import runs, steps, task_inputs, tasks, triggers


def _latest_runs() -> Any:
    """Subquery: each task's latest run id and run count."""
    return (
        select(
            runs.c.task_id,
            func.max(runs.c.id).label("run_id"),
            func.count().label("n"),
        )
        .group_by(runs.c.task_id)
        .subquery("latest")
    )


def _task_status_filter(status: TaskStatus, latest_run: Any, latest: Any) -> Any:
    if status == TaskStatus.WAITING:
        return latest.c.run_id.is_(None)
    if status == TaskStatus.QUEUED:
        return and_(latest_run.c.status == "queued", latest_run.c.attempt <= 1)
    if status == TaskStatus.RETRYING:
        return and_(latest_run.c.status == "queued", latest_run.c.attempt > 1)
    return latest_run.c.status == status.value


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
        latest = _latest_runs()
        latest_run = runs.alias("latest_run")
        q = (
            select(
                tasks,
                latest_run.c.status.label("run_status"),
                latest_run.c.attempt.label("run_attempt"),
                latest.c.n.label("n_runs"),
            )
            .select_from(
                tasks.outerjoin(latest, latest.c.task_id == tasks.c.id).outerjoin(
                    latest_run, latest_run.c.id == latest.c.run_id
                )
            )
            .order_by(tasks.c.id.desc())
            .limit(limit)
        )
        if agent is not None:
            q = q.where(tasks.c.agent == agent)
        if status is not None:
            q = q.where(_task_status_filter(TaskStatus(status), latest_run, latest))
        with self.engine.connect() as conn:
            return [self._task(row) for row in conn.execute(q)]

    @staticmethod
    def _task(row: Row[Any]) -> Task:
        return Task(
            id=row.id,
            agent=row.agent,
            key=row.key,
            status=derive_task_status(row.run_status, row.run_attempt),
            created_at=row.created_at,
            runs=row.n_runs or 0,
        )

    def get_task(self, ref: str | int) -> Task:
        """A task by id, or by ``AGENT/KEY`` (the key may itself contain ``/``).

        Raises:
            NotFound: no such task.
        """
        latest = _latest_runs()
        latest_run = runs.alias("latest_run")
        q = select(
            tasks,
            latest_run.c.status.label("run_status"),
            latest_run.c.attempt.label("run_attempt"),
            latest.c.n.label("n_runs"),
        ).select_from(
            tasks.outerjoin(latest, latest.c.task_id == tasks.c.id).outerjoin(
                latest_run, latest_run.c.id == latest.c.run_id
            )
        )
        text = str(ref)
        if isinstance(ref, int) or text.isdigit():
            q = q.where(tasks.c.id == int(text))
        elif "/" in text:
            agent, key = text.split("/", 1)
            q = q.where(tasks.c.agent == agent, tasks.c.key == key)
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

    def _triggers(self, where: Any) -> list[Trigger]:
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
