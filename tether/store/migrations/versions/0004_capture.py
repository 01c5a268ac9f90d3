"""World capture: HTTP exchanges and content-addressed bodies (issue 5).

Revision ID: 0004_capture
Revises: 0003_dispatch
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_capture"
down_revision = "0003_dispatch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
