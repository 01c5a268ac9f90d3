"""Human review: the review queue, reviews and the example store (issue 8).

Revision ID: 0006_review
Revises: 0005_evals
Create Date: 2026-11-24
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_review"
down_revision = "0005_evals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_queue",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("reviewed_at", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_review_queue_run_id_runs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_review_queue_task_id_tasks"),
        sa.PrimaryKeyConstraint("id", name="pk_review_queue"),
        sa.UniqueConstraint("run_id", name="uq_review_queue_run_id"),
    )
    op.create_index("ix_review_queue_agent_reviewed_at", "review_queue", ["agent", "reviewed_at"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "corrected_output",
            sa.JSON(none_as_null=True).with_variant(
                postgresql.JSONB(none_as_null=True), "postgresql"
            ),
            nullable=True,
        ),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_reviews_run_id_runs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_reviews_task_id_tasks"),
        sa.PrimaryKeyConstraint("id", name="pk_reviews"),
    )
    op.create_index("ix_reviews_run_id", "reviews", ["run_id"])
    op.create_index("ix_reviews_agent_created_at", "reviews", ["agent", "created_at"])
    op.create_table(
        "examples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "review_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("case_text", sa.Text(), nullable=False),
        sa.Column("input", _json(), nullable=True),
        sa.Column("corrected_output", _json(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("embedder", sa.String(100), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_examples_run_id_runs"),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name="fk_examples_review_id_reviews"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_examples"),
    )
    op.create_index(
        "ix_examples_agent_embedder_id", "examples", ["agent", "embedder", "id"]
    )
    op.create_table(
        "run_examples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "example_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("similarity", sa.Double(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_examples_run_id_runs"),
        sa.ForeignKeyConstraint(
            ["example_id"], ["examples.id"], name="fk_run_examples_example_id_examples"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_run_examples"),
        sa.UniqueConstraint("run_id", "example_id", name="uq_run_examples_run_id_example_id"),
    )
    op.create_index("ix_run_examples_example_id", "run_examples", ["example_id"])


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def downgrade() -> None:
    op.drop_table("run_examples")
    op.drop_table("examples")
    op.drop_table("reviews")
    op.drop_table("review_queue")
