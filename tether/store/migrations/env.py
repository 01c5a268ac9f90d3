"""Alembic environment: Tether passes its own connection; there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from tether.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
