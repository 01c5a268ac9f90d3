"""Submitting work: tasks, their inputs, and queueing runs."""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from sqlalchemy import Connection, insert, select

from tether.jsonable import canonical, to_json
from tether.store import statements as sql
from tether.store.base import _MISSING, StoreBase
from tether.store.schema import runs, task_inputs, tasks
from tether.store.writes import Submission

SUBMIT_CHUNK = 200
"""Items per transaction in :meth:`Submits.submit_many`: large enough that the synced
commit is shared widely, small enough that no transaction holds many task locks long."""


def submission_items(
    items: Iterable[tuple[str, str] | tuple[str, str, Any]],
) -> list[tuple[str, str, Any]]:
    """``(agent, key)`` and ``(agent, key, input)`` items as ``(agent, key, input)`` triples
    (input ``_MISSING`` when not given).

    Raises:
        ValueError: an item is not a tuple (or list) of two or three values; the message
            names the item.
    """
    rows: list[tuple[str, str, Any]] = []
    for n, item in enumerate(items):
        # A string is a sequence too: ("kyc") for ("kyc", key) must not pass as three values.
        if not isinstance(item, tuple | list) or len(item) not in (2, 3):
            raise ValueError(
                f"item {n}: expected (agent, key) or (agent, key, input), got {item!r}"
            )
        rows.append((item[0], item[1], item[2] if len(item) == 3 else _MISSING))
    return rows


class Submits(StoreBase):
    """Creating tasks, attaching input and queueing runs."""

    def submit(
        self,
        agent: str,
        key: str,
        input: Any = _MISSING,
        *,
        reason: str = "submitted",
        note: str | None = None,
        now: float | None = None,
    ) -> Submission:
        """Create the task (agent, key) if new and queue a run for it.

        Idempotent: submitting an existing task again queues nothing, unless ``input``
        differs from the latest input it received; then the input is attached (in order,
        with its time) and a new run is queued.

        Raises:
            OutputError: ``input`` cannot be stored as JSON (the message names the field).
        """
        now = time.time() if now is None else now
        if input is not _MISSING:
            input = to_json(input, what="input")
        tried = False
        if self._submits_alone and input is _MISSING and reason != "trigger":
            # The common case in one statement that is its own transaction: no BEGIN and
            # no COMMIT to wait for (two round trips of four).
            with self._write(alone=True) as conn:
                new = self._submit_new(conn, agent, key, reason=reason, note=note, now=now)
            if new is not None:
                return new
            tried = True  # the task exists
        return self._transact(
            lambda conn: self._submit_one(conn, agent, key, input, reason, note, now,
                                          tried_new=tried)
        )

    def submit_many(
        self,
        items: Iterable[tuple[str, str] | tuple[str, str, Any]],
        *,
        chunk: int = SUBMIT_CHUNK,
        now: float | None = None,
    ) -> list[Submission]:
        """Submit many ``(agent, key)`` or ``(agent, key, input)`` items, each as
        :meth:`submit` would, ``chunk`` per transaction (one synced commit for each chunk
        instead of one per item: a burst or a backfill).

        Every input is converted before anything is written. A chunk commits whole or not
        at all; if a later chunk fails, the earlier ones stay submitted, and submitting the
        same items again is harmless (idempotent).

        Raises:
            OutputError: an input cannot be stored as JSON (the message names the item).
            ValueError: ``chunk`` is less than 1, or an item is not a pair or a triple.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 (got {chunk})")
        now = time.time() if now is None else now
        rows = [
            (agent, key, data if data is _MISSING else to_json(data, what=f"item {n}'s input"))
            for n, (agent, key, data) in enumerate(submission_items(items))
        ]
        done: list[Submission] = []
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            done.extend(self._transact(partial(self._submit_chunk, part=part, now=now)))
        return done

    def _submit_chunk(self, conn: Connection, *, part: list[tuple[str, str, Any]],
                      now: float) -> list[Submission]:
        return [self._submit_one(conn, agent, key, data, "submitted", None, now)
                for agent, key, data in part]

    def _submit_one(self, conn: Connection, agent: str, key: str, input: Any, reason: str,
                    note: str | None, now: float, *, tried_new: bool = False) -> Submission:
        if input is _MISSING and reason != "trigger" and not tried_new:
            new = self._submit_new(conn, agent, key, reason=reason, note=note, now=now)
            if new is not None:
                return new
        task_id, created = self._upsert_task(conn, agent, key, now)
        new_info = False
        if input is not _MISSING:
            record = self._attach_input(conn, task_id, input, now)
            if record is not None:
                new_info = True
                self._append(conn, task_id, [("input", record)], now)
        run_id = None
        # A task this transaction created has no run yet and cannot be cancelled: its
        # first run is queued without the checks (fresh).
        if created or new_info or not conn.execute(sql.HAS_RUNS, {"b_task": task_id}).scalar():
            run_id = self._enqueue(conn, task_id, reason=reason, now=now, note=note,
                                   fresh=created)
        return Submission(task_id=task_id, run_id=run_id, created=created)

    def _submit_new(
        self, conn: Connection, agent: str, key: str, *, reason: str, note: str | None,
        now: float,
    ) -> Submission | None:
        """A dialect's shortcut for the common submission, a task that is new with no
        input: the task and its first run (queued now) written at once, or None when the
        task exists or the dialect has no shortcut (then the general path runs). One
        statement, whole in itself where :attr:`_submits_alone` says so."""
        return None

    def _upsert_task(
        self, conn: Connection, agent: str, key: str, now: float
    ) -> tuple[int, bool]:
        new = conn.execute(
            self._new_task, {"agent": agent, "key": key, "created_at": now}
        ).scalar()
        if new is not None:
            return new, True  # a row this transaction inserted is locked by it already
        found = conn.execute(sql.TASK_ID, {"b_agent": agent, "b_key": key}).scalar_one()
        self._lock_task(conn, found)
        return found, False

    def _attach_input(
        self, conn: Connection, task_id: int, data: Any, now: float
    ) -> dict[str, Any] | None:
        """Attach new input; None (nothing written) when it equals the latest input."""
        latest = conn.execute(
            select(task_inputs.c.seq, task_inputs.c.data)
            .where(task_inputs.c.task_id == task_id)
            .order_by(task_inputs.c.seq.desc())
            .limit(1)
        ).first()
        if latest is not None and canonical(latest.data) == canonical(data):
            return None
        record = {
            "task_id": task_id,
            "seq": 1 if latest is None else latest.seq + 1,
            "data": data,
            "received_at": now,
        }
        conn.execute(insert(task_inputs).values(**record))
        return record

    def _enqueue(
        self,
        conn: Connection,
        task_id: int,
        *,
        reason: str,
        now: float,
        attempt: int = 1,
        available_at: float | None = None,
        note: str | None = None,
        dispatched_at: float | None = None,
        fresh: bool = False,
    ) -> int | None:
        """Queue a run unless one is already queued (it will see the newest state) or an
        operator cancelled the task (only an operator's retry lifts that).

        ``fresh``: this transaction created the task, so it is locked already, has no run
        and cannot have been cancelled: the three checks are skipped.
        """
        if not fresh:
            self._lock_task(conn, task_id)
            cancelled = conn.execute(
                select(tasks.c.cancelled_at).where(tasks.c.id == task_id)
            ).scalar()
            if cancelled is not None and reason != "operator":
                return None
            queued = conn.execute(
                select(runs.c.id).where(runs.c.task_id == task_id, runs.c.status == "queued")
            ).first()
            if queued is not None:
                return None
        run_id: int = conn.execute(
            sql.NEW_RUN,
            {
                "task_id": task_id,
                "attempt": attempt,
                "reason": reason,
                "note": note,
                "status": "queued",
                "created_at": now,
                "available_at": now if available_at is None else available_at,
                "dispatched_at": dispatched_at,
            },
        ).scalar_one()
        if (self.dialect == "postgresql" and dispatched_at is None and reason != "trigger"
                and (available_at is None or available_at <= now)):
            # Wakes engine providers' outboxes (LISTEN, see tether.providers.base) at the
            # commit instead of at their next poll; PostgreSQL folds the notifications of
            # one transaction into one. Triggered runs are handed over by their worker.
            conn.execute(sql.NOTIFY)
        return run_id
