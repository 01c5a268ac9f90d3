"""The store: every write the harness makes, each a named method, one transaction each.

A :class:`Store` is chosen by URL: :class:`SQLiteStore` (the default) or
:class:`PostgresStore`. They share every statement but the few where the dialects differ:
claiming queued runs (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers)
and locking a task row while a join decides whether to run.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Float,
    String,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from tether.config import Settings
from tether.errors import Conflict, StoreError
from tether.jsonable import canonical, to_json
from tether.store import migrate
from tether.store.engine import WRITE, dialect_of, make_engine
from tether.store.ledger import FIELDS, GENESIS, chain, digest, ref_of
from tether.store.reads import StoreReads
from tether.store.records import OperatorAction, TaskStatus
from tether.store.schema import ledger, operator_actions, runs, steps, task_inputs, tasks, triggers
from tether.store.writes import (
    Claim,
    Completion,
    Edge,
    Follow,
    Pending,
    StepWrite,
    Submission,
)

_MISSING: Any = object()

T = TypeVar("T")

INLINE_DISPATCH = 64
"""At most this many runs that one transaction's triggers queue are handed over inline
(:meth:`Store._complete` with ``dispatched``); beyond that the outbox's back-pressure
decides when a large fan-out reaches the engine."""

NOTIFY_CHANNEL = "tether_runs"
"""The PostgreSQL channel notified when a run becomes due for the outbox to hand over."""

RUN_FIELDS = tuple(runs.c[name] for name in FIELDS["run"])
"""What a run's final outcome is hashed over: returned by every statement that ends a run."""

Decide = Callable[[str, int], float | None]
"""``(agent, attempt) -> retry_at or None``: the runtime's retry rule, given to the reaper."""


class Store(StoreReads):
    """Tasks, runs, steps and triggers in a SQL database. Open one with :meth:`open`."""

    dialect = ""
    _new_task: Any
    """INSERT a task unless (agent, key) exists, RETURNING its id (dialect's own form)."""
    _new_trigger: Any
    """INSERT a trigger edge unless recorded already, RETURNING its id."""

    def __init__(self, engine: Engine, *, url: str) -> None:
        self.engine = engine
        self.url = url

    # -- lifecycle -----------------------------------------------------------------

    @staticmethod
    def open(
        settings: Settings | str | None = None, *, durability: str = "full", migrate_: bool = True
    ) -> Store:
        """Open the store a settings object (or URL) names, migrating it if behind.

        With no argument, the project in the current folder (``./.tether/tether.db``).
        """
        if settings is None or isinstance(settings, Settings):
            from tether.config import load_settings

            cfg = settings or load_settings()
            url, durability = cfg.url, cfg.durability
        else:
            url = settings
        cls: type[Store] = SQLiteStore if dialect_of(url) == "sqlite" else PostgresStore
        engine = make_engine(url, durability=durability)
        store = cls(engine, url=url)
        if migrate_:
            try:
                migrate.ensure_current(engine)
            except (OperationalError, DBAPIError) as exc:
                engine.dispose()
                raise StoreError(f"cannot open the store at {_safe(url)}: {exc.orig}") from exc
        return store

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{WRITE: True})
                with conn.begin():
                    yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"store write failed: {exc.orig}") from exc

    def _transact(self, body: Callable[[Connection], T], *, tries: int = 8) -> T:
        """Run ``body`` in a write transaction, again from the start if PostgreSQL aborted it
        as a deadlock or serialization failure (two workers locking tasks in another order)."""
        for attempt in range(1, tries + 1):
            try:
                with self._write() as conn:
                    return body(conn)
            except StoreError as exc:
                if attempt == tries or not _is_conflict(exc.__cause__):
                    raise
                time.sleep(random.uniform(0.001, 0.005) * attempt)
        raise AssertionError("unreachable")

    # -- the ledger ----------------------------------------------------------------

    def _append_many(
        self, conn: Connection,
        batches: Sequence[tuple[int, Sequence[tuple[str, Mapping[str, Any]]], float]],
    ) -> None:
        """`_append` for many tasks at once: one query for the tips, one insert."""
        if not batches:
            return
        tips = self._lock_tips(conn, sorted({t for t, _, _ in batches}))
        rows = []
        for task_id, entries, now in batches:
            seq, prev = tips.get(task_id, (0, GENESIS))
            for kind, record in entries:
                seq += 1
                record_digest = digest(kind, record)
                ref = ref_of(kind, record)
                entry_hash = chain(prev, kind, ref, record_digest)
                rows.append(
                    {
                        "task_id": task_id, "seq": seq, "kind": kind, "ref": ref,
                        "digest": record_digest, "prev_hash": prev, "hash": entry_hash,
                        "created_at": now,
                    }
                )
                prev = entry_hash
            tips[task_id] = (seq, prev)
        if rows:
            conn.execute(_NEW_ENTRIES, rows)

    def _append(
        self, conn: Connection, task_id: int, entries: Sequence[tuple[str, Mapping[str, Any]]],
        now: float,
    ) -> None:
        """Add records to the task's hash chain (see :mod:`tether.store.ledger`)."""
        if not entries:
            return
        self._lock_task(conn, task_id)  # one appender per chain at a time
        tip = conn.execute(
            select(ledger.c.seq, ledger.c.hash)
            .where(ledger.c.task_id == task_id)
            .order_by(ledger.c.seq.desc())
            .limit(1)
        ).first()
        seq, prev = (tip.seq, tip.hash) if tip is not None else (0, GENESIS)
        rows = []
        for kind, record in entries:
            seq += 1
            record_digest = digest(kind, record)
            ref = ref_of(kind, record)
            entry_hash = chain(prev, kind, ref, record_digest)
            rows.append(
                {
                    "task_id": task_id,
                    "seq": seq,
                    "kind": kind,
                    "ref": ref,
                    "digest": record_digest,
                    "prev_hash": prev,
                    "hash": entry_hash,
                    "created_at": now,
                }
            )
            prev = entry_hash
        conn.execute(insert(ledger), rows)

    # -- dialect hooks -------------------------------------------------------------

    def _insert_ignore(self, table: Any) -> Any:
        raise NotImplementedError

    def _lock_task(self, conn: Connection, task_id: int) -> None:
        """Hold the task's row until commit, so concurrent joins decide one at a time."""

    def _lock_tips(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Lock the tasks ``ids`` (one appender per chain at a time) and read the tip
        ``(seq, hash)`` of each one's chain (absent: the chain is empty)."""
        for t in ids:
            self._lock_task(conn, t)
        last = (
            select(ledger.c.task_id, func.max(ledger.c.seq).label("seq"))
            .where(ledger.c.task_id.in_(ids))
            .group_by(ledger.c.task_id)
            .subquery()
        )
        return {
            r.task_id: (r.seq, r.hash)
            for r in conn.execute(
                select(ledger.c.task_id, ledger.c.seq, ledger.c.hash).join(
                    last, and_(ledger.c.task_id == last.c.task_id, ledger.c.seq == last.c.seq)
                )
            )
        }

    def _claim_candidates(
        self, now: float, limit: int, agents: Collection[str] | None = None
    ) -> Any:
        r = runs.alias("r")
        busy = runs.alias("busy")
        q = select(r.c.id)
        if agents is not None:
            # A worker claims only runs of agents it has: another team's worker on the same
            # store must not fail this team's work as "unknown agent".
            q = q.where(_agent_of(r).in_(list(agents)))
        return (
            q.where(
                r.c.status == "queued",
                r.c.available_at <= now,
                # One run at a time per task: a retry or new input waits for the running one.
                ~exists().where(busy.c.task_id == r.c.task_id, busy.c.status == "running"),
            )
            .order_by(r.c.available_at, r.c.id)
            .limit(limit)
        )

    # -- submitting ----------------------------------------------------------------

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

        def body(conn: Connection) -> Submission:
            task_id, created = self._upsert_task(conn, agent, key, now)
            new_info = False
            if input is not _MISSING:
                record = self._attach_input(conn, task_id, input, now)
                if record is not None:
                    new_info = True
                    self._append(conn, task_id, [("input", record)], now)
            has_runs = conn.execute(select(exists().where(runs.c.task_id == task_id))).scalar()
            run_id = None
            if created or new_info or not has_runs:
                run_id = self._enqueue(conn, task_id, reason=reason, now=now, note=note)
            return Submission(task_id=task_id, run_id=run_id, created=created)

        return self._transact(body)

    def _upsert_task(
        self, conn: Connection, agent: str, key: str, now: float
    ) -> tuple[int, bool]:
        new = conn.execute(
            self._new_task, {"agent": agent, "key": key, "created_at": now}
        ).scalar()
        if new is not None:
            return new, True  # a row this transaction inserted is locked by it already
        found = conn.execute(_TASK_ID, {"b_agent": agent, "b_key": key}).scalar_one()
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
            _NEW_RUN,
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
            conn.execute(_NOTIFY)
        return run_id

    # -- claiming and leases -------------------------------------------------------

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
        now = time.time() if now is None else now
        lease = now + lease_seconds
        # A materialized CTE, not `IN (subquery)`: PostgreSQL may plan the subquery as the
        # inner side of a semi-join and rescan it per row, so LIMIT ... FOR UPDATE SKIP
        # LOCKED would no longer bound how many runs one claim takes.
        candidates = (
            self._claim_candidates(now, limit, agents)
            .cte("candidates")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        stmt = (
            update(runs)
            .where(runs.c.id.in_(select(candidates.c.id)), runs.c.status == "queued")
            .values(status="running", worker=worker, started_at=now, lease_expires_at=lease)
            .returning(runs.c.id, runs.c.task_id, runs.c.attempt, runs.c.reason, runs.c.note)
        )
        claimed = conn.execute(stmt).all()
        if not claimed:
            return []
        names = {
            row.id: (row.agent, row.key)
            for row in conn.execute(
                select(tasks.c.id, tasks.c.agent, tasks.c.key).where(
                    tasks.c.id.in_({c.task_id for c in claimed})
                )
            )
        }
        return [
            Claim(
                run_id=c.id,
                task_id=c.task_id,
                agent=names[c.task_id][0],
                key=names[c.task_id][1],
                attempt=c.attempt,
                reason=c.reason,
                note=c.note,
                lease_expires_at=lease,
            )
            for c in sorted(claimed, key=lambda c: c.id)
        ]

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
                conn, [run_id], worker=worker, lease_seconds=lease_seconds, now=now
            )
        ).get(run_id)

    def _claim_ids(
        self,
        conn: Connection,
        run_ids: Collection[int],
        *,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> dict[int, Claim]:
        """:meth:`claim_run` for several ids in one statement (plus one for the task names),
        inside the caller's transaction: the group commit of engine providers."""
        now = time.time() if now is None else now
        lease = now + lease_seconds
        params = {"ids": list(run_ids), "b_now": now, "worker": worker, "started_at": now,
                  "lease_expires_at": lease}
        if self.dialect == "postgresql":
            rows = conn.execute(_PG_CLAIM_IDS, params).all()
            names = {r.task_id: (r.agent, r.key) for r in rows}
        else:  # SQLite's RETURNING may not name the FROM table
            rows = conn.execute(_CLAIM_IDS, params).all()
            names = {
                t.id: (t.agent, t.key)
                for t in conn.execute(_TASK_NAMES, {"ids": [r.task_id for r in rows]})
            } if rows else {}
        return {
            r.id: Claim(
                run_id=r.id,
                task_id=r.task_id,
                agent=names[r.task_id][0],
                key=names[r.task_id][1],
                attempt=r.attempt,
                reason=r.reason,
                note=r.note,
                lease_expires_at=lease,
            )
            for r in rows
        }

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
        r = runs.alias("r")
        q = (
            select(r.c.id)
            .where(
                r.c.status == "queued",
                r.c.available_at <= now,
                (r.c.dispatched_at.is_(None)) | (r.c.dispatched_at < now - redispatch_after),
            )
            .order_by(r.c.available_at, r.c.id)
            .limit(limit)
        )
        if agents is not None:
            q = q.where(_agent_of(r).in_(list(agents)))
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=r)
        candidates = q.cte("due").prefix_with("MATERIALIZED", dialect="postgresql")

        def body(conn: Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                update(runs)
                .where(runs.c.id.in_(select(candidates.c.id)))
                .values(dispatched_at=now)
                .returning(runs.c.id, _agent_of(runs))
            ).all()
            return sorted((row[0], row[1]) for row in rows)

        return self._transact(body)

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
                final = conn.execute(
                    update(runs)
                    .where(
                        runs.c.id == row.id,
                        runs.c.status == "running",
                        runs.c.lease_expires_at < now,
                    )
                    .values(
                        status="failed",
                        failure_class="retryable",
                        failure_reason=reason,
                        finished_at=now,
                        lease_expires_at=None,
                    )
                    .returning(*RUN_FIELDS)
                ).first()
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
            finals = conn.execute(
                update(runs)
                .where(runs.c.id.in_(ids), runs.c.worker == worker, runs.c.status == "running")
                .values(
                    status="failed",
                    failure_class="retryable",
                    failure_reason=reason,
                    finished_at=now,
                    lease_expires_at=None,
                )
                .returning(*RUN_FIELDS)
            ).all()
            for final in finals:
                self._append(conn, final.task_id, [("run", dict(final._mapping))], now)
                self._enqueue(conn, final.task_id, reason="retry", now=now, attempt=final.attempt)
            return [final.id for final in finals]

        released.extend(self._transact(body))
        return released

    # -- recording -----------------------------------------------------------------

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
        new = [_step_values(run_id, s) for run_id, s in rows if not s.inserted]
        done = [_step_values(run_id, s) for run_id, s in rows if s.inserted]
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
        return self._transact(lambda conn: self._complete(conn, completions))

    def _complete(
        self,
        conn: Connection,
        completions: Sequence[Completion],
        dispatched: dict[int, list[tuple[int, str]]] | None = None,
        *,
        follow: Follow | None = None,
    ) -> list[int]:
        """Record ``completions``. With ``dispatched`` (engine providers), the runs their
        triggers queue are marked dispatched in the same insert and listed there, as
        ``(run id, agent)`` under the completion's run id, for the caller to hand to its
        engine right after the commit; the outbox re-dispatches any it then fails to hand
        over. With ``follow``, the
        first run each wanted completion's triggers queue for a new task is inserted
        claimed by ``follow.worker`` instead (see :class:`~tether.store.writes.Follow`)."""
        accepted: list[int] = []
        step_rows: list[tuple[int, StepWrite]] = []
        finals: list[tuple[Completion, dict[str, Any]]] = []
        finished_runs = self._finish_runs(conn, completions)
        for c in completions:
            final = finished_runs.pop(c.run_id, None)
            if final is None:
                # The lease was lost (this worker no longer owns the run), or the same
                # completion came twice in this batch and the first one recorded it.
                continue
            accepted.append(c.run_id)
            step_rows.extend((c.run_id, s) for s in c.steps)
            finals.append((c, final))
            out = None if dispatched is None else dispatched.setdefault(c.run_id, [])
            for edge in c.edges:
                self._record_edge(conn, c, edge, out, follow)
            if c.retry_at is not None:
                self._enqueue(
                    conn,
                    c.task_id,
                    reason="retry",
                    now=c.finished_at,
                    attempt=c.attempt + 1,
                    available_at=c.retry_at,
                )
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
            final = conn.execute(_FINISH_RUN, _finish_values(c)).first()
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
        inline = dispatched is not None and len(dispatched) < INLINE_DISPATCH
        claim = follow is not None and follow.takes(c.run_id, edge.agent)
        if edge.requires == (edge.name,) and self._new_edge(
            conn, c, edge, dispatched if inline else None, follow if claim else None
        ):
            return
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
        if claim and created and follow is not None:
            follow.claims[c.run_id] = self._insert_claimed(conn, downstream, edge, c, follow)
            return
        run_id = self._enqueue(
            conn, downstream, reason="trigger", now=c.finished_at,
            dispatched_at=c.finished_at if inline else None, fresh=created,
        )
        if inline and run_id is not None and dispatched is not None:
            dispatched.append((run_id, edge.agent))

    def _new_edge(
        self,
        conn: Connection,
        c: Completion,
        edge: Edge,
        dispatched: list[tuple[int, str]] | None,
        follow: Follow | None,
    ) -> bool:
        """Record ``edge`` (not a join) in one statement when its task is new: the task,
        the trigger and the task's first run (claimed for ``follow.worker`` when
        ``follow`` is given, else queued and listed in ``dispatched`` when given).
        False, with nothing written, when the task exists: the caller takes the general
        path. The base store always answers False."""
        return False

    def _insert_claimed(
        self, conn: Connection, task_id: int, edge: Edge, c: Completion, follow: Follow
    ) -> Claim:
        """The first run of a task this transaction created, inserted already claimed by
        ``follow.worker``: the task has no other run, so nothing else can be running, and
        no operator can have cancelled it yet."""
        now = time.time()
        lease = now + follow.lease_seconds
        run_id = conn.execute(
            _NEW_RUN,
            {
                "task_id": task_id, "attempt": 1, "reason": "trigger", "note": None,
                "status": "running", "worker": follow.worker, "created_at": c.finished_at,
                "available_at": c.finished_at, "dispatched_at": c.finished_at,
                "started_at": now, "lease_expires_at": lease,
            },
        ).scalar_one()
        return Claim(run_id=run_id, task_id=task_id, agent=edge.agent, key=edge.key,
                     attempt=1, reason="trigger", note=None, lease_expires_at=lease)

    # -- operators -----------------------------------------------------------------

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
                .returning(*RUN_FIELDS)
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

    # -- how much is left ----------------------------------------------------------

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


def _agent_of(run: Any) -> Any:
    """The agent of ``run``'s task, as a correlated subquery on the tasks' primary key.

    Not a join: on tables whose statistics are young (a new database, a burst of new
    tasks) PostgreSQL misjudges how many tasks an agent filter keeps and may scan the
    whole tasks table once per queued run (10-60 ms a pass, measured); a key lookup per
    candidate run costs the same whatever the statistics say.
    """
    return select(tasks.c.agent).where(tasks.c.id == run.c.task_id).scalar_subquery()


# The statements of the hot path, built once: building a Core statement costs more than
# running it (its columns, cache key and parameters are worked out again each time).

_TASK_ID = select(tasks.c.id).where(
    tasks.c.agent == bindparam("b_agent"), tasks.c.key == bindparam("b_key")
)
_NEW_RUN = insert(runs).returning(runs.c.id)
"""Insert a run: the columns are the parameters given."""
_NEW_ENTRIES = insert(ledger)
_NOTIFY = select(func.pg_notify(NOTIFY_CHANNEL, ""))

_TIP = (
    select(ledger.c.seq, ledger.c.hash)
    .where(ledger.c.task_id == tasks.c.id)
    .order_by(ledger.c.seq.desc())
    .limit(1)
    .lateral("tip")
)
_PG_LOCK_TIPS = (
    # One round trip for every task of a batch: the rows locked in id order (as the
    # one-at-a-time locks were), each chain's tip read through a lateral join.
    select(tasks.c.id, _TIP.c.seq, _TIP.c.hash)
    .select_from(tasks.outerjoin(_TIP, true()))
    .where(tasks.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.id)
    .with_for_update(of=tasks)
)

_BUSY = runs.alias("busy")
_CLAIMABLE = (
    runs.c.id.in_(bindparam("ids", expanding=True)),
    runs.c.status == "queued",
    runs.c.available_at <= bindparam("b_now"),
    # One run at a time per task: a retry or new input waits for the running one.
    ~exists().where(_BUSY.c.task_id == runs.c.task_id, _BUSY.c.status == "running"),
)
_CLAIMED = (runs.c.id, runs.c.task_id, runs.c.attempt, runs.c.reason, runs.c.note)
_CLAIM_IDS = (
    update(runs).where(*_CLAIMABLE)
    .values(status="running", worker=bindparam("worker"), started_at=bindparam("started_at"),
            lease_expires_at=bindparam("lease_expires_at"))
    .returning(*_CLAIMED)
)
"""Claim the given runs that are claimable (see :meth:`Store.claim_run`)."""
_PG_CLAIM_IDS = (
    # UPDATE ... FROM tasks: the claim and the agent's name in one round trip.
    update(runs).where(*_CLAIMABLE, tasks.c.id == runs.c.task_id)
    .values(status="running", worker=bindparam("worker"), started_at=bindparam("started_at"),
            lease_expires_at=bindparam("lease_expires_at"))
    .returning(*_CLAIMED, tasks.c.agent, tasks.c.key)
)
_TASK_NAMES = select(tasks.c.id, tasks.c.agent, tasks.c.key).where(
    tasks.c.id.in_(bindparam("ids", expanding=True))
)

_NEW_TASK_CTE = (
    pg_insert(tasks)
    .values(agent=bindparam("agent"), key=bindparam("key"), created_at=bindparam("at"))
    .on_conflict_do_nothing()
    .returning(tasks.c.id)
    .cte("new_task")
)
_NEW_TRIGGER_CTE = (
    insert(triggers)
    .from_select(
        ["name", "upstream_task_id", "upstream_run_id", "downstream_task_id", "created_at"],
        select(
            bindparam("name", type_=String), bindparam("up_task", type_=BigInteger),
            bindparam("up_run", type_=BigInteger), _NEW_TASK_CTE.c.id,
            bindparam("at", type_=Float),
        ),
    )
    .returning(triggers.c.downstream_task_id)
    .cte("new_trigger")
)
_NEW_RUN_CTE = (
    insert(runs)
    .from_select(
        ["task_id", "attempt", "reason", "status", "worker", "created_at", "available_at",
         "dispatched_at", "started_at", "lease_expires_at"],
        select(
            _NEW_TRIGGER_CTE.c.downstream_task_id, literal(1), literal("trigger"),
            bindparam("status", type_=String), bindparam("worker", type_=String),
            bindparam("at", type_=Float), bindparam("at", type_=Float),
            bindparam("dispatched_at", type_=Float), bindparam("started_at", type_=Float),
            bindparam("lease", type_=Float),
        ),
    )
    .returning(runs.c.id, runs.c.task_id)
    .cte("new_run")
)
_PG_NEW_EDGE = select(_NEW_RUN_CTE.c.id, _NEW_RUN_CTE.c.task_id)
"""A trigger edge to a new task, with the task's first run: see ``PostgresStore._new_edge``."""

_FINISH_RUN = (
    update(runs)
    .where(
        runs.c.id == bindparam("b_id"),
        runs.c.status == "running",
        runs.c.worker == bindparam("b_worker"),
    )
    .values(
        status=bindparam("status"),
        finished_at=bindparam("finished_at"),
        lease_expires_at=None,
        output=bindparam("output"),
        waiting_for=bindparam("waiting_for"),
        failure_class=bindparam("failure_class"),
        failure_reason=bindparam("failure_reason"),
    )
    .returning(*RUN_FIELDS)
)


def _finish_values(c: Completion) -> dict[str, Any]:
    return {
        "b_id": c.run_id,
        "b_worker": c.worker,
        "status": "succeeded" if c.succeeded else "failed",
        "finished_at": c.finished_at,
        "output": c.output if c.succeeded else None,
        "waiting_for": c.waiting_for if c.succeeded else None,
        "failure_class": None if c.succeeded else c.failure_class,
        "failure_reason": None if c.succeeded else c.failure_reason,
    }


_PG_FINISH_RUNS = text(
    # _FINISH_RUN for a whole batch in one round trip: the values travel as arrays.
    "UPDATE runs SET status = v.status, finished_at = v.finished_at, "
    "lease_expires_at = NULL, output = v.output, waiting_for = v.waiting_for, "
    "failure_class = v.failure_class, failure_reason = v.failure_reason "
    "FROM unnest(CAST(:ids AS BIGINT[]), CAST(:workers AS VARCHAR[]), "
    "CAST(:statuses AS VARCHAR[]), CAST(:finished AS DOUBLE PRECISION[]), "
    "CAST(:outputs AS JSONB[]), CAST(:waiting AS TEXT[]), CAST(:classes AS VARCHAR[]), "
    "CAST(:reasons AS TEXT[])) "
    "AS v(id, worker, status, finished_at, output, waiting_for, failure_class, "
    "failure_reason) "
    "WHERE runs.id = v.id AND runs.status = 'running' AND runs.worker = v.worker "
    "RETURNING " + ", ".join(f"runs.{name}" for name in FIELDS["run"])
)


def _step_values(run_id: int, s: StepWrite) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "seq": s.seq,
        "name": s.name,
        "key": s.key,
        "input": s.input,
        "output": s.output,
        "status": s.status,
        "error": s.error,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
    }


def _is_conflict(exc: BaseException | None) -> bool:
    """A PostgreSQL deadlock (40P01) or serialization failure (40001): safe to run again."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in ("40P01", "40001")


def _safe(url: str) -> str:
    """A URL fit for messages: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class SQLiteStore(Store):
    """The embedded default: one file, WAL mode, writers serialised by SQLite itself."""

    dialect = "sqlite"
    _new_task = sqlite_insert(tasks).on_conflict_do_nothing().returning(tasks.c.id)
    _new_trigger = sqlite_insert(triggers).on_conflict_do_nothing().returning(triggers.c.id)

    def _insert_ignore(self, table: Any) -> Any:
        return sqlite_insert(table).on_conflict_do_nothing()


class PostgresStore(Store):
    """PostgreSQL: concurrent workers claim with ``FOR UPDATE SKIP LOCKED``."""

    dialect = "postgresql"
    _new_task = pg_insert(tasks).on_conflict_do_nothing().returning(tasks.c.id)
    _new_trigger = pg_insert(triggers).on_conflict_do_nothing().returning(triggers.c.id)

    def _insert_ignore(self, table: Any) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def _lock_task(self, conn: Connection, task_id: int) -> None:
        conn.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())

    def _finish_runs(
        self, conn: Connection, completions: Sequence[Completion]
    ) -> dict[int, dict[str, Any]]:
        if len(completions) < 2:
            return super()._finish_runs(conn, completions)
        values = [_finish_values(c) for c in completions]
        rows = conn.execute(_PG_FINISH_RUNS, {
            "ids": [v["b_id"] for v in values],
            "workers": [v["b_worker"] for v in values],
            "statuses": [v["status"] for v in values],
            "finished": [v["finished_at"] for v in values],
            # Serialised as the JSON column would (json.dumps); NULL stays NULL.
            "outputs": [None if v["output"] is None else json.dumps(v["output"])
                        for v in values],
            "waiting": [v["waiting_for"] for v in values],
            "classes": [v["failure_class"] for v in values],
            "reasons": [v["failure_reason"] for v in values],
        })
        return {row.id: dict(row._mapping) for row in rows}

    def _new_edge(
        self,
        conn: Connection,
        c: Completion,
        edge: Edge,
        dispatched: list[tuple[int, str]] | None,
        follow: Follow | None,
    ) -> bool:
        # Three inserts in one round trip: a data-modifying CTE chain that writes nothing
        # past the task insert when the task exists (ON CONFLICT DO NOTHING returns no id).
        now = time.time()
        lease = None if follow is None else now + follow.lease_seconds
        row = conn.execute(_PG_NEW_EDGE, {
            "agent": edge.agent, "key": edge.key, "name": edge.name, "up_task": c.task_id,
            "up_run": c.run_id, "at": c.finished_at,
            "status": "queued" if follow is None else "running",
            "worker": None if follow is None else follow.worker,
            "dispatched_at": None if follow is None and dispatched is None else c.finished_at,
            "started_at": None if follow is None else now, "lease": lease,
        }).first()
        if row is None:
            return False
        if follow is not None and lease is not None:
            follow.claims[c.run_id] = Claim(
                run_id=row.id, task_id=row.task_id, agent=edge.agent, key=edge.key, attempt=1,
                reason="trigger", note=None, lease_expires_at=lease,
            )
        elif dispatched is not None:
            dispatched.append((row.id, edge.agent))
        return True

    def _lock_tips(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        rows = conn.execute(_PG_LOCK_TIPS, {"ids": list(ids)})
        return {r.id: (r.seq, r.hash) for r in rows if r.seq is not None}

    def _claim_candidates(
        self, now: float, limit: int, agents: Collection[str] | None = None
    ) -> Any:
        candidates = super()._claim_candidates(now, limit, agents)
        return candidates.with_for_update(skip_locked=True, of=candidates.selected_columns[0].table)
