"""The core: tasks, their inputs, runs, steps and trigger edges.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("agent", "key", name="uq_tasks_agent_key"),
    )
    op.create_table(
        "task_inputs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", Json, nullable=True),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_task_inputs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_task_inputs_task_id_tasks"),
        sa.UniqueConstraint("task_id", "seq", name="uq_task_inputs_task_id_seq"),
    )
    op.create_table(
        "runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("task_id", Id, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("failure_class", sa.String(12), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("output", Json, nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("available_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_runs_task_id_tasks"),
    )
    op.create_index("ix_runs_status_available_at", "runs", ["status", "available_at"])
    op.create_index("ix_runs_task_id_status", "runs", ["task_id", "status"])
    op.create_table(
        "steps",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", Id, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key", sa.String(500), nullable=True),
        sa.Column("input", Json, nullable=True),
        sa.Column("output", Json, nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_steps_run_id_runs"),
        sa.UniqueConstraint("run_id", "seq", name="uq_steps_run_id_seq"),
    )
    op.create_index("ix_steps_key", "steps", ["key"])
    op.create_table(
        "triggers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("upstream_task_id", Id, nullable=False),
        sa.Column("upstream_run_id", Id, nullable=False),
        sa.Column("downstream_task_id", Id, nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_triggers"),
        sa.ForeignKeyConstraint(
            ["upstream_task_id"], ["tasks.id"], name="fk_triggers_upstream_task_id_tasks"
        ),
        sa.ForeignKeyConstraint(
            ["upstream_run_id"], ["runs.id"], name="fk_triggers_upstream_run_id_runs"
        ),
        sa.ForeignKeyConstraint(
            ["downstream_task_id"], ["tasks.id"], name="fk_triggers_downstream_task_id_tasks"
        ),
        sa.UniqueConstraint(
            "upstream_run_id",
            "name",
            "downstream_task_id",
            name="uq_triggers_upstream_run_id_name_downstream_task_id",
        ),
    )
    op.create_index(
        "ix_triggers_downstream_task_id_name", "triggers", ["downstream_task_id", "name"]
    )
    op.create_index("ix_triggers_upstream_task_id", "triggers", ["upstream_task_id"])


def downgrade() -> None:
    for name in ("triggers", "steps", "runs", "task_inputs", "tasks"):
        op.drop_table(name)
