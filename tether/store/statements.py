"""The SQL of the store's hot path, each statement built once and called by name.

Building a SQLAlchemy Core statement costs more CPU than running it (its columns, cache key
and parameters are worked out again each time), so the statements a worker runs for every
run are module constants here, with bind parameters for what varies. The ``PG_`` ones are
PostgreSQL's own forms of a step (see :class:`tether.store.store.PostgresStore`).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    String,
    and_,
    any_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from tether.store.ledger import FIELDS
from tether.store.schema import ledger, runs, tasks, triggers
from tether.store.writes import Completion, StepWrite

NOTIFY_CHANNEL = "tether_runs"
"""The PostgreSQL channel notified when a run becomes due for the outbox to hand over."""

RUN_FIELDS = tuple(runs.c[name] for name in FIELDS["run"])
"""What a run's final outcome is hashed over: returned by every statement that ends a run."""


def agent_of(run: Any) -> Any:
    """The agent of ``run``'s task, as a correlated subquery on the tasks' primary key.

    Not a join: on tables whose statistics are young (a new database, a burst of new
    tasks) PostgreSQL misjudges how many tasks an agent filter keeps and may scan the
    whole tasks table once per queued run (10-60 ms a pass, measured); a key lookup per
    candidate run costs the same whatever the statistics say.
    """
    return select(tasks.c.agent).where(tasks.c.id == run.c.task_id).scalar_subquery()


def by_key(condition: Any) -> Any:
    """``condition`` on a run's status, written so that no index can serve it, for the
    statements that find their runs by primary key (claim by id, end a run, the guard
    of an edge). Left indexable, PostgreSQL may prefer the ``(status, available_at)``
    index: on young statistics (a new store, the first minute of a burst) it guesses a
    status matches a row or two, and scans every run of that status instead (measured:
    ending six runs 2.4 ms against 0.2 ms, growing with the table). ``IS TRUE`` changes
    nothing else: a run's status is never NULL."""
    return condition.is_(true())


# The statements of the hot path, built once: building a Core statement costs more than
# running it (its columns, cache key and parameters are worked out again each time).

TASK_ID = select(tasks.c.id).where(
    tasks.c.agent == bindparam("b_agent"), tasks.c.key == bindparam("b_key")
)
HAS_RUNS = select(exists().where(runs.c.task_id == bindparam("b_task")))
NEW_RUN = insert(runs).returning(runs.c.id)
"""Insert a run: the columns are the parameters given."""
NEW_ENTRIES = insert(ledger)
NOTIFY = select(func.pg_notify(NOTIFY_CHANNEL, ""))
ASYNC_COMMIT_RAW = "SET LOCAL synchronous_commit = off"
"""PostgreSQL: this transaction's commit does not wait for its WAL to reach disk (for
writes whose loss in a crash is harmless; a later synced commit flushes them anyway)."""
WALK_QUEUE_RAW = "SELECT set_config('enable_sort', 'off', true)"
"""PostgreSQL: for the rest of this transaction, plans that sort are the planner's last
resort, so a statement taking the first N queued runs in claim order walks the queue
index and stops after N, whatever the statistics say. On statistics taken while the
queue was empty (a drained queue, the usual state before a burst) PostgreSQL guesses
about one queued run and costs the index walk only about 15% below a bitmap scan and a
sort (EXPLAIN: 14.4 against 16.6), which would read and sort the whole burst to take a
handful. Never seen to flip here; it rides in a round trip the statement makes anyway."""
OUTBOX_SETTINGS_RAW = (
    "SELECT set_config('synchronous_commit', 'off', true), set_config('enable_sort', 'off', true)"
)
"""``ASYNC_COMMIT_RAW`` and ``WALK_QUEUE_RAW`` in one statement, for the outbox's pass."""

_LAST = (
    select(ledger.c.task_id, func.max(ledger.c.seq).label("seq"))
    .where(ledger.c.task_id.in_(bindparam("ids", expanding=True)))
    .group_by(ledger.c.task_id)
    .subquery()
)
TIPS = select(ledger.c.task_id, ledger.c.seq, ledger.c.hash).join(
    _LAST, and_(ledger.c.task_id == _LAST.c.task_id, ledger.c.seq == _LAST.c.seq)
)
"""The tip ``(seq, hash)`` of each given task's chain (none for an empty chain)."""
BUSY = runs.alias("busy")
def _claimable(ids: Any) -> tuple[Any, ...]:
    """The conditions of a claimable run among the ids ``ids`` selects."""
    return (
        ids,
        by_key(runs.c.status == "queued"),
        runs.c.available_at <= bindparam("b_now"),
        # One run at a time per task: a retry or new input waits for the running one.
        ~exists().where(BUSY.c.task_id == runs.c.task_id, BUSY.c.status == "running"),
    )


CLAIMABLE = _claimable(runs.c.id.in_(bindparam("ids", expanding=True)))
CLAIMED = (runs.c.id, runs.c.task_id, runs.c.attempt, runs.c.reason, runs.c.note)
CLAIM_IDS = (
    update(runs).where(*CLAIMABLE)
    .values(status="running", worker=bindparam("worker"), started_at=bindparam("started_at"),
            lease_expires_at=bindparam("lease_expires_at"))
    .returning(*CLAIMED)
)
"""Claim the given runs that are claimable (see :meth:`Store.claim_run`)."""
PG_CLAIM_IDS = (
    # UPDATE ... FROM tasks: the claim and the agent's name in one round trip.
    update(runs).where(*CLAIMABLE, tasks.c.id == runs.c.task_id)
    .values(status="running", worker=bindparam("worker"), started_at=bindparam("started_at"),
            lease_expires_at=bindparam("lease_expires_at"))
    .returning(*CLAIMED, tasks.c.agent, tasks.c.key)
)
PG_CLAIM_ANY = (
    # PG_CLAIM_IDS with the ids as one array parameter, for pipeline mode.
    update(runs)
    .where(*_claimable(runs.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))),
           tasks.c.id == runs.c.task_id)
    .values(status="running", worker=bindparam("worker"), started_at=bindparam("started_at"),
            lease_expires_at=bindparam("lease_expires_at"))
    .returning(*CLAIMED, tasks.c.agent, tasks.c.key)
)


@functools.cache
def dispatch_due(*, postgres: bool, filtered: bool) -> Any:
    """Mark up to ``b_limit`` due queued runs dispatched at ``b_now`` (those never handed
    over, or handed over before ``b_before`` and still queued), of the agents ``agents``
    when ``filtered``; returns ``(id, agent)`` of each (see ``Claims.dispatch_batch``).
    On PostgreSQL two outboxes skip each other's runs (``FOR UPDATE SKIP LOCKED``), and
    the statement is in the form :func:`pg_dispatch_due` compiles for psycopg's pipeline
    mode (typed parameters, ``agents`` one array)."""

    def param(name: str, type_: Any) -> Any:
        return bindparam(name, type_=type_) if postgres else bindparam(name)

    r = runs.alias("r")
    now = param("b_now", Float)
    q = select(r.c.id).where(
        r.c.status == "queued",
        r.c.available_at <= now,
        r.c.dispatched_at.is_(None) | (r.c.dispatched_at < param("b_before", Float)),
    )
    if filtered:
        q = q.where(
            agent_of(r) == any_(bindparam("agents", type_=ARRAY(String))) if postgres
            else agent_of(r).in_(bindparam("agents", expanding=True))
        )
    q = q.order_by(r.c.available_at, r.c.id).limit(param("b_limit", BigInteger))
    if postgres:
        q = q.with_for_update(skip_locked=True, of=r)
    # MATERIALIZED: see Claims._claim (the LIMIT must bound what one pass takes).
    due = q.cte("due").prefix_with("MATERIALIZED", dialect="postgresql")
    return (
        update(runs)
        .where(runs.c.id.in_(select(due.c.id)))
        .values(dispatched_at=now)
        .returning(runs.c.id, agent_of(runs))
    )


@functools.cache
def pg_dispatch_due(*, filtered: bool) -> tuple[str, dict[str, Any]]:
    """:func:`dispatch_due` on PostgreSQL as psycopg runs it in pipeline mode (see
    :func:`pg_raw`), for the outbox's pass in one round trip: ``BEGIN``,
    :data:`OUTBOX_SETTINGS_RAW`, this, ``COMMIT``."""
    return _pg_compiled(dispatch_due(postgres=True, filtered=filtered))


def claimable_now(r: Any, now: Any) -> Any:
    """The ids of runs ``r`` (an alias of ``runs``) a worker may claim at ``now`` (a value
    or a bind parameter): queued, available, and of a task with no run running."""
    busy = runs.alias("busy")
    return select(r.c.id).where(
        r.c.status == "queued",
        r.c.available_at <= now,
        # One run at a time per task: a retry or new input waits for the running one.
        ~exists().where(busy.c.task_id == r.c.task_id, busy.c.status == "running"),
    )


@functools.cache
def pg_claim_due(*, filtered: bool) -> tuple[str, dict[str, Any]]:
    """PostgreSQL, as psycopg runs it in pipeline mode (see :func:`pg_raw`): claim for
    ``worker`` up to ``b_limit`` queued runs available at ``b_now`` whose task has no run
    running, of the agents ``agents`` when ``filtered``, oldest first, skipping runs
    another claim holds locked; returns ``(id, task_id, attempt, reason, note, agent,
    key)`` of each. Sent after :data:`WALK_QUEUE_RAW` in the same round trip."""
    r = runs.alias("r")
    q = claimable_now(r, bindparam("b_now", type_=Float))
    if filtered:
        q = q.where(agent_of(r) == any_(bindparam("agents", type_=ARRAY(String))))
    q = (
        q.order_by(r.c.available_at, r.c.id).limit(bindparam("b_limit", type_=BigInteger))
        .with_for_update(skip_locked=True, of=r)
    )
    # A materialized CTE, not `IN (subquery)`: PostgreSQL may plan the subquery as the
    # inner side of a semi-join and rescan it per row, so LIMIT ... FOR UPDATE SKIP LOCKED
    # would no longer bound how many runs one claim takes.
    candidates = q.cte("candidates").prefix_with("MATERIALIZED", dialect="postgresql")
    return _pg_compiled(
        # No second status test: the candidates passed it as they were locked, and with it
        # PostgreSQL may scan every queued run to match them. UPDATE ... FROM tasks: the
        # agents' names come back with the claim.
        update(runs).where(runs.c.id.in_(select(candidates.c.id)), tasks.c.id == runs.c.task_id)
        .values(status="running", worker=bindparam("worker"), started_at=bindparam("b_now"),
                lease_expires_at=bindparam("lease_expires_at"))
        .returning(*CLAIMED, tasks.c.agent, tasks.c.key)
    )


TASK_NAMES = select(tasks.c.id, tasks.c.agent, tasks.c.key).where(
    tasks.c.id.in_(bindparam("ids", expanding=True))
)

NEW_TASK_CTE = (
    pg_insert(tasks)
    .from_select(
        ["agent", "key", "created_at"],
        select(
            bindparam("agent", type_=String), bindparam("key", type_=String),
            bindparam("at", type_=Float),
        ).where(
            # Only for a run this worker has just recorded as succeeded (sent in the same
            # round trip as the statement that ends it, so a stale completion's edges
            # write nothing).
            exists().where(
                runs.c.id == bindparam("up_run", type_=BigInteger),
                by_key(runs.c.status == "succeeded"),
                runs.c.worker == bindparam("up_worker", type_=String),
                runs.c.finished_at == bindparam("at", type_=Float),
            )
        ),
    )
    .on_conflict_do_nothing()
    .returning(tasks.c.id)
    .cte("new_task")
)
NEW_TRIGGER_CTE = (
    insert(triggers)
    .from_select(
        ["name", "upstream_task_id", "upstream_run_id", "downstream_task_id", "created_at"],
        select(
            bindparam("name", type_=String), bindparam("up_task", type_=BigInteger),
            bindparam("up_run", type_=BigInteger), NEW_TASK_CTE.c.id,
            bindparam("at", type_=Float),
        ),
    )
    .returning(triggers.c.downstream_task_id)
    .cte("new_trigger")
)
NEW_RUN_CTE = (
    insert(runs)
    .from_select(
        ["task_id", "attempt", "reason", "status", "worker", "created_at", "available_at",
         "dispatched_at", "started_at", "lease_expires_at"],
        select(
            NEW_TRIGGER_CTE.c.downstream_task_id, literal(1), literal("trigger"),
            bindparam("status", type_=String), bindparam("worker", type_=String),
            bindparam("at", type_=Float), bindparam("at", type_=Float),
            bindparam("dispatched_at", type_=Float), bindparam("started_at", type_=Float),
            bindparam("lease", type_=Float),
        ),
    )
    .returning(runs.c.id, runs.c.task_id)
    .cte("new_run")
)
PG_NEW_EDGE = select(NEW_RUN_CTE.c.id, NEW_RUN_CTE.c.task_id)
"""A trigger edge to a new task, with the task's first run: see ``PostgresStore._new_edges``."""

_SUBMITTED_TASK_CTE = (
    pg_insert(tasks)
    .values(agent=bindparam("agent", type_=String), key=bindparam("key", type_=String),
            created_at=bindparam("at", type_=Float))
    .on_conflict_do_nothing()
    .returning(tasks.c.id)
    .cte("new_task")
)
_SUBMITTED_RUN_CTE = (
    insert(runs)
    .from_select(
        ["task_id", "attempt", "reason", "note", "status", "created_at", "available_at"],
        select(
            _SUBMITTED_TASK_CTE.c.id, literal(1), bindparam("reason", type_=String),
            bindparam("note", type_=String), literal("queued"),
            bindparam("at", type_=Float), bindparam("at", type_=Float),
        ),
    )
    .returning(runs.c.id, runs.c.task_id)
    .cte("new_run")
)
PG_NEW_SUBMISSION = select(
    _SUBMITTED_RUN_CTE.c.id, _SUBMITTED_RUN_CTE.c.task_id, func.pg_notify(NOTIFY_CHANNEL, "")
)
"""A submitted task that is new, its first run queued and the outboxes notified, in one
statement; no row when the task exists (see ``PostgresStore._submit_new``)."""

FINISH_RUN = (
    update(runs)
    .where(
        runs.c.id == bindparam("b_id"),
        by_key(runs.c.status == "running"),
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


def finish_values(c: Completion) -> dict[str, Any]:
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


PG_FINISH_RUNS_RAW = (
    # FINISH_RUN for a whole batch in one statement. The rows travel as one JSON array
    # (see finish_rows): psycopg adapts one string several times faster than an array
    # per column, and its adapting is most of a worker's CPU per transaction.
    "UPDATE runs SET status = v.status, finished_at = v.finished_at, "
    "lease_expires_at = NULL, output = v.output, waiting_for = v.waiting_for, "
    "failure_class = v.failure_class, failure_reason = v.failure_reason "
    "FROM json_to_recordset(%(rows)s::JSON) AS v(b_id BIGINT, b_worker VARCHAR, "
    "status VARCHAR, finished_at DOUBLE PRECISION, output JSONB, waiting_for TEXT, "
    "failure_class VARCHAR, failure_reason TEXT) "
    # The ids once more as an array: PostgreSQL cannot tell how many rows the JSON holds
    # (it guesses 100) but counts an array's values, so it looks the runs up by key.
    "WHERE runs.id = ANY(%(ids)s::BIGINT[]) AND runs.id = v.b_id "
    "AND (runs.status = 'running') IS TRUE AND runs.worker = v.b_worker "
    "RETURNING " + ", ".join(f"runs.{name}" for name in FIELDS["run"])
)
"""A batch's runs ended (for PostgreSQL's pipeline mode): ``rows`` is a JSON array of
:func:`finish_values` objects, ``ids`` their run ids (see :func:`by_key` for the
``IS TRUE``)."""


def step_values(run_id: int, s: StepWrite) -> dict[str, Any]:
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


# -- the same, as psycopg runs them in pipeline mode (below SQLAlchemy) --------------


@functools.cache
def pg_raw(name: str) -> tuple[str, dict[str, Any]]:
    """The statement this module calls ``name`` (``PG_NEW_EDGE``, ``PG_CLAIM_ANY``) as
    psycopg runs it in pipeline mode, below SQLAlchemy: its SQL text and the values of
    the parameters it fixes itself. Compiled on first use, so that a store on SQLite
    never loads the PostgreSQL dialect."""
    return _pg_compiled(globals()[name])


def _pg_compiled(statement: Any) -> tuple[str, dict[str, Any]]:
    """``statement`` compiled for psycopg: its SQL text and the values it fixes itself."""
    from sqlalchemy.dialects.postgresql.psycopg import dialect

    compiled = statement.compile(dialect=dialect())
    return str(compiled), {k: v for k, v in compiled.params.items() if v is not None}


PG_LOCK_TASKS_RAW = (
    # Always in id order, so two batches never deadlock on them.
    "SELECT id FROM tasks WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"
)
"""Hold the given tasks' rows until commit: one appender per chain at a time. Its own
statement, before :data:`PG_TIPS_RAW`: a statement reads as of its start, so the tips must
be read by a statement that starts once the locks are held (read in the locking statement,
they could predate an append that committed while it waited)."""
PG_TIPS_RAW = (
    "SELECT l.task_id, l.seq, l.hash FROM ledger AS l JOIN (SELECT task_id, max(seq) AS seq "
    "FROM ledger WHERE task_id = ANY(%(ids)s) GROUP BY task_id) AS m "
    "ON m.task_id = l.task_id AND m.seq = l.seq"
)
""":data:`TIPS` with an array parameter, for pipeline mode."""
PG_NEW_ENTRIES_RAW = (
    # NEW_ENTRIES for a whole batch as one statement; the rows travel as one JSON array,
    # as in PG_FINISH_RUNS_RAW.
    "INSERT INTO ledger (task_id, seq, kind, ref, digest, prev_hash, hash, created_at) "
    "SELECT task_id, seq, kind, ref, digest, prev_hash, hash, created_at "
    "FROM json_to_recordset(%(rows)s::JSON) AS v(task_id BIGINT, seq INTEGER, "
    "kind VARCHAR, ref VARCHAR, digest VARCHAR, prev_hash VARCHAR, hash VARCHAR, "
    "created_at DOUBLE PRECISION)"
)
""":data:`NEW_ENTRIES` for pipeline mode: ``rows`` is a JSON array of the rows."""
