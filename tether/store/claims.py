"""Claiming runs, leases and the outbox: what workers and engine providers call."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, select, update

from tether.store import statements as sql
from tether.store.base import claims_of, with_names
from tether.store.completes import Completes
from tether.store.schema import runs, tasks
from tether.store.writes import Claim, Completion, Pending

Decide = Callable[[str, int], float | None]
"""``(agent, attempt) -> retry_at or None``: the runtime's retry rule, given to the reaper."""


class Claims(Completes):
    """Claiming queued runs, renewing and reaping leases, handing runs to engines."""

    def claim(
        self,
        worker: str,
        *,
        limit: int,
        lease_seconds: float,
        agents: Collection[str] | None = None,
        now: float | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` available queued runs for ``worker`` (of ``agents`` only,
        when given), in one transaction."""
        return self.exchange(
            (), worker=worker, limit=limit, lease_seconds=lease_seconds, agents=agents, now=now
        )[1]

    def exchange(
        self,
        completions: Sequence[Completion],
        *,
        worker: str,
        limit: int,
        lease_seconds: float,
        agents: Collection[str] | None = None,
        now: float | None = None,
    ) -> tuple[list[int], list[Claim]]:
        """Record finished runs and claim new ones in a single transaction.

        This is the worker's group commit: one synced commit per batch, however many runs
        finished and started since the last one. Returns (runs recorded, runs claimed).
        """
        if not completions and limit <= 0:
            return [], []

        def body(conn: Connection) -> tuple[list[int], list[Claim]]:
            accepted = self._complete(conn, completions) if completions else []
            claims = (
                self._claim(conn, worker, limit, lease_seconds, agents, now) if limit > 0 else []
            )
            return accepted, claims

        return self._transact(body)

    def _claim(
        self,
        conn: Connection,
        worker: str,
        limit: int,
        lease_seconds: float,
        agents: Collection[str] | None,
        now: float | None,
    ) -> list[Claim]:
        # SQLite, one writer at a time; PostgresStore claims in one pipelined round trip
        # (see sql.pg_claim_due).
        now = time.time() if now is None else now
        lease = now + lease_seconds
        candidates = self._claim_candidates(now, limit, agents).cte("candidates")
        stmt = (
            update(runs)
            .where(runs.c.id.in_(select(candidates.c.id)))
            .values(status="running", worker=worker, started_at=now, lease_expires_at=lease)
            .returning(*sql.CLAIMED)
        )
        claimed = with_names(conn, conn.execute(stmt).all())
        return sorted(claims_of(claimed, lease).values(), key=lambda c: c.run_id)

    def claim_run(
        self,
        run_id: int,
        *,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> Claim | None:
        """Claim one run by id, for providers that deliver run ids (Celery, Temporal).

        None when the run is not claimable: already claimed or finished (a message
        delivered twice), not yet due, or its task has another run in flight. That makes a
        duplicate delivery harmless: only one delivery ever executes the run.
        """
        return self._transact(
            lambda conn: self._claim_ids(
                conn, [run_id], worker=worker, lease_seconds=lease_seconds, now=now, last=True
            )
        ).get(run_id)

    def dispatch_batch(
        self,
        *,
        limit: int,
        redispatch_after: float,
        agents: Collection[str] | None = None,
        now: float | None = None,
    ) -> list[tuple[int, str]]:
        """Mark up to ``limit`` due queued runs as dispatched and return ``(run id, agent)``
        for the provider to hand to its engine — the outbox of the Celery and Temporal
        providers. A run dispatched more than ``redispatch_after`` seconds ago and still
        queued (its message was lost) is returned again; duplicates are harmless because
        :meth:`claim_run` executes a run at most once."""
        now = time.time() if now is None else now
        params: dict[str, Any] = {"b_now": now, "b_before": now - redispatch_after,
                                  "b_limit": limit}
        if agents is not None:
            params["agents"] = list(agents)
        return sorted((row[0], row[1]) for row in self._dispatch_due(params))

    def _dispatch_due(self, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """Run :func:`~tether.store.statements.dispatch_due` with ``params`` (``agents``
        among them when filtered) in a transaction of its own; its ``(id, agent)`` rows."""
        statement = sql.dispatch_due(postgres=False, filtered="agents" in params)
        return self._transact(lambda conn: conn.execute(statement, params).all())

    def renew(
        self, worker: str, run_ids: Iterable[int], *, lease_seconds: float
    ) -> set[int]:
        """Extend the leases ``worker`` holds; returns the runs it still holds."""
        ids = list(run_ids)
        if not ids:
            return set()
        lease = time.time() + lease_seconds
        with self._write() as conn:
            held = conn.execute(
                update(runs)
                .where(runs.c.id.in_(ids), runs.c.worker == worker, runs.c.status == "running")
                .values(lease_expires_at=lease)
                .returning(runs.c.id)
            ).scalars()
            return set(held)

    def reap(
        self,
        decide: Decide,
        *,
        agents: Collection[str] | None = None,
        now: float | None = None,
        followed: bool = False,
    ) -> list[int]:
        """Fail runs whose lease expired (their worker is lost) and queue their retries.

        ``decide(agent, attempt)`` gives the retry time, or None when attempts are spent.
        With ``followed`` (the Temporal provider: the reaped run's workflow starts its
        retry's), each retry is queued as already dispatched at its due time, so the outbox
        hands it over only if it is still queued ``redispatch_after`` seconds after that.
        Returns the ids of the runs reaped.
        """
        now = time.time() if now is None else now
        expired_q = (
            select(runs.c.id, runs.c.task_id, runs.c.attempt, runs.c.worker, tasks.c.agent)
            .join(tasks, tasks.c.id == runs.c.task_id)
            .where(runs.c.status == "running", runs.c.lease_expires_at < now)
        )
        if agents is not None:
            # Only runs whose retry rule this worker knows.
            expired_q = expired_q.where(tasks.c.agent.in_(list(agents)))
        with self.engine.connect() as conn:
            if conn.execute(expired_q.limit(1)).first() is None:
                return []  # the common case: one cheap read, no write lock

        def body(conn: Connection) -> list[int]:
            reaped: list[int] = []
            for row in conn.execute(expired_q).all():
                retry_at = decide(row.agent, row.attempt)
                reason = (
                    f"worker lost: {row.worker} stopped renewing its lease "
                    "(it crashed or was killed)"
                )
                if retry_at is None:
                    reason += f"; gave up after {row.attempt} attempts"
                final = conn.execute(_fail_as_retryable(
                    runs.c.id == row.id, runs.c.status == "running",
                    runs.c.lease_expires_at < now, reason=reason, now=now,
                )).first()
                if final is None:
                    continue  # another worker reaped it first
                reaped.append(row.id)
                self._append(conn, row.task_id, [("run", dict(final._mapping))], now)
                if retry_at is not None:
                    self._enqueue(
                        conn,
                        row.task_id,
                        reason="retry",
                        now=now,
                        attempt=row.attempt + 1,
                        available_at=retry_at,
                        dispatched_at=retry_at if followed else None,
                    )
            return reaped

        return self._transact(body)

    def release(self, worker: str, run_ids: Iterable[int], *, reason: str) -> list[int]:
        """Give back runs a stopping worker cannot finish: each is closed as a retryable
        failure and queued again at the same attempt (a stop is not the agent's fault)."""
        ids = list(run_ids)
        released: list[int] = []
        if not ids:
            return released
        now = time.time()

        def body(conn: Connection) -> list[int]:
            finals = conn.execute(_fail_as_retryable(
                runs.c.id.in_(ids), runs.c.worker == worker, runs.c.status == "running",
                reason=reason, now=now,
            )).all()
            for final in finals:
                self._append(conn, final.task_id, [("run", dict(final._mapping))], now)
                self._enqueue(conn, final.task_id, reason="retry", now=now, attempt=final.attempt)
            return [final.id for final in finals]

        released.extend(self._transact(body))
        return released

    def pending(
        self, *, agents: Collection[str] | None = None, now: float | None = None
    ) -> Pending:
        """Counts of queued and running runs (of ``agents`` only, when given), and when the
        next queued one is due."""
        now = time.time() if now is None else now
        q = select(
            func.count().filter(runs.c.status == "queued"),
            func.count().filter(runs.c.status == "running"),
            func.min(runs.c.available_at).filter(runs.c.status == "queued"),
            func.count().filter(and_(runs.c.status == "running", runs.c.lease_expires_at < now)),
        ).where(runs.c.status.in_(("queued", "running")))
        if agents is not None:
            q = q.join(tasks, tasks.c.id == runs.c.task_id).where(tasks.c.agent.in_(list(agents)))
        with self.engine.connect() as conn:
            row = conn.execute(q).one()
        return Pending(queued=row[0], running=row[1], next_at=row[2], expired=row[3])


def _fail_as_retryable(*where: Any, reason: str, now: float) -> Any:
    """End the running runs ``where`` selects as retryable failures (a lost worker, a
    stopping one), returning their final records for the ledger."""
    return (
        update(runs)
        .where(*where)
        .values(status="failed", failure_class="retryable", failure_reason=reason,
                finished_at=now, lease_expires_at=None)
        .returning(*sql.RUN_FIELDS)
    )
