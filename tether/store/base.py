"""The base of the store: connection, write transactions, the ledger's append, dialect hooks."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from tether.errors import StoreError
from tether.store import statements as sql
from tether.store.engine import WRITE
from tether.store.ledger import GENESIS, chain, digest, ref_of
from tether.store.reads import StoreReads
from tether.store.schema import runs
from tether.store.writes import Claim

_MISSING: Any = object()

T = TypeVar("T")


class StoreBase(StoreReads):
    """The store's connection, its write transactions, the ledger's append and the hooks
    where the dialects differ; the writes build on it one concern per module."""

    dialect = ""
    _new_task: Any
    """INSERT a task unless (agent, key) exists, RETURNING its id (dialect's own form)."""
    _new_trigger: Any
    """INSERT a trigger edge unless recorded already, RETURNING its id."""
    _submits_alone = False
    """Whether ``_submit_new`` is one statement that may run as its own transaction
    (:meth:`_write` with ``alone``)."""

    def __init__(self, engine: Engine, *, url: str, durability: str = "full") -> None:
        self.engine = engine
        self.url = url
        self.durability = durability
        self._group_engine: Engine | None = None
        self._group_lock = threading.Lock()

    @contextmanager
    def _write(self, *, alone: bool = False) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite). ``alone``: the caller
        runs one statement, its own transaction (autocommit): no ``BEGIN`` or ``COMMIT``
        to wait for, and as durable as any commit."""
        try:
            with self.engine.connect() as conn:
                if alone:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    yield conn
                    return
                conn.execution_options(**{WRITE: True})
                with conn.begin():
                    yield conn
        except (OperationalError, DBAPIError) as exc:
            raise StoreError(f"store write failed: {exc.orig}") from exc

    def _transact(
        self, body: Callable[[Connection], T], *, tries: int = 8, alone: bool = False
    ) -> T:
        """Run ``body`` in a write transaction, again from the start if PostgreSQL aborted it
        as a deadlock or serialization failure (two workers locking tasks in another order).
        ``alone``: on a connection in autocommit mode (see :meth:`_write`), for a body that
        sends its own ``BEGIN`` and ``COMMIT``."""
        for attempt in range(1, tries + 1):
            try:
                with self._write(alone=alone) as conn:
                    return body(conn)
            except StoreError as exc:
                if attempt == tries or not _is_conflict(exc.__cause__):
                    raise
                time.sleep(random.uniform(0.001, 0.005) * attempt)
        raise AssertionError("unreachable")

    def _append_many(
        self, conn: Connection,
        batches: Sequence[tuple[int, Sequence[tuple[str, Mapping[str, Any]]], float]],
        *,
        tips: dict[int, tuple[int, str]] | None = None,
        last: bool = False,
    ) -> None:
        """Add records to several tasks' hash chains: their rows locked (one appender per
        chain at a time), one query for the tips, one insert. ``tips``: the caller has
        locked the tasks and read their tips already. ``last``: this is the transaction's
        last write (see :meth:`_insert_entries`)."""
        if not any(entries for _, entries, _ in batches):
            return
        if tips is None:
            tips = self._lock_tips(conn, sorted({t for t, _, _ in batches}))
        else:
            tips = dict(tips)
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
            self._insert_entries(conn, rows, last=last)

    def _insert_entries(
        self, conn: Connection, rows: list[dict[str, Any]], *, last: bool = False
    ) -> None:
        """Insert ledger rows. With ``last`` the caller writes nothing more in this
        transaction and commits it on return, so a dialect may send the COMMIT with the
        insert (PostgreSQL: one round trip for both; the caller's commit then finds
        nothing left to do)."""
        conn.execute(sql.NEW_ENTRIES, rows)

    def _append(
        self, conn: Connection, task_id: int, entries: Sequence[tuple[str, Mapping[str, Any]]],
        now: float,
    ) -> None:
        """Add records to the task's hash chain (see :mod:`tether.store.ledger`)."""
        self._append_many(conn, [(task_id, entries, now)])

    def _insert_ignore(self, table: Any) -> Any:
        raise NotImplementedError

    def _lock_task(self, conn: Connection, task_id: int) -> None:
        """Hold the task's row until commit, so concurrent joins decide one at a time."""

    def _lock_tips(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Lock the tasks ``ids`` (one appender per chain at a time) and read the tip
        ``(seq, hash)`` of each one's chain (absent: the chain is empty)."""
        for t in ids:
            self._lock_task(conn, t)
        return {r.task_id: (r.seq, r.hash) for r in conn.execute(sql.TIPS, {"ids": list(ids)})}

    def _claim_ids(
        self,
        conn: Connection,
        run_ids: Collection[int],
        *,
        worker: str,
        lease_seconds: float,
        now: float | None = None,
        last: bool = False,
    ) -> dict[int, Claim]:
        """:meth:`claim_run` for several ids in one statement (plus one for the task names),
        inside the caller's transaction: the group commit of engine providers. ``last``:
        the claim is the transaction's only write and the caller commits it on return (a
        dialect may send the COMMIT with it, and need not wait for the commit's sync)."""
        params, lease = claim_params(run_ids, worker=worker, lease_seconds=lease_seconds, now=now)
        if self.dialect == "postgresql":
            rows: Sequence[Sequence[Any]] = conn.execute(sql.PG_CLAIM_IDS, params).all()
        else:
            rows = with_names(conn, conn.execute(sql.CLAIM_IDS, params).all())
        return claims_of(rows, lease)

    def _claim_candidates(
        self, now: float, limit: int, agents: Collection[str] | None = None
    ) -> Any:
        r = runs.alias("r")
        q = sql.claimable_now(r, now)
        if agents is not None:
            # A worker claims only runs of agents it has: another team's worker on the same
            # store must not fail this team's work as "unknown agent".
            q = q.where(sql.agent_of(r).in_(list(agents)))
        return q.order_by(r.c.available_at, r.c.id).limit(limit)


def claim_params(
    run_ids: Collection[int], *, worker: str, lease_seconds: float, now: float | None = None
) -> tuple[dict[str, Any], float]:
    """The parameters of the statements that claim runs by id, and the lease they set."""
    now = time.time() if now is None else now
    lease = now + lease_seconds
    return {"ids": list(run_ids), "b_now": now, "worker": worker, "started_at": now,
            "lease_expires_at": lease}, lease


def with_names(conn: Connection, found: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Claimed rows ``(id, task_id, attempt, reason, note)`` with their task's agent and
    key appended, read in one more statement: SQLite's ``RETURNING`` may not name the
    ``FROM`` table that PostgreSQL's claims return them from."""
    if not found:
        return []
    names = {
        t.id: (t.agent, t.key)
        for t in conn.execute(sql.TASK_NAMES, {"ids": [r.task_id for r in found]})
    }
    return [(*r, *names[r.task_id]) for r in found]


def claims_of(rows: Iterable[Sequence[Any]], lease: float) -> dict[int, Claim]:
    """Claims by run id, from rows ``(id, task_id, attempt, reason, note, agent, key)``."""
    return {
        r[0]: Claim(run_id=r[0], task_id=r[1], attempt=r[2], reason=r[3], note=r[4],
                    agent=r[5], key=r[6], lease_expires_at=lease)
        for r in rows
    }


def _is_conflict(exc: BaseException | None) -> bool:
    """A PostgreSQL deadlock (40P01) or serialization failure (40001): safe to run again."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in ("40P01", "40001")


def _safe(url: str) -> str:
    """A URL fit for messages: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
