"""Evaluation: datasets, label observations, experiments and their results (issue 6).

Revision ID: 0005_evals
Revises: 0004_capture
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_evals"
down_revision = "0004_capture"
branch_labels = None
depends_on = None


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def upgrade() -> None:
    op.create_table(
        "eval_datasets",
        sa.Column("id", _id(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("parent", sa.String(200), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("observations", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_eval_datasets"),
        sa.UniqueConstraint("name", "version", name="uq_eval_datasets_name_version"),
    )
    op.create_table(
        "eval_cases",
        sa.Column("id", _id(), nullable=False),
        sa.Column("dataset_id", _id(), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("input", _json(), nullable=True),
        sa.Column("decided_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["eval_datasets.id"], name="fk_eval_cases_dataset_id_eval_datasets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_eval_cases"),
        sa.UniqueConstraint("dataset_id", "key", name="uq_eval_cases_dataset_id_key"),
    )
    op.create_table(
        "eval_labels",
        sa.Column("id", _id(), nullable=False),
        sa.Column("case_id", _id(), nullable=False),
        sa.Column("value", _json(), nullable=True),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["eval_cases.id"], name="fk_eval_labels_case_id_eval_cases"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_eval_labels"),
    )
    op.create_index("ix_eval_labels_case_id", "eval_labels", ["case_id"])
    op.create_table(
        "eval_experiments",
        sa.Column("id", _id(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("dataset_id", _id(), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("settings", _json(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["eval_datasets.id"],
            name="fk_eval_experiments_dataset_id_eval_datasets",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_eval_experiments"),
        sa.UniqueConstraint("name", name="uq_eval_experiments_name"),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", _id(), nullable=False),
        sa.Column("experiment_id", _id(), nullable=False),
        sa.Column("case_key", sa.String(500), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("task_id", _id(), nullable=False),
        sa.Column("run_id", _id(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("decision", _json(), nullable=True),
        sa.Column("output", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("latency", sa.Double(), nullable=True),
        sa.Column("decided_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["eval_experiments.id"],
            name="fk_eval_results_experiment_id_eval_experiments",
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_eval_results_task_id_tasks"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_eval_results_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_results"),
        sa.UniqueConstraint(
            "experiment_id", "case_key", "kind", name="uq_eval_results_experiment_id_case_key_kind"
        ),
    )


def downgrade() -> None:
    op.drop_table("eval_results")
    op.drop_table("eval_experiments")
    op.drop_table("eval_labels")
    op.drop_table("eval_cases")
    op.drop_table("eval_datasets")
