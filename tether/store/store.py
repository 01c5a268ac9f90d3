"""The store: every write the harness makes, each a named method, one transaction each.

A :class:`Store` is chosen by URL: :class:`SQLiteStore` (the default) or
:class:`PostgresStore`. They share every statement but the few where the dialects differ:
claiming queued runs (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers),
locking a task row while a join decides whether to run, and two PostgreSQL forms that save
round trips (a batch's runs ended in one statement, a new task's edge and run in one).

The writes are layered one concern per module, each class building on the one before:
:mod:`~tether.store.base` (transactions, ledger, dialect hooks) <- :mod:`~tether.store.submits`
<- :mod:`~tether.store.completes` <- :mod:`~tether.store.claims` <-
:mod:`~tether.store.operators` <- :class:`Store`; the statements of the hot path are in
:mod:`~tether.store.statements`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from tether.config import Settings
from tether.errors import StoreError
from tether.store import migrate
from tether.store import statements as sql
from tether.store.base import _safe, claim_params, claims_of
from tether.store.completes import EdgeJob
from tether.store.engine import BEGIN_PENDING, dialect_of, make_engine
from tether.store.ledger import FIELDS
from tether.store.operators import Operators
from tether.store.schema import tasks, triggers
from tether.store.writes import Claim, ClaimIds, Completion, Edge, Follow, Submission


class Store(Operators):
    """Tasks, runs, steps and triggers in a SQL database. Open one with :meth:`open`."""

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
        store = cls(engine, url=url, durability=durability)
        if migrate_:
            try:
                migrate.ensure_current(engine)
            except (OperationalError, DBAPIError) as exc:
                engine.dispose()
                raise StoreError(f"cannot open the store at {_safe(url)}: {exc.orig}") from exc
        return store

    @property
    def group_engine(self) -> Engine:
        """The engine of the engine providers' group commit (its committer threads'
        connections). On PostgreSQL an engine of its own, made on first use, whose
        sessions plan each statement once (see :func:`tether.store.engine.postgres_engine`);
        on SQLite the store's."""
        if self.dialect != "postgresql":
            return self.engine
        with self._group_lock:
            if self._group_engine is None:
                self._group_engine = make_engine(self.url, durability=self.durability,
                                                 planned_once=True)
            return self._group_engine

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()
        if self._group_engine is not None:
            self._group_engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _driver(conn: Connection) -> Iterator[Any]:
    """The psycopg connection under ``conn`` (same transaction), for pipeline mode; its
    errors raised as SQLAlchemy would raise them, so the store's deadlock retry and error
    messages see the driver's error inside."""
    import psycopg

    raw = conn.connection.driver_connection
    assert raw is not None
    try:
        yield raw
    except psycopg.Error as exc:
        raise DBAPIError("(pipeline)", None, exc) from exc


def _begin_in(conn: Connection, raw: Any) -> None:
    """Queue, first on a pipeline, the transaction's ``BEGIN`` if it is still to be sent
    (see :data:`tether.store.engine.BEGIN_PENDING`): then it costs no round trip of its
    own."""
    if conn.info.pop(BEGIN_PENDING, False):
        raw.execute("BEGIN")


def _lock_tips_in(raw: Any, ids: Sequence[int]) -> Any:
    """Queue, on a pipeline, the lock of tasks ``ids`` and the read of their chain tips;
    returns the cursor the tips will be on (``task_id, seq, hash`` rows)."""
    raw.execute(sql.PG_LOCK_TASKS_RAW, {"ids": list(ids)})
    return raw.execute(sql.PG_TIPS_RAW, {"ids": list(ids)})


def _edge_params(
    c: Completion, edge: Edge, dispatched: list[tuple[int, str]] | None,
    follow: Follow | None,
) -> tuple[dict[str, Any], float | None]:
    """The parameters of :data:`sql.PG_NEW_EDGE` for one edge, and the lease of the run
    it claims for ``follow`` (None: queued, not claimed)."""
    now = time.time()
    lease = None if follow is None else now + follow.lease_seconds
    return {
        "agent": edge.agent, "key": edge.key, "name": edge.name, "up_task": c.task_id,
        "up_run": c.run_id, "up_worker": c.worker, "at": c.finished_at,
        "status": "queued" if follow is None else "running",
        "worker": None if follow is None else follow.worker,
        "dispatched_at": None if follow is None and dispatched is None else c.finished_at,
        "started_at": None if follow is None else now, "lease": lease,
    }, lease


def _edge_recorded(
    row: Any, c: Completion, edge: Edge, dispatched: list[tuple[int, str]] | None,
    follow: Follow | None, lease: float | None,
) -> bool:
    """Note what :data:`sql.PG_NEW_EDGE` returned: the run claimed for ``follow`` or
    listed for the engine. False when it wrote nothing (the task exists)."""
    if row is None:
        return False
    run_id, task_id = row[0], row[1]
    if follow is not None and lease is not None:
        follow.claims[c.run_id] = Claim(
            run_id=run_id, task_id=task_id, agent=edge.agent, key=edge.key, attempt=1,
            reason="trigger", note=None, lease_expires_at=lease,
        )
    elif dispatched is not None:
        dispatched.append((run_id, edge.agent))
    return True


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
    _submits_alone = True
    _new_task = pg_insert(tasks).on_conflict_do_nothing().returning(tasks.c.id)
    _new_trigger = pg_insert(triggers).on_conflict_do_nothing().returning(triggers.c.id)

    def _insert_ignore(self, table: Any) -> Any:
        return pg_insert(table).on_conflict_do_nothing()

    def _submit_new(
        self, conn: Connection, agent: str, key: str, *, reason: str, note: str | None,
        now: float,
    ) -> Submission | None:
        # One statement (sql.PG_NEW_SUBMISSION) for what the general path does in three:
        # the task, its run and the outboxes' NOTIFY.
        row = conn.execute(sql.PG_NEW_SUBMISSION, {
            "agent": agent, "key": key, "at": now, "reason": reason, "note": note,
        }).first()
        if row is None:
            return None
        return Submission(task_id=row.task_id, run_id=row.id, created=True)

    def _lock_task(self, conn: Connection, task_id: int) -> None:
        conn.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())

    def _finish_with_edges(
        self, conn: Connection, completions: Sequence[Completion], jobs: Sequence[EdgeJob],
        task_ids: Sequence[int], claims: ClaimIds | None = None,
    ) -> tuple[dict[int, dict[str, Any]], list[bool], dict[int, tuple[int, str]] | None]:
        # One round trip (psycopg's pipeline mode, on the transaction's own connection)
        # for: ending the batch's runs; its edges to new tasks, each the task, the
        # trigger and the first run in one statement (sql.PG_NEW_EDGE, which writes
        # nothing when the task exists, or when its upstream run was not just recorded
        # by this worker: a stale completion's edges); locking the batch's tasks; reading
        # their chain tips; and the claims. Statements still run one after the other, so
        # each sees what the ones before it wrote, and the tips are read after the locks
        # are held (see sql.PG_LOCK_TASKS_RAW).
        if not completions:
            return {}, [False] * len(jobs), None
        statement, defaults = sql.pg_raw("PG_NEW_EDGE")
        simple = [n for n, (_, edge, _, _) in enumerate(jobs) if edge.requires == (edge.name,)]
        sent = [_edge_params(*jobs[n]) for n in simple]
        with _driver(conn) as raw:
            with raw.pipeline():
                _begin_in(conn, raw)
                ended = raw.execute(sql.PG_FINISH_RUNS_RAW, {
                    "rows": json.dumps([sql.finish_values(c) for c in completions]),
                    "ids": [c.run_id for c in completions],
                })
                edges = [raw.execute(statement, {**defaults, **p}) for p, _ in sent]
                tips = _lock_tips_in(raw, task_ids)
                claimed = lease = None
                if claims is not None:
                    claim, fixed = sql.pg_raw("PG_CLAIM_ANY")
                    params, lease = claim_params(
                        claims.run_ids, worker=claims.worker, lease_seconds=claims.lease_seconds
                    )
                    claimed = raw.execute(claim, {**fixed, **params})
            # The statement returns FIELDS["run"] in order: psycopg's `description` would
            # build a column object per field per call (5% of a committer's CPU).
            names = FIELDS["run"]
            finished = {row[0]: dict(zip(names, row, strict=True)) for row in ended.fetchall()}
            rows = [cur.fetchone() for cur in edges]
            found = {r[0]: (r[1], r[2]) for r in tips.fetchall()}
            if claims is not None and claimed is not None and lease is not None:
                claims.claimed, claims.done = claims_of(claimed.fetchall(), lease), True
        recorded = [False] * len(jobs)
        for n, row, (_, lease) in zip(simple, rows, sent, strict=True):
            recorded[n] = _edge_recorded(row, *jobs[n], lease)
        return finished, recorded, found

    def _insert_entries(
        self, conn: Connection, rows: list[dict[str, Any]], *, last: bool = False
    ) -> None:
        # One statement for the batch's rows and, when it is the transaction's last write,
        # the COMMIT in the same round trip.
        with _driver(conn) as raw, raw.pipeline():
            _begin_in(conn, raw)
            raw.execute(sql.PG_NEW_ENTRIES_RAW, {"rows": json.dumps(rows)})
            if last:
                # A COMMIT statement, not raw.commit(): that syncs the pipeline itself,
                # and leaving the pipeline then costs a second round trip.
                raw.execute("COMMIT")

    def _claim_ids(
        self, conn: Connection, run_ids: Collection[int], *, worker: str,
        lease_seconds: float, now: float | None = None, last: bool = False,
    ) -> dict[int, Claim]:
        if not last:
            return super()._claim_ids(conn, run_ids, worker=worker,
                                      lease_seconds=lease_seconds, now=now)
        # A claim on its own: one round trip for it and its COMMIT (three otherwise), and a
        # commit that does not wait for its WAL flush. The WAL is written in order, so any
        # later synced commit of this worker flushes the claim first: the start of a step
        # keyed for once (written before the step's action runs) and the run's record. A
        # claim lost with a crashed database therefore had nothing durable after it: no
        # keyed action ran on it, the run returns to the queue and is handed over again,
        # and the worker's record, if it comes, finds the run not held by it and is
        # discarded, as a lost worker's is.
        statement, fixed = sql.pg_raw("PG_CLAIM_ANY")
        params, lease = claim_params(run_ids, worker=worker, lease_seconds=lease_seconds,
                                     now=now)
        with _driver(conn) as raw:
            with raw.pipeline():
                _begin_in(conn, raw)
                raw.execute(sql.ASYNC_COMMIT_RAW)
                claimed = raw.execute(statement, {**fixed, **params})
                raw.execute("COMMIT")
            return claims_of(claimed.fetchall(), lease)

    def _dispatch_due(self, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        # The outbox's pass in one round trip (five through SQLAlchemy: the BEGIN, the
        # settings, the statement and the COMMIT each waited for its answer, after the
        # pool's ping). The mark is advisory: a mark lost to a crash only means the run is
        # handed over again, and a duplicate delivery executes nothing; so the commit need
        # not wait for its WAL flush (an fsync per pass saved), and the due runs are read
        # in order from the queue index (see sql.WALK_QUEUE_RAW): sql.OUTBOX_SETTINGS_RAW.
        statement, fixed = sql.pg_dispatch_due(filtered="agents" in params)

        def body(conn: Connection) -> Sequence[Sequence[Any]]:
            with _driver(conn) as raw:
                with raw.pipeline():
                    raw.execute("BEGIN")
                    raw.execute(sql.OUTBOX_SETTINGS_RAW)
                    due = raw.execute(statement, {**fixed, **params})
                    raw.execute("COMMIT")
                return due.fetchall()

        return self._transact(body, alone=True)

    def _lock_tips(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        # Every task locked, then the tips read, in one round trip (two statements: see
        # sql.PG_LOCK_TASKS_RAW).
        with _driver(conn) as raw:
            with raw.pipeline():
                _begin_in(conn, raw)
                tips = _lock_tips_in(raw, ids)
            return {r[0]: (r[1], r[2]) for r in tips.fetchall()}

    def _claim(
        self, conn: Connection, worker: str, limit: int, lease_seconds: float,
        agents: Collection[str] | None, now: float | None,
    ) -> list[Claim]:
        # One round trip: sorting disabled for the rest of the transaction (sql.WALK_QUEUE_RAW)
        # and the claim, which returns the agents' names itself (sql.pg_claim_due).
        now = time.time() if now is None else now
        lease = now + lease_seconds
        statement, fixed = sql.pg_claim_due(filtered=agents is not None)
        params = {**fixed, "b_now": now, "b_limit": limit, "worker": worker,
                  "lease_expires_at": lease}
        if agents is not None:
            params["agents"] = list(agents)
        with _driver(conn) as raw:
            with raw.pipeline():
                _begin_in(conn, raw)
                raw.execute(sql.WALK_QUEUE_RAW)
                claimed = raw.execute(statement, params)
            rows = claimed.fetchall()
        return sorted(claims_of(rows, lease).values(), key=lambda c: c.run_id)
