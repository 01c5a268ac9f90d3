"""Migrations produce exactly the declared schema; opening a store is safe and cheap."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, text

from tether import ConfigError, Store, StoreError
from tether.store import migrate
from tether.store.schema import metadata


def _differences(store: Store, target: MetaData) -> list[object]:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, target))


def test_head_constant_matches_the_migration_scripts() -> None:
    assert migrate.script_head() == migrate.HEAD


def test_migrating_an_empty_database_yields_exactly_the_declared_schema(store: Store) -> None:
    assert migrate.current_revision(store.engine) == migrate.HEAD
    assert _differences(store, metadata) == []
    with store.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert tables == {"alembic_version", *metadata.tables}


def test_the_schema_comparison_does_see_a_difference(store: Store) -> None:
    """Guards the test above: a schema that differs from the database is reported."""
    changed = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    Table("audit", changed, Column("id", Integer, primary_key=True))
    changed.tables["runs"].append_column(Column("extra", Integer))

    kinds = {diff[0] for diff in _differences(store, changed) if isinstance(diff, tuple)}

    assert {"add_table", "add_column"} <= kinds


def test_opening_a_current_store_again_keeps_its_data(store_url: str) -> None:
    first = Store.open(store_url)
    sub = first.submit("quote", "case-1")
    first.close()

    again = Store.open(store_url)
    try:
        assert migrate.current_revision(again.engine) == migrate.HEAD
        assert again.get_task("quote/case-1").id == sub.task_id
    finally:
        again.close()


def test_an_empty_database_has_no_revision(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.HEAD
    finally:
        engine.dispose()


def test_sqlite_store_is_created_with_its_folder_in_wal_mode_fully_synced(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "tether.db"

    store = Store.open(f"sqlite:///{path}")
    try:
        assert path.is_file()
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        store.close()


def test_relaxed_durability_on_sqlite_is_synchronous_normal(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 't.db'}", durability="relaxed")
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    finally:
        store.close()


def test_unsupported_or_in_memory_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="supports sqlite and postgresql, not mysql"):
        Store.open("mysql://root@localhost/db")
    with pytest.raises(ConfigError, match="not a valid URL"):
        Store.open("not a url")
    with pytest.raises(ConfigError, match="in-memory"):
        Store.open("sqlite://")


def test_an_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    with pytest.raises(StoreError, match="cannot open the store at") as info:
        Store.open(f"postgresql://tether:s3cret@127.0.0.1:{port}/nothing")

    assert "s3cret" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_stores_opened_at_once_on_a_fresh_database_all_open(store_url: str) -> None:
    """Two workers started together on a new project: one migrates, the others wait."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    opened: list[Store] = []
    lock = threading.Lock()

    def open_store() -> None:
        barrier.wait()
        try:
            s = Store.open(store_url)
            with lock:
                opened.append(s)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert errors == []
        assert len(opened) == 4
        assert migrate.current_revision(opened[0].engine) == migrate.HEAD
        assert _differences(opened[0], metadata) == []
    finally:
        for s in opened:
            s.close()


def test_postgresql_commits_are_synced_unless_relaxed(pg_url: str) -> None:
    for durability, expected in (("full", "on"), ("relaxed", "off")):
        store = Store.open(pg_url, durability=durability)
        try:
            with store.engine.connect() as conn:
                assert conn.execute(text("SHOW synchronous_commit")).scalar() == expected
        finally:
            store.close()
