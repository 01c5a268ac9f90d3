"""The production bar's tables (issue 9): bars, the audit log, triage models, releases.

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

# The manager's bar per agent. Every change is a new row (history kept); the latest wins.
bars = Table(
    "bars",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent", String(200), nullable=False),
    # precision | accuracy (of the automated share)
    Column("metric", String(20), nullable=False),
    Column("target", Time, nullable=False),
    Column("confidence", Time, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("set_at", Time, nullable=False),
    Column("note", Text, nullable=True),
    # The share of automated runs still sampled for review (rollout review).
    Column("rollout_rate", Time, nullable=False),
    Index(None, "agent", "set_at"),
)

# Every human action on the bar (and later other manager actions): who did what, when.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(50), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("detail", Json, nullable=True),
    Index(None, "subject", "at"),
)

# A trained triage model: what it was trained on, how it routes, and the booster itself.
triage_models = Table(
    "triage_models",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("agent", String(200), nullable=False),
    Column("created_at", Time, nullable=False),
    # The data version: {"rows": n, "max_review_id": m, "hash": sha256 of the labels}.
    Column("trained_on", Json, nullable=False),
    Column("features", Json, nullable=False),
    # Runs scoring at or above it are automated; None when no threshold meets the bar.
    Column("threshold", Time, nullable=True),
    Column("automated_share", Time, nullable=False),
    Column("metrics", Json, nullable=False),
    Column("bar", Json, nullable=False),
    # LightGBM's model string (utf-8).
    Column("model", LargeBinary, nullable=False),
    Index(None, "agent", "created_at"),
)

# A held run's release after review: at most one per held run, so triggers fire once.
triage_releases = Table(
    "triage_releases",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("held_run_id", Id, ForeignKey("runs.id"), nullable=False),
    # The run that records the review's outcome (the upstream run of the emitted edges).
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    Column("verdict", String(10), nullable=False),
    Column("reviewer", String(200), nullable=False),
    Column("emitted", Integer, nullable=False),
    Column("created_at", Time, nullable=False),
    UniqueConstraint("held_run_id"),
)
