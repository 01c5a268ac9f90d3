"""The production bar and triage models (issue 9).

Revision ID: 0007_triage
Revises: 0006_review
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_triage"
down_revision = "0006_review"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("id", _ID, nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("target", sa.Double(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
        sa.Column("set_at", sa.Double(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("rollout_rate", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bars"),
    )
    op.create_index("ix_bars_agent_set_at", "bars", ["agent", "set_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("detail", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_subject_at", "audit_log", ["subject", "at"])
    op.create_table(
        "triage_models",
        sa.Column("id", _ID, nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("trained_on", _JSON, nullable=False),
        sa.Column("features", _JSON, nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("automated_share", sa.Double(), nullable=False),
        sa.Column("metrics", _JSON, nullable=False),
        sa.Column("bar", _JSON, nullable=False),
        sa.Column("model", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_triage_models"),
    )
    op.create_index("ix_triage_models_agent_created_at", "triage_models", ["agent", "created_at"])
    op.create_table(
        "triage_releases",
        sa.Column("id", _ID, nullable=False),
        sa.Column("held_run_id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("emitted", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["held_run_id"], ["runs.id"], name="fk_triage_releases_held_run_id_runs"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_triage_releases_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_triage_releases"),
        sa.UniqueConstraint("held_run_id", name="uq_triage_releases_held_run_id"),
    )


def downgrade() -> None:
    op.drop_table("triage_releases")
    op.drop_table("triage_models")
    op.drop_table("audit_log")
    op.drop_table("bars")
