"""The queue's index carries the claim order (available_at, id) in full.

Revision ID: 0008_queue_order
Revises: 0007_triage
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0008_queue_order"
down_revision = "0007_triage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # With id in the index, a claim walks the queued runs in its own order and stops at
    # its LIMIT, instead of reading and sorting every queued run (a burst of thousands).
    op.create_index("ix_runs_status_available_at_id", "runs", ["status", "available_at", "id"])
    op.drop_index("ix_runs_status_available_at", table_name="runs")


def downgrade() -> None:
    op.create_index("ix_runs_status_available_at", "runs", ["status", "available_at"])
    op.drop_index("ix_runs_status_available_at_id", table_name="runs")
