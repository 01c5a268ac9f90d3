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
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from tether.config import Settings
from tether.errors import StoreError
from tether.store import migrate
from tether.store import statements as sql
from tether.store.base import _safe
from tether.store.engine import dialect_of, make_engine
from tether.store.operators import Operators
from tether.store.schema import tasks, triggers
from tether.store.writes import Claim, Completion, Edge, Follow


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
        values = [sql.finish_values(c) for c in completions]
        rows = conn.execute(sql.PG_FINISH_RUNS, {
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
        row = conn.execute(sql.PG_NEW_EDGE, {
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
        # Every task of a batch locked in one round trip, then the tips read (see
        # sql.PG_LOCK_TASKS for why that takes two statements).
        conn.execute(sql.PG_LOCK_TASKS, {"ids": list(ids)})
        return {r.task_id: (r.seq, r.hash) for r in conn.execute(sql.TIPS, {"ids": list(ids)})}

    def _claim_candidates(
        self, now: float, limit: int, agents: Collection[str] | None = None
    ) -> Any:
        candidates = super()._claim_candidates(now, limit, agents)
        return candidates.with_for_update(skip_locked=True, of=candidates.selected_columns[0].table)
