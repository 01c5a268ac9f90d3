"""Copying a store to another database: how a team moves from the SQLite default to
PostgreSQL without losing its history (ids, inputs, runs, steps, edges, ledger)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, insert, select, text

from tether.errors import Conflict
from tether.store.schema import metadata, tasks
from tether.store.store import Store

_BATCH = 2000


def copy_store(
    source: Store,
    target: Store,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty, migrated ``target``, keeping ids.

    Tables are copied parents first, in one transaction on the target, so a failure leaves
    the target empty. Afterwards PostgreSQL's id sequences are moved past the copied ids.
    Returns the rows copied per table.

    Raises:
        Conflict: the target already holds tasks.
    """
    with target.engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(tasks)).scalar():
            raise Conflict(
                "the target store is not empty; copy into a new database "
                "(create it, then `tether db upgrade` with TETHER_DATABASE_URL pointing at it)"
            )
    counts: dict[str, int] = {}
    with source.engine.connect() as src, target.engine.begin() as dst:
        for table in metadata.sorted_tables:
            counts[table.name] = 0
            last = None
            pk = table.c.id
            while True:
                q = select(table).order_by(pk).limit(_BATCH)
                if last is not None:
                    q = q.where(pk > last)
                rows = [dict(r._mapping) for r in src.execute(q)]
                if not rows:
                    break
                dst.execute(insert(table), rows)
                last = rows[-1]["id"]
                counts[table.name] += len(rows)
                if progress is not None:
                    progress(table.name, len(rows))
        if dst.dialect.name == "postgresql":
            for table in metadata.sorted_tables:
                # Parameterised names are not possible here; these are our own table names.
                dst.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                    )
                )
    return counts
