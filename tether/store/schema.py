"""The store's schema, stated once in SQLAlchemy Core for SQLite and PostgreSQL alike.

Times are float seconds since the epoch (UTC): comparable and indexable the same way on
both databases, with no time-zone conversion on the hot path.

The migrations in ``migrations/versions`` must produce exactly this schema; a test checks it.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Time: Double[float] = Double()

tasks = Table(
    "tasks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent", String(200), nullable=False),
    Column("key", String(500), nullable=False),
    Column("created_at", Time, nullable=False),
    # Set by an operator's `tether cancel`: no further runs start until `tether retry`.
    Column("cancelled_at", Time, nullable=True),
    UniqueConstraint("agent", "key"),
)

task_inputs = Table(
    "task_inputs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", Json, nullable=True),
    Column("received_at", Time, nullable=False),
    UniqueConstraint("task_id", "seq"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    # Why it started: submitted | trigger | retry | operator | eval
    Column("reason", String(20), nullable=False),
    Column("note", Text, nullable=True),
    # queued | running | succeeded | failed | cancelled
    Column("status", String(12), nullable=False),
    # retryable | terminal (failed runs only)
    Column("failure_class", String(12), nullable=True),
    Column("failure_reason", Text, nullable=True),
    Column("output", Json, nullable=True),
    # A run that succeeded without finishing its task says what the task now waits for.
    Column("waiting_for", Text, nullable=True),
    Column("created_at", Time, nullable=False),
    Column("available_at", Time, nullable=False),
    Column("started_at", Time, nullable=True),
    Column("finished_at", Time, nullable=True),
    Column("worker", String(200), nullable=True),
    Column("lease_expires_at", Time, nullable=True),
    # When a provider (Celery, Temporal) last handed the queued run to its engine.
    Column("dispatched_at", Time, nullable=True),
    # The claim order in full (a claim walks it and stops at its LIMIT; see Claims._claim).
    Index(None, "status", "available_at", "id"),
    Index(None, "task_id", "status"),
)

steps = Table(
    "steps",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("key", String(500), nullable=True),
    Column("input", Json, nullable=True),
    Column("output", Json, nullable=True),
    # running | succeeded | failed
    Column("status", String(12), nullable=False),
    Column("error", Text, nullable=True),
    Column("started_at", Time, nullable=False),
    Column("finished_at", Time, nullable=True),
    UniqueConstraint("run_id", "seq"),
    Index(None, "key"),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("upstream_task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("upstream_run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("downstream_task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("created_at", Time, nullable=False),
    # Each edge exactly once, even if a completion is delivered twice.
    UniqueConstraint("upstream_run_id", "name", "downstream_task_id"),
    Index(None, "downstream_task_id", "name"),
    Index(None, "upstream_task_id"),
)

operator_actions = Table(
    "operator_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    # retry | cancel
    Column("action", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("note", Text, nullable=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=True),
    Column("created_at", Time, nullable=False),
    Index(None, "task_id"),
)

# The tamper-evident history: one hash chain per task (see tether/store/ledger.py).
ledger = Table(
    "ledger",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    # input | step | run | action
    Column("kind", String(10), nullable=False),
    Column("ref", String(100), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("created_at", Time, nullable=False),
    UniqueConstraint("task_id", "seq"),
)

# Each capability keeps its tables in its own module, on this same metadata; importing them
# here makes `metadata` the whole declared schema wherever it is used.
from tether.store import (  # noqa: E402
    schema_capture,  # noqa: F401
    schema_evals,  # noqa: F401
    schema_review,  # noqa: F401
    schema_triage,  # noqa: F401
)
