"""Evaluation: datasets, label observations, experiments and their results (issue 6).

Revision ID: 0005_evals
Revises: 0004_capture
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0005_evals"
down_revision = "0004_capture"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
