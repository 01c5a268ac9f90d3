"""World capture: HTTP exchanges and content-addressed bodies (issue 5).

Revision ID: 0004_capture
Revises: 0003_dispatch
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_capture"
down_revision = "0003_dispatch"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "http_exchanges",
        sa.Column("id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("task_id", _ID, nullable=False),
        sa.Column("step_seq", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("library", sa.String(12), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("request_headers", _JSON, nullable=True),
        sa.Column("request_sha256", sa.String(64), nullable=True),
        sa.Column("request_size", sa.BigInteger(), nullable=False),
        sa.Column("request_body", sa.String(10), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response_headers", _JSON, nullable=True),
        sa.Column("response_sha256", sa.String(64), nullable=True),
        sa.Column("response_size", sa.BigInteger(), nullable=True),
        sa.Column("response_body", sa.String(10), nullable=False),
        sa.Column("response_encoding", sa.String(40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("elapsed", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_http_exchanges_run_id_runs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_http_exchanges_task_id_tasks"),
        sa.PrimaryKeyConstraint("id", name="pk_http_exchanges"),
        sa.UniqueConstraint("run_id", "seq", name="uq_http_exchanges_run_id_seq"),
    )
    op.create_index("ix_http_exchanges_task_id", "http_exchanges", ["task_id"])
    op.create_index(
        "ix_http_exchanges_fingerprint_started_at", "http_exchanges", ["fingerprint", "started_at"]
    )
    op.create_index("ix_http_exchanges_started_at", "http_exchanges", ["started_at"])
    op.create_index("ix_http_exchanges_request_sha256", "http_exchanges", ["request_sha256"])
    op.create_index("ix_http_exchanges_response_sha256", "http_exchanges", ["response_sha256"])


def downgrade() -> None:
    op.drop_table("http_exchanges")
