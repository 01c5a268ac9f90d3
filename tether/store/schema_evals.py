"""Evaluation's tables (issue 6): datasets, label observations, experiments.

Defined on the one :data:`tether.store.schema.metadata`; ``schema.py`` imports this module
so the declared schema (and the migration test) always sees every table.

A dataset *version* is immutable: its cases and label observations are stored once under
the version (a content hash), so an experiment that names a version names exactly the cases
and labels it was scored against, however the dataset grows later.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tether.store.schema import Id, Json, Time, metadata

eval_datasets = Table(
    "eval_datasets",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    # sha256 of the canonical cases and observations: same content, same version.
    Column("version", String(64), nullable=False),
    # The dataset a subset was drawn from (None for a loaded dataset).
    Column("parent", String(200), nullable=True),
    Column("source", Text, nullable=True),
    Column("cases", Integer, nullable=False),
    Column("observations", Integer, nullable=False),
    Column("created_at", Time, nullable=False),
    UniqueConstraint("name", "version"),
)

eval_cases = Table(
    "eval_cases",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("dataset_id", Id, ForeignKey("eval_datasets.id"), nullable=False),
    Column("key", String(500), nullable=False),
    Column("input", Json, nullable=True),
    # When the original (production) decision was made, if known.
    Column("decided_at", Time, nullable=True),
    UniqueConstraint("dataset_id", "key"),
)

# A case's label as observed at a time; several per case as the label matures.
eval_labels = Table(
    "eval_labels",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("case_id", Id, ForeignKey("eval_cases.id"), nullable=False),
    Column("value", Json, nullable=True),
    Column("observed_at", Time, nullable=False),
    Index(None, "case_id"),
)

eval_experiments = Table(
    "eval_experiments",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("dataset_id", Id, ForeignKey("eval_datasets.id"), nullable=False),
    Column("agent", String(200), nullable=False),
    # How decisions are read and scored (decision field, scorer, cost field, ...).
    Column("settings", Json, nullable=True),
    Column("created_at", Time, nullable=False),
    Column("finished_at", Time, nullable=True),
    UniqueConstraint("name"),
)

# One row per case an experiment finished (kind "first"), or re-ran (kind "rerun").
eval_results = Table(
    "eval_results",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("experiment_id", Id, ForeignKey("eval_experiments.id"), nullable=False),
    Column("case_key", String(500), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("task_id", Id, ForeignKey("tasks.id"), nullable=False),
    Column("run_id", Id, ForeignKey("runs.id"), nullable=False),
    # succeeded | failed
    Column("status", String(12), nullable=False),
    Column("decision", Json, nullable=True),
    Column("output", Json, nullable=True),
    Column("error", Text, nullable=True),
    Column("cost", Double, nullable=True),
    Column("latency", Double, nullable=True),
    Column("decided_at", Time, nullable=False),
    UniqueConstraint("experiment_id", "case_key", "kind"),
)
