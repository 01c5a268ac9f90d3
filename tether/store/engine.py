"""Engines per dialect: SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode so readers never block the writer. Write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of deadlocking when a
reader upgrades to a writer. ``durability="full"`` syncs every commit (``synchronous=FULL``).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from tether.errors import ConfigError

WRITE = "tether_write"
"""Execution option that marks a connection's transaction as a write (``BEGIN IMMEDIATE``)."""

BUSY_TIMEOUT_MS = 30_000

BEGIN_PENDING = "tether_begin_pending"
"""Key in a PostgreSQL connection's ``info``: the driver connection is in autocommit mode
and the current write transaction has not sent its ``BEGIN`` yet. The store's pipelines
send it in their own round trip (psycopg, left to begin a transaction itself, waits for
the ``BEGIN`` alone first); any other statement sends it first (see
:func:`postgres_engine`). Set by the group commit of engine providers, on the
connections of its own engine (``planned_once``), each held for a committer thread's
whole life."""


def dialect_of(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a store URL, or a ConfigError naming what is supported."""
    try:
        name = make_url(url).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(
            f"database URL {url!r} is not a valid URL; use sqlite:///path/to/file.db "
            "or postgresql://user@host:5432/dbname"
        ) from exc
    if name not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"database URL {url!r}: Tether supports sqlite and postgresql, not {name}"
        )
    return name


def _set_wal(cur: Any) -> None:
    """Switch to WAL mode. Switching needs an exclusive lock and SQLite does not wait for
    it (no busy handler), so connections opening a fresh file at once retry here instead
    of failing with "database is locked"."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def sqlite_engine(url: str, *, durability: str = "full") -> Engine:
    """An engine on a SQLite file, created (with its folder) if missing."""
    parsed = make_url(url)
    database = parsed.database or ""
    if database in ("", ":memory:"):
        raise ConfigError("an in-memory SQLite store is not shared between threads; use a file")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        pool_size=8,
        max_overflow=24,
    )
    synchronous = "FULL" if durability == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to issue.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _set_wal(cur)
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def postgres_engine(url: str, *, durability: str = "full", planned_once: bool = False) -> Engine:
    """An engine on PostgreSQL through psycopg 3, pooled. ``planned_once``: the engine of
    the engine providers' group commit (see :attr:`tether.store.Store.group_engine`)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    # Every statement planned with its own values. psycopg prepares a statement run five
    # times, and PostgreSQL may then keep one generic plan for good; one made while the
    # tables were young (a new store: no statistics yet) scans where an index would do,
    # and stays, getting slower as the tables grow (measured: a chain's edge 0.35 ms with
    # custom plans, 1.4 ms and rising with the generic one). Planning these statements
    # costs less than that risk.
    options = ["-c plan_cache_mode=force_custom_plan"]
    if planned_once:
        # Except the group commit's: the same few statements, each finding rows by id or
        # key through an index, run thousands of times a minute, and planning them each
        # time was half of their database time (pg_stat_statements: recording an edge
        # 100 us of planning to 155 us of execution, the chain tips 72 us to 6 us). Its
        # sessions use each prepared statement's one generic plan, and with sequential
        # scans off that plan takes the indexes however small the tables were when it was
        # made (measured: each statement's execution time flat while one store grew from
        # nothing to 45,000 runs).
        options = ["-c plan_cache_mode=force_generic_plan", "-c enable_seqscan=off"]
    if durability != "full":
        options.append("-c synchronous_commit=off")
    if parsed.query.get("options"):  # the URL's own options come last, so they win
        options.append(str(parsed.query["options"]))
        parsed = parsed.difference_update_query(["options"])
    connect_args: dict[str, Any] = {"options": " ".join(options)}
    try:
        engine = create_engine(
            parsed,
            connect_args=connect_args,
            # The group commit holds a connection per committer thread for its life.
            pool_size=2 if planned_once else 10,
            max_overflow=6 if planned_once else 20,
            pool_pre_ping=True,
        )
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            "PostgreSQL needs the psycopg driver: pip install 'tether[postgres]'"
        ) from exc

    if planned_once:  # only the group commit leaves its BEGIN pending

        @event.listens_for(engine, "before_cursor_execute")
        def _begin_first(conn: Any, cursor: Any, *_: Any) -> None:
            # A transaction whose BEGIN is still to be sent (BEGIN_PENDING) reached a
            # statement outside the store's pipelines: BEGIN first, as psycopg would.
            if conn.info.pop(BEGIN_PENDING, False):
                cursor.execute("BEGIN")

    return engine


def make_engine(url: str, *, durability: str = "full", planned_once: bool = False) -> Engine:
    """The engine for a store URL (``planned_once``: see :func:`postgres_engine`)."""
    if dialect_of(url) == "sqlite":
        return sqlite_engine(url, durability=durability)
    return postgres_engine(url, durability=durability, planned_once=planned_once)
