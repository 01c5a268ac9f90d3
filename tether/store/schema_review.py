"""Human review's tables (issue 8): the review queue, reviews, examples.

Defined on the one :data:`tether.store.schema.metadata`; ``schema.py`` imports this module
so the declared schema (and the migration test) always sees every table.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tether.store.schema import Id, Json, Time, metadata

# Outputs waiting for a person. A run is queued at most once; `source` says why it was
# queued, and `held` that its triggers wait for the review (the production bar's triage).
review_queue = Table(
    "review_queue",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("agent", String(200), nullable=False),
    # triage | rollout | manual
    Column("source", String(20), nullable=False),
    # The triage model's estimate that the output is correct, when triage queued it.
    Column("score", Time, nullable=True),
    # 1 when the run's triggers are held until a reviewer confirms or corrects it.
    Column("held", Integer, nullable=False),
    Column("created_at", Time, nullable=False),
    # Set by the first review of the run.
    Column("reviewed_at", Time, nullable=True),
    UniqueConstraint("run_id"),
    Index(None, "agent", "reviewed_at"),
)

# Reviews are immutable: a second review of the same run is another row, never an update.
reviews = Table(
    "reviews",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("agent", String(200), nullable=False),
    # correct | incorrect | partial
    Column("verdict", String(10), nullable=False),
    # Required unless the verdict is correct.
    Column("reason", Text, nullable=True),
    Column("corrected_output", Json, nullable=True),
    Column("reviewer", String(200), nullable=False),
    Column("created_at", Time, nullable=False),
    Index(None, "run_id"),
    Index(None, "agent", "created_at"),
)

# The dynamic example store: every confirmed failure (incorrect or partial) becomes an
# example the agent can be shown for similar cases. The vector is the embedder's L2-normalised
# float32 array as bytes (``dim`` values), so retrieval loads it straight into NumPy.
examples = Table(
    "examples",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent", String(200), nullable=False),
    # The reviewed run the example came from (None for examples added by hand).
    Column("run_id", Id, ForeignKey("runs.id"), nullable=True),
    Column("review_id", Id, ForeignKey("reviews.id"), nullable=True),
    # The text that represents the case for similarity (the agent's declared fields).
    Column("case_text", Text, nullable=False),
    Column("input", Json, nullable=True),
    Column("corrected_output", Json, nullable=True),
    Column("reason", Text, nullable=True),
    Column("vector", LargeBinary, nullable=False),
    Column("dim", Integer, nullable=False),
    # Which embedder made the vector: only vectors of the agent's current embedder are searched.
    Column("embedder", String(100), nullable=False),
    Column("created_at", Time, nullable=False),
    Index(None, "agent", "embedder", "id"),
)

# What each run was shown: the examples ctx.examples returned, with their similarity and
# rank, so the effect of injection can be evaluated and coverage counted.
run_examples = Table(
    "run_examples",
    metadata,
    # Every table has an `id` (tether db copy pages through tables by it).
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("example_id", Id, ForeignKey("examples.id"), nullable=False),
    Column("similarity", Time, nullable=False),
    Column("rank", Integer, nullable=False),
    UniqueConstraint("run_id", "example_id"),
    Index(None, "example_id"),
)
