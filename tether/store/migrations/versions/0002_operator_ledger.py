"""Operator actions, waiting runs, cancelled tasks and the tamper-evident ledger.

Revision ID: 0002_operator_ledger
Revises: 0001_core
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_operator_ledger"
down_revision = "0001_core"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("cancelled_at", sa.Double(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("waiting_for", sa.Text(), nullable=True))
    op.create_table(
        "operator_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("run_id", Id, nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_operator_actions"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_operator_actions_task_id_tasks"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_operator_actions_run_id_runs"),
    )
    op.create_index("ix_operator_actions_task_id", "operator_actions", ["task_id"])
    op.create_table(
        "ledger",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("ref", sa.String(100), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_ledger_task_id_tasks"),
        sa.UniqueConstraint("task_id", "seq", name="uq_ledger_task_id_seq"),
    )


def downgrade() -> None:
    op.drop_table("ledger")
    op.drop_table("operator_actions")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("waiting_for")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("cancelled_at")
