"""Shared fixtures: a store on a temporary SQLite file and on a real PostgreSQL database.

PostgreSQL is expected at 127.0.0.1:5432 (trust auth, user ``postgres``, database ``test``);
``TETHER_TEST_PG_URL`` points the suite at another server. Each test session creates its
own database there and drops it at the end; each test starts from an empty schema. When
PostgreSQL is unreachable the PostgreSQL tests fail (never skip) and say how to get it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import URL, make_url

import tether
from tether import Agent, Project, Store
from tether.store.schema import triggers

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

PG_HELP = (
    "start PostgreSQL (e.g. `pg_ctlcluster 15 main start`, or `service postgresql start`) "
    "so that postgresql://postgres@127.0.0.1:5432/test accepts connections, or set "
    "TETHER_TEST_PG_URL to a PostgreSQL URL where this user may CREATE DATABASE"
)

WORKER_OPTIONS: dict[str, Any] = {"poll_interval": 0.01, "lease_seconds": 5.0, "concurrency": 4}
"""Worker options that keep worker tests quick."""


def _psycopg(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _admin_engine(url: URL) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test session, dropped at the end; yields its URL."""
    server = _psycopg(os.environ.get("TETHER_TEST_PG_URL") or DEFAULT_PG_URL)
    admin = _admin_engine(server)
    problem = None
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        problem = (
            f"PostgreSQL is unreachable at {server.render_as_string(hide_password=True)} "
            f"({cause[0] if cause else type(exc).__name__}); {PG_HELP}"
        )
    if problem is not None:  # outside the except: the message, not a chain of tracebacks
        admin.dispose()
        pytest.fail(problem, pytrace=False)
    name = f"tether_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _clean_pg(url: str) -> None:
    """An empty ``public`` schema: no tables, no alembic_version, no leftover sessions."""
    engine = _admin_engine(_psycopg(url))
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    _clean_pg(pg_database)
    return pg_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for this test (created by the store on first use)."""
    return f"sqlite:///{tmp_path / 'store' / 'tether.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a temporary SQLite file and on an empty PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'tether.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated, empty store on ``store_url``."""
    s = Store.open(store_url)
    try:
        yield s
    finally:
        s.close()


MakeProject = Callable[..., Project]


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[MakeProject]:
    """``make_project(agents=[...], database_url=None, **settings)`` -> an open Project.

    The project lives in ``tmp_path``; its store defaults to ``tmp_path/.tether/tether.db``.
    Every project made is closed at the end of the test.
    """
    made: list[Project] = []

    def make(
        agents: Iterable[Agent] | None = None,
        *,
        database_url: str | None = None,
        project_dir: Path | None = None,
        **overrides: Any,
    ) -> Project:
        project = Project.load(
            project_dir or tmp_path,
            agents=list(agents) if agents is not None else None,
            database_url=database_url,
            **overrides,
        )
        made.append(project)
        return project

    yield make
    for project in made:
        project.close()


RunIdle = Callable[..., tether.WorkerStats]


@pytest.fixture
def run_idle() -> RunIdle:
    """``run_idle(project, **options)``: a real local worker until nothing is queued or
    running, with a short poll interval; returns its stats."""

    def run(project: Project, **options: Any) -> tether.WorkerStats:
        return project.run_until_idle(**{**WORKER_OPTIONS, **options})

    return run


@pytest.fixture(autouse=True)
def _no_tether_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no TETHER_* variables from the shell that runs them."""
    for name in list(os.environ):
        if name.startswith("TETHER_") and name != "TETHER_TEST_PG_URL":
            monkeypatch.delenv(name)


def assert_edges_recorded_once(store: Store) -> None:
    """No trigger edge (upstream run, trigger, downstream task) is recorded twice."""
    with store.engine.connect() as conn:
        dup = conn.execute(
            select(triggers.c.upstream_run_id, triggers.c.name, triggers.c.downstream_task_id)
            .group_by(triggers.c.upstream_run_id, triggers.c.name, triggers.c.downstream_task_id)
            .having(func.count() > 1)
        ).all()
    assert dup == []
