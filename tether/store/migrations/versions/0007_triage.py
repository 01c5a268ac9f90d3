"""The production bar and triage models (issue 9).

Revision ID: 0007_triage
Revises: 0006_review
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0007_triage"
down_revision = "0006_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
