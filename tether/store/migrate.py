"""Schema migrations with Alembic, driven from code (there is no alembic.ini to find)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).parent / "migrations"

HEAD = "0008_queue_order"
"""The newest revision. Checking it costs one query, so opening a store is cheap when
the schema is current; a test keeps it equal to Alembic's own head."""


def _config(connection: Connection) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def script_head() -> str:
    """Alembic's head revision, read from the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction."""
    from alembic import command

    from tether.store.engine import WRITE

    with engine.connect() as conn:
        # SQLite: BEGIN IMMEDIATE, so two processes opening a fresh store at once queue on
        # the write lock (the second then finds the schema current) instead of failing with
        # "database is locked" when a read transaction tries to become a write.
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Two processes opening a fresh database at once: one migrates, one waits.
                conn.execute(text("SELECT pg_advisory_xact_lock(7245113)"))
            command.upgrade(_config(conn), revision)  # type: ignore[arg-type]


def ensure_current(engine: Engine) -> None:
    """Upgrade the database if it is behind; a no-op costing one query when current."""
    if current_revision(engine) != HEAD:
        upgrade(engine)
