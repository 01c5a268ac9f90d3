"""Operators' overrides: retry and cancel a task, each recorded with actor, note and time."""

from __future__ import annotations

import time

from sqlalchemy import Connection, insert, update

from tether.errors import Conflict
from tether.store import statements as sql
from tether.store.claims import Claims
from tether.store.records import OperatorAction, TaskStatus
from tether.store.schema import operator_actions, runs, tasks


class Operators(Claims):
    """An operator's retry and cancel, recorded in the task's ledger."""

    def retry_task(
        self, ref: str | int, *, note: str | None, actor: str, now: float | None = None
    ) -> tuple[OperatorAction, int]:
        """An operator's override: start a new run of a failed (or cancelled) task, with a
        note the agent reads as ``ctx.note``. Returns the recorded action and the run id.

        Raises:
            NotFound: no such task.
            Conflict: the task is not failed or cancelled.
        """
        task = self.get_task(ref)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise Conflict(
                f"{task.ref} is {task.status}; an operator retry applies to failed or "
                "cancelled tasks"
            )
        when = time.time() if now is None else now

        def body(conn: Connection) -> tuple[OperatorAction, int]:
            self._lock_task(conn, task.id)
            conn.execute(update(tasks).where(tasks.c.id == task.id).values(cancelled_at=None))
            run_id = self._enqueue(conn, task.id, reason="operator", now=when, note=note)
            if run_id is None:
                raise Conflict(f"{task.ref} already has a run queued")
            action = self._record_action(conn, task.id, "retry", actor, note, run_id, when)
            return action, run_id

        return self._transact(body)

    def cancel_task(
        self, ref: str | int, *, note: str | None, actor: str, now: float | None = None
    ) -> OperatorAction:
        """An operator stops further runs of a task: queued runs are cancelled and no retry,
        trigger or submission starts another until an operator retries it. A run already
        in flight finishes and is recorded.

        Raises:
            NotFound: no such task.
            Conflict: the task is cancelled already.
        """
        task = self.get_task(ref)
        if task.status is TaskStatus.CANCELLED:
            raise Conflict(f"{task.ref} is cancelled already")
        when = time.time() if now is None else now

        def body(conn: Connection) -> OperatorAction:
            self._lock_task(conn, task.id)
            conn.execute(update(tasks).where(tasks.c.id == task.id).values(cancelled_at=when))
            finals = conn.execute(
                update(runs)
                .where(runs.c.task_id == task.id, runs.c.status == "queued")
                .values(status="cancelled", finished_at=when)
                .returning(*sql.RUN_FIELDS)
            ).all()
            self._append(conn, task.id, [("run", dict(f._mapping)) for f in finals], when)
            return self._record_action(conn, task.id, "cancel", actor, note, None, when)

        return self._transact(body)

    def _record_action(
        self,
        conn: Connection,
        task_id: int,
        action: str,
        actor: str,
        note: str | None,
        run_id: int | None,
        now: float,
    ) -> OperatorAction:
        values = {
            "task_id": task_id,
            "action": action,
            "actor": actor,
            "note": note,
            "run_id": run_id,
            "created_at": now,
        }
        action_id = conn.execute(
            insert(operator_actions).values(**values).returning(operator_actions.c.id)
        ).scalar_one()
        record = {"id": action_id, **values}
        self._append(conn, task_id, [("action", record)], now)
        return OperatorAction(**record)
